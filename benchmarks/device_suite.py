"""The accelerator suite: one script a session with a lent GPU/TPU runs in a few minutes.

Run from the repository root::

    python3 benchmarks/device_suite.py --budget_s=420 --workdir=/tmp/suite --out=$OUT/suite.md
    python benchmarks/device_suite.py --workdir=/tmp/suite --out=$OUT/device_suite.md
    python benchmarks/device_suite.py --install ...   # pip install -e .[test] (+ jax[cuda12]) first
    python benchmarks/device_suite.py --smoke        # every stage, tiny, CPU, < 1 min

The first is the one command of a lent GPU machine (docs/benchmarks.md, "On a GPU or
TPU"), with ``.whl`` carried (``bash launch/device_wheels.sh``, run where pip reaches the
index). ``--budget_s=N`` bounds the whole suite to N s of wall clock: :func:`plan_budget`
fits the fixed stages' estimates (:data:`STAGE_ESTIMATES`) in order, skipping (a ``skip:``
line) one that would not fit, and gives the HVAE's training what is left; at run time each
subprocess is stopped at its share, a stage the clock no longer has room for is skipped,
and at N s the report is written with what finished. The stages: :mod:`benchmarks.device_stages`.

Stages, in this order (each prints its result as soon as it has it):

1. Installing. ``--install`` (refused with ``--smoke`` and ``--budget_s``): ``pip install
   -e .[test]`` and, when ``nvidia-smi`` is on the PATH, ``jax[cuda12]`` within
   pyproject.toml's range. ``--budget_s``: when ``ml_collections``, ``tensorflow_datasets``
   or ``array_record`` is not found, ``pip install --no-index --no-deps --target
   WORKDIR/site-packages .whl/*.whl``; ``.whl/data/*.npz`` serve the HVAE run when the
   variables below are unset (missing: it is skipped). The checkout is never installed: it
   comes first on this process's and its subprocesses' path.
2. The host: CPU model and count, ``uptime`` (load), ``nvidia-smi`` output if present, the
   installed version of each pyproject.toml dependency (``warning:`` when out of its range).
3. The HVAE at the paper's size (``--skip-hvae`` leaves it out): two CLI subprocesses
   (:func:`benchmarks.device_stages.hvae_commands`) train ``configs/hvae.py:
   fashion_mnist_paper_npz`` for ``--train-seconds`` (and/or ``--train-steps``), then
   evaluate the latest checkpoint (likelihood and OOD on ``--eval-max-examples`` per set),
   both with S = ``--eval-samples``, on the shared Fashion-MNIST and MNIST npz files
   (``JAXHYBRID_FASHION_MNIST_NPZ`` / ``JAXHYBRID_MNIST_NPZ`` or the default paths); before
   jax starts here, so they own the accelerator (``--smoke``: beside stages 4–5).
4. jax: ``jax.devices()``, device kind, jax/jaxlib (and CUDA plugin) versions.
5. One train step per family × dtype at the paper's size (GFFN ``configs/gffn.py:cifar10``,
   batch 128; DHM ``configs/dhm.py:cifar10``, two ResNet-18s, batch 400; HVAE
   ``configs/hvae.py:fashion_mnist_paper_npz``, batch 128; ``float32`` and ``bfloat16``),
   built by the trainer's own code on ONE device, fed random images: one warm-up step, then
   ``--repeats`` rounds of ``--steps`` steps; ms/step median (min–max) over rounds; GFLOP/step
   is XLA's count of the compiled step; MFU = GFLOP/step ÷ (median step time × the peak,
   :data:`benchmarks.device_stages.PEAKS`: dense, "fp32" at JAX's DEFAULT matmul precision,
   i.e. TF32 on A100 and later; unknown devices, CPU included: "n/a"). XLA also counts
   elementwise work: MFU slightly flatters the matrix units.
6. The report (``--out``, default ``<workdir>/device_suite.md``; the numbers also as JSON
   beside it): the step table (device, family, dtype, batch, step ms, examples/s,
   GFLOP/step, MFU), the HVAE's training and evaluation, the budget (each stage's estimate
   and seconds) and the device record.

``--smoke``: the same code path, tiny, on CPU: the digits variants of the three families
(batch 8, random 8×8×1 images), 2 rounds of 1 step; the HVAE run on
``configs/hvae.py:digits`` for exactly 4 steps (no wall-clock budget: the step reached does
not depend on the machine's load), evaluated with S = 2 on 64 examples per set, beside the
step timing; XLA without LLVM's optimisations (half the compile time). It installs nothing
and writes into a new temporary directory unless ``--workdir`` is given
(tests/test_device_suite.py runs it).

Time at the paper's size without ``--budget_s`` (120 s of HVAE training, S = 16 on 2,000
examples per set, 5 rounds of 10 steps): about a minute of start-up and compilation, a
minute of evaluation, 2–4 min of step timings (mostly compiling): ≈ 6–8 min on one
H100/H200 (an estimate: not yet run on an accelerator). Exit status 1 (with an ``error:``
line) when the HVAE training or evaluation failed; the report is written either way.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import re
import shlex
import sys
import tempfile
import threading
import time

T0 = time.perf_counter()   # the suite's clock (--budget_s) starts with the process
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)   # measure this checkout, whatever the environment has installed
# no jax and no third-party import here: the HVAE subprocesses come first, and on a device
# machine the carried wheels are installed before anything needs them
from benchmarks import device_stages as stages  # noqa: E402
from benchmarks.device_stages import (  # noqa: E402,F401  (the suite's names, as before)
    DTYPES, FAMILIES, PAPER_HVAE, PAPER_STEPS, PEAKS, SMOKE_HVAE, SMOKE_STEPS, StepSpec,
    budget_overrides, fmt_mfu, hvae_commands, hvae_failure, install, install_commands,
    jax_record, load_line, mfu, parse_step_table, peak_flops, step_table)

# XLA:CPU without LLVM's optimisations: half the compile time of the smoke's steps
SMOKE_XLA_FLAGS = "--xla_backend_optimization_level=0"
# defaults: (paper, smoke); the HVAE's budgets, 0 = none: the paper's run trains for a
# wall-clock budget, the smoke for a fixed number of steps (never for a time)
DEFAULTS = {"train_seconds": (120.0, 0.0), "train_steps": (0, 4), "eval_samples": (16, 2),
            "eval_max_examples": (2000, 64), "repeats": (5, 2), "steps": (10, 1)}


# -- flags ----------------------------------------------------------------------------------
def parse_flags(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="device_suite.py", description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny shapes on CPU: every stage")
    p.add_argument("--install", action="store_true",
                   help="pip install -e .[test] (+ jax[cuda12] when nvidia-smi exists) first")
    p.add_argument("--budget_s", "--budget-s", type=float, default=0.0, help="wall-clock "
                   "budget of the whole suite in s, 0 = none: installs .whl/ when needed, "
                   "trains the HVAE for what the other stages leave, skips what won't fit")
    p.add_argument("--workdir", default="", help="run directory (default runs/device_suite; "
                   "--smoke: a new temporary directory)")
    p.add_argument("--out", default="", help="markdown report (default WORKDIR/device_suite.md)")
    p.add_argument("--families", default=",".join(FAMILIES), help="families whose step is timed")
    p.add_argument("--dtypes", default=",".join(DTYPES), help="compute dtypes of the steps")
    p.add_argument("--skip-hvae", action="store_true", help="no HVAE training and evaluation")
    p.add_argument("--skip-steps", action="store_true", help="no step timing")
    p.add_argument("--train-seconds", type=float, help="HVAE wall-clock training budget, "
                   "0 = none (default 120; smoke: refused, the smoke trains --train-steps)")
    p.add_argument("--train-steps", type=int, help="HVAE step budget (--config.num_steps), "
                   "0 = the config's (default 0; smoke 4)")
    p.add_argument("--eval-samples", type=int, help="S, importance samples of the HVAE "
                   "evaluation (default 16; smoke 2)")
    p.add_argument("--eval-max-examples", type=int, help="examples per evaluated split and "
                   "OOD set (default 2000; smoke 64; 0 = all)")
    p.add_argument("--repeats", type=int, help="timed rounds per step (default 5; smoke 2)")
    p.add_argument("--steps", type=int, help="steps per timed round (default 10; smoke 1)")
    args = p.parse_args(argv)
    check_flags(p, args)
    return args


def _choices(p, flag: str, value: str, valid: tuple) -> tuple:
    chosen = tuple(v.strip() for v in value.split(",") if v.strip())
    bad = [v for v in chosen if v not in valid]
    if bad or not chosen:
        p.error(f"{flag} {value!r}: {'unknown ' + ','.join(bad) if bad else 'empty'}; "
                f"valid choices: {','.join(valid)}")
    return chosen


def check_flags(p: argparse.ArgumentParser, args) -> None:
    """Fill the defaults of the mode; error: lines for bad values."""
    if args.install and args.smoke:
        p.error("--install with --smoke: the smoke installs nothing; drop one of them")
    check_budget_s(p, args)
    args.families = _choices(p, "--families", args.families, FAMILIES)
    args.dtypes = _choices(p, "--dtypes", args.dtypes, DTYPES)
    for key, (paper, smoke) in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, smoke if args.smoke else paper)
    for key in ("eval_samples", "repeats", "steps"):
        if not getattr(args, key) > 0:
            p.error(f"--{key.replace('_', '-')} {getattr(args, key)}: must be > 0")
    for key, zero in (("eval_max_examples", "all"), ("train_seconds", "none"),
                      ("train_steps", "none")):
        if not getattr(args, key) >= 0:
            p.error(f"--{key.replace('_', '-')} {getattr(args, key)}: must be >= 0 (0 = {zero})")
    check_budget(p, args)
    if not args.workdir:
        args.workdir = (tempfile.mkdtemp(prefix="device_suite_") if args.smoke
                        else os.path.join("runs", "device_suite"))
    args.workdir = os.path.abspath(args.workdir)
    args.out = os.path.abspath(args.out or os.path.join(args.workdir, "device_suite.md"))
    missing = not (args.smoke or args.skip_hvae or args.budget_s) and stages.hvae_data_missing()
    if missing:   # --budget_s: checked after the install, a missing file skips the HVAE run
        p.error(f"{missing}; or pass --skip-hvae")


def check_budget_s(p: argparse.ArgumentParser, args) -> None:
    """--budget_s plans the HVAE's training time itself, on the paper's configs only."""
    if not args.budget_s:
        return
    if not args.budget_s > 0:
        p.error(f"--budget_s {args.budget_s:g}: must be > 0 (or left out)")
    for flag, given in (("--smoke", args.smoke), ("--install", args.install),
                        ("--train-seconds", args.train_seconds is not None)):
        if given:
            p.error(f"--budget_s with {flag}: the budget plans the paper-size run, installs "
                    f"from .whl and sets the training time itself; drop one of them")


def check_budget(p: argparse.ArgumentParser, args) -> None:
    """The smoke trains a step budget only (its step count must not depend on the clock);
    a run on the paper's config needs a budget of some kind."""
    if args.smoke and args.train_seconds:
        p.error(f"--train-seconds {args.train_seconds:g} with --smoke: the smoke trains a "
                f"fixed number of steps (--train-steps), not for a time")
    if args.smoke and not args.train_steps:
        p.error("--train-steps 0 with --smoke: the smoke needs a step budget (> 0)")
    if not (args.train_seconds or args.train_steps):
        p.error("--train-seconds 0 and --train-steps 0: the HVAE run needs a budget")


