"""Progress: training metrics fetched at log steps only, a NaN stop, rates, ETA, jsonl;
and evaluation progress per evaluator and split, with an ETA.

Step metrics stay on the device until a log step (no per-step host sync); then they
are fetched together, checked for a non-finite loss and the last is logged to stdout
and ``metrics.jsonl``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time

import jax
import numpy as np
from etils import epath

log = logging.getLogger("jaxhybrid")
# the lines kept on the console beside --log_file (jaxhybrid.logs)
progress_log = logging.getLogger("jaxhybrid.progress")


class NonFiniteLossError(FloatingPointError):
    pass


def read_jsonl(path) -> list[dict]:
    """The records of a JSON-lines file ([] when there is none). A truncated last line (a
    process killed while appending) is left out with a warning naming the file; a broken
    line before the last is an error naming the file and the line."""
    path = epath.Path(path)
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    records = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError as e:
            if i == len(lines):
                log.warning("%s: its last line is truncated (a process stopped while writing "
                            "it); it is left out", path)
                continue
            raise ValueError(f"{path} line {i} is not valid JSON ({e}); the file is "
                             f"corrupted: repair or remove that line") from None
    return records


def once_per_kind_and_step(records: list[dict]) -> list[dict]:
    """Each (kind, step) once, its last record kept, in the order of the file."""
    last = {(r.get("kind"), r.get("step")): i for i, r in enumerate(records)}
    return [r for i, r in enumerate(records) if last[(r.get("kind"), r.get("step"))] == i]


class JsonlWriter:
    """Appends records to ``metrics.jsonl`` (process 0 only; any ``epath`` path, e.g. on
    gs://). Opened at step ``start``, it first drops the records of steps after
    ``start`` (after a crash those steps are trained again), a ``final`` record, a
    truncated last line and any repeated (kind, step), so that the file holds each
    (kind, step) once. Object stores cannot append to an object, so there the whole
    file is rewritten at each record. Each record written is also handed to ``sink``
    (an object with ``write(record)``, e.g. :class:`jaxhybrid.tblog.TensorBoardSink`)."""

    def __init__(self, path, start: int = 0):
        self.path = epath.Path(path) if jax.process_index() == 0 else None
        self.sink = None
        self._lines: list[str] | None = None      # the file's lines, where it is rewritten
        if self.path is None:
            return
        remote = "://" in os.fspath(self.path)
        text = self.path.read_text() if self.path.exists() else ""
        keep = once_per_kind_and_step([r for r in read_jsonl(self.path)
                                       if r.get("step", 0) <= start and r.get("kind") != "final"])
        new = "".join(json.dumps(r) + "\n" for r in keep)
        if remote:
            self._lines = [json.dumps(r) + "\n" for r in keep]
        if new != text:
            self.path.write_text(new)

    def write(self, record: dict) -> None:
        if self.path is None:
            return
        line = json.dumps(record) + "\n"
        if self._lines is None:
            with self.path.open("a") as f:
                f.write(line)
        else:
            self._lines.append(line)
            self.path.write_text("".join(self._lines))
        if self.sink is not None:
            self.sink.write(record)


class SkipCounter:
    """Skipped updates (``optimizer.skip_nonfinite`` / ``skip_grad_norm``): counts them per
    log window and in total (since this process started), and raises NonFiniteLossError
    once ``limit`` consecutive steps were skipped."""

    def __init__(self, limit: int):
        self.limit, self.consecutive, self.total, self.window = limit, 0, 0, 0

    def add(self, step: int, skipped: bool, parts: dict) -> bool:
        if not skipped:
            self.consecutive = 0
            return False
        self.consecutive += 1
        self.total += 1
        self.window += 1
        log.warning("step %d: update skipped (loss %s, grad_norm %s)", step,
                    parts.get("loss"), parts.get("grad_norm"))
        if self.consecutive >= self.limit:
            raise NonFiniteLossError(
                f"{self.consecutive} consecutive updates skipped (steps "
                f"{step - self.consecutive + 1}"
                f"..{step}; the last: loss {parts.get('loss')}, grad_norm "
                f"{parts.get('grad_norm')}; optimizer.max_consecutive_skips = {self.limit}).")
        return True

    def window_metrics(self) -> dict:
        """{skipped_in_window, skipped_total}; resets the window."""
        out = {"skipped_in_window": float(self.window), "skipped_total": float(self.total)}
        self.window = 0
        return out


class ProgressLog:
    """Collects per-step device metrics; ``flush`` fetches, checks and logs them."""

    def __init__(self, writer: JsonlWriter, *, total: int, steps_per_epoch: int,
                 batch_size: int, max_consecutive_skips: int = 10):
        self.writer, self.total = writer, total
        self.skips = SkipCounter(max_consecutive_skips)
        self.steps_per_epoch, self.batch_size = steps_per_epoch, batch_size
        self.pending: list[tuple[int, dict]] = []
        self.t_start = self.t_window = time.time()
        self.steps_window = 0
        self.first_timed: tuple[int, float] | None = None

    def add(self, step_done: int, metrics: dict) -> None:
        self.pending.append((step_done, metrics))
        self.steps_window += 1

    def elapsed(self) -> float:
        return time.time() - self.t_start

    def _check_finite(self, steps, fetched) -> None:
        """The loss of each step, and the parameters it produced, must be finite; a skipped
        update (``skipped`` = 1) may have a non-finite loss, up to the consecutive limit."""
        for s, m in zip(steps, fetched):
            parts = {k: float(v) for k, v in m.items()}
            if self.skips.add(s, bool(m.get("skipped", 0.0)), parts):
                continue
            if not np.isfinite(m["loss"]):
                raise NonFiniteLossError(f"Loss became {m['loss']} at step {s} (parts: {parts}).")
            if not m.get("params_finite", 1.0):
                raise NonFiniteLossError(f"Parameters became non-finite in the update of step "
                                         f"{s} (its loss was finite; parts: {parts}).")

    def _eta(self, step_done: int, now: float) -> float:
        if self.first_timed is None:
            self.first_timed = (step_done, now)
            return float("nan")
        s0, t0 = self.first_timed
        return (now - t0) / max(step_done - s0, 1) * (self.total - step_done)

    def flush(self) -> dict | None:
        """Fetch pending metrics; raise NonFiniteLossError on a non-finite loss; log the last."""
        if not self.pending:
            return None
        steps = [s for s, _ in self.pending]
        fetched = jax.device_get([m for _, m in self.pending])
        self.pending.clear()
        self._check_finite(steps, fetched)
        now, step_done = time.time(), steps[-1]
        m = {k: float(v) for k, v in fetched[-1].items()}
        rate = self.steps_window * self.batch_size / max(now - self.t_window, 1e-9)
        eta = self._eta(step_done, now)
        if "skipped" in m:   # update skipping is on
            m.update(self.skips.window_metrics())
        record = {"step": step_done, "epoch": step_done / self.steps_per_epoch, **m,
                  "examples_per_sec": rate, "eta_sec": eta, "time": now - self.t_start}
        self.writer.write({"kind": "train", **record})
        parts = " ".join(f"{k} {v:.4f}" for k, v in m.items()
                         if k not in ("loss", "learning_rate", "grad_norm", "params_finite",
                                      "skipped"))
        progress_log.info("step %d/%d epoch %.2f | loss %.4f | %s | lr %.3g | %.0f ex/s | ETA %s",
                 step_done, self.total, record["epoch"], m["loss"], parts,
                 m.get("learning_rate", float("nan")), rate,
                 _clock(eta))
        self.t_window, self.steps_window = now, 0
        return record


def _clock(seconds: float) -> str:
    return "?" if math.isnan(seconds) else time.strftime("%H:%M:%S", time.gmtime(seconds))


class EvalProgress:
    """Logs each evaluator's start and end, and each split whose outputs it computes,
    with the time taken and the suite's ETA (the mean time per evaluator so far times
    the number left)."""

    def __init__(self, names: list[str]):
        self.names, self.done = list(names), 0
        self.t_start = time.time()

    def begin(self, name: str) -> None:
        self.t_evaluator = time.time()
        log.info("evaluator %s (%d/%d) ...", name, self.done + 1, len(self.names))

    def split(self, what: str, n: int, seconds: float) -> None:
        log.info("  %s: %d examples in %.1f s", what, n, seconds)

    def end(self, name: str) -> None:
        self.done += 1
        now = time.time()
        eta = (now - self.t_start) / self.done * (len(self.names) - self.done)
        progress_log.info("evaluator %s done in %.1f s (%d/%d) | ETA %s", name, now - self.t_evaluator,
                 self.done, len(self.names), _clock(eta))
