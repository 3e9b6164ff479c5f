"""The input pipeline in both placements against each family's train step, in one run.

Run (from the repository root; ~2–3 min on the 2-core CPU):

    python benchmarks/input_pipeline.py [--repeats 5] [--json results.json]
    python benchmarks/input_pipeline.py --datasets mnist --batch_sizes 128   # a subset
    python benchmarks/input_pipeline.py --smoke    # MNIST-shaped 64 rows, batch 8: a check

Pipeline figures, examples/s, for digits, MNIST (``jaxhybrid.config_defaults.MNIST_NPZ``
if present, else synthetic uint8 arrays of its size; framed to 32×32 as the thesis
CNN's config) and a synthetic CIFAR-sized set (50,000 × 32×32×3 uint8), each at global
batch 128 and 1024 (``--batch_sizes``), on ONE device:

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
data set: > 1 means the pipeline outruns the step. Last (with ``mnist`` among
``--datasets``), the thesis CNN's training loop (``iterate`` + step, as ``train.py`` runs
it) with host and with device-resident data.

Every configuration is timed in blocks of about ``--block_seconds`` (steps per block from
a warm-up), repeated ``--repeats`` times round-robin, so machine load hits all alike;
figures are median (min–max) over the repeats. Compilation is excluded (and printed).

``--rows N`` replaces MNIST and the CIFAR-sized set by synthetic sets of N training rows
(even where MNIST is present); ``--smoke`` uses 64 and shrinks the models (it runs the
code path, its figures mean nothing).
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import sys
import tempfile
import time

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)   # measure this checkout, whatever the environment has installed
from benchmarks import common  # noqa: E402
from benchmarks.common import SHARED_MNIST, fmt_range, summary  # noqa: E402
from jaxhybrid import parallel  # noqa: E402
from jaxhybrid.config_defaults import MNIST_NPZ  # noqa: E402
from jaxhybrid.data.pipeline import TrainBatches  # noqa: E402
from jaxhybrid.data.resident import DeviceTrainBatches  # noqa: E402
from jaxhybrid.experiment import build_experiment, create_state  # noqa: E402
from jaxhybrid.optim import make_optimizer, make_schedule  # noqa: E402
from jaxhybrid.tools.overrides import apply_overrides  # noqa: E402
from jaxhybrid.train import make_train_step, training_plan  # noqa: E402

MEASURES = ("host", "transfer", "iterate", "gather")
# data set -> (config file:variant of the family paired with it, its model, overrides)
FAMILIES = {
    "digits": ("configs/hvae.py:digits", "HVAE (digits variant: 16-ch blocks)", {}),
    "mnist": ("configs/gffn.py:mnist_npz", "thesis CNN classifier, GFFN λ=1",
              {"objective.joint_weight": 1.0}),
    "cifar_synthetic": ("configs/dhm.py:digits", "DHM (digits variant: width 8, latent 16)",
                        {"data.train_transforms": "crop,flip"}),
}
# --smoke: smaller models, so that a smoke compiles quickly
SMOKE_MODELS = {"mnist": common.SMOKE_CNN,
                "cifar_synthetic": {"model.width": 4, "model.latent": 4,
                                    "model.head_hidden": 8}}
SMOKE = {"repeats": 1, "batch_sizes": "8", "step_batch": 8, "datasets": "mnist",
         "rows": 64, "block_seconds": 1e-3}


def parse_flags(argv=None):
    p = common.parser(__doc__, repeats=5)
    p.add_argument("--block_seconds", type=float, default=0.25,
                   help="target length of a pipeline block (a step block: 4x this)")
    p.add_argument("--step_batch", type=int, default=128, help="global batch of the steps")
    p.add_argument("--batch_sizes", default="128,1024",
                   help="global batch sizes of the pipeline figures, comma-separated")
    p.add_argument("--datasets", default=",".join(FAMILIES),
                   help="data sets (each with its paired family's step), comma-separated, "
                        f"of {', '.join(FAMILIES)}")
    p.add_argument("--rows", type=int, default=0, help="training rows of synthetic MNIST "
                   "and CIFAR-sized sets (0: MNIST's file if present, else 60,000; 50,000)")
    args = common.parse(p, argv, smoke=SMOKE)
    args.datasets = [d for d in args.datasets.split(",") if d.strip()]
    unknown = [d for d in args.datasets if d not in FAMILIES]
    if unknown or not args.datasets:
        p.error(f"--datasets: unknown {unknown}; valid choices: {', '.join(FAMILIES)}")
    args.batch_sizes = common.csv_ints(args.batch_sizes)
    return args


def synthetic_npz(path: str, rows: int, shape: tuple, rng) -> str:
    np.savez(path, x_train=rng.integers(0, 256, (rows, *shape), np.uint8),
             y_train=rng.integers(0, 10, rows), x_test=np.zeros((100, *shape), np.uint8),
             y_test=np.zeros(100, np.int64))
    return path


def write_npz(tmpdir: str, datasets: list, rows: int = 0) -> dict[str, tuple[str, str]]:
    """{data set: (npz path, what it holds)} for MNIST and the CIFAR-sized set (those in
    ``datasets``); ``rows`` > 0: synthetic sets of that many training rows."""
    rng = np.random.default_rng(0)
    out = {}
    found = [p for p in (MNIST_NPZ, SHARED_MNIST) if os.path.exists(p)]
    if "mnist" in datasets and found and not rows:
        out["mnist"] = (os.path.abspath(found[0]), f"MNIST {os.path.abspath(found[0])}")
    elif "mnist" in datasets:
        n = rows or 60000
        out["mnist"] = (synthetic_npz(os.path.join(tmpdir, "mnist_synthetic.npz"), n,
                                      (28, 28), rng),
                        f"{'MNIST not found: ' if not found else ''}SYNTHETIC uint8 "
                        f"{n}×28×28")
    if "cifar_synthetic" in datasets:
        n = rows or 50000
        path = synthetic_npz(os.path.join(tmpdir, "cifar_synthetic.npz"), n, (32, 32, 3), rng)
        out["cifar_synthetic"] = (path, f"SYNTHETIC uint8 {n}×32×32×3, 10 classes")
    return out


def family_config(dataset: str, npz: dict, batch: int, smoke: bool = False):
    """The paired family's config on ``dataset``, on one device, no validation split."""
    path, overrides = FAMILIES[dataset][0], FAMILIES[dataset][2]
    file, variant = path.split(":")
    config = importlib.import_module(file.removesuffix(".py").replace("/", ".")).get_config(
        variant)
    shared = {"batch_size": batch, "num_devices": 1, "data.validation_size": 0.0,
              "data.ood_classes": (), "data.placement": "host",
              "evals.ood_sets": "uniform_noise"}
    if dataset != "digits":
        shared.update({"data.source": "npz", "data.npz_path": npz[dataset][0]})
    if dataset == "mnist":
        shared["data.frame"] = 32
    smaller = SMOKE_MODELS.get(dataset, {}) if smoke else {}
    return apply_overrides(config, {**shared, **overrides, **smaller})


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
    def run(start, n):
        pending = []
        for b in batches_of(start, n):
            pending.append(b)
            if len(pending) > 2:
                jax.block_until_ready(pending.pop(0))
        jax.block_until_ready(pending)
    return run