# -- the budget (--budget_s) ----------------------------------------------------------------
# Seconds each fixed stage takes at the paper's size on one H100/H200, in the order they
# run; "hvae" is the HVAE run less its training (start-up, compilation and first steps:
# HVAE_START_S; the evaluation: HVAE_EVAL_S), a step family's is per dtype. Estimates from
# the CPU runs and the step counts, NOT yet measured on a GPU: the report's Budget section
# gives each stage's seconds, to correct them with.
HVAE_START_S, HVAE_EVAL_S = 60.0, 90.0
STAGE_ESTIMATES = (("host", 5.0), ("hvae", HVAE_START_S + HVAE_EVAL_S), ("jax", 20.0),
                   ("steps_gffn", 20.0), ("steps_dhm", 45.0), ("steps_hvae", 20.0),
                   ("report", 5.0))
MIN_TRAIN_S = 30.0   # less HVAE training than this: the HVAE run is skipped
RESERVE_S = 15.0     # kept free for the estimates' misses
ALWAYS = ("host", "report")   # cheap, and the report needs them: never skipped


@dataclasses.dataclass(frozen=True)
class Plan:
    run: tuple             # the stages that run, in order
    skipped: tuple         # ((stage, why), ...)
    train_seconds: float   # the HVAE's training budget; 0 when it does not run


