"""TensorBoard event files of a run, written without TensorFlow.

``metrics.jsonl`` stays the source of truth: the event file holds the same records,
one scalar per numeric field, tagged ``<kind>/<field>`` (``train/loss``,
``validation/val_accuracy``, ``final/ood/heldout/max_softmax/auroc``) at the record's
``step``. The writer is a sink behind :class:`jaxhybrid.progress.JsonlWriter`, so it sees
exactly the records that reach the file.

At the start of every run (fresh or resumed) :func:`open_sink` rebuilds the event file
from ``metrics.jsonl`` as :class:`~jaxhybrid.progress.JsonlWriter` has just left it
(the records of steps a resume trains again and the last ``final`` record dropped):
the previous event files of jaxhybrid (``*.jaxhybrid``) in the run directory are
removed and the kept records replayed into a new one. The curves therefore never hold a
step twice, and a run resumed with ``tensorboard=True`` after training without it gets
its whole history.

Scalars are TensorBoard's ``simple_value`` (float32), which every TensorBoard reader
understands; the float64 values are in ``metrics.jsonl``. Events are encoded with the
``tensorboard`` package's own protos and record writer (TFRecord framing with masked
CRC32C); written by process 0 only, through ``epath`` (local files are appended to;
object stores, which cannot append, get the whole file rewritten at each record).
"""
from __future__ import annotations

import io
import logging
import os
import socket
import time

import jax
from etils import epath
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from jaxhybrid.progress import read_jsonl

log = logging.getLogger("jaxhybrid")

SUFFIX = ".jaxhybrid"            # marks the event files this module writes (and may remove)
EVENTS = "events.out.tfevents."  # the prefix TensorBoard looks for


def scalars(record: dict) -> tuple[int, dict[str, float]]:
    """A metrics.jsonl record -> (step, {tag: value}): every int or float field but
    ``step`` and ``kind`` (strings and booleans are not scalars), tagged
    ``<kind>/<field>``; a record without ``kind`` is a train record."""
    kind = record.get("kind", "train")
    values = {f"{kind}/{k}": float(v) for k, v in record.items()
              if k not in ("kind", "step") and isinstance(v, (int, float))
              and not isinstance(v, bool)}
    return int(record["step"]), values


def _encode(event: event_pb2.Event) -> bytes:
    buf = io.BytesIO()
    RecordWriter(buf).write(event.SerializeToString())
    return buf.getvalue()


def event_bytes(record: dict, wall_time: float | None = None) -> bytes:
    """The framed event of one record: a Summary of its scalars at its step."""
    step, values = scalars(record)
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=t, simple_value=v)
                                         for t, v in values.items()])
    return _encode(event_pb2.Event(wall_time=time.time() if wall_time is None else wall_time,
                                   step=step, summary=summary))


class TensorBoardSink:
    """One event file in ``logdir``, rebuilt from ``records`` and appended to by
    :meth:`write` (the sink interface of :class:`~jaxhybrid.progress.JsonlWriter`)."""

    def __init__(self, logdir, records=()):
        self.logdir = epath.Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        old = sorted(p for p in self.logdir.iterdir()
                     if p.name.startswith(EVENTS) and p.name.endswith(SUFFIX))
        for p in old:
            p.unlink()
        now = time.time()
        name = f"{EVENTS}{int(now)}.{socket.gethostname()}.{os.getpid()}{SUFFIX}"
        self.path = self.logdir / name
        self._remote = "://" in os.fspath(self.path)
        data = _encode(event_pb2.Event(wall_time=now, file_version="brain.Event:2"))
        data += b"".join(event_bytes(r, now) for r in records)
        self._data = data if self._remote else None
        self.path.write_bytes(data)
        if old or records:
            log.info("tensorboard: %d record(s) of metrics.jsonl replayed into %s (replacing "
                     "%d earlier event file(s))", len(records), self.path, len(old))

    def write(self, record: dict) -> None:
        data = event_bytes(record)
        if self._remote:
            self._data += data
            self.path.write_bytes(self._data)
        else:
            with self.path.open("ab") as f:
                f.write(data)


def read_records(path) -> list[dict]:
    """The records of a metrics.jsonl file ([] when there is none)."""
    return read_jsonl(path)


def open_sink(config, run_dir) -> TensorBoardSink | None:
    """The TensorBoard sink of a run (``config.tensorboard``; process 0 only; None
    otherwise), rebuilt from ``run_dir/metrics.jsonl``: call it after the run's
    :class:`~jaxhybrid.progress.JsonlWriter` has dropped the records a resume repeats."""
    if not config.get("tensorboard", False) or jax.process_index() != 0:
        return None
    return TensorBoardSink(run_dir, read_records(epath.Path(run_dir) / "metrics.jsonl"))

