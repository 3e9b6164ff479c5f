"""One HVAE train step, as the trainer runs it, against the XLA floor of its convolutions.

Run (from the repository root; ~5 min at the full size on the 2-core CPU):

    python benchmarks/hvae_step.py [--repeats 5] [--json results.json]
    python benchmarks/hvae_step.py --batch 4 --channels 4 --repeats 2   # a quick check
    python benchmarks/hvae_step.py --dtypes float32 --skip-floor

The step: ``configs/hvae.py:fashion_mnist``'s model and optimizer (three stages of three
weight-normalised 64-channel ResBlocks, kernels 5, 3, 3, strides 1, 1, 2 | 1, 1, 2 |
1, 1, 1; z1 conv 8 @ 14×14, z2 dense 16, z3 dense 8; the generative stacks mirrored with
transposed convs; Bernoulli likelihood on dynamically binarised images (train transform
``binarize``), KL warm-up and 2 free nats per element, 1 sample; Adam 3e-4), global
batch 128 of random uint8 28×28×1 images (no labels) from a temporary npz, built and
compiled by the trainer's own code on ONE device; ``--channels`` sets every block's
``out_channels`` (64 in the config). The floor: every convolution of the step's jaxpr
(forward, transposed, dx, dw) timed alone, Σ count × time; step/floor per round.
Everything shared with ``benchmarks/dhm_step.py`` (how the step is built and compiled,
which convs are collected and how they are timed, the round-robin, the report and its
caveats) is described in ``benchmarks/xla_floor.py``.

The reference is the original PyTorch code (hvae-oodd), 2.61 s per step (median) on
this 2-core CPU (630 GFLOP, ~240 GFLOP/s). ``bfloat16`` is the step with
``config.compute_dtype = "bfloat16"`` (convs and matmuls in bf16; the HVAE's
``WNLinear`` casts the normalised kernel and the input).

The step has 128 convolutions (43 fwd, 42 dx, 43 dw; 35 distinct shapes per dtype);
a transposed conv is listed as ``fwd`` with ``lhs_dilation=2x2``, its dx as a stride-2
conv. The dense maps of the dense latents are dots, not in the floor.

Duration at the full size (2-core CPU, estimated from XLA's count of ~576 GFLOP per
step before optimisation and the DHM's ~115 GFLOP/s on this CPU): ~15–20 s to compile
each dtype's step, ~1 min for the 70 distinct convs alone, then per round ~5–10 s per
step and about as much for its floor, per dtype: ~5 min in all with 5 rounds.
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
from configs.hvae import get_config  # noqa: E402

REFERENCE = xla_floor.Reference(seconds=2.61, gflop=630.0, gflops=240.0)
IMAGE = 28


def parse_flags(argv=None) -> argparse.Namespace:
    p = xla_floor.parser(__doc__)
    p.add_argument("--batch", type=int, default=128, help="global batch size")
    p.add_argument("--channels", type=int, default=64,
                   help="out_channels of every deterministic block")
    p.add_argument("--variant", default="fashion_mnist",
                   help="the configs/hvae.py variant whose model and optimizer are timed")
    return xla_floor.parse(p, argv, smoke={"variant": "digits", "batch": 4, "channels": 4,
                                           "dtypes": "float32"})


def synthetic_npz(tmpdir: str, n_train: int) -> str:
    """Random uint8 [n, 28, 28] images, no labels (the HVAE is unsupervised)."""
    rng = np.random.default_rng(0)
    path = os.path.join(tmpdir, "synthetic.npz")
    np.savez(path, x_train=rng.integers(0, 256, (n_train, IMAGE, IMAGE), dtype=np.uint8),
             x_test=rng.integers(0, 256, (10, IMAGE, IMAGE), dtype=np.uint8))
    return path


def make_config(flags, npz_path: str, dtype: str):
    """configs/hvae.py:fashion_mnist with the benchmark's sizes and the synthetic npz."""
    c = get_config(flags.variant)
    c.data.source, c.data.name, c.data.npz_path = "npz", "", npz_path
    c.data.validation_size = 0.0
    c.evals.ood_sets = "uniform_noise"   # checked by build_experiment; never evaluated here
    c.batch_size, c.num_devices = flags.batch, 1
    c.model.config_deterministic = tuple(
        tuple({**b, "out_channels": flags.channels} for b in stage)
        for stage in c.model.config_deterministic)
    c.compute_dtype = dtype
    return c


def describe(flags, c) -> str:
    m, o = c.model, c.objective
    stages = " | ".join(",".join(f"{b['kernel_size']}/{b['stride']}" for b in s)
                        for s in m.config_deterministic)
    latents = ", ".join(f"{d['block']} {d['latent_features']}" for d in m.config_stochastic)
    return (f"HVAE (configs/hvae.py:{flags.variant}): ResBlocks of {flags.channels} "
            f"channels, "
            f"kernel/stride {stages}; latents {latents}; likelihood {m.likelihood}; free "
            f"nats {o.free_nats:g} ({o.free_nats_mode}); {o.train_samples} sample(s); "
            f"optimizer {c.optimizer.name} lr {c.optimizer.learning_rate:g}; batch "
            f"{flags.batch} of random uint8 {IMAGE}x{IMAGE}x1; train transforms "
            f"{c.data.train_transforms}")


def main(argv=None) -> dict:
    flags = parse_flags(argv)
    return xla_floor.main(xla_floor.Bench(
        name="HVAE", batch=flags.batch,
        sizes={"batch": flags.batch, "channels": flags.channels, "image": IMAGE},
        write_npz=lambda d: synthetic_npz(d, max(4 * flags.batch, 20)),
        make_config=functools.partial(make_config, flags),
        describe=functools.partial(describe, flags), reference=REFERENCE), flags)


if __name__ == "__main__":
    main()
