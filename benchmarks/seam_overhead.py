"""Does the family seam slow the classifier's train step? Old trainer vs new, one process.

Run (from the repository root):

    python benchmarks/seam_overhead.py [--ref 86269a1] [--repeats 7] [--out results.json]
    python benchmarks/seam_overhead.py --new HEAD       # HEAD as committed, not the checkout
    python benchmarks/seam_overhead.py --config.model.width=16   # any config override

Requirement: "The new seam must not slow the classifier step: its time before and
after is within 2 %."

Both trainers live in this one process: the ``jaxhybrid/`` package of ``--ref`` (the
old trainer, before the seam) is extracted with ``git archive`` into a temporary
directory as package ``jaxhybrid_ref`` (its absolute imports rewritten); the new one
is this checkout's ``jaxhybrid`` (or, with ``--new COMMIT``, that commit's, extracted
as ``jaxhybrid_new``). For λ = joint_weight ∈ {0, 1} and each ``--batch_sizes``, each
version builds its real train step (jitted, state donated, loss in ``jax.shard_map``)
from the same config (``configs/gffn.py:mnist_npz``: thesis CNN width 32, MNIST 28×28
padded to 32×32, Adam) with its own API and its own batches (the new batches carry an
extra ``id`` field). Before timing, both versions take step 0 on the same batch from
the same initial parameters: equal losses show that like is compared with like.

Each timed block is N consecutive steps ended by ``block_until_ready``, after
compilation and warm-up; blocks run round-robin over all configurations (the start
rotating per repeat) so that machine noise hits all alike; the ratio new/ref is taken
per repeat and per (B, λ), then summarised as median (min–max).

Data: the shared MNIST npz (``data.npz_path``, else ../shared/data/mnist.npz beside
the checkout) if present, else synthetic uint8 28×28 arrays of MNIST's size.
"""
from __future__ import annotations

import dataclasses
import importlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

from absl import app, flags
from ml_collections import config_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The checkout's package, not whatever an editable install of the venv points at.
sys.path.insert(0, REPO)
from benchmarks.common import fmt_range, resolve_data, run_steps, summary, uptime  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", os.path.join(REPO, "configs", "gffn.py") + ":mnist_npz",
    "Config of the measured model and optimizer (batch_size and joint_weight are set "
    "by the benchmark).", lock_config=True)
flags.DEFINE_string("ref", "86269a1", "Commit of the reference (old) trainer.")
flags.DEFINE_string("new", "", "Commit of the new trainer ('': this checkout's jaxhybrid/, "
                    "uncommitted edits included).")
flags.DEFINE_integer("devices", 1, "Devices in the data mesh (CPU: fake devices).")
flags.DEFINE_string("batch_sizes", "128", "Global batch sizes, comma-separated.")
flags.DEFINE_integer("repeats", 7, "Timed blocks per configuration (round-robin).")
flags.DEFINE_integer("steps", 0, "Steps per timed block (0: chosen per batch size so that "
                     "a block takes about --block_seconds).")
flags.DEFINE_float("block_seconds", 3.0, "Target duration of one timed block when --steps=0.")
flags.DEFINE_integer("warmup", 1, "Untimed steps per configuration after compilation.")
flags.DEFINE_float("tolerance", 0.02, "Allowed |median ratio − 1| (the requirement: 2 %).")
flags.DEFINE_string("out", "", "Write the results as JSON to this path (optional).")

LAMBDAS = (0.0, 1.0)


