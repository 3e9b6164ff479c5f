"""The input pipeline in both placements against each family's train step, in one run.

Run (from the repository root; ~2–3 min on the 2-core CPU):

    python benchmarks/input_pipeline.py [--repeats 5] [--json results.json]

Pipeline figures, examples/s, for digits, MNIST (``jaxhybrid.config_defaults.MNIST_NPZ``
if present, else synthetic uint8 arrays of its size; framed to 32×32 as the thesis
CNN's config) and a synthetic CIFAR-sized set (50,000 × 32×32×3 uint8), each at global
batch 128 and 1024, on ONE device:

- ``host``: ``TrainBatches.host_batch`` (read the rows, frame, scale to float32; numpy);
- ``transfer``: ``parallel.to_global`` of ready host batches (host→device copy only);
- ``iterate``: ``TrainBatches.iterate``, the host placement as the trainer feeds its step
  (the two above, the reading in a prefetch thread);
- ``gather``: ``DeviceTrainBatches.batch``, the device placement as the trainer feeds its
  step (the step's int32 ids to the device, a jitted gather + scaling there).

Transfers and gathers are dispatched asynchronously; each timed block waits for the
batch two steps back (the trainer's prefetch depth) and for the last at its end.

Train steps, examples/s at batch 128 (``--step_batch``), built by the trainer's own code
(``build_experiment``, ``create_state``, ``make_train_step``) on ready device batches:
the thesis CNN classifier on MNIST (``configs/gffn.py:mnist_npz``, GFFN λ = 1), the DHM at
its digits variant's small size on the CIFAR-sized set, the HVAE at its digits variant's
size on digits. Each pipeline figure is divided by the step of the family paired with its
data set: > 1 means the pipeline outruns the step. Last, the thesis CNN's training loop
(``iterate`` + step, as ``train.py`` runs it) with host and with device-resident data.

Every configuration is timed in blocks of about ``--block_seconds`` (steps per block from
a warm-up), repeated ``--repeats`` times round-robin, so machine load hits all alike;
figures are median (min–max) over the repeats. Compilation is excluded (and printed).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)   # measure this checkout, whatever the environment has installed
from benchmarks.common import SHARED_MNIST, cpu_model, fmt_range, summary, uptime  # noqa: E402

BATCHES = (128, 1024)
MEASURES = ("host", "transfer", "iterate", "gather")
# data set -> (config file:variant of the family paired with it, its model, overrides)
FAMILIES = {
    "digits": ("configs/hvae.py:digits", "HVAE (digits variant: 16-ch blocks)", {}),
    "mnist": ("configs/gffn.py:mnist_npz", "thesis CNN classifier, GFFN λ=1",
              {"objective.joint_weight": 1.0}),
    "cifar_synthetic": ("configs/dhm.py:digits", "DHM (digits variant: width 8, latent 16)",
                        {"data.train_transforms": "crop,flip"}),
}


def write_npz(tmpdir: str) -> dict[str, tuple[str, str]]:
    """{data set: (npz path, what it holds)} for MNIST and the CIFAR-sized set."""
    import numpy as np
    from jaxhybrid.config_defaults import MNIST_NPZ
    rng = np.random.default_rng(0)
    out = {}
    found = [p for p in (MNIST_NPZ, SHARED_MNIST) if os.path.exists(p)]
    if found:
        out["mnist"] = (os.path.abspath(found[0]), f"MNIST {os.path.abspath(found[0])}")
    else:
        path = os.path.join(tmpdir, "mnist_synthetic.npz")
        np.savez(path, x_train=rng.integers(0, 256, (60000, 28, 28), np.uint8),
                 y_train=rng.integers(0, 10, 60000), x_test=np.zeros((100, 28, 28), np.uint8),
                 y_test=np.zeros(100, np.int64))
        out["mnist"] = (path, "MNIST not found: SYNTHETIC uint8 60000×28×28")
    path = os.path.join(tmpdir, "cifar_synthetic.npz")
    np.savez(path, x_train=rng.integers(0, 256, (50000, 32, 32, 3), np.uint8),
             y_train=rng.integers(0, 10, 50000), x_test=np.zeros((100, 32, 32, 3), np.uint8),
             y_test=np.zeros(100, np.int64))
    out["cifar_synthetic"] = (path, "SYNTHETIC uint8 50000×32×32×3, 10 classes")
    return out


def family_config(dataset: str, npz: dict, batch: int):
    """The paired family's config on ``dataset``, on one device, no validation split."""
    import importlib

    from jaxhybrid.tools.overrides import apply_overrides
    path, overrides = FAMILIES[dataset][0], FAMILIES[dataset][2]
    file, variant = path.split(":")
    module = file.removesuffix(".py").replace("/", ".")
    config = importlib.import_module(module).get_config(variant)
    common = {"batch_size": batch, "num_devices": 1, "data.validation_size": 0.0,
              "data.ood_classes": (), "data.placement": "host", "evals.ood_sets": "uniform_noise"}
    if dataset != "digits":
        common.update({"data.source": "npz", "data.npz_path": npz[dataset][0]})
    if dataset == "mnist":
        common["data.frame"] = 32
    return apply_overrides(config, {**common, **overrides})


