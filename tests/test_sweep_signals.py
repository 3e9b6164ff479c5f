"""SIGTERM and SIGINT to a real ``python -m jaxhybrid.tools.sweep``: forwarded to the running
points, which stop cleanly; the sweep marks them interrupted, starts nothing more, says how
to resume and exits 128 + the signal number; the same command then completes the sweep.

Each test waits (polling, with a safety net of minutes) for the events it needs: a point
is signalled once its train.log shows a finished step, and has far more steps (2000, or a
million where it is not resumed) than it can take in the moment before the signal; where a
point must still be running when a later event happens, it is held with SIGSTOP."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from jaxhybrid.tools import sweep
from tests.helpers import REPO

# sweeps of real training processes: `make test` runs them, `make test-newest` leaves
# them out (the signal handling of jaxhybrid.main they rely on is tested there too)
pytestmark = pytest.mark.slow_smoke

SAFETY_NET = 600          # seconds; only a hung run ever gets near it
TINY = ["--config.model.width=4", "--config.evals.names=classification",
        "--set", "model.hidden=(16,)", "--config.model.stages=1", "--config.log_every=1"]


def _sweep_args(root, sweep_arg: str, num_steps: int, jobs: int = 1) -> list[str]:
    return [sys.executable, "-m", "jaxhybrid.tools.sweep", "--config=configs/gffn.py:smoke",
            f"--workdir={root}", "--sweep", sweep_arg, f"--config.num_steps={num_steps}",
            f"--jobs={jobs}", *TINY]


def _children(pid: int) -> list[int]:
    """The jaxhybrid.main processes whose parent is ``pid`` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read()
            cmdline = open(f"/proc/{entry}/cmdline", "rb").read().decode(errors="replace")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and "jaxhybrid.main" in cmdline:
            out.append(int(entry))
    return out


def _alive_point(pid: int, root) -> bool:
    """Whether ``pid`` is still a point process of the sweep in ``root`` (not reaped)."""
    try:
        cmdline = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
    except OSError:
        return False
    return "jaxhybrid.main" in cmdline and str(root) in cmdline


def _training(root, name: str) -> bool:
    """Whether the point's train.log shows a finished training step."""
    path = root / name / "train.log"
    return path.exists() and re.search(r"\bstep \d+/\d+", path.read_text()) is not None


def _wait_for(condition, what: str, proc) -> None:
    deadline = time.monotonic() + SAFETY_NET
    while not condition():
        assert proc.poll() is None, f"the sweep exited ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within {SAFETY_NET} s"
        time.sleep(0.05)


@pytest.fixture
def started(tmp_path):
    """Start sweeps whose output goes to files; any point process left behind by a failed
    test is killed (by its pid) at the end."""
    procs, pids = [], []

    def start(args):
        n = len(procs)
        out, err = open(tmp_path / f"out{n}.txt", "w"), open(tmp_path / f"err{n}.txt", "w")
        procs.append(subprocess.Popen(args, cwd=REPO, stdout=out, stderr=err))
        return procs[-1], tmp_path / f"out{n}.txt", tmp_path / f"err{n}.txt"
    yield start, pids
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for pid in pids:
        if _alive_point(pid, tmp_path):
            os.kill(pid, signal.SIGKILL)


def _interrupt(start, pids, root, args, running: list[str], signum: int):
    """Start the sweep, wait until every point of ``running`` trains, send ``signum`` to the
    sweep; returns (exit status, stderr, the status file)."""
    proc, _, err = start(args)
    for name in running:
        _wait_for(lambda: _training(root, name), f"a training step of {name}", proc)
    pids += _children(proc.pid)
    assert len(pids) == len(running), pids
    proc.send_signal(signum)
    code = proc.wait(timeout=SAFETY_NET)
    for pid in pids:
        assert not _alive_point(pid, root), f"point process {pid} outlived the sweep"
    return code, err.read_text(), json.load(open(root / sweep.STATUS_FILE))


