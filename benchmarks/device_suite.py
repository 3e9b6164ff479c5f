"""The accelerator suite: one script a session with a lent GPU/TPU runs in a few minutes.

Run from the repository root::

    python benchmarks/device_suite.py --workdir=/tmp/suite --out=$OUT/device_suite.md
    python benchmarks/device_suite.py --install ...     # first: pip install -e .[test]
                                                          # (+ jax[cuda12] where nvidia-smi is)
    python benchmarks/device_suite.py --smoke          # every stage, tiny, CPU, < 1 min

Stages, in this order (each prints as it goes):

1. ``--install`` only (never by default, refused with ``--smoke``): ``pip install -e
   .[test]`` and, when ``nvidia-smi`` is on the PATH, ``jax[cuda12]`` within the jax range
   of pyproject.toml. The device machines reach no package index: prepare the
   environment elsewhere (or carry it) and leave this flag off there.
2. The host: CPU model and count, ``uptime`` (load), ``nvidia-smi`` output if present.
3. The HVAE at the paper's size (``--skip-hvae`` leaves it out): two subprocesses of the
   CLI, train for a wall-clock budget (``--train-seconds``; and/or a step budget,
   ``--train-steps``, which adds ``--config.num_steps=N``), then evaluate the latest
   checkpoint::

       python -m jaxhybrid.main --config=configs/hvae.py:fashion_mnist_paper_npz \\
         --workdir=W/hvae_<time> --config.max_train_seconds=N \\
         --config.model.iwae_samples=S --config.evals.names=
       python -m jaxhybrid.main ... (the same) --mode=eval --checkpoint=latest \\
         --config.evals.names=likelihood,ood --config.evals.max_examples=M \\
         --config.evals.ood_max_examples=M

   The training skips its own end-of-training evaluation (``evals.names=`` empty); both
   commands give the same S (``model.iwae_samples`` is a scoring field, which an
   evaluation may also change: each S gets its own evaluation directory). The data are the shared Fashion-MNIST and MNIST npz
   files (``JAXHYBRID_FASHION_MNIST_NPZ`` / ``JAXHYBRID_MNIST_NPZ`` or the default
   paths): checked before anything runs. Run before jax starts in this process, so the
   subprocesses own the accelerator (a TPU admits one process; a GPU's memory is not
   pre-allocated by this one) and no step timing shares it; only ``--smoke`` (CPU) runs
   them beside stages 4–5, each process on its own core.
4. jax: ``jax.devices()``, device kind, jax/jaxlib (and CUDA plugin) versions.
5. One train step per family × dtype at the paper's size: GFFN ``configs/gffn.py:cifar10``
   (the thesis CNN, batch 128), DHM ``configs/dhm.py:cifar10`` (two ResNet-18s of width
   64, batch 400), HVAE ``configs/hvae.py:fashion_mnist_paper_npz`` (64 channels, batch
   128), each in ``float32`` and ``bfloat16`` (``config.compute_dtype``,
   :mod:`jaxhybrid.precision`). Built and compiled by the trainer's own code on ONE device
   (:func:`benchmarks.xla_floor.build_setup`: ``build_experiment``, ``TrainBatches``,
   ``create_state``, ``make_train_step``), fed from a temporary npz of random uint8
   images of the dataset's shape (nothing is downloaded). One warm-up step, then
   ``--repeats`` rounds of ``--steps`` steps (the dtypes alternate, the start rotating),
   each blocked on (``block_until_ready``); ms/step is median (min–max) over rounds.
   GFLOP/step is XLA's count of the compiled step (``cost_analysis()['flops']``);
   MFU = GFLOP/step ÷ (median step time × the device's peak, :data:`PEAKS`).
6. The report: a markdown table (``--out``, default ``<workdir>/device_suite.md``; the
   numbers also as JSON beside it) with device, family, dtype, batch, step ms median
   (min–max), examples/s, GFLOP/step and MFU, the HVAE's training and evaluation, and
   the device record.

Peaks (:data:`PEAKS`, dense, TFLOP/s, matched on jax's ``device_kind``): H200 / H100 SXM
989 bf16, 495 fp32; H100 PCIe 756 / 378; H100 / H200 NVL 835 / 418; A100 312 / 156; TPU v4 275 /
275; TPU v5e (``TPU v5 lite``) 197 / 197. "fp32" is the rate at which JAX's DEFAULT
matmul precision runs float32 convolutions and matmuls: TF32 tensor cores on A100 and
later, one bf16 pass on TPU (docs.jax.dev, "Matmul precision"); other devices (CPU
included) get MFU "n/a". XLA counts a convolution's or dot's multiply-adds as 2 FLOPs
and also counts elementwise work, so MFU slightly flatters the matrix units.

``--smoke``: the same code path, tiny, on CPU: the digits variants of the three families
(``configs/{gffn,dhm,hvae}.py:digits``, batch 8, random 8×8×1 images), 2 rounds of 1
step; the HVAE run on ``configs/hvae.py:digits`` for exactly 4 steps (``--train-steps``,
``--config.num_steps``; no wall-clock budget, which ``--train-seconds`` would add, so
the step reached does not depend on the machine's speed or load), evaluated with S = 2
on 64 examples per set, runs beside the step timing; XLA compiles
without LLVM's optimisations (``--xla_backend_optimization_level=0``, half the compile
time). It installs nothing and writes into a new temporary directory unless
``--workdir`` is given (tests/test_device_suite.py runs it).

Budget at the paper's size (defaults: 120 s of HVAE training, S = 16 on 2,000 examples
per set, 5 rounds of 10 steps): start-up, compilation and validation add about a minute
to the training, the evaluation (4,000 examples × 3·S passes) a minute, the six step
timings 2–4 min (mostly compiling): ≈ 6–8 min on one H100/H200 (an estimate: not yet
run on an accelerator); ``--skip-hvae`` or
``--families``/``--dtypes`` shorten a rerun. Exit status 1 (with an ``error:`` line) when
the HVAE training or evaluation failed; the table is written either way.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)   # measure this checkout, whatever the environment has installed
from benchmarks.common import cpu_model  # noqa: E402  (no jax: the HVAE subprocesses come first)

FAMILIES = ("gffn", "dhm", "hvae")
DTYPES = ("float32", "bfloat16")
# (substring of jax's device_kind in lower case: the first match wins, so the longer
# names come first), dense peak TFLOP/s in bfloat16 and in float32 at JAX's DEFAULT matmul
# precision (TF32 tensor cores on NVIDIA A100 and later, one bf16 pass on TPU); "h200" also
# matches a GH200, whose GPU is an H100 SXM's peak
PEAKS = (
    ("h200 nvl", 835.5, 417.5),
    ("h200", 989.4, 494.7),
    ("h100 pcie", 756.0, 378.0),
    ("h100 nvl", 835.0, 417.5),
    ("h100", 989.4, 494.7),
    ("a100", 312.0, 156.0),
    ("tpu v4", 275.0, 275.0),
    ("tpu v5 lite", 197.0, 197.0),
    ("tpu v5e", 197.0, 197.0),
)


# -- the families' steps ------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StepSpec:
    """One family's train step: its config, the synthetic images and the overrides."""
    family: str
    config: str                  # "configs/FILE.py:VARIANT"
    image: tuple                 # (height, width, channels) of the random uint8 images
    labels: bool                 # write labels 0..9 (the HVAE is unsupervised)
    overrides: tuple = ()        # ((dotted key, value), ...)


