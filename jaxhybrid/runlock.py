"""One process (or one multi-process job) per run directory: ``workdir/.lock``.

Every command that writes a run directory (training, ``--mode=eval``) holds the lock
for its whole length. The lock file is JSON: ``{pid, host, since, job, command,
started}``. It is created atomically (written to a temporary sibling, then hard-linked
into place, which fails if the lock exists), so two processes never both take it.

A second command on a live run directory gets ``error: <workdir> is in use by pid N on
host H since T`` before it writes anything. A lock left by a process that died (same
host, its pid gone, or reused by another process: the start time recorded beside the pid
no longer matches) is taken over with a warning. A lock held from another host cannot be
checked from here: it is refused, with the way to clear it (remove the file once no
process of that host uses the run), unless it names this very scheduler job (a SLURM job
requeued on another node after a preemption keeps its job id, and SLURM runs it once).

Multi-process jobs take one lock for the job: process 0 takes it with a fresh job token
and broadcasts the token; every other process checks that the lock it sees (the run
directory is shared) names that token. Object stores (gs://) have no atomic create: there
the lock is written after a check, which narrows the race but cannot close it.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
import uuid

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from jaxhybrid.checkpointing import is_remote, run_path

log = logging.getLogger("jaxhybrid")

LOCK_FILE = ".lock"


class WorkdirInUseError(ValueError):
    """Another process (or job) holds the run directory."""


def _start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot, /proc/PID/stat field
    22), so that a pid reused by another process is not taken for the lock's owner; None
    where /proc has no such process or does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # exists, owned by another user
        return True
    now = _start_time(pid)
    return started is None or now is None or now == started


def scheduler_job() -> str | None:
    """The batch scheduler's id of this job (SLURM: job id and array task), which a requeued
    job keeps on whichever node it restarts; None outside a scheduler."""
    job = os.environ.get("SLURM_JOB_ID")
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"slurm:{job}" + (f"_{task}" if task else "") if job else None


def _record(job: str) -> dict:
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "job": job,
            "scheduler_job": scheduler_job(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "started": _start_time(pid),
            "command": " ".join(sys.argv)[:500]}


def _read(path: epath.Path) -> dict | None:
    """The lock's record; None if there is none; {} if it cannot be read (a half-written
    lock of an object store, or garbage): treated as stale."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


class RunLock:
    """``with RunLock(workdir): ...`` holds ``workdir/.lock`` (see the module docstring).
    A run directory that did not exist and is still empty when the lock is released is
    removed again, so a command that fails its checks leaves nothing behind."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.dir = run_path(workdir)
        self.path = self.dir / LOCK_FILE
        self.job = ""
        self._created: list = []      # the directories the lock made, deepest first
        self._held = False

    # -- taking it -----------------------------------------------------------------------
    def acquire(self) -> "RunLock":
        error = None
        if jax.process_index() == 0:
            self.job = uuid.uuid4().hex
            try:
                self._take()
            except WorkdirInUseError as e:    # told to the other processes first
                error, self.job = e, ""
        if jax.process_count() > 1:
            self._join_job()
        if error is not None:
            raise error
        if not self.job:
            raise WorkdirInUseError(f"{self.dir} is in use: process 0 could not take its lock")
        return self

    def _take(self) -> None:
        if not self.dir.exists():
            self._created = [p for p in (self.dir, *self.dir.parents) if not p.exists()]
            self.dir.mkdir(parents=True, exist_ok=True)
        record = _record(self.job)
        for _ in range(3):
            if self._create(record):
                self._held = True
                return
            self._refuse_or_clear(_read(self.path))
        raise WorkdirInUseError(f"{self.dir} is in use: could not take {self.path}")

    def _create(self, record: dict) -> bool:
        """Create the lock with ``record``; False if one exists."""
        text = json.dumps(record, indent=1, sort_keys=True)
        if is_remote(self.path):
            if self.path.exists():
                return False
            self.path.write_text(text)
            return True
        tmp = self.dir / f".lock.{record['pid']}.{uuid.uuid4().hex[:8]}"
        tmp.write_text(text)
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink()

    def _refuse_or_clear(self, held: dict | None) -> None:
        """Remove a stale lock (with a warning) or raise WorkdirInUseError."""
        if held is None:
            return                                  # released meanwhile: try again
        host, pid = held.get("host"), held.get("pid")
        requeued = bool(held) and held.get("scheduler_job") is not None \
            and held.get("scheduler_job") == scheduler_job()
        if held and host != socket.gethostname() and not requeued:
            raise WorkdirInUseError(
                f"{self.dir} is in use by pid {pid} on host {host} since {held.get('since')} "
                f"(job {held.get('job')}; {held.get('command')!r}). It cannot be checked from "
                f"host {socket.gethostname()}: if no process on {host} uses this run "
                f"directory any more, remove {self.path} and run again")
        if held and not requeued and isinstance(pid, int) and _alive(pid, held.get("started")):
            raise WorkdirInUseError(
                f"{self.dir} is in use by pid {pid} on host {host} since {held.get('since')} "
                f"({held.get('command')!r}); wait for it to finish, stop it, or choose "
                f"another --workdir")
        what = f"pid {pid} on {host} since {held.get('since')}" if held else "unreadable"
        if requeued:
            what += f"; the same scheduler job {held['scheduler_job']}, requeued"
        log.warning("taking over the lock of %s left by a process that is gone (%s)",
                    self.dir, what)
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def _join_job(self) -> None:
        """Every process: the job token of process 0, checked against the lock each sees."""
        token = np.frombuffer(bytes.fromhex(self.job or "0" * 32), np.uint32).copy()
        token = np.asarray(multihost_utils.broadcast_one_to_all(token), np.uint32)
        self.job = token.tobytes().hex() if token.any() else ""
        if jax.process_index() == 0 or not self.job:
            return
        held = _read(self.path)
        if held is None:      # a run directory each host keeps on its own disk
            log.warning("%s: no lock visible from process %d (not a shared directory?)",
                        self.dir, jax.process_index())
        elif held.get("job") != self.job:
            raise WorkdirInUseError(
                f"{self.dir} is in use by another job: its lock names job {held.get('job')} "
                f"(pid {held.get('pid')} on host {held.get('host')}), this job is {self.job}")

    # -- releasing it --------------------------------------------------------------------
    def release(self) -> None:
        """Process 0: remove the lock (if it is still this job's) and any directory the lock
        created that is still empty."""
        if not self._held:
            return
        self._held = False
        held = _read(self.path)
        if held and held.get("job") == self.job:
            self.path.unlink()
        for d in self._created:          # a command that wrote nothing leaves nothing
            if d.exists() and not any(d.iterdir()):
                d.rmdir()

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