def plan_budget(budget_s: float, estimates, elapsed_s: float = 0.0, reserve_s: float = RESERVE_S,
                min_train_s: float = MIN_TRAIN_S) -> Plan:
    """Which stages run within ``budget_s`` and how long the HVAE trains (no clock read).

    ``estimates``: (stage, seconds) in the order they run; "hvae" needs ``min_train_s``
    of training on top of its estimate, a "steps_*" stage needs "jax". "host" and "report"
    always run, their time set aside first; in order, each other stage runs when it fits in
    what is left of ``budget_s - elapsed_s - reserve_s``, else it is skipped; the HVAE then
    trains ``min_train_s`` plus what no stage took."""
    left = budget_s - elapsed_s - reserve_s - sum(s for n, s in estimates if n in ALWAYS)
    run, skipped = [], []
    for name, seconds in estimates:
        need = seconds + (min_train_s if name == "hvae" else 0.0)
        if name in ALWAYS:
            run.append(name)
        elif name.startswith("steps_") and "jax" not in run:
            skipped.append((name, "the jax stage did not run"))
        elif need <= left:
            run.append(name)
            left -= need
        else:
            skipped.append((name, f"needs ~{need:.0f} s, {max(left, 0.0):.0f} s left"))
    return Plan(tuple(run), tuple(skipped),
                min_train_s + max(left, 0.0) if "hvae" in run else 0.0)


