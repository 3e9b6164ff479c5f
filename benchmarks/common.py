"""The benchmarks' shared harness: argument parsing (``--repeats``, ``--json``, ``--smoke``,
``--config`` with ``--config.KEY=VALUE`` overrides), the printed header (``uptime`` load,
CPU model, jax), interleaved timing summarised as median (min–max), the per-round ratio to
a reference timed in the same run, the MNIST file and the JSON output.

Every script is ``main(argv=None) -> dict`` (its results), so tests/test_benchmarks.py runs
them in-process with ``--smoke``: the real code path on tiny shapes, 1–2 rounds; a smoke's
timings mean nothing. jax is imported inside the few functions that need it, so that
``benchmarks/device_suite.py`` can use this module before jax starts (its subprocesses own
the accelerator).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np
from absl import flags
from ml_collections import config_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_MNIST = os.path.join(REPO, "..", "shared", "data", "mnist.npz")
SMOKE_HELP = ("tiny sizes and 1–2 rounds: runs the real code path quickly (the tests do); "
              "its timings mean nothing")
# --smoke's thesis CNN (config overrides): its compilation, most of a smoke, ~40 % shorter
# than at 2 stages of 2 convs
SMOKE_CNN = {"model.width": 4, "model.hidden": "(8,)", "model.stages": 1,
             "model.convs_per_stage": 1}


# -- arguments -------------------------------------------------------------------------
def parser(doc: str, *, repeats: int, json_flags=("--json",),
           config: str | None = None) -> argparse.ArgumentParser:
    """The flags every benchmark has: ``--repeats``, ``--json`` (or the script's historic
    spelling, e.g. ``--out``), ``--smoke``; with ``config`` (``FILE.py:VARIANT``) also
    ``--config``, whose ``--config.KEY=VALUE`` overrides :func:`parse` applies."""
    p = argparse.ArgumentParser(description=doc.strip().split("\n")[0])
    p.add_argument("--repeats", type=int, default=repeats,
                   help="timed rounds, every configuration once per round (interleaved)")
    p.add_argument(*json_flags, dest="json", default="",
                   help="write the results as JSON to this path")
    p.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    if config:
        p.add_argument("--config", default=os.path.join(REPO, config),
                       help="FILE.py:VARIANT of the measured model and optimizer; "
                            "--config.KEY=VALUE overrides its fields")
    return p


def parse(p: argparse.ArgumentParser, argv=None, smoke: dict | None = None,
          smoke_config: dict | None = None) -> argparse.Namespace:
    """Parse ``argv``; with ``--smoke`` the ``smoke`` values replace the defaults (flags given
    explicitly still win). With a ``--config`` flag, ``args.config`` is the loaded
    ConfigDict with ``smoke_config`` (``{key: text}``, under ``--smoke``), then the
    command line's ``--config.KEY=VALUE`` applied."""
    argv = sys.argv[1:] if argv is None else list(argv)
    is_smoke = "--smoke" in argv
    if is_smoke and smoke:
        p.set_defaults(**smoke)
    has_config = any(a.dest == "config" for a in p._actions)
    args, rest = p.parse_known_args(argv) if has_config else (p.parse_args(argv), [])
    if not has_config:
        return args
    overrides = [f"--config.{k}={v}" for k, v in (smoke_config or {}).items()
                 if is_smoke]
    args.config = load_config(p, args.config, overrides + rest)
    return args


def load_config(p: argparse.ArgumentParser, spec: str, overrides: list):
    """``FILE.py[:VARIANT]``'s config (locked) with ``--config.KEY=VALUE`` ``overrides``,
    parsed by ml_collections' ``config_flags`` as ``jaxhybrid.main`` parses them."""
    values, argv = flags.FlagValues(), ["benchmark", f"--config={spec}", *overrides]
    config_flags.DEFINE_config_file("config", spec, flag_values=values, lock_config=True,
                                    sys_argv=argv)
    try:
        left = values(argv)
    except (flags.Error, ValueError, KeyError, TypeError, AttributeError) as e:
        p.error(f"--config: {e}")
    if len(left) > 1:
        p.error(f"unrecognized arguments: {' '.join(left[1:])}")
    return values.config


def add_step_timing(p: argparse.ArgumentParser, *, batch_sizes: str,
                    block_seconds: float) -> None:
    """The flags of a benchmark timing blocks of train steps per global batch size."""
    p.add_argument("--devices", type=int, default=1, help="devices in the data mesh (CPU: "
                   "fake devices; 1 is the meaningful measurement on a CPU)")
    p.add_argument("--batch_sizes", default=batch_sizes, help="global batch sizes, "
                   "comma-separated")
    p.add_argument("--steps", type=int, default=0, help="steps per timed block (0: chosen per "
                   "batch size so that a block takes about --block_seconds)")
    p.add_argument("--block_seconds", type=float, default=block_seconds,
                   help="target duration of one timed block when --steps=0")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed steps per configuration after compilation")