PAPER_STEPS = {
    "gffn": StepSpec("gffn", "configs/gffn.py:cifar10", (32, 32, 3), True),
    "dhm": StepSpec("dhm", "configs/dhm.py:cifar10", (32, 32, 3), True),
    "hvae": StepSpec("hvae", "configs/hvae.py:fashion_mnist_paper_npz", (28, 28, 1), False),
}
SMOKE_STEPS = {
    "gffn": StepSpec("gffn", "configs/gffn.py:digits", (8, 8, 1), True, (("batch_size", 8),)),
    "dhm": StepSpec("dhm", "configs/dhm.py:digits", (8, 8, 1), True, (("batch_size", 8),)),
    "hvae": StepSpec("hvae", "configs/hvae.py:digits", (8, 8, 1), False, (("batch_size", 8),)),
}

# -- the HVAE run (CLI overrides shared by the training and the evaluation) ---------------
PAPER_HVAE = "configs/hvae.py:fashion_mnist_paper_npz"
SMOKE_HVAE = "configs/hvae.py:digits"
SMOKE_HVAE_RUN = ("--config.batch_size=16", "--config.log_every=2",
                  "--config.checkpoint_every=2", "--config.num_devices=1")
SMOKE_HVAE_EVAL = ("--config.eval_batch_size=64",)

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
    if not (args.smoke or args.skip_hvae):
        check_hvae_data(p)


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


