"""Helpers shared by the benchmark scripts: summaries, the MNIST file, the machine load."""
from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_MNIST = os.path.join(REPO, "..", "shared", "data", "mnist.npz")


def summary(values) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def fmt_range(s: dict, scale: float = 1.0, spec: str = ".1f") -> str:
    """'median (min–max)' of a :func:`summary`, scaled."""
    return (f"{s['median'] * scale:{spec}} ({s['min'] * scale:{spec}}–"
            f"{s['max'] * scale:{spec}})")


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


def resolve_data(config, tmpdir: str) -> str:
    """Path of the MNIST npz to use, or of a synthetic stand-in; prints which."""
    import numpy as np
    for path in (config.data.npz_path, SHARED_MNIST):
        if path and os.path.exists(path):
            print(f"data: MNIST npz {os.path.abspath(path)}")
            return os.path.abspath(path)
    rng = np.random.default_rng(0)
    path = os.path.join(tmpdir, "synthetic_mnist.npz")
    np.savez(path, x_train=rng.integers(0, 256, (60000, 28, 28), dtype=np.uint8),
             y_train=rng.integers(0, 10, 60000).astype(np.uint8),
             x_test=rng.integers(0, 256, (10000, 28, 28), dtype=np.uint8),
             y_test=rng.integers(0, 10, 10000).astype(np.uint8))
    print(f"data: MNIST npz not found; SYNTHETIC uint8 28x28 arrays of MNIST's size ({path})")
    return path


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
