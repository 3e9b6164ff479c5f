"""SIGINT (Ctrl-C) and SIGTERM (SLURM, TPU preemption): stop cleanly, never half-written.

While :meth:`StopSignals.installed`, the first signal only sets a flag; the trainer
checks it after each step (every process at the same steps: in a multi-process run
the flags are OR-ed at log and checkpoint steps), lets the checkpoint in flight
commit, saves the current step and raises :class:`Interrupted`, whose message says
where to resume. Inside :meth:`StopSignals.raising` (evaluation) a signal raises
:class:`Interrupted` at once, so that the evaluation's own cleanup removes what it
had started to write. The CLI prints the message and exits with 128 + the signal
number, as a shell reports a process killed by it.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils

log = logging.getLogger("jaxhybrid")

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """Stopped by a signal; the message says what was kept and how to resume."""

    def __init__(self, signum: int, message: str = ""):
        super().__init__(message or f"interrupted by {signal.Signals(signum).name}")
        self.signum = int(signum)

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class StopSignals:
    """The signal handlers of one training or evaluation command."""

    def __init__(self):
        self.signum = 0                  # the first signal received (0: none)
        self._raise = False

    def _handle(self, signum, frame) -> None:
        first = not self.signum
        self.signum = self.signum or signum
        if self._raise and first:   # a repeat (a sweep forwards what the terminal sent
            raise Interrupted(signum)   # too) must not cut into the cleanup the first began
        name = signal.Signals(signum).name
        if first:
            log.warning("%s received: stopping after the current step", name)
        else:
            log.warning("%s received again: still stopping cleanly (the checkpoint in "
                        "flight is being committed)", name)

    @contextlib.contextmanager
    def installed(self):
        """Handle SIGINT and SIGTERM inside the block (main thread only; elsewhere the
        handlers cannot be set and signals keep their default behaviour)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    @contextlib.contextmanager
    def raising(self):
        """Inside the block a signal (or one received before it) raises Interrupted."""
        if self.signum:
            raise Interrupted(self.signum)
        self._raise = True
        try:
            yield
        finally:
            self._raise = False

    def requested(self, at_sync_point: bool) -> int:
        """The signal to stop for (0: none). Single process: checked at every call; with
        several processes only ``at_sync_point`` (a step every process reaches, where
        they OR their flags), so that all of them stop after the same step."""
        if jax.process_count() == 1:
            return self.signum
        if not at_sync_point:
            return 0
        flags = multihost_utils.process_allgather(np.int32(self.signum))
        return int(np.max(flags))
