"""Two hosts simulated on one machine: 2 processes × 4 CPU devices, gloo over loopback.

The processes are started through the CLI with the explicit start-up
(``--coordinator_address=127.0.0.1:PORT --num_processes=2 --process_id=I``), in one
process group, with hard time limits; when one process dies the other is killed at
once (instead of waiting in a collective until JAX's heartbeat gives up). The runs:

- ``straight``: 2 processes train to the end. Process 1's clock runs 1000× fast, so it
  alone believes the wall-clock budget (``max_train_seconds``, 20 minutes: process 0's real
  clock never reaches it within the launches' limit) is spent from the first step: the
  run must neither hang nor stop early (process 0 decides and broadcasts).
- ``killed``/``resumed``: the same run SIGKILLed in both processes once checkpoint 8 has
  been saved, then resumed. The processes pause right after that save
  (tests/save_gate.py) until the kill lands, so no later checkpoint is started, however
  slowly the monitor thread runs on a loaded machine.
- ``eval``: ``--mode=eval`` of the straight run's workdir, in 2 processes.
- one process in pytest (8 devices): the same config and seed, in a relative
  ``epath.Path`` workdir.

Who writes which file is recorded per process by a Python audit hook (open for
writing, mkdir, rename, remove), installed before jaxhybrid starts
(``JAXHYBRID_TEST_WRITE_LOG``). It sees every write made from Python (jaxhybrid,
matplotlib, orbax's metadata); the array shards that orbax writes from C++
(tensorstore) are per process by orbax's design (``ocdbt.process_<i>/``,
``array_metadatas/process_<i>``) and are the only thing process 1 may write.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest
from etils import epath

from configs import gffn
from jaxhybrid.checkpointing import Checkpointer, run_path
from jaxhybrid.data.loading import digits_arrays
from jaxhybrid.evaluators import suite
from tests import save_gate
from tests.helpers import REPO, apply_overrides, restore_params

CONFIG = "configs/gffn.py:smoke"
# digits, read from an npz that the fixture writes: the same arrays without importing
# scikit-learn in every process (about 1.2 s each on these 2-core machines).
OVERRIDES = {"model.width": 4, "num_steps": 12, "checkpoint_every": 4, "log_every": 2,
             "evals.names": "classification,calibration", "max_train_seconds": 1200.0,
             "data.source": "npz"}
STEPS = 12
LIMIT_S = 900          # safety limit per 2-process launch (each takes 15-30 s on 2 idle
                       # cores; several overlap, and other work may load the machine 4-8×)

# Runs jaxhybrid.main after installing the write log (a Python audit hook), for the
# wall-clock test a fast clock, and for the killed run the pause after a save.
BOOT = r"""
import os, sys
log = os.environ.get("JAXHYBRID_TEST_WRITE_LOG")
if log:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    W = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    EVENTS = {"os.mkdir": 1, "os.rename": 2, "os.remove": 1, "os.rmdir": 1, "os.link": 2,
              "os.symlink": 2, "os.truncate": 1, "shutil.rmtree": 1, "shutil.copyfile": 2,
              "shutil.move": 2}
    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            if not ((isinstance(mode, str) and any(c in mode for c in "wax+"))
                    or (isinstance(flags, int) and flags & W)):
                return
            paths = [path]
        elif event in EVENTS:
            paths = args[:EVENTS[event]]
        else:
            return
        for p in paths:
            if isinstance(p, (str, bytes, os.PathLike)):
                p = os.path.abspath(os.fsdecode(p))
                os.write(fd, f"{event}\t{p}\n".encode())
    sys.addaudithook(hook)
speedup = float(os.environ.get("JAXHYBRID_TEST_CLOCK_SPEEDUP", "0") or 0)
if speedup:
    import time
    real, t0 = time.time, time.time()
    time.time = lambda: t0 + (real() - t0) * speedup