def stage_estimates(flags) -> tuple:
    """:data:`STAGE_ESTIMATES` for the stages these flags ask for (steps × dtypes)."""
    wanted = {"host", "jax", "report"} | ({"hvae"} if not flags.skip_hvae else set()) | (
        set() if flags.skip_steps else {f"steps_{f}" for f in flags.families})
    return tuple((n, s * (len(flags.dtypes) if n.startswith("steps_") else 1))
                 for n, s in STAGE_ESTIMATES if n in wanted)


class Budget:
    """A plan at run time: the clock since :data:`T0`, each stage's share and seconds."""

    def __init__(self, budget_s: float, estimates, plan: Plan, t0: float = T0):
        self.budget_s, self.plan, self.t0 = budget_s, plan, t0
        self.estimates = {n: s + (plan.train_seconds if n == "hvae" else 0.0)
                          for n, s in estimates}
        self.skipped, self.seconds, self.current = dict(plan.skipped), {}, "plan"

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)

    def share(self, name: str) -> float:
        """Seconds ``name`` may take: what is left less the planned stages after it."""
        later = self.plan.run[self.plan.run.index(name) + 1:]
        return self.left() - sum(self.estimates[n] for n in later if n not in self.skipped)

    def may_run(self, name: str) -> bool:
        """True (the stage starts now) when planned and it still fits; else a skip: line."""
        if self.current in self.estimates and self.current not in self.seconds:
            self.done(self.current)   # the stage before ends where this one starts
        if name not in self.plan.run:
            return False
        if name not in ALWAYS and self.estimates[name] > self.share(name):
            self.skipped[name] = (f"needs ~{self.estimates[name]:.0f} s, "
                                  f"{max(self.share(name), 0.0):.0f} s left for it")
            print(f"skip: {name}: {self.skipped[name]}", flush=True)
            return False
        self.current, self.started = name, time.perf_counter()
        return True

    def done(self, name: str) -> None:
        self.seconds[name] = time.perf_counter() - self.started

    def summary(self) -> dict:
        return {"budget_s": self.budget_s, "train_seconds": self.plan.train_seconds,
                "elapsed_s": time.perf_counter() - self.t0, "skipped": self.skipped,
                "stages": {n: {"estimate_s": self.estimates[n], "seconds": self.seconds.get(n)}
                           for n in self.estimates}}


def prepare_budget(flags) -> Budget:
    """--budget_s: install the carried wheels if needed, find the data, plan; print the plan."""
    stages.ensure_packages(os.path.join(flags.workdir, "site-packages"))
    for env, path in stages.use_carried_data().items():
        print(f"data: {env}={path}", flush=True)
    missing = not flags.skip_hvae and stages.hvae_data_missing()
    if missing:
        print(f"skip: hvae: {missing}", flush=True)
        flags.skip_hvae = True
    estimates = stage_estimates(flags)
    plan = plan_budget(flags.budget_s, estimates, time.perf_counter() - T0)
    flags.train_seconds = float(int(plan.train_seconds)) or flags.train_seconds
    budget = Budget(flags.budget_s, estimates, plan)
    if missing:
        budget.skipped["hvae"] = missing
    print(f"budget: {flags.budget_s:g} s, {budget.left():.0f} s left; plan: " + ", ".join(
        f"{n} ~{budget.estimates[n]:.0f} s" for n in plan.run) + (
        f"; the HVAE trains {plan.train_seconds:.0f} s" if "hvae" in plan.run else ""), flush=True)
    for name, why in plan.skipped:
        print(f"skip: {name}: {why}", flush=True)
    if "hvae" not in plan.run:
        flags.skip_hvae = True
    return budget


