"""The stages of benchmarks/device_suite.py (which holds the flags, the budget, the report and
the order): installing, the device record, MFU, the HVAE run and the train steps. Nothing
here imports jax or a third-party package at import time: the HVAE subprocesses start before
jax does here, and on a device machine :func:`ensure_packages` installs the carried wheels."""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FAMILIES = ("gffn", "dhm", "hvae")
DTYPES = ("float32", "bfloat16")
# (substring of jax's device_kind in lower case: the first match wins, so the longer
# names come first), dense peak TFLOP/s in bfloat16 and in float32 at JAX's DEFAULT matmul
# precision (TF32 tensor cores on NVIDIA A100 and later, one bf16 pass on TPU); "h200" also
# matches a GH200, whose GPU is an H100 SXM's peak
PEAKS = (("h200 nvl", 835.5, 417.5), ("h200", 989.4, 494.7), ("h100 pcie", 756.0, 378.0),
         ("h100 nvl", 835.0, 417.5), ("h100", 989.4, 494.7), ("a100", 312.0, 156.0),
         ("tpu v4", 275.0, 275.0), ("tpu v5 lite", 197.0, 197.0), ("tpu v5e", 197.0, 197.0))


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

# -- install ------------------------------------------------------------------------------
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


# what a device image may lack (launch/device_wheels.sh carries them to .whl/): the modules,
# looked up and never imported (tensorflow_datasets imports slowly), and the HVAE run's data
CARRIED_MODULES = ("ml_collections", "tensorflow_datasets", "array_record")
CARRIED_DATA = (("fashion_mnist.npz", "JAXHYBRID_FASHION_MNIST_NPZ"),
                ("mnist.npz", "JAXHYBRID_MNIST_NPZ"))
WHEEL_DIR = os.path.join(REPO, ".whl")


def missing_modules(modules=CARRIED_MODULES) -> list:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def wheel_install_command(wheel_dir: str, target: str) -> list:
    """pip installs every wheel of ``wheel_dir`` into ``target``: no index, no dependencies
    resolved (launch/device_wheels.sh carries exactly the missing ones, one version each)."""
    wheels = sorted(os.path.join(wheel_dir, f) for f in os.listdir(wheel_dir) if f.endswith(".whl"))
    return [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
            "--no-cache-dir", "--upgrade", "--find-links", wheel_dir, "--target", target, *wheels]


def ensure_packages(target: str, wheel_dir: str = WHEEL_DIR, modules=CARRIED_MODULES,
                    run=subprocess.run) -> list | None:
    """When one of ``modules`` is missing, install the carried wheels into ``target``, which
    then comes after the checkout on this process's path and first on its subprocesses'
    PYTHONPATH; -> the pip command, or None (all found: nothing installed). RuntimeError
    when they are missing and cannot be installed."""
    missing = missing_modules(modules)
    if not missing:
        print(f"install: skipped ({', '.join(modules)} found)", flush=True)
        return None
    if not os.path.isdir(wheel_dir) or not any(f.endswith(".whl") for f in os.listdir(wheel_dir)):
        raise RuntimeError(f"{', '.join(missing)} missing and no wheels in {wheel_dir}: run "
                           f"`bash launch/device_wheels.sh` where pip reaches the index")
    cmd = wheel_install_command(wheel_dir, target)
    print(f"install: {', '.join(missing)} missing: pip install --target {target} "
          f"{len(cmd) - cmd.index(target) - 1} wheels of {wheel_dir}", flush=True)
    try:
        run(cmd, check=True)
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"installing the wheels of {wheel_dir} failed (exit {e.returncode})")
    sys.path.insert(1, target)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (target, os.environ.get("PYTHONPATH"))
                                               if p)
    importlib.invalidate_caches()
    if missing_modules(modules):
        raise RuntimeError(f"{', '.join(missing_modules(modules))} still missing after "
                           f"installing {wheel_dir}")
    return cmd