def check_hvae_data(p: argparse.ArgumentParser) -> None:
    from jaxhybrid.config_defaults import FASHION_MNIST_NPZ, MNIST_NPZ
    for path, env in ((FASHION_MNIST_NPZ, "JAXHYBRID_FASHION_MNIST_NPZ"),
                      (MNIST_NPZ, "JAXHYBRID_MNIST_NPZ")):
        if not os.path.exists(path):
            p.error(f"the HVAE run needs {path} (set {env}), which is missing; "
                    f"or pass --skip-hvae")


# -- 1. install -----------------------------------------------------------------------------
def jax_requirement() -> str:
    """pyproject.toml's jax requirement, e.g. 'jax>=0.10.2,<0.13'."""
    import tomllib
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    return next(d for d in deps if re.match(r"jax\s*[<>=!~]", d))


def install_commands(gpu: bool) -> list:
    pip = [sys.executable, "-m", "pip", "install"]
    cmds = [pip + ["-e", f"{REPO}[test]"]]
    if gpu:
        cmds.append(pip + [jax_requirement().replace("jax", "jax[cuda12]", 1)])
    return cmds


def install() -> None:
    for cmd in install_commands(gpu=shutil.which("nvidia-smi") is not None):
        print("+", shlex.join(cmd), flush=True)
        subprocess.run(cmd, check=True)


# -- 2. and 4. the device record ------------------------------------------------------------
def _command_output(cmd: list) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return f"{cmd[0]}: no answer within 60 s"
    return (out.stdout + out.stderr).strip()


def load_line() -> str:
    return _command_output(["uptime"]) or "load average: %.2f, %.2f, %.2f" % os.getloadavg()


def host_record() -> dict:
    return {"cpu_model": cpu_model(), "cpus": os.cpu_count(), "uptime_start": load_line(),
            "python": platform.python_version(), "platform": platform.platform(),
            "nvidia_smi": _command_output(["nvidia-smi"])}


def _version(dist: str) -> str | None:
    from importlib import metadata
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def jax_record() -> dict:
    import jax
    devices = jax.devices()
    kind = devices[0].device_kind
    return {"jax": jax.__version__, "jaxlib": _version("jaxlib"),
            "jax_cuda12_plugin": _version("jax-cuda12-plugin"), "backend": jax.default_backend(),
            "devices": [str(d) for d in devices], "device_count": len(devices),
            "device_kind": kind, "platform": devices[0].platform,
            "peak_tflops": {d: peak_flops(kind, d) and peak_flops(kind, d) / 1e12
                            for d in DTYPES}}


# -- MFU ------------------------------------------------------------------------------------
def peak_flops(device_kind: str, dtype: str) -> float | None:
    """Dense peak FLOP/s of ``device_kind`` in ``dtype``; None when unknown (CPU too)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: valid choices: {', '.join(DTYPES)}")
    kind = device_kind.lower()
    for pattern, bf16, fp32 in PEAKS:
        if pattern in kind:
            return (bf16 if dtype == "bfloat16" else fp32) * 1e12
    return None


def mfu(flops: float, seconds: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: ``flops`` done in ``seconds`` over the ``peak`` FLOP/s;
    None when the peak, the FLOP count or the time is unknown or not positive."""
    if peak is None or not peak > 0 or not seconds > 0 or not flops > 0:
        return None
    return flops / (seconds * peak)