def pipeline_cases(dataset: str, exp, batch: int) -> list[Case]:
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
        def run(start, n):
            state, metrics = self.state, None
            for b in batches_of(start, n):
                state, metrics = self.step(state, b)
            jax.block_until_ready((state, metrics))
            self.state = state
        return Case(name, batch, run, stepped=True)


def loop_cases(stepper: Stepper, exp, batch: int) -> list[Case]:
    """The thesis CNN's training loop (iterate + step) with host and with device data."""
    kw = dict(seed=1, mesh=exp.mesh, preprocess=exp.preprocess)
    host = TrainBatches(exp.splits.train, batch, **kw)
    dev = DeviceTrainBatches(exp.splits.train, batch, **kw)
    return [stepper.case("thesis CNN loop, host data", batch,
                         lambda s, n: (b for _, b in host.iterate(s, s + n))),
            stepper.case("thesis CNN loop, device-resident data", batch,
                         lambda s, n: (dev.batch(i) for i in range(s, s + n)))]


def build(args, npz: dict):
    """(pipeline cases, {data set: its family's step case}, thesis CNN loop cases)."""
    pipes, steps, loops = [], {}, []
    for dataset in args.datasets:
        model = FAMILIES[dataset][1]
        t0 = time.perf_counter()
        exp, step, state, ready = step_setup(family_config(dataset, npz, args.step_batch,
                                                           args.smoke))
        stepper = Stepper(step, state)
        steps[dataset] = stepper.case(f"{dataset}: {model}", args.step_batch,
                                      lambda start, n, r=ready: (r[i % 4] for i in range(n)))
        print(f"  {dataset:<16s} train {len(exp.splits.train):>6,d} × "
              f"{'×'.join(map(str, exp.input_shape))}; {model}: built and initialised in "
              f"{time.perf_counter() - t0:.1f} s")
        for b in args.batch_sizes:
            pipes += pipeline_cases(dataset, exp, b)
        if dataset == "mnist":
            loops = loop_cases(stepper, exp, args.step_batch)
    return pipes, steps, loops


