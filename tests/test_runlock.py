"""One process per run directory (jaxhybrid.runlock), metrics.jsonl without repeats, and a
run directory usable without its command (``--mode=eval --workdir=RUN``, ``--config=RUN``).

The lock's rules are tested on the class (a live owner, a dead one, a reused pid, another
host, a half-written lock); the CLI tests run real processes: a second command on a live
run directory is refused while the first trains, a ``kill -9``'d run's lock is taken over
and the run completes with each (kind, step) recorded once. Nothing here waits on the
clock: each step waits for a file the other process writes.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from jaxhybrid import runlock
from jaxhybrid.progress import JsonlWriter, read_jsonl
from jaxhybrid.runlock import LOCK_FILE, RunLock, WorkdirInUseError
from tests.helpers import REPO, run_cli

ARGS = ["--config=configs/gffn.py:smoke", "--config.model.width=4",
        "--config.model.hidden=(16,)", "--config.evals.names=classification"]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _write_lock(workdir, **fields):
    os.makedirs(workdir, exist_ok=True)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "job": "x" * 32,
              "since": "2026-01-01T00:00:00", "started": None, "command": "test"}
    record.update(fields)
    with open(os.path.join(workdir, LOCK_FILE), "w") as f:
        json.dump(record, f)


# -- the lock's rules ------------------------------------------------------------------------
def test_lock_is_exclusive_and_released(tmp_path):
    wd = str(tmp_path / "run")
    with RunLock(wd):
        held = json.load(open(os.path.join(wd, LOCK_FILE)))
        assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
        with pytest.raises(WorkdirInUseError, match=rf"{wd} is in use by pid {os.getpid()} "
                                                    rf"on host {socket.gethostname()} since "):
            RunLock(wd).acquire()
        open(os.path.join(wd, "a_result"), "w").close()
    assert os.listdir(wd) == ["a_result"]               # released; the run's files stay


def test_a_refused_or_failed_command_leaves_no_directory(tmp_path):
    wd = tmp_path / "new" / "run"
    with pytest.raises(RuntimeError):
        with RunLock(str(wd)):
            assert wd.is_dir()
            raise RuntimeError("a check failed")
    assert not (tmp_path / "new").exists()              # the directories it made are gone


@pytest.mark.parametrize("case", ["dead_pid", "reused_pid", "garbage"])
def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, caplog, case):
    wd = str(tmp_path)
    if case == "dead_pid":
        _write_lock(wd, pid=_dead_pid())
    elif case == "reused_pid":          # our own pid, but another process's start time
        _write_lock(wd, started="1")
    else:
        os.makedirs(wd, exist_ok=True)
        open(os.path.join(wd, LOCK_FILE), "w").write('{"pid": 12')     # killed mid-write
    with caplog.at_level(logging.WARNING, logger="jaxhybrid"):
        with RunLock(wd) as lock:
            assert json.load(open(os.path.join(wd, LOCK_FILE)))["job"] == lock.job
    assert "taking over the lock" in caplog.text
    assert not os.path.exists(os.path.join(wd, LOCK_FILE))


def test_a_live_owner_and_another_host_are_refused(tmp_path):
    wd = str(tmp_path)
    parent = os.getppid()            # alive, with its recorded start time
    _write_lock(wd, pid=parent, started=runlock._start_time(parent))
    with pytest.raises(WorkdirInUseError, match=f"in use by pid {parent}"):
        RunLock(wd).acquire()
    _write_lock(wd, pid=_dead_pid(), host="other-host")
    with pytest.raises(WorkdirInUseError) as e:
        RunLock(wd).acquire()
    msg = str(e.value)
    assert "on host other-host" in msg and f"remove {wd}/{LOCK_FILE}" in msg
    assert os.path.exists(os.path.join(wd, LOCK_FILE))       # never removed from here


def test_a_requeued_scheduler_job_takes_over_its_own_lock_from_another_node(tmp_path,
                                                                            monkeypatch, caplog):
    wd = str(tmp_path)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    _write_lock(wd, host="node-7", scheduler_job="slurm:4242")
    with caplog.at_level(logging.WARNING, logger="jaxhybrid"):
        with RunLock(wd):
            pass
    assert "the same scheduler job slurm:4242, requeued" in caplog.text
    _write_lock(wd, host="node-7", scheduler_job="slurm:4243")          # another job
    with pytest.raises(WorkdirInUseError, match="on host node-7"):
        RunLock(wd).acquire()


# -- metrics.jsonl ----------------------------------------------------------------------------
def test_jsonl_keeps_each_kind_and_step_once_and_survives_a_truncated_line(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    rows = [{"kind": "train", "step": 5, "loss": 1.0}, {"kind": "validation", "step": 5},
            {"kind": "train", "step": 5, "loss": 0.5}, {"kind": "train", "step": 10},
            {"kind": "final", "step": 10}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"kind": "tra')
    with caplog.at_level(logging.WARNING, logger="jaxhybrid"):
        assert len(read_jsonl(path)) == 5
    assert "last line is truncated" in caplog.text and str(path) in caplog.text
    JsonlWriter(path, start=5).write({"kind": "train", "step": 6})
    kept = read_jsonl(path)
    assert kept == [{"kind": "validation", "step": 5}, {"kind": "train", "step": 5, "loss": 0.5},
                    {"kind": "train", "step": 6}]
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=f"{path} line 2 is not valid JSON"):
        read_jsonl(path)


# -- the CLI: a second process, a kill -9, and the run used without its command ------------------
def _popen(args, log):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO,
               XLA_FLAGS="--xla_force_host_platform_device_count=8")
    return subprocess.Popen([sys.executable, "-m", "jaxhybrid.main", *args], cwd=REPO, env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)


def _wait_for(predicate, proc, what: str, limit_s: float = 600):
    """Poll until ``predicate()``; fails if ``proc`` exits first (``limit_s`` is a safety
    net against a hang, not a timing assumption)."""
    end = time.monotonic() + limit_s
    while not predicate():
        assert proc.poll() is None, f"the first run exited ({proc.returncode}) before {what}"
        assert time.monotonic() < end, f"no {what} after {limit_s} s"
        time.sleep(0.05)


def _checkpoints(wd):
    d = os.path.join(wd, "checkpoints")
    return [s for s in os.listdir(d) if s.isdigit()] if os.path.isdir(d) else []


def test_a_second_process_is_refused_and_a_killed_run_is_taken_over(tmp_path):
    """While one run trains, a second train and an eval on its directory get one error line
    and write nothing; after ``kill -9`` the stale lock is taken over and the run, resumed
    with a shorter budget, completes with every (kind, step) once in metrics.jsonl."""
    wd = str(tmp_path / "run")
    first = _popen([*ARGS, f"--workdir={wd}", "--config.num_steps=1000000",
                    "--config.checkpoint_every=20", "--config.log_every=5"],
                   tmp_path / "first.log")
    try:
        _wait_for(lambda: _checkpoints(wd), first, "checkpoint")
        before = sorted(os.listdir(wd))
        for extra in ([], ["--mode=eval"]):
            r = run_cli([*ARGS, f"--workdir={wd}", "--config.num_steps=1000000",
                         "--config.checkpoint_every=20", "--config.log_every=5", *extra])
            assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
            assert r.stderr.startswith(f"error: WorkdirInUseError: {wd} is in use by pid "
                                       f"{first.pid} on host {socket.gethostname()} since "), r.stderr
            assert first.poll() is None
        assert sorted(os.listdir(wd)) == before              # nothing new from the refused two
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert os.path.exists(os.path.join(wd, LOCK_FILE))          # left by the killed run
    r = run_cli([*ARGS, f"--workdir={wd}", "--config.num_steps=1", "--allow_config_change",
                 "--config.checkpoint_every=20", "--config.log_every=5"])
    assert r.returncode == 0, r.stderr
    assert f"taking over the lock of {wd} left by a process that is gone (pid {first.pid}" \
        in r.stdout + r.stderr
    assert not os.path.exists(os.path.join(wd, LOCK_FILE))
    records = read_jsonl(os.path.join(wd, "metrics.jsonl"))
    counts = collections.Counter((r["kind"], r["step"]) for r in records)
    assert counts and max(counts.values()) == 1, [k for k, v in counts.items() if v > 1]
    log = open(os.path.join(wd, "jaxhybrid.log")).read()
    assert log.count("===== ") == 2 and "--allow_config_change" in log    # one header each


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("saved") / "run")
    r = run_cli([*ARGS, f"--workdir={wd}", "--config.num_steps=4", "--config.log_every=2",
                 "--log_file", str(tmp_path_factory.getbasetemp() / "train.log")])
    assert r.returncode == 0, r.stderr
    assert "step 4/4" in r.stderr          # beside --log_file the console shows progress
    return wd


def test_eval_without_config_uses_the_saved_one(trained):
    """``--mode=eval --workdir=RUN`` (no --config), ``--config=RUN/config.json`` and
    ``--config=RUN`` with an override all evaluate the saved model."""
    wd = trained
    final = json.load(open(os.path.join(wd, "final_metrics.json")))
    r = run_cli(["--mode=eval", f"--workdir={wd}"])
    assert r.returncode == 0, r.stderr
    assert f"{wd}/{final['eval_dir']}/report.md" in r.stdout    # the same evaluation
    r = run_cli(["--mode=eval", f"--workdir={wd}", f"--config={wd}/config.json",
                 "--checkpoint=latest"])
    assert r.returncode == 0, r.stderr
    r = run_cli(["--mode=eval", f"--workdir={wd}", f"--config={wd}",
                 "--config.evals.names=classification,calibration"])
    assert r.returncode == 0, r.stderr
    eval_dir = re.search(rf"{wd}/(eval/\S+)/report.md", r.stdout).group(1)
    m = json.load(open(os.path.join(wd, eval_dir, "metrics.json")))
    assert "calibration" in m and m["step"] == final["evaluated_step"]
    r = run_cli([f"--workdir={wd}"])                   # train mode, the saved config: complete
    assert r.returncode == 0 and "is complete (step 4, completed): nothing to do" in r.stdout, \
        r.stdout + r.stderr
    r = run_cli(["--mode=eval", f"--workdir={wd}", f"--config={wd}",
                 "--config.model.width=8"])                        # still the saved model
    assert r.returncode == 1 and "model.width: saved 4, given 8" in r.stderr, r.stderr


@pytest.mark.parametrize("args, needle", [
    (["--mode=eval"], "no --config given, and --workdir={new} holds no saved run "
                      "(config.json): give --config=FILE[:VARIANT]"),
    ([*ARGS, "--checkpoint=latest"], "--checkpoint=latest is for --mode=eval: training "
                                     "always resumes from the latest checkpoint"),
    ([*ARGS, "--log_file={new}"], "--log_file={new} is a directory; give a file path"),
])
def test_flags_that_cannot_work_are_refused(tmp_path, args, needle):
    new = str(tmp_path)
    r = run_cli([a.replace("{new}", new) for a in args] + [f"--workdir={new}"])
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("error: ") and needle.replace("{new}", new) in r.stderr, r.stderr
    assert os.listdir(new) == []