def fmt_mfu(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


# -- 3. the HVAE run ------------------------------------------------------------------------
def budget_overrides(flags) -> list:
    """The HVAE run's budgets as CLI overrides: a step budget (``num_steps``) and/or a
    wall-clock one (``max_train_seconds``); each left out when 0."""
    out = []
    if flags.train_seconds:
        out.append(f"--config.max_train_seconds={flags.train_seconds:g}")
    if flags.train_steps:
        out.append(f"--config.num_steps={flags.train_steps}")
    return out


def hvae_commands(flags, run_dir: str) -> tuple[list, list]:
    """(train, eval) command lines of the CLI; the eval repeats the run's overrides."""
    config = SMOKE_HVAE if flags.smoke else PAPER_HVAE
    run = [sys.executable, "-m", "jaxhybrid.main", f"--config={config}", f"--workdir={run_dir}",
           *budget_overrides(flags), f"--config.model.iwae_samples={flags.eval_samples}",
           *(SMOKE_HVAE_RUN if flags.smoke else ())]
    train = [*run, "--config.evals.names="]
    evaluate = [*run, "--mode=eval", "--checkpoint=latest", "--config.evals.names=likelihood,ood",
                f"--config.evals.max_examples={flags.eval_max_examples}",
                f"--config.evals.ood_max_examples={flags.eval_max_examples}",
                *(SMOKE_HVAE_EVAL if flags.smoke else ())]
    return train, evaluate


def run_logged(cmd: list, log_path: str) -> dict:
    """Run ``cmd`` from the repository root, echoing and logging its output; -> {rc,
    seconds, command, log, eval_dir (from the CLI's 'evaluated ...: DIR/report.md')}."""
    print("+", shlex.join(["python", *cmd[1:]]), flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (REPO, os.environ.get("PYTHONPATH")) if p)}
    t0, eval_dir = time.perf_counter(), None
    with open(log_path, "w") as log, subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True) as proc:
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
            found = re.match(r"^evaluated .*?: (\S+)/report\.md$", line.strip())
            eval_dir = found.group(1) if found else eval_dir
    return {"command": shlex.join(["python", *cmd[1:]]), "rc": proc.returncode,
            "seconds": time.perf_counter() - t0, "log": log_path, "eval_dir": eval_dir}


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def eval_summary(eval_dir: str) -> dict:
    """The headline numbers of an HVAE evaluation's metrics.json."""
    m = read_json(os.path.join(eval_dir, "metrics.json"))
    lik = m.get("likelihood", {})
    ood = m.get("ood", {})
    sets = {name: {score: v.get("auroc") for score, v in s.get("scores", {}).items()}
            for name, s in ood.get("sets", {}).items()}
    return {"checkpoint": m.get("checkpoint"), "log_likelihood_nats":
            lik.get("log_likelihood_nats"), "bits_per_dim": lik.get("bits_per_dim"),
            "in_distribution_examples": ood.get("in_distribution", {}).get("num_examples"),
            "ood_auroc": sets, "report": os.path.join(eval_dir, "report.md")}


