"""tests/save_gate.py: the pause after a named save, which makes the kill and signal
tests of test_multiprocess.py and test_slurm.py independent of the machine's speed."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import types

from jaxhybrid import checkpointing
from jaxhybrid.interrupts import StopSignals
from tests import save_gate
from tests.helpers import REPO


def _logged_commit(self) -> None:
    """Stands in for Checkpointer._committed (which needs a real save in flight): logs the
    line it logs and clears ``_pending`` as it does."""
    checkpointing.log.info("checkpoint saved at step %d", self._pending)
    self._pending = None


def test_pauses_once_after_the_named_save_is_logged(monkeypatch, caplog):
    monkeypatch.setenv(save_gate.ENV, "8")
    monkeypatch.setattr(checkpointing.Checkpointer, "_committed", _logged_commit)
    paused = []
    monkeypatch.setattr(save_gate, "pause_until_signalled",
                        lambda: paused.append(caplog.messages[-1]))
    save_gate.install()
    with caplog.at_level(logging.INFO, logger="jaxhybrid"):
        for step in (4, 8, 12, 8):
            checkpointing.Checkpointer._committed(types.SimpleNamespace(_pending=step))
    assert paused == ["checkpoint saved at step 8"]       # after the line, once
    assert [m for m in caplog.messages if m.startswith("checkpoint saved")] == [
        f"checkpoint saved at step {s}" for s in (4, 8, 12, 8)]


def test_nothing_is_patched_without_the_variable(monkeypatch):
    monkeypatch.delenv(save_gate.ENV, raising=False)
    before = checkpointing.Checkpointer._committed
    save_gate.install()
    assert checkpointing.Checkpointer._committed is before


def test_the_pause_ends_when_the_trainer_has_a_stop_signal():
    assert not save_gate.stop_requested()                 # no trainer handler installed
    signals = StopSignals()
    with signals.installed():
        # the signal may land before or during the pause: either way it ends
        threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGTERM)).start()
        save_gate.pause_until_signalled(poll_s=0.01)
        assert save_gate.stop_requested() and signals.signum == signal.SIGTERM
    assert not save_gate.stop_requested()                 # the handlers are restored


def test_sitecustomize_installs_it_only_when_asked():
    code = ("from jaxhybrid import checkpointing as c; "
            "print(c.Checkpointer._committed.__qualname__)")
    for value, expected in (("8", "install.<locals>._committed"),
                            ("", "Checkpointer._committed")):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join((save_gate.SITE_DIR, REPO)),
                   JAX_PLATFORMS="cpu", **{save_gate.ENV: value})
        r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout.strip() == expected