@dataclasses.dataclass
class Case:
    """One timed configuration: ``run(start, n)`` processes n batches of ``examples``."""
    name: str
    examples: int          # per batch
    run: object            # (start index, n) -> None, blocks at the end
    n: int = 2             # batches per timed block
    rates: list = dataclasses.field(default_factory=list)   # examples/s per repeat
    first_s: float = 0.0   # the first call (compilation included)
    stepped: bool = False  # whether each batch runs a train step

    def time(self, start: int, n: int) -> float:
        t0 = time.perf_counter()
        self.run(start, n)
        return time.perf_counter() - t0

    def calibrate(self, block_seconds: float, least: int, most: int) -> None:
        self.first_s = self.time(0, 1)
        per = self.time(1, least) / least
        self.n = int(min(most, max(least, round(block_seconds / max(per, 1e-6)))))


def pipelined(batches_of):
    """(start, n) -> None over the batches ``batches_of(start, n)`` yields, waiting for the
    batch two back (the trainer's prefetch depth) and for the last at the end."""
    import jax

    def run(start, n):
        pending = []
        for b in batches_of(start, n):
            pending.append(b)
            if len(pending) > 2:
                jax.block_until_ready(pending.pop(0))
        jax.block_until_ready(pending)
    return run


def pipeline_cases(dataset: str, exp, batch: int) -> list[Case]:
    from jaxhybrid import parallel
    from jaxhybrid.data.pipeline import TrainBatches
    from jaxhybrid.data.resident import DeviceTrainBatches
    kw = dict(seed=0, mesh=exp.mesh, preprocess=exp.preprocess)
    host = TrainBatches(exp.splits.train, batch, **kw)
    device = DeviceTrainBatches(exp.splits.train, batch, **kw)
    ready = [host.host_batch(s) for s in range(4)]

    def read(start, n):
        for s in range(start, start + n):
            host.host_batch(s)

    cases = {"host": read,
             "transfer": pipelined(lambda start, n: (parallel.to_global(ready[i % 4], exp.mesh)
                                                     for i in range(n))),
             "iterate": pipelined(lambda start, n: (b for _, b in
                                                    host.iterate(start, start + n))),
             "gather": pipelined(lambda start, n: (device.batch(s)
                                                   for s in range(start, start + n)))}
    return [Case(f"{dataset} B={batch} {m}", batch, cases[m]) for m in MEASURES]


def step_setup(config):
    """(experiment, jitted step, initial state, 4 ready device batches): the trainer's
    construction (train._Run) for ``config``."""
    from jaxhybrid.data.pipeline import TrainBatches
    from jaxhybrid.experiment import build_experiment, create_state
    from jaxhybrid.optim import make_optimizer, make_schedule
    from jaxhybrid.train import make_train_step, training_plan
    exp = build_experiment(config)
    batches = TrainBatches(exp.splits.train, config.batch_size, seed=config.seed,
                           mesh=exp.mesh, preprocess=exp.preprocess)
    plan = training_plan(config, batches.steps_per_epoch)
    schedule = make_schedule(config.optimizer, config.batch_size, plan["total_steps"],
                             plan["steps_per_epoch"])
    optimizer = make_optimizer(config.optimizer, schedule)
    state = create_state(exp, optimizer, config.seed, batches.batch(0))
    step = make_train_step(exp, optimizer, schedule, plan["steps_per_epoch"])
    return exp, step, state, [batches.batch(s) for s in range(4)]


class Stepper:
    """A family's step on a state it threads through every call (each call donates it)."""

    def __init__(self, step, state):
        self.step, self.state = step, state

    def case(self, name: str, batch: int, batches_of) -> Case:
        import jax

        def run(start, n):
            state, metrics = self.state, None
            for b in batches_of(start, n):
                state, metrics = self.step(state, b)
            jax.block_until_ready((state, metrics))
            self.state = state
        return Case(name, batch, run, stepped=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="timed blocks per configuration")
    p.add_argument("--block_seconds", type=float, default=0.25,
                   help="target length of a pipeline block (a step block: 4x this)")
    p.add_argument("--step_batch", type=int, default=128, help="global batch of the steps")
    p.add_argument("--json", default="", help="write the results to this JSON file")
    return p.parse_args()