def csv_ints(text) -> list[int]:
    return [int(x) for x in str(text).split(",") if x.strip()]


# -- the header ------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def header(devices: int = 1) -> dict:
    """Print and return the machine: ``uptime`` (load), CPU model and count, jax, python."""
    import jax
    dev = jax.devices()[0]
    info = {"uptime_start": uptime(), "cpu_model": cpu_model(), "cpus": os.cpu_count(),
            "jax": jax.__version__, "backend": jax.default_backend(),
            "device": f"{dev.platform}:{dev.device_kind}", "devices": jax.device_count(),
            "devices_used": devices, "python": platform.python_version(),
            "machine": platform.machine()}
    print(f"uptime (start): {info['uptime_start']}")
    print(f"CPU: {info['cpu_model']} ({info['cpus']} cores); jax {info['jax']} "
          f"({info['backend']}, device {info['device']}, {devices} of {info['devices']} "
          f"used); python {info['python']} on {info['machine']}")
    return info


def finish(results: dict, path: str = "") -> dict:
    """Record and print the closing ``uptime``; write ``results`` as JSON to ``path``."""
    results.setdefault("machine", {})["uptime_end"] = uptime()
    print(f"uptime (start): {results['machine'].get('uptime_start', '?')}\n"
          f"uptime (end):   {results['machine']['uptime_end']}")
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(results, f, indent=2, default=_jsonable)
        print(f"results written to {path}")
    return results


def _jsonable(x):
    return x.item() if isinstance(x, np.generic) else str(x)


# -- timing ----------------------------------------------------------------------------
def summary(values) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def fmt_range(s: dict, scale: float = 1.0, spec: str = ".1f") -> str:
    """'median (min–max)' of a :func:`summary`, scaled."""
    return (f"{s['median'] * scale:{spec}} ({s['min'] * scale:{spec}}–"
            f"{s['max'] * scale:{spec}})")


def ratio(values, reference) -> dict:
    """:func:`summary` of the per-round ratios values[r] / reference[r] (both timed in the
    same rounds, so the machine's load hits both alike)."""
    return summary([a / b for a, b in zip(values, reference, strict=True)])


def round_robin(items: list, repeats: int, fn, log: bool = False) -> None:
    """``fn(item, round)`` for every item in each of ``repeats`` rounds, the starting item
    rotating each round, so that no item always follows the same one."""
    for r in range(repeats):
        t0 = time.perf_counter()
        for x in items[r % len(items):] + items[:r % len(items)]:
            fn(x, r)
        if log:
            print(f"  round {r + 1}/{repeats}: {time.perf_counter() - t0:.1f} s")


def timed(fn) -> tuple[float, object]:
    """(wall seconds, result) of ``fn()``, blocked on its result."""
    import jax
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - t0, out


def run_steps(setup, n: int) -> tuple[float, float]:
    """Take ``n`` steps of ``setup`` (its ``step``, ``state``, cycled ``batches`` and
    ``cursor`` are advanced) and block: returns (wall seconds, process CPU seconds)."""
    import jax
    c0, t0 = time.process_time(), time.perf_counter()
    state, metrics = setup.state, None
    for _ in range(n):
        state, metrics = setup.step(state, setup.batches[setup.cursor % len(setup.batches)])
        setup.cursor += 1
    jax.block_until_ready((state, metrics))
    setup.state = state
    return time.perf_counter() - t0, time.process_time() - c0


# -- data ------------------------------------------------------------------------------
def resolve_data(config, tmpdir: str, n_train: int = 60000) -> str:
    """Path of the MNIST npz to use, or of a synthetic stand-in of ``n_train`` rows."""
    for path in (config.data.npz_path, SHARED_MNIST):
        if path and os.path.exists(path):
            print(f"data: MNIST npz {os.path.abspath(path)}")
            return os.path.abspath(path)
    rng = np.random.default_rng(0)
    path = os.path.join(tmpdir, "synthetic_mnist.npz")
    np.savez(path, x_train=rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
             y_train=rng.integers(0, 10, n_train).astype(np.uint8),
             x_test=rng.integers(0, 256, (100, 28, 28), dtype=np.uint8),
             y_test=rng.integers(0, 10, 100).astype(np.uint8))
    print(f"data: MNIST npz not found; SYNTHETIC uint8 {n_train}×28×28 ({path})")
    return path


def validation_fraction(config) -> None:
    """A validation count stored as a float (5000.0: the field is a float) is read as a
    fraction by load_splits: pass it as one, of the npz's training rows."""
    val = config.data.validation_size
    if isinstance(val, float) and val >= 1:
        with np.load(config.data.npz_path) as f:
            config.data.validation_size = val / f["y_train"].shape[0]