def use_carried_data(wheel_dir: str = WHEEL_DIR) -> dict:
    """Each unset ``JAXHYBRID_*_NPZ`` set to its copy in ``wheel_dir``/data, if there; -> those."""
    found = {}
    for name, env in CARRIED_DATA:
        path = os.path.join(wheel_dir, "data", name)
        if env not in os.environ and os.path.isfile(path):
            os.environ[env] = found[env] = path
    return found


def hvae_data_missing() -> str | None:
    """Why the paper's HVAE run cannot start (a missing npz file), or None."""
    from jaxhybrid.config_defaults import FASHION_MNIST_NPZ, MNIST_NPZ
    for path, (_, env) in zip((FASHION_MNIST_NPZ, MNIST_NPZ), CARRIED_DATA):
        if not os.path.exists(path):
            return f"the HVAE run needs {path} (set {env}), which is missing"
    return None


# -- the device record --------------------------------------------------------------------
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
    from benchmarks.common import cpu_model   # numpy, absl, ml_collections: after the install
    return {"cpu_model": cpu_model(), "cpus": os.cpu_count(), "uptime_start": load_line(),
            "python": platform.python_version(), "platform": platform.platform(),
            "nvidia_smi": _command_output(["nvidia-smi"]), "dependencies": dependencies()}


def dependencies() -> dict:
    """{pyproject.toml's requirement: the installed version, None when missing}."""
    import tomllib
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    return {d: _version(re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0]) for d in deps}


def out_of_range(deps: dict) -> list:
    """'NAME VERSION, pyproject: SPEC' for each dependency missing or outside its range."""
    from packaging.requirements import Requirement
    reqs = {Requirement(r): v for r, v in deps.items()}
    return [f"{r.name} {v or 'missing'}, pyproject: {r.specifier}" for r, v in reqs.items()
            if v is None or not r.specifier.contains(v, prereleases=True)]


def _version(dist: str) -> str | None:
    from importlib import metadata
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cuda_plugin() -> str | None:
    """'jax-cuda13-plugin 0.11.2' (or cuda12's), None without one."""
    return next((f"{d} {_version(d)}" for d in ("jax-cuda13-plugin", "jax-cuda12-plugin")
                 if _version(d)), None)


def jax_record() -> dict:
    import jax
    devices = jax.devices()
    kind = devices[0].device_kind
    return {"jax": jax.__version__, "jaxlib": _version("jaxlib"),
            "jax_cuda_plugin": cuda_plugin(), "backend": jax.default_backend(),
            "devices": [str(d) for d in devices], "device_count": len(devices),
            "device_kind": kind, "platform": devices[0].platform,
            "peak_tflops": {d: peak_flops(kind, d) and peak_flops(kind, d) / 1e12
                            for d in DTYPES}}


# -- MFU ----------------------------------------------------------------------------------
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


# -- the HVAE run -------------------------------------------------------------------------
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


KILL_AFTER_S = 15.0   # after a timeout's SIGTERM (the CLI stops cleanly), SIGKILL


def _stop_at(proc, timeout: float | None, fired: list):
    """A timer that sends ``proc`` SIGTERM after ``timeout`` s, SIGKILL ``KILL_AFTER_S`` later."""
    def stop():
        fired.append(True)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(KILL_AFTER_S)
        except subprocess.TimeoutExpired:
            proc.kill()
    if timeout is None:
        return None
    timer = threading.Timer(max(timeout, 0.0), stop)
    timer.daemon = True
    timer.start()
    return timer


def run_logged(cmd: list, log_path: str, timeout: float | None = None) -> dict:
    """Run ``cmd`` from the repository root, echoing and logging its output, stopped after
    ``timeout`` s (SIGTERM, then SIGKILL) when one is given; -> {rc, seconds, command, log,
    timed_out, eval_dir (from the CLI's 'evaluated ...: DIR/report.md')}."""
    print("+", shlex.join(["python", *cmd[1:]]), flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (REPO, os.environ.get("PYTHONPATH")) if p)}
    t0, eval_dir, fired = time.perf_counter(), None, []
    with open(log_path, "w") as log, subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True) as proc:
        timer = _stop_at(proc, timeout, fired)
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            log.write(line)
            found = re.match(r"^evaluated .*?: (\S+)/report\.md$", line.strip())
            eval_dir = found.group(1) if found else eval_dir
    if timer is not None:
        timer.cancel()
    return {"command": shlex.join(["python", *cmd[1:]]), "rc": proc.returncode,
            "seconds": time.perf_counter() - t0, "log": log_path, "eval_dir": eval_dir,
            "timed_out": bool(fired)}


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