def build(args, npz: dict):
    """(pipeline cases, {data set: its family's step case}, thesis CNN loop cases)."""
    from jaxhybrid.data.pipeline import TrainBatches
    from jaxhybrid.data.resident import DeviceTrainBatches
    pipes, steps, loops = [], {}, []
    for dataset, (_, model, _) in FAMILIES.items():
        t0 = time.perf_counter()
        exp, step, state, ready = step_setup(family_config(dataset, npz, args.step_batch))
        stepper = Stepper(step, state)
        steps[dataset] = stepper.case(f"{dataset}: {model}", args.step_batch,
                                      lambda start, n, r=ready: (r[i % 4] for i in range(n)))
        print(f"  {dataset:<16s} train {len(exp.splits.train):>6,d} × "
              f"{'×'.join(map(str, exp.input_shape))}; {model}: built and initialised in "
              f"{time.perf_counter() - t0:.1f} s")
        for b in BATCHES:
            pipes += pipeline_cases(dataset, exp, b)
        if dataset == "mnist":
            kw = dict(seed=1, mesh=exp.mesh, preprocess=exp.preprocess)
            host = TrainBatches(exp.splits.train, args.step_batch, **kw)
            dev = DeviceTrainBatches(exp.splits.train, args.step_batch, **kw)
            loops = [stepper.case("thesis CNN loop, host data", args.step_batch,
                                  lambda s, n: (b for _, b in host.iterate(s, s + n))),
                     stepper.case("thesis CNN loop, device-resident data", args.step_batch,
                                  lambda s, n: (dev.batch(i) for i in range(s, s + n)))]
    return pipes, steps, loops


def measure(cases: list[Case], args) -> None:
    """Calibrate every case, then time ``args.repeats`` round-robin rounds (rotating)."""
    for c in cases:
        if c.stepped:   # a train step each batch: blocks of at least one step
            c.calibrate(args.block_seconds * 4, 1, 50)
        else:
            c.calibrate(args.block_seconds, 2, 500)
    for r in range(args.repeats):
        for c in cases[r % len(cases):] + cases[:r % len(cases)]:
            c.rates.append(c.n * c.examples / c.time(3 + r * c.n, c.n))


def report(pipes, steps, loops, args) -> dict:
    def per_repeat(a: Case, b: Case) -> dict:
        return summary([x / y for x, y in zip(a.rates, b.rates)])

    print(f"\nSteps at batch {args.step_batch} (examples/s; first call incl. compilation):")
    for c in steps.values():
        print(f"  {c.name:<62s} {fmt_range(summary(c.rates), 1, '.0f'):>22s}  "
              f"{args.step_batch / summary(c.rates)['median'] * 1e3:8.1f} ms/step  "
              f"first {c.first_s:5.1f} s")
    print("\nPipeline, examples/s median (min–max); [÷ the paired family's step, per repeat]:")
    print(f"  {'data set':<16s} {'B':>5s}  " + "  ".join(f"{m:>34s}" for m in MEASURES))
    out = {"steps": {k: summary(c.rates) for k, c in steps.items()}, "pipeline": {}}
    for dataset in FAMILIES:
        for b in BATCHES:
            row = {m: next(c for c in pipes if c.name == f"{dataset} B={b} {m}")
                   for m in MEASURES}
            cells = [f"{fmt_range(summary(c.rates), 1e-3, '.0f')}k "
                     f"[{per_repeat(c, steps[dataset])['median']:6.0f}x]" for c in row.values()]
            print(f"  {dataset:<16s} {b:>5d}  " + "  ".join(f"{x:>34s}" for x in cells))
            out["pipeline"][f"{dataset} {b}"] = {
                m: {"examples_per_sec": summary(c.rates), "all": c.rates,
                    "over_step": per_repeat(c, steps[dataset])} for m, c in row.items()}
    host, dev = loops
    ratio = summary([h / d for h, d in zip(host.rates, dev.rates)])
    print(f"\nThesis CNN training loop at batch {args.step_batch} (iterate + step, as "
          f"train.py), ms/step median (min–max):")
    for c in loops:
        print(f"  {c.name:<40s} {fmt_range(summary([c.examples / r for r in c.rates]), 1e3)}")
    print(f"  device-resident / host step time, per repeat: {fmt_range(ratio, 1, '.3f')}")
    out["loop"] = {"host": summary(host.rates), "device": summary(dev.rates),
                   "device_over_host_time": ratio}
    return out


def main():
    args = parse_args()
    import jax
    t_start = time.perf_counter()
    print("uptime (start):", uptime())
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores); jax {jax.__version__} "
          f"({jax.default_backend()}, 1 of {jax.device_count()} device(s)); python "
          f"{platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="input_pipeline_") as tmpdir:
        npz = write_npz(tmpdir)
        for name, (_, what) in npz.items():
            print(f"data {name}: {what}")
        pipes, steps, loops = build(args, npz)
        measure(pipes + list(steps.values()) + loops, args)
        results = report(pipes, steps, loops, args)
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s; uptime (end):", uptime())
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "cpu": cpu_model(), **results}, f, indent=2)


if __name__ == "__main__":
    main()
