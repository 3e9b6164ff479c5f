"""One DHM train step, as the trainer runs it, against the XLA floor of its convolutions.

Run (from the repository root; the full size takes ~20–30 s per step on a 2-core CPU):

    python benchmarks/dhm_step.py [--repeats 5] [--json results.json]
    python benchmarks/dhm_step.py --batch 8 --width 8 --latent 16 --repeats 3   # a quick check
    python benchmarks/dhm_step.py --dtypes float32 --skip-floor

The step: ``configs/dhm.py:cifar10``'s model and optimizer (two CIFAR ResNet-18s of
width 64 + the decoder, latent 256, head 256, BatchNorm, α = β = 1, recon mse_mean,
c = 0.1, Adam; CIFAR mean/std, on-device crop + flip), built by the trainer's own code
(``build_experiment``, ``TrainBatches``, ``create_state``, ``make_train_step``: jitted,
state donated, loss in ``jax.shard_map``) on ONE device, global batch 128, fed with
random uint8 32×32×3 images and 10 classes from a temporary npz (``data.source=npz``),
so nothing is downloaded. The jitted step is lowered and compiled once
(``step.trace(...).lower().compile()``, the executable ``jit`` itself would run); that
compiled step is what is timed, and its ``cost_analysis()`` gives the FLOPs.
(The machinery is ``benchmarks/xla_floor.py``, shared with ``benchmarks/hvae_step.py``.)

The floor: every ``conv_general_dilated`` of the step's jaxpr (forward, loss, backward
and Adam, nested jaxprs of pjit/shard_map/custom rules walked), i.e. exactly the
convolutions the step computes: each forward conv, the filter gradient (dw) of each, and
the input gradient (dx) of every conv whose input depends on the parameters (so not the
first convs of the trunk and the encoder, whose input is the image). Equal ops (shapes,
dtypes, strides, padding, dilations, dimension numbers, groups, precision) are grouped;
each distinct op is compiled ALONE with the same primitive and parameters and timed;
floor = Σ count × time. The optimized HLO's ``convolution`` count is printed as a check.

Timing: one warm-up step after compilation, then ``--repeats`` rounds; each round times
``--steps`` steps of every dtype and every distinct conv (round-robin, the start
rotating), so machine noise hits the step and its floor alike; step/floor is taken per
round. Results are median (min–max). The reference is the original PyTorch code,
8.9 s per step (median) on this 2-core CPU (1,426 GFLOP, ~160 GFLOP/s).

Caveats: alone, a conv gets its own layout transposes/copies (XLA:CPU canonicalises
every conv to b01f_01io->b01f with transposes around it) and no fusion with its
neighbours; in the step XLA may fuse those copies with other ops, pick other layouts, or
rewrite a conv (it turns the 1×1 stride-1 convs at full resolution into dots, in the step
and alone alike: the table marks them), so the floor estimates the conv work rather than
bounding it strictly. Each call of a conv alone also pays a dispatch (tens of µs), which
inflates the floor at toy sizes only. The dx of a stride-2 conv is a conv of the
2×-dilated output gradient (as JAX transposes it), timed as such. ``bfloat16`` sets
``config.compute_dtype = "bfloat16"`` (the precision policy, :mod:`jaxhybrid.precision`);
the script prints the dtype the step's convs run in, and a NOTE if the policy is not wired
into the DHM (the convs would stay float32).

Duration at the full size (2-core CPU): ~1 min to compile each dtype's step and
~2 min for the ~106 distinct convs alone, then per round one step and one floor
(Σ over 154 convs) per dtype: budget ~2 min per round with both dtypes.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)   # measure this checkout, whatever the environment has installed
from benchmarks import xla_floor  # noqa: E402
from configs.dhm import get_config  # noqa: E402

REFERENCE = xla_floor.Reference(seconds=8.9, gflop=1426.0, gflops=160.0)


def parse_flags(argv=None) -> argparse.Namespace:
    p = xla_floor.parser(__doc__)
    p.add_argument("--batch", type=int, default=128, help="global batch size")
    p.add_argument("--width", type=int, default=64, help="ResNet width (model.width)")
    p.add_argument("--latent", type=int, default=256, help="latent size (model.latent)")
    p.add_argument("--image", type=int, default=32,
                   help="height and width of the random 3-channel images")
    p.add_argument("--variant", default="cifar10",
                   help="the configs/dhm.py variant whose model and optimizer are timed")
    return xla_floor.parse(p, argv, smoke={"variant": "digits", "batch": 4, "width": 4,
                                           "latent": 8, "image": 8, "dtypes": "float32"})


def synthetic_npz(tmpdir: str, n_train: int, image: int) -> str:
    """Random uint8 [n, image, image, 3] images, labels 0..9 (every class present)."""
    rng = np.random.default_rng(0)
    path = os.path.join(tmpdir, "synthetic.npz")
    np.savez(path, x_train=rng.integers(0, 256, (n_train, image, image, 3), dtype=np.uint8),
             y_train=rng.permutation(np.arange(n_train) % 10).astype(np.uint8),
             x_test=rng.integers(0, 256, (10, image, image, 3), dtype=np.uint8),
             y_test=np.arange(10, dtype=np.uint8))
    return path


def make_config(flags, npz_path: str, dtype: str):
    """configs/dhm.py:cifar10 with the benchmark's sizes and the synthetic npz."""
    c = get_config(flags.variant)
    c.data.source, c.data.name, c.data.npz_path = "npz", "", npz_path
    c.data.validation_size = 0.0
    c.evals.ood_sets = "uniform_noise"   # checked by build_experiment; never evaluated here
    c.batch_size, c.num_devices = flags.batch, 1
    c.model.width, c.model.latent = flags.width, flags.latent
    c.compute_dtype = dtype
    return c


def describe(flags, c) -> str:
    m, o = c.model, c.objective
    return (f"DHM (configs/dhm.py:{flags.variant}): width {m.width} blocks "
            f"{tuple(m.blocks)} latent "
            f"{m.latent} head {m.head_hidden} norm {m.norm}; α={o.alpha:g} β={o.beta:g} "
            f"c={o.kl_coef:g} recon {m.recon}; optimizer {c.optimizer.name}; batch "
            f"{flags.batch} of random uint8 {flags.image}x{flags.image}x3, 10 classes; "
            f"train transforms {c.data.train_transforms}")


def main(argv=None) -> dict:
    flags = parse_flags(argv)
    return xla_floor.main(xla_floor.Bench(
        name="DHM", batch=flags.batch,
        sizes={k: getattr(flags, k) for k in ("batch", "width", "latent", "image")},
        write_npz=lambda d: synthetic_npz(d, max(4 * flags.batch, 20), flags.image),
        make_config=functools.partial(make_config, flags),
        describe=functools.partial(describe, flags), reference=REFERENCE), flags)


if __name__ == "__main__":
    main()
