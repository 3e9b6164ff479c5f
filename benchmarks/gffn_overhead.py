"""Overhead of the GFFN joint objective over plain cross-entropy, per train step.

Run (from the repository root):

    python benchmarks/gffn_overhead.py [--devices 1] [--repeats 5] [--out results.json]
    python benchmarks/gffn_overhead.py --config.model.width=16   # any config override

What it measures, all in one process, on the thesis CNN of
``configs/gffn.py:mnist_npz`` (width 32, 2 stages of 2 convs, hidden 256; MNIST
28×28×1 zero-padded to 32×32; Adam), at global batch 128 and 1024:

- the real trainer step (``jaxhybrid.train.make_train_step``: jitted, state donated,
  loss inside ``jax.shard_map``) with λ = joint_weight = 0 (FFN) and λ = 1 (GFFN);
- ``ce_only``: the same step, model and optimizer, whose loss is plain cross-entropy
  with no joint term computed at all. The λ = 0 trainer still computes the joint
  term for logging, so the honest overhead of GFFN is λ = 1 / ce_only.

Each timed block is N consecutive steps ended by ``block_until_ready``; blocks are
repeated R times, round-robin over the configurations (so machine noise hits all
of them alike), after compilation and warm-up. Ratios are taken per repeat, then
summarised as median (min–max). The thesis claims no relevant overhead: target
λ=1 / ce_only ≤ 1.03.

It also measures the input pipeline (``TrainBatches.host_batch``: host reading and
preprocessing; ``TrainBatches.iterate``: the same plus the prefetch thread and the
transfer to the device) in examples/s, against the train step's examples/s.
pipeline/step > 1 means the pipeline is not the bottleneck (on a CPU backend the
two share the same cores during training, so this is an upper bound).

Measured (2-core CPU shared with other jobs, 1 device, MNIST npz; --repeats 9
--block_seconds 3): λ=1 / ce_only median 1.005 at B=128 and 0.995 at B=1024 (per-repeat
spread 0.65–1.24 from the machine's load); ~1.0 s/step at B=128, ~12.5 s/step at
B=1024 (XLA:CPU's conv filter gradients and max-pool backward dominate); the input
pipeline (iterate) is >600x faster than the step.

Data: the shared MNIST npz (``data.npz_path``, else ../shared/data/mnist.npz beside
the checkout) if present, else synthetic uint8 28×28 arrays of MNIST's size in a
temporary npz; the script prints which.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)   # measure this checkout, whatever the environment has installed
from benchmarks import common  # noqa: E402
from benchmarks.common import fmt_range, resolve_data, run_steps, summary  # noqa: E402

VARIANTS = ("lambda0", "lambda1", "ce_only")


def parse_flags(argv=None):
    p = common.parser(__doc__, repeats=5, json_flags=("--out", "--json"),
                      config="configs/gffn.py:mnist_npz")
    common.add_step_timing(p, batch_sizes="128,1024", block_seconds=1.0)
    p.add_argument("--pipeline_examples", type=int, default=16384,
                   help="examples read per pipeline measurement")
    return common.parse(p, argv, smoke={"batch_sizes": "8", "repeats": 1, "steps": 1,
                                        "pipeline_examples": 16},
                        smoke_config=common.SMOKE_CNN)


def ce_only_loss(family, label_model):
    """Plain cross-entropy train loss: the joint term is not computed at all.

    Same (loss, aux) contract as the classifier family; aux keeps the accuracy the
    trainer also logs, so only the joint term differs from λ = 0 / λ = 1.
    """
    import jax.numpy as jnp
    from jax import lax

    from jaxhybrid.objectives.conditional import conditional_nll

    def loss_fn(variables, batch, rng, progress, axis_name=None):
        del progress
        logits = family.predict(variables, batch, rng, ("logits",))["logits"]
        labels, mask = batch["label"], batch["mask"]
        cond = conditional_nll(logits, labels, label_model=label_model, axis_name=axis_name,
                               mask=mask)
        correct = jnp.sum(jnp.where(mask, jnp.argmax(logits, -1) == labels, False)
                          .astype(jnp.float32))
        count = jnp.sum(mask.astype(jnp.float32))
        if axis_name is not None:
            correct, count = lax.psum((correct, count), axis_name)
        return cond, ({}, {"conditional_nll": cond,
                           "accuracy": lax.stop_gradient(correct / count)})

    return loss_fn


@dataclasses.dataclass
class Setup:
    name: str             # e.g. "B=128 lambda1"
    batch_size: int
    variant: str
    step: object          # jitted (state, batch) -> (state, metrics), state donated
    state: object
    batches: list         # a few device batches, cycled
    trainer_batches: object  # TrainBatches (for the pipeline measurement)
    times: list = dataclasses.field(default_factory=list)   # seconds per step, per repeat
    cpu_times: list = dataclasses.field(default_factory=list)  # process CPU s per step
    cursor: int = 0

    def run(self, n: int) -> float:
        """Wall seconds of n steps; the process CPU seconds go to ``self.last_cpu``."""
        wall, self.last_cpu = run_steps(self, n)
        return wall


def build_setup(base_config, batch_size: int, variant: str, devices: int,
                initial_state=None) -> Setup:
    """The trainer's own construction (train.train_and_evaluate), for one configuration.

    ``initial_state``: a state made by ``create_state`` for another configuration of the
    same model and optimizer (identical: same seed, lr-independent Adam state), copied
    instead of compiling the init again (~10 s per configuration on a busy 2-core CPU).
    """
    import jax
    import jax.numpy as jnp

    from jaxhybrid.data.pipeline import TrainBatches
    from jaxhybrid.experiment import build_experiment, create_state
    from jaxhybrid.optim import make_optimizer, make_schedule
    from jaxhybrid.train import make_train_step, training_plan

    config = base_config.copy_and_resolve_references()
    config.batch_size = batch_size
    config.num_devices = devices
    config.objective.joint_weight = 0.0 if variant == "lambda0" else 1.0
    exp = build_experiment(config)
    if variant == "ce_only":
        family = dataclasses.replace(
            exp.family, loss=ce_only_loss(exp.family, config.objective.label_model),
            describe={**exp.family.describe, "joint_weight": "none (ce_only)"})
        exp = dataclasses.replace(exp, family=family)
    batches = TrainBatches(exp.splits.train, batch_size, seed=config.seed, mesh=exp.mesh,
                           preprocess=exp.preprocess)
    plan = training_plan(config, batches.steps_per_epoch)
    schedule = make_schedule(config.optimizer, batch_size, plan["total_steps"],
                             plan["steps_per_epoch"])
    optimizer = make_optimizer(config.optimizer, schedule)
    if initial_state is None:
        state = create_state(exp, optimizer, config.seed, batches.batch(0))
    else:  # a copy: every configuration's step donates (consumes) its own state
        state = jax.tree.map(jnp.copy, initial_state)
    step = make_train_step(exp, optimizer, schedule, plan["steps_per_epoch"])
    device_batches = [batches.batch(s) for s in range(4)]
    return Setup(f"B={batch_size} {variant}", batch_size, variant, step, state,
                 device_batches, batches)


def time_pipeline(batches, n_examples: int, repeats: int) -> dict:
    """examples/s of host_batch (host read + preprocess) and iterate (+ prefetch + device)."""
    import jax
    n_steps = max(2, -(-n_examples // batches.batch_size))
    host, full = [], []
    for r in range(repeats):
        start = r * n_steps  # fresh rows each repeat
        t0 = time.perf_counter()
        for s in range(start, start + n_steps):
            batches.host_batch(s)
        host.append(n_steps * batches.batch_size / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for _, b in batches.iterate(start, start + n_steps):
            jax.block_until_ready(b)
        full.append(n_steps * batches.batch_size / (time.perf_counter() - t0))
    return {"steps_per_measurement": n_steps, "host_batch": summary(host),
            "iterate": summary(full), "host_batch_all": host, "iterate_all": full}


def main(argv=None) -> dict:
    args = parse_flags(argv)
    import jax
    if args.devices > 1:
        jax.config.update("jax_num_cpu_devices", args.devices)
    import numpy as np

    config = args.config
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    tmpdir = tempfile.mkdtemp(prefix="gffn_overhead_")
    config.data.npz_path = resolve_data(config, tmpdir)
    val = config.data.validation_size
    if isinstance(val, float) and val >= 1:
        # The config's count (5000) arrives as 5000.0 (the field is a float in
        # config_defaults) and load_splits reads floats as fractions: pass it as one.
        with np.load(config.data.npz_path) as f:
            n_train = f["y_train"].shape[0]
        config.data.validation_size = val / n_train
    m = config.model
    machine = common.header(args.devices)
    print(f"model {m.name} width {m.width} stages {m.stages}x{m.convs_per_stage} conv hidden "
          f"{tuple(m.hidden)}; frame {config.data.frame}; optimizer {config.optimizer.name}; "
          f"label model {config.objective.label_model}")

    t0 = time.perf_counter()
    setups = []
    for b in batch_sizes:
        for v in VARIANTS:
            setups.append(build_setup(config, b, v, args.devices,
                                      setups[0].state if setups else None))
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(setups[0].state["params"]))
    print(f"parameters: {n_params:,}; built {len(setups)} configurations in "
          f"{time.perf_counter() - t0:.1f} s")

    # Compile + warm up; choose steps per block per batch size from the warm-up.
    steps = {}
    for s in setups:
        t0 = time.perf_counter()
        s.run(1)
        compile_s = time.perf_counter() - t0
        warm = s.run(max(args.warmup, 1)) / max(args.warmup, 1)
        print(f"  {s.name:<18s} first step (compile) {compile_s:5.2f} s, warm step "
              f"{warm * 1e3:7.1f} ms")
        if s.variant == "lambda1":
            steps[s.batch_size] = args.steps or max(1, round(args.block_seconds / warm))
    print("steps per timed block: " + ", ".join(f"B={b}: {n}" for b, n in steps.items())
          + f"; {args.repeats} repeats, round-robin")

    # Timed blocks, round-robin over the configurations; the starting configuration
    # rotates between repeats so that no configuration always follows the same one.
    for r in range(args.repeats):
        order = setups[r % len(setups):] + setups[:r % len(setups)]
        for s in order:
            n = steps[s.batch_size]
            s.times.append(s.run(n) / n)
            s.cpu_times.append(s.last_cpu / n)

    results = {"machine": machine, "smoke": args.smoke, "config": {"model": json.loads(config.model.to_json()),
                          "frame": config.data.frame, "optimizer": config.optimizer.name,
                          "npz_path": config.data.npz_path,
                          "synthetic_data": config.data.npz_path.startswith(tmpdir)},
               "devices": args.devices, "repeats": args.repeats,
               "steps_per_block": {str(b): n for b, n in steps.items()},
               "jax": jax.__version__, "cpus": os.cpu_count(), "batch_sizes": {}}

    print()
    print(f"{'configuration':<18s} {'ms/step median (min–max)':>30s} {'examples/s median':>18s}")
    for s in setups:
        t = summary(s.times)
        print(f"{s.name:<18s} {fmt_range(t, 1e3):>30s} {s.batch_size / t['median']:>18.0f}")

    print()
    print("Overhead ratios (per-repeat time ratios; target λ=1 / ce_only ≤ 1.03):")
    by = {(s.batch_size, s.variant): s for s in setups}
    for b in batch_sizes:
        l0, l1, ce = by[(b, "lambda0")], by[(b, "lambda1")], by[(b, "ce_only")]
        r10 = summary([a / c for a, c in zip(l1.times, l0.times)])
        r1ce = summary([a / c for a, c in zip(l1.times, ce.times)])
        r0ce = summary([a / c for a, c in zip(l0.times, ce.times)])
        cpu1ce = summary([a / c for a, c in zip(l1.cpu_times, ce.cpu_times)])
        verdict = "OK" if r1ce["median"] <= 1.03 else "ABOVE TARGET"
        print(f"  B={b:<5d} λ=1/λ=0 {fmt_range(r10, 1, '.3f')}   λ=1/ce_only "
              f"{fmt_range(r1ce, 1, '.3f')} [{verdict}]   λ=0/ce_only {fmt_range(r0ce, 1, '.3f')}"
              f"   λ=1/ce_only process-CPU time {fmt_range(cpu1ce, 1, '.3f')}")
        results["batch_sizes"][str(b)] = {
            **{v: {"sec_per_step": summary(by[(b, v)].times),
                   "sec_per_step_all": by[(b, v)].times,
                   "examples_per_sec": b / statistics.median(by[(b, v)].times)}
               for v in VARIANTS},
            "ratio_lambda1_over_lambda0": r10, "ratio_lambda1_over_ce_only": r1ce,
            "cpu_ratio_lambda1_over_ce_only": cpu1ce,
            "ratio_lambda0_over_ce_only": r0ce}

    print()
    print("Input pipeline vs train step (examples/s, median (min–max); ratio > 1: the "
          "pipeline is not the bottleneck):")
    for b in batch_sizes:
        pipe = time_pipeline(by[(b, "lambda1")].trainer_batches, args.pipeline_examples,
                             max(3, min(args.repeats, 5)))
        step_rate = b / statistics.median(by[(b, "lambda1")].times)
        h, it = pipe["host_batch"], pipe["iterate"]
        print(f"  B={b:<5d} host_batch {fmt_range(h, 1, '.0f'):>24s}   iterate "
              f"{fmt_range(it, 1, '.0f'):>24s}   λ=1 step {step_rate:8.0f}   "
              f"host_batch/step {h['median'] / step_rate:6.1f}x   iterate/step "
              f"{it['median'] / step_rate:6.1f}x")
        results["batch_sizes"][str(b)]["pipeline"] = {
            **pipe, "step_examples_per_sec": step_rate,
            "ratio_host_batch_over_step": h["median"] / step_rate,
            "ratio_iterate_over_step": it["median"] / step_rate}

    shutil.rmtree(tmpdir, ignore_errors=True)
    return common.finish(results, args.json)


if __name__ == "__main__":
    main()