def hvae_stage(flags, out: dict) -> None:
    """Train for the budget (steps and/or seconds), then evaluate the latest checkpoint
    (two CLI subprocesses); ``out`` is filled as it goes (what ran, how long, the
    evaluation's numbers)."""
    out["run_dir"] = run_dir = os.path.join(flags.workdir,
                                            "hvae_" + time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(run_dir)
    train_cmd, eval_cmd = hvae_commands(flags, run_dir)
    out["train"] = run_logged(train_cmd, run_dir + ".train.log")
    if out["train"]["rc"]:
        return
    final = read_json(os.path.join(run_dir, "final_metrics.json"))
    out["trained"] = {k: final.get(k) for k in ("step", "stopped", "train_seconds")}
    out["eval"] = run_logged(eval_cmd, run_dir + ".eval.log")
    if out["eval"]["rc"] == 0 and out["eval"]["eval_dir"]:
        out["result"] = eval_summary(out["eval"]["eval_dir"])


def start_hvae(flags) -> tuple:
    """Start :func:`hvae_stage` in a thread -> (thread, its result dict, filled at the end).
    At the paper's size the thread is joined at once: the runs own the accelerator before
    jax starts here, and no step timing shares it; ``--smoke`` (CPU) lets it run beside
    the step timing, each process on its own core."""
    result = {}

    def target():
        try:
            hvae_stage(flags, result)
        except Exception as e:   # noqa: BLE001 -- reported as the stage's failure
            result["error"] = f"{type(e).__name__}: {e}"

    thread = threading.Thread(target=target, name="hvae", daemon=True)
    thread.start()
    if not flags.smoke:
        thread.join()
    return thread, result


def hvae_failure(hvae: dict) -> str | None:
    """What went wrong in the HVAE stage, or None."""
    if "error" in hvae:
        return f"HVAE stage failed: {hvae['error']}"
    for stage in ("train", "eval"):
        run = hvae.get(stage)
        if run and run["rc"]:
            return f"HVAE {stage} failed (exit {run['rc']}); log: {run['log']}"
        if stage == "eval" and run and not hvae.get("result"):
            return f"HVAE eval printed no 'evaluated ...: DIR/report.md' line; log: {run['log']}"
    return None


# -- 5. the train steps ---------------------------------------------------------------------
def synthetic_npz(tmpdir: str, spec: StepSpec, n_train: int) -> str:
    """Random uint8 images of ``spec.image`` (squeezed to 2-D when one channel), labels
    0..9 with every class present when ``spec.labels``."""
    import numpy as np
    rng = np.random.default_rng(0)
    shape = spec.image[:2] if spec.image[2] == 1 else spec.image
    arrays = {"x_train": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
              "x_test": rng.integers(0, 256, (10, *shape), dtype=np.uint8)}
    if spec.labels:
        arrays["y_train"] = rng.permutation(np.arange(n_train) % 10).astype(np.uint8)
        arrays["y_test"] = np.arange(10, dtype=np.uint8)
    path = os.path.join(tmpdir, f"{spec.family}.npz")
    np.savez(path, **arrays)
    return path


def step_config(spec: StepSpec, npz_path: str, dtype: str):
    """``spec.config`` with its overrides, on the synthetic npz, one device, ``dtype``."""
    from jaxhybrid.tools.overrides import apply_overrides
    file, variant = spec.config.split(":")
    module = importlib.import_module(file.removesuffix(".py").replace("/", "."))
    c = apply_overrides(module.get_config(variant), dict(spec.overrides))
    c.data.source, c.data.name, c.data.npz_path = "npz", "", npz_path
    c.data.validation_size = 0.0
    c.evals.ood_sets = "uniform_noise"   # not evaluated; a set that needs no file
    c.num_devices = 1
    c.compute_dtype = dtype
    return c


def build_steps(spec: StepSpec, dtypes, tmpdir: str) -> list:
    """One compiled step (:class:`benchmarks.xla_floor.Setup`) per dtype, warmed up."""
    from benchmarks.common import run_steps
    from benchmarks.xla_floor import build_setup
    batch = step_config(spec, "", dtypes[0]).batch_size
    npz = synthetic_npz(tmpdir, spec, max(4 * batch, 20))
    setups = []
    for dtype in dtypes:
        s = build_setup(step_config(spec, npz, dtype), setups[0].state if setups else None, {})
        s.batch = batch
        run_steps(s, 1)
        print(f"  {spec.family} {dtype:<9s} compiled in {s.compile_s:6.1f} s; XLA "
              f"{s.flops / 1e9:10.3f} GFLOP/step; {s.n_params:,} parameters", flush=True)
        setups.append(s)
    return setups


def time_steps(setups, repeats: int, steps: int) -> None:
    """``repeats`` rounds of ``steps`` steps of every setup (the start rotating)."""
    from benchmarks.common import run_steps
    for r in range(repeats):
        for s in setups[r % len(setups):] + setups[:r % len(setups)]:
            s.times.append(run_steps(s, steps)[0] / steps)


def step_row(spec: StepSpec, s, device_kind: str) -> dict:
    from benchmarks.common import summary
    t = summary(s.times)
    return {"family": spec.family, "config": spec.config, "dtype": s.dtype, "batch": s.batch,
            "step_s": t, "step_s_all": s.times, "examples_per_s": s.batch / t["median"],
            "gflop_per_step": s.flops / 1e9, "compile_s": s.compile_s, "parameters": s.n_params,
            "mfu": mfu(s.flops, t["median"], peak_flops(device_kind, s.dtype))}


def steps_stage(flags, device_kind: str) -> list:
    specs = SMOKE_STEPS if flags.smoke else PAPER_STEPS
    rows = []
    with tempfile.TemporaryDirectory(prefix="device_suite_npz_") as tmpdir:
        for family in flags.families:
            spec = specs[family]
            print(f"step: {family} ({spec.config}, {', '.join(flags.dtypes)})", flush=True)
            setups = build_steps(spec, flags.dtypes, tmpdir)
            time_steps(setups, flags.repeats, flags.steps)
            rows += [step_row(spec, s, device_kind) for s in setups]
            print(step_table(rows[-len(setups):], device_kind), flush=True)
            del setups
    return rows


# -- 6. the report --------------------------------------------------------------------------
TABLE_HEADER = ("| device | family | dtype | batch | step ms median (min–max) | examples/s | "
                "GFLOP/step | MFU |\n|---|---|---|---:|---:|---:|---:|---:|")


def step_table(rows: list, device_kind: str) -> str:
    from benchmarks.common import fmt_range
    lines = [TABLE_HEADER]
    for r in rows:
        lines.append(f"| {device_kind} | {r['family']} | {r['dtype']} | {r['batch']} | "
                     f"{fmt_range(r['step_s'], 1e3, '.2f')} | {r['examples_per_s']:.1f} | "
                     f"{r['gflop_per_step']:.3f} | {fmt_mfu(r['mfu'])} |")
    return "\n".join(lines)


def parse_step_table(text: str) -> list:
    """The rows of :func:`step_table` in ``text``, as dicts of the header's columns."""
    names = [c.strip() for c in TABLE_HEADER.split("\n")[0].strip("|").split("|")]
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == len(names) and cells[0] != names[0]:
            rows.append(dict(zip(names, cells)))
    return rows


def device_section(record: dict) -> list:
    j, h = record.get("jax", {}), record["host"]
    lines = ["## Device", ""]
    if j:
        peaks = ", ".join(f"{d} {p:g}" if p else f"{d} n/a" for d, p in j["peak_tflops"].items())
        lines += [f"- jax {j['jax']}, jaxlib {j['jaxlib']}, jax-cuda12-plugin "
                  f"{j['jax_cuda12_plugin'] or '—'}; backend {j['backend']}",
                  f"- devices ({j['device_count']}): {', '.join(j['devices'])}",
                  f"- device kind: {j['device_kind']}; peak TFLOP/s used for MFU: {peaks}"]
    lines += [f"- host: {h['cpus']} CPUs ({h['cpu_model']}), {h['platform']}, Python "
              f"{h['python']}", f"- uptime (start): {h['uptime_start']}",
              f"- uptime (end): {h.get('uptime_end', '—')}"]
    if h["nvidia_smi"]:
        lines += ["", "nvidia-smi:", "", "```", h["nvidia_smi"], "```"]
    return lines


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
    failure = hvae_failure(hvae)
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
    lines += device_section(record)
    os.makedirs(os.path.dirname(flags.out), exist_ok=True)
    with open(flags.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.splitext(flags.out)[0] + ".json", "w") as f:
        json.dump({"device": record, "steps": rows, "hvae": hvae}, f, indent=2, default=str)
    print(f"report written to {flags.out} (and .json)")


# -- main -----------------------------------------------------------------------------------
def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    flags = parse_flags(argv)
    flags.argv = argv
    if flags.smoke:   # before jax starts here or in the subprocesses: compile faster
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {SMOKE_XLA_FLAGS}".strip()
    os.makedirs(flags.workdir, exist_ok=True)
    if flags.install:
        install()
    record = {"host": host_record()}
    print(f"host: {record['host']['cpus']} CPUs ({record['host']['cpu_model']}); "
          f"{record['host']['uptime_start']}", flush=True)
    thread, hvae = (None, None) if flags.skip_hvae else start_hvae(flags)
    record["jax"] = jax_record()
    print(f"jax {record['jax']['jax']} on {record['jax']['device_kind']} "
          f"({record['jax']['device_count']} device(s))", flush=True)
    rows = [] if flags.skip_steps else steps_stage(flags, record["jax"]["device_kind"])
    if thread is not None:
        thread.join()
    record["host"]["uptime_end"] = load_line()
    write_report(flags, record, rows, hvae)
    failure = hvae and hvae_failure(hvae)
    if failure:
        print(f"error: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
