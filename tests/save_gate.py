"""A deterministic pause for tests that kill or signal a training run mid-way.

With ``JAXHYBRID_TEST_PAUSE_AFTER_SAVE=N`` in its environment, a training process that
calls :func:`install` (before it trains) stops in its main thread right after logging
"checkpoint saved at step N", and stays there until it receives SIGINT or SIGTERM (the
trainer's handler has recorded it) or is killed. A test that waits for that line and then
sends SIGKILL or SIGTERM therefore always lands at the same point of the run, however
loaded the machine is: a race between the test's polling and the training (which could
otherwise save a later checkpoint, or finish, before the signal arrives) cannot happen.

``tests/fixtures/save_gate/sitecustomize.py`` calls :func:`install` in every Python
started with that directory on ``PYTHONPATH`` (the SLURM jobs, whose command line the
test does not write); ``tests/test_multiprocess.py``'s boot code calls it directly.
"""
from __future__ import annotations

import os
import signal
import time

ENV = "JAXHYBRID_TEST_PAUSE_AFTER_SAVE"
SITE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "save_gate")


def install() -> None:
    """Patch the checkpointer when ``ENV`` is set (imports jaxhybrid); else do nothing."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return
    from jaxhybrid import checkpointing
    step, committed = int(raw), checkpointing.Checkpointer._committed
    paused = []

    def _committed(self) -> None:
        pending = self._pending
        committed(self)                   # logs "checkpoint saved at step N" first
        if pending == step and not paused:
            paused.append(step)
            pause_until_signalled()

    checkpointing.Checkpointer._committed = _committed


def stop_requested() -> bool:
    """Whether the trainer's SIGINT/SIGTERM handler (jaxhybrid.interrupts) has a signal."""
    handler = signal.getsignal(signal.SIGTERM)
    return bool(getattr(getattr(handler, "__self__", None), "signum", 0))


def pause_until_signalled(poll_s: float = 0.05) -> None:
    while not stop_requested():
        time.sleep(poll_s)