def hvae_timeouts(budget: Budget | None):
    """The HVAE subprocesses' time limits under ``budget`` (None: no limit)."""
    if budget is None:
        return None
    return lambda stage: budget.share("hvae") - (HVAE_EVAL_S if stage == "train" else 0.0)


def watchdog(budget: Budget, flags, state: dict) -> threading.Timer:
    """At the budget's end: the report with what there is, then exit 1 (never past it)."""
    def expire():
        print(f"error: the budget of {flags.budget_s:g} s ran out during {budget.current}: "
              f"the report holds what finished", file=sys.stderr, flush=True)
        budget.skipped[budget.current] = "stopped: the budget ran out"
        state["record"]["budget"] = budget.summary()
        write_report(flags, state["record"], list(state["rows"]), state["hvae"])
        sys.stdout.flush()
        os._exit(1)   # no waiting for the stage in progress
    timer = threading.Timer(max(budget.left(), 0.0), expire)
    timer.daemon = True
    timer.start()
    return timer


# -- the report -----------------------------------------------------------------------------
def device_section(record: dict) -> list:
    j, h = record.get("jax", {}), record["host"]
    lines = ["## Device", ""]
    if j:
        peaks = ", ".join(f"{d} {p:g}" if p else f"{d} n/a" for d, p in j["peak_tflops"].items())
        lines += [f"- jax {j['jax']}, jaxlib {j['jaxlib']}, CUDA plugin "
                  f"{j['jax_cuda_plugin'] or '—'}; backend {j['backend']}",
                  f"- devices ({j['device_count']}): {', '.join(j['devices'])}",
                  f"- device kind: {j['device_kind']}; peak TFLOP/s used for MFU: {peaks}"]
    lines += [f"- host: {h['cpus']} CPUs ({h['cpu_model']}), {h['platform']}, Python "
              f"{h['python']}", f"- uptime (start): {h['uptime_start']}",
              f"- uptime (end): {h.get('uptime_end', '—')}"]
    if h.get("dependencies"):
        lines.append("- dependencies: " + ", ".join(
            f"{re.split(r'[<>=!~;[ ]', r, maxsplit=1)[0]} {v or 'missing'}"
            for r, v in h["dependencies"].items()))
    if h["nvidia_smi"]:
        lines += ["", "nvidia-smi:", "", "```", h["nvidia_smi"], "```"]
    return lines


def budget_section(b: dict) -> list:
    train = (f"HVAE training planned for {b['train_seconds']:.0f} s" if b["train_seconds"]
             else "no HVAE run")
    lines = ["## Budget", "", f"--budget_s={b['budget_s']:g}: {b['elapsed_s']:.0f} s used; "
             f"{train}.", "",
             "| stage | estimate s | seconds | note |", "|---|---:|---:|---|"]
    for name, s in b["stages"].items():
        took = "—" if s["seconds"] is None else f"{s['seconds']:.0f}"
        lines.append(f"| {name} | {s['estimate_s']:.0f} | {took} | "
                     f"{'skipped: ' + b['skipped'][name] if name in b['skipped'] else ''} |")
    return lines + [f"| {n} | — | — | skipped: {why} |" for n, why in b["skipped"].items()
                    if n not in b["stages"]]