def hvae_stage(flags, out: dict, timeout_for=None) -> None:
    """Train for the budget (steps and/or seconds), then evaluate the latest checkpoint
    (two CLI subprocesses); ``out`` is filled as it goes (what ran, how long, the
    evaluation's numbers), each result printed as soon as it is known. ``timeout_for``
    ("train" or "eval" -> seconds or None) bounds each subprocess (``--budget_s``)."""
    timeout_for = timeout_for or (lambda stage: None)
    out["run_dir"] = run_dir = os.path.join(flags.workdir,
                                            "hvae_" + time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(run_dir)
    train_cmd, eval_cmd = hvae_commands(flags, run_dir)
    out["train"] = run_logged(train_cmd, run_dir + ".train.log", timeout_for("train"))
    if out["train"]["rc"]:
        return
    final = read_json(os.path.join(run_dir, "final_metrics.json"))
    out["trained"] = t = {k: final.get(k) for k in ("step", "stopped", "train_seconds")}
    print(f"hvae train: {t['step']} steps in {t['train_seconds']:.0f} s ({t['stopped']}); "
          f"{out['train']['seconds']:.0f} s in all", flush=True)
    out["eval"] = run_logged(eval_cmd, run_dir + ".eval.log", timeout_for("eval"))
    if out["eval"]["rc"] == 0 and out["eval"]["eval_dir"]:
        out["result"] = r = eval_summary(out["eval"]["eval_dir"])
        print(f"hvae eval: L = {r['log_likelihood_nats']:.2f} nats, {r['bits_per_dim']:.4f} "
              f"bits/dim on {r['in_distribution_examples']} examples; OOD AUROC "
              f"{json.dumps(r['ood_auroc'])}; {out['eval']['seconds']:.0f} s", flush=True)


def start_hvae(flags, timeout_for=None, result: dict | None = None) -> tuple:
    """Start :func:`hvae_stage` in a thread -> (thread, its result dict, filled at the end).
    At the paper's size the thread is joined at once: the runs own the accelerator before
    jax starts here, and no step timing shares it; ``--smoke`` (CPU) lets it run beside
    the step timing, each process on its own core."""
    result = {} if result is None else result

    def target():
        try:
            hvae_stage(flags, result, timeout_for)
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
            why = ", stopped at its time limit" if run.get("timed_out") else ""
            return f"HVAE {stage} failed (exit {run['rc']}{why}); log: {run['log']}"
        if stage == "eval" and run and not hvae.get("result"):
            return f"HVAE eval printed no 'evaluated ...: DIR/report.md' line; log: {run['log']}"
    return None


# -- the train steps ----------------------------------------------------------------------
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


def steps_stage(flags, device_kind: str, rows: list | None = None, may_run=None) -> list:
    """Time each family's step in each dtype; ``rows`` (a list, filled as each family ends)
    -> rows. ``may_run(family)`` -> False skips a family (``--budget_s``: it would not fit)."""
    specs = SMOKE_STEPS if flags.smoke else PAPER_STEPS
    rows = [] if rows is None else rows
    with tempfile.TemporaryDirectory(prefix="device_suite_npz_") as tmpdir:
        for family in flags.families:
            if may_run is not None and not may_run(family):
                continue
            spec = specs[family]
            print(f"step: {family} ({spec.config}, {', '.join(flags.dtypes)})", flush=True)
            setups = build_steps(spec, flags.dtypes, tmpdir)
            time_steps(setups, flags.repeats, flags.steps)
            rows += [step_row(spec, s, device_kind) for s in setups]
            print(step_table(rows[-len(setups):], device_kind), flush=True)
            del setups
    return rows


# -- the step table -----------------------------------------------------------------------
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