from tests import save_gate
save_gate.install()
import runpy
sys.argv[0] = "jaxhybrid.main"
runpy.run_module("jaxhybrid.main", run_name="__main__", alter_sys=True)
"""


STARTUP_VARS = ("JAXHYBRID_DISTRIBUTED", "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES",
                "JAX_PROCESS_ID")


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in STARTUP_VARS}
    return dict(env, JAX_PLATFORMS="cpu", PYTHONPATH=REPO, **extra)


def _cli(args: list[str], env_extra: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    env = _env(**env_extra)
    return subprocess.run([sys.executable, "-m", "jaxhybrid.main", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TwoProcesses:
    """``python -m jaxhybrid.main ARGS`` as processes 0 and 1 of a 2-process run.

    Both in one new process group; a monitor thread kills the group when a process
    fails while the other runs, when ``kill_at`` appears in process 0's output (SIGKILL,
    as a crash would), or after ``LIMIT_S`` seconds. ``env`` goes to both processes,
    ``env1`` to process 1 only.
    """

    def __init__(self, name: str, args: list[str], *, tmp, cache_dir: str,
                 kill_at: str | None = None, env: dict | None = None,
                 env1: dict | None = None):
        self.name, self.kill_at, self.killed = name, kill_at, False
        port = _free_port()
        self.logs = [tmp / f"{name}_{i}.out" for i in (0, 1)]
        self.writes = [tmp / f"{name}_{i}.writes" for i in (0, 1)]
        base = _env(XLA_FLAGS="--xla_force_host_platform_device_count=4",
                    JAXHYBRID_DISTRIBUTED_TIMEOUT="300", JAX_COMPILATION_CACHE_DIR=cache_dir,
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", **(env or {}))
        self.procs: list[subprocess.Popen] = []
        self.pgid: int | None = None
        try:
            for i in (0, 1):
                env = dict(base, JAXHYBRID_TEST_WRITE_LOG=str(self.writes[i]),
                           **((env1 or {}) if i else {}))
                cmd = [sys.executable, "-u", "-c", BOOT, *args,
                       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                       f"--process_id={i}"]
                with open(self.logs[i], "w") as out:
                    self.procs.append(subprocess.Popen(
                        cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                        process_group=self.pgid or 0))
                self.pgid = self.procs[0].pid
        except BaseException:
            self.kill()
            raise
        self.start = self.started = time.monotonic()
        self.problem: str | None = None
        self._monitor = threading.Thread(target=self._watch, daemon=True)
        self._monitor.start()

    def kill(self) -> None:
        if self.pgid is None:
            return
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _watch(self) -> None:
        while any(p.poll() is None for p in self.procs):
            if self.kill_at and not self.killed and self.kill_at in self.output(0):
                self.killed = True
                self.kill()
            elif any(p.poll() not in (None, 0) for p in self.procs) and not self.killed:
                self.problem = "one process failed; the other was killed"
                self.kill()
            elif time.monotonic() - self.start > LIMIT_S:
                self.problem = f"still running after {LIMIT_S} s; killed"
                self.kill()
            time.sleep(0.02)

    def output(self, i: int) -> str:
        return self.logs[i].read_text(errors="replace")

    def wait(self) -> "TwoProcesses":
        self._monitor.join(LIMIT_S + 30)
        self.kill() if any(p.poll() is None for p in self.procs) else None
        self.seconds = time.monotonic() - self.start
        codes = [p.wait() for p in self.procs]
        expected = [-signal.SIGKILL] * 2 if self.kill_at else [0, 0]
        if self.problem or codes != expected:
            tails = "\n".join(f"--- {self.name} process {i} (exit {codes[i]}):\n"
                              + self.output(i)[-2500:] for i in (0, 1))
            raise AssertionError(f"{self.name}: {self.problem or 'unexpected exit codes'} "
                                 f"{codes}, expected {expected}\n{tails}")
        return self

    def written(self, i: int, under) -> list[str]:
        """Paths under ``under`` that process ``i`` opened for writing, created, renamed
        or removed (from Python)."""
        root = os.fspath(under).rstrip("/") + "/"
        if not self.writes[i].exists():
            return []
        return sorted({line.split("\t", 1)[1] for line in self.writes[i].read_text().splitlines()
                       if line.split("\t", 1)[1].startswith(root)})


ORBAX_PER_PROCESS = re.compile(r"/(ocdbt\.process_1|array_metadatas/process_1)(/|$)")


def _overrides(tmp) -> dict:
    return {**OVERRIDES, "data.npz_path": str(tmp / "digits.npz")}


def _config(tmp):
    return apply_overrides(gffn.get_config("smoke"), _overrides(tmp))


def _cli_args(workdir, *extra) -> list[str]:
    overrides = _overrides(workdir.parent)
    return [f"--config={CONFIG}", f"--workdir={workdir}",
            *(f"--config.{k}={v}" for k, v in overrides.items()), *extra]


def _train_records(workdir) -> list[dict]:
    return [r for r in map(json.loads, (run_path(workdir) / "metrics.jsonl").read_text()
                           .splitlines()) if r["kind"] == "train"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """All runs, overlapped where they are independent (2 cores: 40-60 s in all)."""
    tmp = tmp_path_factory.mktemp("multiprocess")
    digits = digits_arrays()
    np.savez(tmp / "digits.npz", **{f"{xy}_{split}": digits[split][j]
                                    for split in ("train", "test") for j, xy in enumerate("xy")})
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(tmp / "jax_cache")
    t0 = time.monotonic()
    launches: list[TwoProcesses] = []

    def launch(*args, **kwargs) -> TwoProcesses:
        launches.append(TwoProcesses(*args, tmp=tmp, cache_dir=cache, **kwargs))
        return launches[-1]

    try:
        # the chain killed -> resumed is the longest: it starts first
        killed = launch("killed", _cli_args(tmp / "crashed"),
                        kill_at="checkpoint saved at step 8", env={save_gate.ENV: "8"})
        straight = launch("straight", _cli_args(tmp / "straight"),
                          env1={"JAXHYBRID_TEST_CLOCK_SPEEDUP": "1000"})
        # The same config and seed in this process, on 8 devices, in a relative epath.Path.
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            from jaxhybrid.train import train_and_evaluate
            one = train_and_evaluate(_config(tmp), epath.Path("one_process"))
        finally:
            os.chdir(cwd)
        killed.wait()
        ckpt = Checkpointer(tmp / "crashed", read_only=True)
        resumable = ckpt.all_steps()
        ckpt.close()
        resumed = launch("resumed", _cli_args(tmp / "crashed"))
        straight.wait()
        # other evaluation settings than the end of training's: a new evaluation (the same
        # settings would be found done and not recomputed)
        evaluated = launch("eval", _cli_args(tmp / "straight", "--mode=eval",
                                             "--config.evals.seed=1"))
        host_data = launch("host_data", _cli_args(tmp / "host_data",
                                                  "--config.data.placement=host"))
        resumed.wait()
        evaluated.wait()
        host_data.wait()
    finally:
        for l in launches:
            l.kill()
    print(f"\n2-process runs (and the 1-process run beside them): "
          f"{time.monotonic() - t0:.1f} s; " + ", ".join(
              f"{l.name} {l.started - t0:.1f}-{l.started - t0 + l.seconds:.1f} s"
              for l in launches))
    return dict(tmp=tmp, one=one, straight=straight, killed=killed, resumed=resumed,
                evaluated=evaluated, resumable=resumable, host_data=host_data)


def _final(workdir) -> dict:
    return json.loads((pathlib.Path(workdir) / "final_metrics.json").read_text())


def test_two_processes_match_one_process_on_eight_devices(runs):
    tmp, straight = runs["tmp"], runs["straight"]
    one_dir = tmp / "one_process"
    assert runs["one"]["workdir"] == str(one_dir)            # the relative path, resolved
    two = _train_records(tmp / "straight")
    one = _train_records(one_dir)
    assert [r["step"] for r in two] == [r["step"] for r in one] == list(range(2, STEPS + 1, 2))
    np.testing.assert_allclose([r["loss"] for r in two], [r["loss"] for r in one], rtol=1e-5)
    final = _final(tmp / "straight")
    assert final["step"] == STEPS
    # process 1's fast clock did not stop it early (process 0's clock decides; a process
    # that stopped alone would have hung or failed the others, and both exited 0)
    assert final["stopped"] == "completed"
    assert "2 host(s)" in straight.output(0)
    for key, value in runs["one"].items():
        if isinstance(value, float) and key != "train_seconds":
            assert final[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert final["checkpoint"] == runs["one"]["checkpoint"]


def test_resume_after_both_processes_were_killed_is_bit_identical(runs):
    tmp, resumed = runs["tmp"], runs["resumed"]
    assert runs["killed"].killed
    # the processes paused after checkpoint 8 was saved (save_gate) until the kill: it is
    # the last one, complete, and no later one was started
    assert runs["resumable"] and runs["resumable"][-1] == 8, runs["resumable"]
    assert f"resumed from checkpoint step {runs['resumable'][-1]}" in resumed.output(0)
    c = _config(tmp)
    step_a, straight = restore_params(c, str(tmp / "straight"))
    step_b, again = restore_params(c, str(tmp / "crashed"))
    assert step_a == step_b == STEPS and int(again["step"]) == STEPS
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)
    records = _train_records(tmp / "crashed")
    assert [r["step"] for r in records] == list(range(2, STEPS + 1, 2))   # each step once
    assert [r["loss"] for r in records] == [r["loss"] for r in _train_records(tmp / "straight")]


def test_device_resident_data_equal_host_data_in_two_processes(runs):
    """The straight run's data are device-resident (auto, digits fit), host_data's are
    read on the host: each process's log says so, and the losses and final parameters
    are the same, bit for bit."""
    tmp = runs["tmp"]
    # (logged by process 0: every process decides the same, from the same budget rule)
    assert "data placement: device (auto: the training split fits" in runs["straight"].output(0)
    assert "data placement: host (data.placement=host" in runs["host_data"].output(0)
    def losses(workdir):
        return [(r["step"], r["loss"], r["grad_norm"]) for r in _train_records(workdir)]
    assert losses(tmp / "host_data") == losses(tmp / "straight") != []
    c = _config(tmp)
    _, device = restore_params(c, str(tmp / "straight"))
    _, host = restore_params(c, str(tmp / "host_data"))
    for a, b in zip(jax.tree.leaves(device), jax.tree.leaves(host), strict=True):
        np.testing.assert_array_equal(a, b)


def test_eval_mode_in_two_processes(runs):
    straight = runs["tmp"] / "straight"
    trained = _final(straight)
    assert re.search(rf"evaluation at step {STEPS} .*written to", runs["evaluated"].output(0))
    assert "evaluation at step" not in runs["evaluated"].output(1)   # logs: process 0 only
    found = [p.parent for p in (straight / "eval" / str(STEPS)).glob("*/metrics.json")
             if p.parent.name != pathlib.Path(trained["eval_dir"]).name]
    assert len(found) == 1, found                  # a new evaluation beside the training's
    m = json.loads((found[0] / "metrics.json").read_text())
    assert m["evals"]["seed"] == 1
    headline = suite.headline(m)
    for key in ("accuracy", "nll", "ece", "brier"):
        assert headline[key] == pytest.approx(trained[key], rel=1e-6), key
    assert _final(straight) == trained             # re-evaluating never changes it


def test_every_file_is_written_by_process_0_only(runs):
    tmp = runs["tmp"]
    for name, workdir in (("straight", "straight"), ("killed", "crashed"),
                          ("resumed", "crashed"), ("evaluated", "straight")):
        launch = runs[name]
        by_1 = [p for p in launch.written(1, tmp / workdir) if not ORBAX_PER_PROCESS.search(p)]
        assert not by_1, f"{name}: process 1 wrote {by_1}"
    # the hook sees the writes: process 0 wrote every file of the run outside checkpoints/
    written_0 = set(runs["straight"].written(0, tmp / "straight")) | set(
        runs["evaluated"].written(0, tmp / "straight"))
    files = {str(p) for p in (tmp / "straight").rglob("*")
             if p.is_file() and "checkpoints" not in p.relative_to(tmp / "straight").parts}
    eval_dir = tmp / "straight" / _final(tmp / "straight")["eval_dir"]
    assert {str(eval_dir / f) for f in ("metrics.json", "report.md", "reliability.png")} <= files
    assert {str(tmp / "straight" / f) for f in ("config.json", "data.json", "metrics.jsonl",
                                                 "final_metrics.json")} <= files
    # an evaluation is written into a temporary directory, renamed into place whole
    unwritten = {f for f in files
                 if not any(str(p) in written_0 for p in (pathlib.Path(f), *pathlib.Path(f).parents))}
    assert not unwritten, sorted(unwritten)


def test_a_device_subset_is_refused_with_several_processes(monkeypatch):
    from jaxhybrid import parallel
    assert parallel.make_mesh(4).devices.size == 4          # one process: a subset is fine
    monkeypatch.setattr(jax, "process_count", lambda: 2)     # as process 0 of 2 would see it
    with pytest.raises(ValueError, match=r"num_devices=4 selects a subset of the devices, "
                                         r"which only a single-process run can do; this run "
                                         r"has 2 processes"):
        parallel.make_mesh(4)
    assert parallel.make_mesh(8).devices.size == 8          # all of them: allowed
    assert parallel.make_mesh(0).devices.size == 8


def test_distributed_startup_failures_are_clear_errors(tmp_path, monkeypatch):
    from jaxhybrid.parallel import DistributedStartupError, distributed_settings
    for var in STARTUP_VARS:
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(DistributedStartupError, match=r"process_id=2; valid ids: 0\.\.1"):
        distributed_settings("127.0.0.1:1234", 2, 2)
    with pytest.raises(DistributedStartupError, match=r"'localhost' is not HOST:PORT"):
        distributed_settings("localhost", 2, 0)
    with pytest.raises(DistributedStartupError, match=r"num_processes=0"):
        distributed_settings("127.0.0.1:1234", 0, 0)
    assert distributed_settings() is None                     # single process: nothing to do
    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    with pytest.raises(DistributedStartupError, match=r"JAX_NUM_PROCESSES='two' is not"):
        distributed_settings()
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")               # JAX's variables, or the flags
    monkeypatch.setenv("JAX_PROCESS_ID", "3")
    assert distributed_settings("10.0.0.1:8476")["num_processes"] == 4
    monkeypatch.setenv("JAXHYBRID_DISTRIBUTED", "maybe")
    with pytest.raises(DistributedStartupError, match=r"JAXHYBRID_DISTRIBUTED='maybe'"):
        distributed_settings()
    for var in STARTUP_VARS:
        monkeypatch.delenv(var, raising=False)
    assert distributed_settings("10.0.0.1:8476", 4, 3) == {
        "coordinator_address": "10.0.0.1:8476", "num_processes": 4, "process_id": 3}

    # Through the CLI: exit 1 with "error: ..." before any training.
    wd = str(tmp_path / "run")
    env = {"JAXHYBRID_DISTRIBUTED": "1"}
    r = _cli([f"--config={CONFIG}", f"--workdir={wd}"], env)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "error: DistributedStartupError" in r.stderr and "--coordinator_address" in r.stderr
    # a peer that never comes: a clear error after JAXHYBRID_DISTRIBUTED_TIMEOUT, not an abort
    r = _cli([f"--config={CONFIG}", f"--workdir={wd}",
              f"--coordinator_address=127.0.0.1:{_free_port()}", "--num_processes=2",
              "--process_id=1"], {"JAXHYBRID_DISTRIBUTED_TIMEOUT": "1"})
    assert r.returncode == 1, r.stderr[-2000:]
    assert "error: DistributedStartupError: process 1 of 2: not every process connected" \
        in r.stderr
    assert not os.path.exists(wd)


# -- run directories: relative, ~, and an object store (gs://) through epath ---------------
@pytest.fixture
def fake_gcs(tmp_path):
    """gs://BUCKET/... served from tmp_path/gcs/BUCKET/... through etils' own test hook
    (``epath.testing.mock_epath``): code that goes through epath reaches it, while code
    that treats the URI as a local path would create ``./gs:/...`` in the working
    directory instead."""
    from etils.epath import testing as epath_testing
    root = tmp_path / "gcs"

    def local(path) -> str:
        p = os.fspath(path)
        return str(root / p[len("gs://"):]) if p.startswith("gs://") else p

    def one(orig, path, *a, **k):
        return orig(local(path), *a, **k)

    def two(orig, path, dst, *a, **k):
        return orig(local(path), local(dst), *a, **k)

    def walk(orig, top, **k):
        yield from orig(local(top), **k)

    with epath_testing.mock_epath(open=one, exists=one, isdir=one, listdir=one, makedirs=one,
                                  mkdir=one, remove=one, rmtree=one, stat=one, rename=two,
                                  replace=two, copy=two, walk=walk):
        yield root


def test_run_directory_on_a_bucket_is_never_made_local(tmp_path, monkeypatch, fake_gcs):
    from jaxhybrid.checkpointing import CheckpointNotFoundError, load_saved_config, save_config
    from jaxhybrid.evaluators import calibration
    from jaxhybrid.evaluators.calibration import calibration_metrics
    from jaxhybrid.progress import JsonlWriter
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    run = "gs://bucket/runs/a"
    assert os.fspath(run_path(run)) == run                    # not ./gs:/bucket/runs/a
    c = gffn.get_config("smoke")
    save_config(c, run)
    assert (fake_gcs / "bucket/runs/a/config.json").exists()
    assert load_saved_config(run)["batch_size"] == c.batch_size
    w = JsonlWriter(run_path(run) / "metrics.jsonl")          # objects cannot be appended to
    for step in (2, 4, 6):
        w.write({"kind": "train", "step": step})
    JsonlWriter(run_path(run) / "metrics.jsonl", start=4).write({"kind": "train", "step": 6})
    lines = (fake_gcs / "bucket/runs/a/metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["step"] for l in lines] == [2, 4, 6]
    probs = np.full((10, 2), 0.5)
    calibration.reliability_diagram(calibration_metrics(probs, np.zeros(10, int), num_bins=5),
                                    f"{run}/eval/3/reliability.png")
    assert (fake_gcs / "bucket/runs/a/eval/3/reliability.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(CheckpointNotFoundError, match="gs://bucket/runs/a/checkpoints"):
        Checkpointer(run, read_only=True)
    assert list(cwd.iterdir()) == []                          # nothing landed in ./gs:


def test_run_directory_relative_and_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert os.fspath(run_path("~/runs/a")) == str(tmp_path / "home" / "runs" / "a")
    assert os.fspath(run_path("runs/b")) == str(tmp_path / "runs" / "b")
    assert os.fspath(run_path(epath.Path("runs") / "c")) == str(tmp_path / "runs" / "c")
    from jaxhybrid.checkpointing import load_saved_config, save_config
    save_config(gffn.get_config("smoke"), "~/runs/a")
    assert (tmp_path / "home" / "runs" / "a" / "config.json").exists()
    assert load_saved_config("~/runs/a") is not None
    assert not (tmp_path / "~").exists()