def extract_package(commit: str, name: str, tmpdir: str) -> str:
    """``commit``'s jaxhybrid/ as package ``name`` under ``tmpdir``; returns the full hash."""
    full = subprocess.run(["git", "-C", REPO, "rev-parse", commit], check=True,
                          capture_output=True, text=True).stdout.strip()
    tar = subprocess.run(["git", "-C", REPO, "archive", full, "jaxhybrid"], check=True,
                         capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(tmpdir, filter="data")
    root = os.path.join(tmpdir, name)
    os.rename(os.path.join(tmpdir, "jaxhybrid"), root)
    pattern = re.compile(r"\b(from|import)(\s+)jaxhybrid\b(?=[\s.])")
    for d, _, files in os.walk(root):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(d, f)
                with open(path) as fh:
                    text = fh.read()
                with open(path, "w") as fh:
                    fh.write(pattern.sub(rf"\1\2{name}", text))
    return full


@dataclasses.dataclass
class Setup:
    version: str          # "ref" | "new"
    batch_size: int
    lam: float
    step: object          # jitted (state, batch) -> (state, metrics), state donated
    state: object
    batches: list         # a few device batches of this version's TrainBatches, cycled
    times: list = dataclasses.field(default_factory=list)   # seconds per step, per repeat
    cpu_times: list = dataclasses.field(default_factory=list)  # process CPU s per step
    cursor: int = 0

    @property
    def name(self) -> str:
        return f"B={self.batch_size} λ={self.lam:g} {self.version}"

    def run(self, n: int) -> float:
        """Wall seconds of n steps; the process CPU seconds go to ``self.last_cpu``."""
        wall, self.last_cpu = run_steps(self, n)
        return wall


def build(pkg: str, version: str, base_config, batch_size: int, lam: float, devices: int,
          states: dict) -> Setup:
    """One version's trainer construction (its train_and_evaluate), for one (B, λ).

    The initial state is made once per version (same seed: identical for every λ and
    B) and copied, since every step donates its own state."""
    import jax
    import jax.numpy as jnp
    m = {k: importlib.import_module(f"{pkg}.{k}")
         for k in ("experiment", "optim", "train", "data.pipeline")}
    config = base_config.copy_and_resolve_references()
    config.batch_size, config.num_devices = batch_size, devices
    if version == "ref":    # the reference predates config.objective: λ was top-level
        config.joint_weight = lam
    else:
        config.objective.joint_weight = lam
    exp = m["experiment"].build_experiment(config)
    batches = m["data.pipeline"].TrainBatches(exp.splits.train, batch_size, seed=config.seed,
                                              mesh=exp.mesh, preprocess=exp.preprocess)
    make_schedule, make_optimizer = m["optim"].make_schedule, m["optim"].make_optimizer
    if version == "ref":  # old API: plan from the example count, init without data
        plan = m["train"].training_plan(config, len(exp.splits.train))
    else:
        plan = m["train"].training_plan(config, batches.steps_per_epoch)
    schedule = make_schedule(config.optimizer, batch_size, plan["total_steps"],
                             plan["steps_per_epoch"])
    optimizer = make_optimizer(config.optimizer, schedule)
    if version not in states:
        create_state = m["experiment"].create_state
        states[version] = (create_state(exp, optimizer, config.seed) if version == "ref" else
                           create_state(exp, optimizer, config.seed, batches.batch(0)))
    state = jax.tree.map(jnp.copy, states[version])
    if version == "ref":
        step = m["train"].make_train_step(exp, optimizer, schedule)
    else:
        step = m["train"].make_train_step(exp, optimizer, schedule, plan["steps_per_epoch"])
    return Setup(version, batch_size, lam, step, state, [batches.batch(s) for s in range(4)])


def same_step0(ref: Setup, new: Setup) -> dict:
    """Step 0 of both versions on the SAME batch (the new one's, without ``id``) from
    copies of their initial states; also whether their own batch 0 and params agree.
    This first call of each step is also its compilation (returned as compile_s)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    b_new = new.batches[0]
    b_ref = {k: v for k, v in b_new.items() if k != "id"}
    same_data = all(np.array_equal(np.asarray(ref.batches[0][k]), np.asarray(b_new[k]))
                    for k in ref.batches[0])
    try:
        p_diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
            jax.tree.leaves(ref.state["params"]),
            jax.tree.leaves(new.state["params"]), strict=True))
    except ValueError:
        p_diff = float("nan")   # different parameter trees
    out = {"same_own_batch0": same_data, "params_max_abs_diff": p_diff}
    for s, b in ((ref, b_ref), (new, b_new)):
        t0 = time.perf_counter()
        _, metrics = s.step(jax.tree.map(jnp.copy, s.state), b)
        metrics = jax.device_get(metrics)
        out[s.version] = {k: float(metrics[k])
                          for k in ("loss", "conditional_nll", "joint_nll", "accuracy")}
        out[f"{s.version}_compile_s"] = time.perf_counter() - t0
    out["loss_abs_diff"] = abs(out["ref"]["loss"] - out["new"]["loss"])
    return out


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    import jax
    if FLAGS.devices > 1:
        jax.config.update("jax_num_cpu_devices", FLAGS.devices)
    import numpy as np

    up_start = uptime()
    tmpdir = tempfile.mkdtemp(prefix="seam_overhead_")
    sys.path.insert(0, tmpdir)
    versions = {"ref": ("jaxhybrid_ref", extract_package(FLAGS.ref, "jaxhybrid_ref", tmpdir))}
    if FLAGS.new:
        versions["new"] = ("jaxhybrid_new", extract_package(FLAGS.new, "jaxhybrid_new", tmpdir))
    else:
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "jaxhybrid"],
                               capture_output=True, text=True).stdout.split("\n")
        head = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
        versions["new"] = ("jaxhybrid", f"checkout at {head[:7]}" + (
            f" + uncommitted: {', '.join(l[3:] for l in dirty if l)}" if any(dirty) else ""))
    for v, (pkg, what) in versions.items():
        path = os.path.dirname(importlib.import_module(pkg).__file__)
        print(f"{v}: package {pkg} = {what} ({path})")

    config = FLAGS.config
    batch_sizes = [int(b) for b in FLAGS.batch_sizes.split(",") if b.strip()]
    config.data.npz_path = resolve_data(config, tmpdir)
    val = config.data.validation_size
    if isinstance(val, float) and val >= 1:  # a count stored as float: pass it as a fraction
        with np.load(config.data.npz_path) as f:
            config.data.validation_size = val / f["y_train"].shape[0]
    m = config.model
    print(f"jax {jax.__version__} ({jax.default_backend()}, {FLAGS.devices} of "
          f"{jax.device_count()} device(s)); python {platform.python_version()}; "
          f"{os.cpu_count()} CPU(s)")
    print(f"model {m.name} width {m.width} stages {m.stages}x{m.convs_per_stage} conv hidden "
          f"{tuple(m.hidden)}; frame {config.data.frame}; optimizer {config.optimizer.name}")
    print(f"uptime (start): {up_start}")

    t0 = time.perf_counter()
    states, setups = {}, {}
    for b in batch_sizes:
        for lam in LAMBDAS:
            for v in ("ref", "new"):
                setups[(b, lam, v)] = build(versions[v][0], v, config, b, lam, FLAGS.devices,
                                            states)
    print(f"built {len(setups)} configurations in {time.perf_counter() - t0:.1f} s")

    print("\nStep 0 on the same batch from the same init (compile included):")
    checks = {}
    for b in batch_sizes:
        for lam in LAMBDAS:
            c = checks[f"B={b} lambda={lam:g}"] = same_step0(setups[(b, lam, "ref")],
                                                            setups[(b, lam, "new")])
            same = "SAME" if c["loss_abs_diff"] <= 1e-5 * max(1.0, abs(c["ref"]["loss"])) \
                else "DIFFERENT"
            print(f"  B={b:<5d} λ={lam:g}  loss ref {c['ref']['loss']:.6f} new "
                  f"{c['new']['loss']:.6f} (|Δ| {c['loss_abs_diff']:.1e}) [{same}]; "
                  f"params |Δ|max {c['params_max_abs_diff']:.1e}; own batch 0 identical: "
                  f"{c['same_own_batch0']}; compile ref {c['ref_compile_s']:.1f} s, "
                  f"new {c['new_compile_s']:.1f} s")

    steps = {}
    for s in setups.values():
        warm = s.run(max(FLAGS.warmup, 1)) / max(FLAGS.warmup, 1)
        if s.lam == 1.0 and s.version == "new":
            steps[s.batch_size] = FLAGS.steps or max(1, round(FLAGS.block_seconds / warm))
    print("steps per timed block: " + ", ".join(f"B={b}: {n}" for b, n in steps.items())
          + f"; {FLAGS.repeats} repeats, round-robin over {len(setups)} configurations")

    order0 = list(setups.values())
    for r in range(FLAGS.repeats):
        for s in order0[r % len(order0):] + order0[:r % len(order0)]:
            s.times.append(s.run(steps[s.batch_size]) / steps[s.batch_size])
            s.cpu_times.append(s.last_cpu / steps[s.batch_size])
    up_end = uptime()

    print(f"\n{'configuration':<18s} {'ms/step median (min–max)':>30s}")
    for s in order0:
        print(f"{s.name:<18s} {fmt_range(summary(s.times), 1e3):>30s}")
    print(f"\nRatio new/ref (per repeat; requirement: within {FLAGS.tolerance:.0%}):")
    ratios = {}
    for b in batch_sizes:
        for lam in LAMBDAS:
            ref, new = setups[(b, lam, "ref")], setups[(b, lam, "new")]
            r = ratios[f"B={b} lambda={lam:g}"] = summary(
                [n / o for n, o in zip(new.times, ref.times)])
            verdict = "OK" if r["median"] <= 1 + FLAGS.tolerance else "SLOWER"   # costs no more
            cpu = ratios[f"B={b} lambda={lam:g} cpu"] = summary(
                [n / o for n, o in zip(new.cpu_times, ref.cpu_times)])
            print(f"  B={b:<5d} λ={lam:g}  wall {fmt_range(r, 1, '.3f')} [{verdict}]   "
                  f"process-CPU time {fmt_range(cpu, 1, '.3f')}")
    print(f"\nuptime (start): {up_start}\nuptime (end):   {up_end}")

    if FLAGS.out:
        results = {
            "versions": {v: {"package": p, "source": w} for v, (p, w) in versions.items()},
            "config": {"model": json.loads(config.model.to_json()), "frame": config.data.frame,
                       "optimizer": config.optimizer.name, "npz_path": config.data.npz_path,
                       "synthetic_data": config.data.npz_path.startswith(tmpdir)},
            "devices": FLAGS.devices, "repeats": FLAGS.repeats, "jax": jax.__version__,
            "cpus": os.cpu_count(), "uptime_start": up_start, "uptime_end": up_end,
            "steps_per_block": {str(b): n for b, n in steps.items()},
            "step0_check": checks, "ratio_new_over_ref": ratios,
            "sec_per_step": {s.name: {**summary(s.times), "all": s.times} for s in order0}}
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
        with open(FLAGS.out, "w") as f:
            json.dump(results, f, indent=2)
        print(f"results written to {FLAGS.out}")
    shutil.rmtree(tmpdir, ignore_errors=True)


if __name__ == "__main__":
    app.run(main)
