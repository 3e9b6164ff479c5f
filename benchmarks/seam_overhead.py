"""Does the family seam slow the classifier's train step? Old trainer vs new, one process.

Run (from the repository root):

    python benchmarks/seam_overhead.py [--ref 86269a1] [--repeats 7] [--out results.json]
    python benchmarks/seam_overhead.py --new HEAD       # HEAD as committed, not the checkout
    python benchmarks/seam_overhead.py --config.model.width=16   # any config override
    python benchmarks/seam_overhead.py --smoke          # tiny sizes, 1 round: a check only

Requirement: "The new seam must not slow the classifier step: its time before and
after is within 2 %."

Both trainers live in this one process: the ``jaxhybrid/`` package of ``--ref`` (the
old trainer, before the seam) is extracted with ``git archive`` into a temporary
directory as package ``jaxhybrid_ref`` (its absolute imports rewritten); the new one
is this checkout's ``jaxhybrid`` (or, with ``--new COMMIT``, that commit's, extracted
as ``jaxhybrid_new``). For λ = joint_weight ∈ ``--lambdas`` and each ``--batch_sizes``,
each version builds its real train step (jitted, state donated, loss in
``jax.shard_map``) from the same config (``configs/gffn.py:mnist_npz``: thesis CNN width
32, MNIST 28×28 padded to 32×32, Adam) with its own API and its own batches (the new
batches carry an extra ``id`` field).

The reference predates ``config.objective``, so it cannot read today's config: its config
is its own ``config_defaults.base_config()`` with every field it shares with today's
config copied over, a field that moved read from its new place (``joint_weight`` <-
``objective.joint_weight``, ``label_model`` <- ``objective.label_model``; see
:data:`MOVED`). Today's fields the reference has no counterpart for are printed (and
listed in the JSON as ``ref_config.not_in_ref``) when they differ from today's defaults,
since the reference then cannot build the same model. Before timing, both versions take
step 0 on the same batch from the same initial parameters: equal losses show that like
is compared with like.

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
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The checkout's package, not whatever an editable install of the venv points at.
sys.path.insert(0, REPO)
from benchmarks import common  # noqa: E402
from benchmarks.common import fmt_range, resolve_data, run_steps, summary  # noqa: E402
from jaxhybrid.config_defaults import base_config  # noqa: E402
from jaxhybrid.config_keys import field_value, flatten  # noqa: E402

# the reference's key -> today's key, for the fields that moved since --ref (86269a1)
MOVED = {"joint_weight": "objective.joint_weight", "label_model": "objective.label_model"}
# where each version keeps λ
LAMBDA_KEY = {"ref": "joint_weight", "new": "objective.joint_weight"}


def parse_flags(argv=None):
    p = common.parser(__doc__, repeats=7, json_flags=("--out", "--json"),
                      config="configs/gffn.py:mnist_npz")
    p.add_argument("--ref", default="86269a1", help="commit of the reference (old) trainer")
    p.add_argument("--new", default="", help="commit of the new trainer ('': this "
                   "checkout's jaxhybrid/, uncommitted edits included)")
    common.add_step_timing(p, batch_sizes="128", block_seconds=3.0)
    p.add_argument("--lambdas", default="0,1", help="values of λ = joint_weight, "
                   "comma-separated")
    p.add_argument("--tolerance", type=float, default=0.02,
                   help="allowed |median ratio − 1| (the requirement: 2 %%)")
    return common.parse(p, argv, smoke={"batch_sizes": "8", "lambdas": "1", "repeats": 1,
                                        "steps": 1, "warmup": 0},
                        smoke_config={**common.SMOKE_CNN, "data.train_subset": 256})


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


def forget_extracted(tmpdir: str) -> None:
    """Remove ``tmpdir`` and unload the packages extracted there, so that another run in
    this process (the tests) extracts and imports its own."""
    if tmpdir in sys.path:
        sys.path.remove(tmpdir)
    for name in [m for m in sys.modules if m.split(".")[0] in ("jaxhybrid_ref",
                                                               "jaxhybrid_new")]:
        del sys.modules[name]
    shutil.rmtree(tmpdir, ignore_errors=True)


def versions_of(args, tmpdir: str) -> dict:
    """{"ref"|"new": (package name, what it is)}, the extracted ones importable."""
    sys.path.insert(0, tmpdir)
    versions = {"ref": ("jaxhybrid_ref", extract_package(args.ref, "jaxhybrid_ref", tmpdir))}
    if args.new:
        versions["new"] = ("jaxhybrid_new", extract_package(args.new, "jaxhybrid_new", tmpdir))
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
    return versions


def ref_config(pkg: str, config):
    """The reference's config for today's ``config``: the reference checkout's own
    ``base_config()``, each of its fields set from today's same field (or, for a field
    that moved, from its new place, :data:`MOVED`). Returns (config, info): ``info`` names
    the reference's fields left at its defaults (``ref_defaults``) and today's fields the
    reference has no counterpart for whose value differs from today's defaults
    (``not_in_ref``: the reference then builds another model or step than the new one)."""
    ref = importlib.import_module(f"{pkg}.config_defaults").base_config()
    today = flatten(config)
    used, info = set(), {"ref_defaults": [], "not_in_ref": {}}
    for key in flatten(ref):
        src = key if key in today else MOVED.get(key, "")
        if src not in today:
            info["ref_defaults"].append(key)
            continue
        used.add(src)
        *sections, last = key.split(".")
        node = field_value(ref, ".".join(sections)) if sections else ref
        value = today[src]
        setattr(node, last, tuple(value) if isinstance(value, list) else value)
    defaults = flatten(base_config(config.family))
    for key in sorted(set(today) - used):
        if key not in defaults or today[key] != defaults[key]:
            info["not_in_ref"][key] = today[key]
    return ref, info


def describe_ref_config(info: dict) -> None:
    moved = ", ".join(f"{k} <- {v}" for k, v in MOVED.items())
    print(f"ref config: its own base_config() with today's fields (moved: {moved})")
    if info["ref_defaults"]:
        print(f"  ref fields today lacks, at the ref's defaults: {info['ref_defaults']}")
    for key, value in info["not_in_ref"].items():
        print(f"  WARNING: {key}={value!r} (not today's default) has no counterpart in the "
              f"ref: the two versions do not build the same step")


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


def build(pkg: str, version: str, base, batch_size: int, lam: float, devices: int,
          states: dict) -> Setup:
    """One version's trainer construction (its train_and_evaluate), for one (B, λ), from
    ``base``: this version's config (:func:`ref_config` for the reference).

    The initial state is made once per version (same seed: identical for every λ and
    B) and copied, since every step donates its own state."""
    import jax
    import jax.numpy as jnp
    m = {k: importlib.import_module(f"{pkg}.{k}")
         for k in ("experiment", "optim", "train", "data.pipeline")}
    config = base.copy_and_resolve_references()
    config.batch_size, config.num_devices = batch_size, devices
    *section, last = LAMBDA_KEY[version].split(".")
    setattr(field_value(config, section[0]) if section else config, last, lam)
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
    try:   # numpy: no small computation to compile per parameter shape
        p_diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(
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
    out["same_loss"] = out["loss_abs_diff"] <= 1e-5 * max(1.0, abs(out["ref"]["loss"]))
    return out


def check_step0(setups: dict, keys: list) -> dict:
    print("\nStep 0 on the same batch from the same init (compile included):")
    checks = {}
    for b, lam in keys:
        c = checks[f"B={b} lambda={lam:g}"] = same_step0(setups[(b, lam, "ref")],
                                                        setups[(b, lam, "new")])
        print(f"  B={b:<5d} λ={lam:g}  loss ref {c['ref']['loss']:.6f} new "
              f"{c['new']['loss']:.6f} (|Δ| {c['loss_abs_diff']:.1e}) "
              f"[{'SAME' if c['same_loss'] else 'DIFFERENT'}]; params |Δ|max "
              f"{c['params_max_abs_diff']:.1e}; own batch 0 identical: "
              f"{c['same_own_batch0']}; compile ref {c['ref_compile_s']:.1f} s, "
              f"new {c['new_compile_s']:.1f} s")
    return checks


def time_blocks(setups: dict, args) -> dict:
    """Warm up, choose the steps per block per batch size (from the new λ=max step), then
    time ``args.repeats`` round-robin rounds. Returns {batch size: steps per block}."""
    steps, lam_max = {}, max(s.lam for s in setups.values())
    for s in setups.values():
        if args.warmup > 0:
            warm = s.run(args.warmup) / args.warmup
        else:
            warm = args.block_seconds
        if s.lam == lam_max and s.version == "new":
            steps[s.batch_size] = args.steps or max(1, round(args.block_seconds / warm))
    print("steps per timed block: " + ", ".join(f"B={b}: {n}" for b, n in steps.items())
          + f"; {args.repeats} repeats, round-robin over {len(setups)} configurations")

    def block(s, _round):
        n = steps[s.batch_size]
        s.times.append(s.run(n) / n)
        s.cpu_times.append(s.last_cpu / n)
    common.round_robin(list(setups.values()), args.repeats, block)
    return steps


def ratios_of(setups: dict, keys: list, tolerance: float) -> dict:
    print(f"\n{'configuration':<18s} {'ms/step median (min–max)':>30s}")
    for s in setups.values():
        print(f"{s.name:<18s} {fmt_range(summary(s.times), 1e3):>30s}")
    print(f"\nRatio new/ref (per repeat; requirement: within {tolerance:.0%}):")
    ratios = {}
    for b, lam in keys:
        ref, new = setups[(b, lam, "ref")], setups[(b, lam, "new")]
        r = ratios[f"B={b} lambda={lam:g}"] = common.ratio(new.times, ref.times)
        verdict = "OK" if r["median"] <= 1 + tolerance else "SLOWER"   # costs no more
        cpu = ratios[f"B={b} lambda={lam:g} cpu"] = common.ratio(new.cpu_times, ref.cpu_times)
        print(f"  B={b:<5d} λ={lam:g}  wall {fmt_range(r, 1, '.3f')} [{verdict}]   "
              f"process-CPU time {fmt_range(cpu, 1, '.3f')}")
    return ratios


def prepare_config(args, tmpdir: str):
    """Today's config on the data to use, and the reference's (:func:`ref_config`)."""
    config = args.config
    config.data.npz_path = resolve_data(config, tmpdir)
    common.validation_fraction(config)
    ref, info = ref_config("jaxhybrid_ref", config)
    m = config.model
    print(f"model {m.name} width {m.width} stages {m.stages}x{m.convs_per_stage} conv hidden "
          f"{tuple(m.hidden)}; frame {config.data.frame}; optimizer {config.optimizer.name}")
    describe_ref_config(info)
    return {"ref": ref, "new": config}, info


def main(argv=None) -> dict:
    args = parse_flags(argv)
    import jax
    if args.devices > 1:
        jax.config.update("jax_num_cpu_devices", args.devices)
    machine = common.header(args.devices)
    tmpdir = tempfile.mkdtemp(prefix="seam_overhead_")
    try:
        versions = versions_of(args, tmpdir)
        configs, info = prepare_config(args, tmpdir)
        keys = [(b, lam) for b in common.csv_ints(args.batch_sizes)
                for lam in (float(x) for x in args.lambdas.split(",") if x.strip())]
        t0, states, setups = time.perf_counter(), {}, {}
        for b, lam in keys:
            for v in ("ref", "new"):
                setups[(b, lam, v)] = build(versions[v][0], v, configs[v], b, lam,
                                            args.devices, states)
        print(f"built {len(setups)} configurations in {time.perf_counter() - t0:.1f} s")
        checks = check_step0(setups, keys)
        steps = time_blocks(setups, args)
        ratios = ratios_of(setups, keys, args.tolerance)
        config = configs["new"]
        synthetic = config.data.npz_path.startswith(tmpdir)
    finally:
        forget_extracted(tmpdir)
    results = {
        "machine": machine, "smoke": args.smoke,
        "versions": {v: {"package": p, "source": w} for v, (p, w) in versions.items()},
        "config": {"model": json.loads(config.model.to_json()), "frame": config.data.frame,
                   "optimizer": config.optimizer.name, "npz_path": config.data.npz_path,
                   "synthetic_data": synthetic},
        "ref_config": {"moved": MOVED, **info},
        "devices": args.devices, "repeats": args.repeats,
        "steps_per_block": {str(b): n for b, n in steps.items()},
        "step0_check": checks, "ratio_new_over_ref": ratios,
        "sec_per_step": {s.name: {**summary(s.times), "all": s.times}
                         for s in setups.values()}}
    return common.finish(results, args.json)


if __name__ == "__main__":
    main()