def hvae_section(hvae: dict) -> list:
    lines = ["## HVAE training and evaluation", "",
             f"Run directory: `{hvae.get('run_dir', '—')}`", ""]
    for stage in ("train", "eval"):
        if stage in hvae:
            r = hvae[stage]
            lines.append(f"- {stage} (exit {r['rc']}, {r['seconds']:.0f} s): `{r['command']}`")
    if "trained" in hvae:
        t = hvae["trained"]
        lines.append(f"- trained {t['step']} steps in {t['train_seconds']:.0f} s ({t['stopped']})")
    failure = hvae_failure(hvae) or ("result" not in hvae and "stopped before its evaluation")
    if failure:
        return lines + ["", f"**{failure}**"]
    res = hvae["result"]
    lines += [f"- evaluated {res['checkpoint']} on {res['in_distribution_examples']} test "
              f"examples: L = {res['log_likelihood_nats']:.2f} nats, "
              f"{res['bits_per_dim']:.4f} bits/dim; report `{res['report']}`", "",
              "| OOD set | " + " | ".join(f"AUROC {s}" for s in OOD_SCORES) + " |",
              "|---|" + "---:|" * len(OOD_SCORES)]
    for name, scores in res["ood_auroc"].items():
        cells = [f"{scores[s]:.3f}" if scores.get(s) is not None else "—" for s in OOD_SCORES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


OOD_SCORES = ("L", "-LLR>1", "-LLR>2")




def write_report(flags, record: dict, rows: list, hvae: dict | None) -> None:
    kind = record.get("jax", {}).get("device_kind", "?")
    lines = [f"# Device suite{' (smoke)' if flags.smoke else ''}: {kind}", "",
             f"{datetime.datetime.now().isoformat(timespec='seconds')}; command: "
             f"`{shlex.join(['python', 'benchmarks/device_suite.py', *flags.argv])}`", ""]
    if rows:
        lines += ["## Train steps (one device)", "",
                  f"{flags.repeats} rounds of {flags.steps} step(s) after one warm-up; "
                  f"GFLOP/step from XLA's cost analysis; MFU against the peak of the "
                  f"dtype (n/a: unknown device).", "", step_table(rows, kind), ""]
    if hvae:
        lines += hvae_section(hvae) + [""]
    if record.get("budget"):
        lines += budget_section(record["budget"]) + [""]
    lines += device_section(record)
    os.makedirs(os.path.dirname(flags.out), exist_ok=True)
    with open(flags.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.splitext(flags.out)[0] + ".json", "w") as f:
        json.dump({"device": record, "steps": rows, "hvae": hvae}, f, indent=2, default=str)
    print(f"report written to {flags.out} (and .json)", flush=True)


# -- main -----------------------------------------------------------------------------------
def run_stages(flags, budget: Budget | None, state: dict) -> None:
    """The host, the HVAE run, jax, the steps, in order; ``state`` filled as they end."""
    may_run = budget.may_run if budget else (lambda name: True)
    done = budget.done if budget else (lambda name: None)
    record = state["record"]
    if may_run("host"):
        record["host"] = stages.host_record()
        done("host")
    print(f"host: {record['host']['cpus']} CPUs ({record['host']['cpu_model']}); "
          f"{record['host']['uptime_start']}", flush=True)
    for line in stages.out_of_range(record["host"]["dependencies"]):
        print(f"warning: {line}", flush=True)
    if budget:
        state["watchdog"] = watchdog(budget, flags, state)
    thread = None
    if not flags.skip_hvae and may_run("hvae"):
        state["hvae"] = {}   # filled as it goes: the watchdog's report shows what finished
        thread, _ = stages.start_hvae(flags, hvae_timeouts(budget), state["hvae"])
        if not flags.smoke:
            done("hvae")
    if may_run("jax"):
        record["jax"] = jax_record()
        done("jax")
        print(f"jax {record['jax']['jax']} on {record['jax']['device_kind']} "
              f"({record['jax']['device_count']} device(s))", flush=True)
        if not flags.skip_steps:
            stages.steps_stage(flags, record["jax"]["device_kind"], state["rows"],
                               budget and (lambda f: may_run(f"steps_{f}")))
    if thread is not None:
        thread.join()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    flags = parse_flags(argv)
    flags.argv = argv
    if flags.smoke:   # before jax starts here or in the subprocesses: compile faster
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {SMOKE_XLA_FLAGS}".strip()
    os.makedirs(flags.workdir, exist_ok=True)
    if flags.install:
        install()
    try:
        budget = prepare_budget(flags) if flags.budget_s else None
    except (RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    state = {"record": {"host": {}}, "rows": [], "hvae": None}
    run_stages(flags, budget, state)
    record, hvae = state["record"], state["hvae"]
    record["host"]["uptime_end"] = load_line()
    if budget:
        state["watchdog"].cancel()
        budget.may_run("report")
        record["budget"] = budget.summary()
    write_report(flags, record, state["rows"], hvae)
    failure = hvae and hvae_failure(hvae)
    if failure:
        print(f"error: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