def measure(cases: list[Case], args) -> None:
    """Calibrate every case, then time ``args.repeats`` round-robin rounds (rotating)."""
    for c in cases:
        if c.stepped:   # a train step each batch: blocks of at least one step
            c.calibrate(args.block_seconds * 4, 1, 50)
        else:
            c.calibrate(args.block_seconds, 2, 500)

    def block(c, r):
        c.rates.append(c.n * c.examples / c.time(3 + r * c.n, c.n))
    common.round_robin(cases, args.repeats, block)


def report_steps(steps: dict, args) -> dict:
    print(f"\nSteps at batch {args.step_batch} (examples/s; first call incl. compilation):")
    for c in steps.values():
        print(f"  {c.name:<62s} {fmt_range(summary(c.rates), 1, '.0f'):>22s}  "
              f"{args.step_batch / summary(c.rates)['median'] * 1e3:8.1f} ms/step  "
              f"first {c.first_s:5.1f} s")
    return {k: {"examples_per_sec": summary(c.rates), "first_call_s": c.first_s}
            for k, c in steps.items()}


def report_pipeline(pipes: list, steps: dict, args) -> dict:
    print("\nPipeline, examples/s median (min–max); [÷ the paired family's step, per repeat]:")
    print(f"  {'data set':<16s} {'B':>5s}  " + "  ".join(f"{m:>34s}" for m in MEASURES))
    out = {}
    for dataset in args.datasets:
        for b in args.batch_sizes:
            row = {m: next(c for c in pipes if c.name == f"{dataset} B={b} {m}")
                   for m in MEASURES}
            over = {m: common.ratio(c.rates, steps[dataset].rates) for m, c in row.items()}
            cells = [f"{fmt_range(summary(c.rates), 1e-3, '.0f')}k "
                     f"[{over[m]['median']:6.0f}x]" for m, c in row.items()]
            print(f"  {dataset:<16s} {b:>5d}  " + "  ".join(f"{x:>34s}" for x in cells))
            out[f"{dataset} {b}"] = {
                m: {"examples_per_sec": summary(c.rates), "all": c.rates,
                    "over_step": over[m]} for m, c in row.items()}
    return out


def report_loops(loops: list, args) -> dict:
    host, dev = loops
    ratio = common.ratio(host.rates, dev.rates)   # time device / time host
    print(f"\nThesis CNN training loop at batch {args.step_batch} (iterate + step, as "
          f"train.py), ms/step median (min–max):")
    for c in loops:
        print(f"  {c.name:<40s} {fmt_range(summary([c.examples / r for r in c.rates]), 1e3)}")
    print(f"  device-resident / host step time, per repeat: {fmt_range(ratio, 1, '.3f')}")
    return {"host": summary(host.rates), "device": summary(dev.rates),
            "device_over_host_time": ratio}


def main(argv=None) -> dict:
    args = parse_flags(argv)
    machine = common.header(1)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="input_pipeline_") as tmpdir:
        npz = write_npz(tmpdir, args.datasets, args.rows)
        data = {name: what for name, (_, what) in npz.items()}
        for name, what in data.items():
            print(f"data {name}: {what}")
        pipes, steps, loops = build(args, npz)
        measure(pipes + list(steps.values()) + loops, args)
    results = {"machine": machine, "smoke": args.smoke, "datasets": args.datasets,
               "data": data, "batch_sizes": args.batch_sizes, "step_batch": args.step_batch,
               "rows": args.rows, "block_seconds": args.block_seconds,
               "repeats": args.repeats, "steps": report_steps(steps, args),
               "pipeline": report_pipeline(pipes, steps, args)}
    if loops:
        results["loop"] = report_loops(loops, args)
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")
    return common.finish(results, args.json)


if __name__ == "__main__":
    main()