def test_sigterm_stops_the_running_point_and_the_same_command_resumes(tmp_path, started):
    start, pids = started
    root = tmp_path / "sweep"
    args = _sweep_args(root, "batch_size=16,32", num_steps=2000)
    first, second = "batch_size=16,seed=0", "batch_size=32,seed=0"
    code, stderr, status = _interrupt(start, pids, root, args, [first], signal.SIGTERM)
    assert code == 143, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert "sweep interrupted by SIGTERM" in stderr and "run the same command" in stderr
    assert "python -m jaxhybrid.tools.sweep --config=configs/gffn.py:smoke" in stderr
    points = status["points"]
    assert points[first]["status"] == "interrupted" and points[first]["returncode"] == 143
    assert points[second]["status"] == "pending"           # never started after the signal
    assert not (root / second).exists()
    assert status["counts"] == {"interrupted": 1, "pending": 1}

    r = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=SAFETY_NET)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    status = json.load(open(root / sweep.STATUS_FILE))
    assert status["counts"] == {"finished": 2}
    for name in (first, second):
        assert (root / name / "final_metrics.json").exists()
    resumed = re.search(r"resumed from checkpoint step (\d+)",
                        (root / first / "train.log").read_text())
    assert resumed and 1 <= int(resumed.group(1)) < 2000


def _signal_and_wait_for(proc, out, signum: int, says: str) -> None:
    proc.send_signal(signum)
    _wait_for(lambda: says in out.read_text(), repr(says), proc)


def test_sigint_twice_reaches_every_running_point_and_starts_no_other(tmp_path, started):
    """--jobs 2: both running points get each SIGINT (they are held stopped meanwhile, so
    that both signals find them running), stop, and the third point never starts."""
    start, pids = started
    root = tmp_path / "sweep"
    proc, out, err = start(_sweep_args(root, "batch_size=16,32,64", num_steps=10 ** 6, jobs=2))
    running = ["batch_size=16,seed=0", "batch_size=32,seed=0"]
    for name in running:
        _wait_for(lambda: _training(root, name), f"a training step of {name}", proc)
    pids += _children(proc.pid)
    assert len(pids) == 2, pids
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        _signal_and_wait_for(proc, out, signal.SIGINT, "SIGINT received: forwarded to 2 "
                                                       "running point(s)")
        _signal_and_wait_for(proc, out, signal.SIGINT, "SIGINT received again: forwarded "
                                                       "to 2 running point(s)")
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    assert proc.wait(timeout=SAFETY_NET) == 130, err.read_text()[-3000:]
    stderr = err.read_text()
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    assert "sweep interrupted by SIGINT" in stderr and "run the same command" in stderr
    assert not any(_alive_point(pid, root) for pid in pids)
    points = json.load(open(root / sweep.STATUS_FILE))["points"]
    for name in running:
        assert points[name]["status"] == "interrupted" and points[name]["returncode"] == 130
        assert points[name]["signal"] == "SIGINT"
        assert "interrupted at step" in (root / name / "train.log").read_text()
    assert points["batch_size=64,seed=0"]["status"] == "pending"
    assert not (root / "batch_size=64,seed=0").exists()


def test_a_point_that_does_not_stop_is_killed_after_kill_after(tmp_path, started):
    """The last resort: a point that cannot stop (held stopped here) is SIGKILLed
    --kill_after seconds after the signal; the sweep still ends as interrupted."""
    start, pids = started
    root = tmp_path / "sweep"
    name = "batch_size=16,seed=0"
    proc, out, err = start(_sweep_args(root, "batch_size=16", num_steps=10 ** 6)
                           + ["--kill_after=1"])
    _wait_for(lambda: _training(root, name), "a training step", proc)
    pids += _children(proc.pid)
    assert len(pids) == 1, pids
    os.kill(pids[0], signal.SIGSTOP)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=SAFETY_NET) == 143, err.read_text()[-3000:]
    assert "still running 1 s after the signal: killed (SIGKILL)" in out.read_text()
    assert not _alive_point(pids[0], root)
    point = json.load(open(root / sweep.STATUS_FILE))["points"][name]
    assert point["status"] == "interrupted" and point["returncode"] == -signal.SIGKILL
