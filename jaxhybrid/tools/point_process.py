"""One sweep point's process: started, logged to its ``train.log``, stopped on the sweep's
signals (:class:`SweepStop`), and its record in ``DIR/sweep_status.json``
(:class:`StatusFile`). :mod:`jaxhybrid.tools.sweep` runs the grid with these."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from typing import Callable, Sequence

from jaxhybrid.checkpointing import is_remote, run_path
from jaxhybrid.tools.aggregate import STATUS_FILE
from jaxhybrid.tools.grid import LOG_FILE, Point

log = logging.getLogger("jaxhybrid.sweep")


# -- stopping on a signal ----------------------------------------------------------------
KILL_AFTER = 600.0      # seconds a point may take to stop after a signal before SIGKILL
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class NotStarted(Exception):
    """A point the sweep did not start because it is stopping (it stays ``pending``)."""


class SweepStop:
    """SIGINT/SIGTERM of the sweep: each signal is forwarded to every running point (which
    commits a checkpoint and exits 128 + the signal number); no point starts after the
    first. A point still running ``kill_after`` seconds after the first signal (0: never)
    is killed with SIGKILL, the last resort, so that none outlives the sweep."""

    def __init__(self, kill_after: float = KILL_AFTER):
        self.signum = 0                      # the first signal received (0: none)
        self.kill_after = kill_after
        self._procs: set[subprocess.Popen] = set()
        self._timer: threading.Timer | None = None

    def start(self, argv: Sequence[str], **popen_kwargs) -> subprocess.Popen:
        """Popen ``argv``, unless stopping (:class:`NotStarted`). A signal received while
        it started is forwarded to it too."""
        if self.signum:
            raise NotStarted()
        proc = subprocess.Popen(argv, **popen_kwargs)
        self._procs.add(proc)
        if self.signum:
            proc.send_signal(self.signum)
        return proc

    def done(self, proc: subprocess.Popen) -> None:
        self._procs.discard(proc)

    def running(self) -> list[subprocess.Popen]:
        return [p for p in list(self._procs) if p.poll() is None]

    def handle(self, signum: int, frame=None) -> None:
        """The signal handler: forward, and wait (the runners' waits go on)."""
        del frame
        first, self.signum = not self.signum, self.signum or signum
        procs = self.running()
        for proc in procs:
            proc.send_signal(signum)
        log.warning("%s received%s: forwarded to %d running point(s); waiting for them to "
                    "save a checkpoint and stop; no further point starts",
                    signal.Signals(signum).name, "" if first else " again", len(procs))
        if first and self.kill_after > 0:
            self._timer = threading.Timer(self.kill_after, self._kill_remaining)
            self._timer.daemon = True
            self._timer.start()

    def _kill_remaining(self) -> None:
        for proc in self.running():
            log.error("point process %d still running %.0f s after the signal: killed "
                      "(SIGKILL); it resumes from its last checkpoint", proc.pid,
                      self.kill_after)
            proc.kill()

    @contextlib.contextmanager
    def installed(self):
        """:meth:`handle` SIGINT and SIGTERM inside the block (main thread only)."""
        previous = {s: signal.signal(s, self.handle) for s in STOP_SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            if self._timer is not None:
                self._timer.cancel()


# -- running -----------------------------------------------------------------------------
Runner = Callable[[Point], int]


def _append_log(point: Point, text: str) -> None:
    path = point.path / LOG_FILE
    old = path.read_text() if path.exists() else ""
    path.write_text(old + text)


def subprocess_runner(point: Point, *, env: dict | None = None, timeout: float = 0,
                      stop: SweepStop | None = None) -> int:
    """Run ``point.argv``, appending stdout and stderr to the point's train.log (through a
    local file, copied there after the run when the run directory is remote). With
    ``stop``, the process is started (or not: :class:`NotStarted`) through it, so that a
    signal to the sweep reaches it."""
    stop = stop or SweepStop(kill_after=0)
    if stop.signum:
        raise NotStarted()
    point.path.mkdir(parents=True, exist_ok=True)
    remote = is_remote(point.workdir)
    with (tempfile.TemporaryFile("w+") if remote else open(point.log_path, "a")) as f:
        f.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(point.argv)}\n")
        f.flush()
        proc = stop.start(point.argv, stdout=f, stderr=subprocess.STDOUT, env=env,
                          cwd=os.getcwd())
        try:
            return proc.wait(timeout=timeout or None)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            f.write(f"\n=== killed by the sweep after its timeout of {timeout:.0f} s\n")
            raise TimeoutError(f"point exceeded the sweep's --timeout of {timeout:.0f} s") \
                from None
        finally:
            stop.done(proc)
            if remote:
                f.flush()
                f.seek(0)
                _append_log(point, f.read())


def error_from_log(path: str, tail: int = 30) -> tuple[str, str]:
    """(the last error line, the last ``tail`` lines) of a point's log."""
    log_path = run_path(path)
    if not log_path.exists():
        return "", ""
    lines = log_path.read_bytes().decode(errors="replace").splitlines()[-400:]
    errors = [l for l in lines if re.match(r"^\s*[\w.]*(Error|Exception|Exit)\b.*", l)
              or re.match(r"^[\w.]+(Error|Exception): ", l)]
    last = errors[-1].strip() if errors else next((l for l in reversed(lines) if l.strip()), "")
    return last, "\n".join(lines[-tail:])


class StatusFile:
    """``DIR/sweep_status.json``: the sweep's spec and one record per point (thread-safe)."""

    def __init__(self, root, spec: dict):
        self.path = run_path(root) / STATUS_FILE
        self.lock = threading.Lock()
        self.data = {"spec": spec, "points": {}}

    def update(self, name: str, **fields) -> None:
        with self.lock:
            self.data["points"].setdefault(name, {}).update(fields)
            self.data["updated"] = time.strftime("%Y-%m-%d %H:%M:%S")
            counts: dict[str, int] = {}
            for p in self.data["points"].values():
                counts[p.get("status", "?")] = counts.get(p.get("status", "?"), 0) + 1
            self.data["counts"] = counts
            text = json.dumps(self.data, indent=2, sort_keys=True, default=str)
            if is_remote(self.path):
                self.path.write_text(text)
                return
            tmp = self.path.with_name(STATUS_FILE + ".tmp")
            tmp.write_text(text)
            tmp.replace(self.path)
