"""Where a command's log goes: the console, ``--log_file``, and the run directory's log.

- Without ``--log_file`` every INFO line goes to stdout.
- With ``--log_file=FILE`` the full log is appended to FILE; the console keeps the
  progress lines (the ``jaxhybrid.progress`` logger: one line per log step and per
  evaluator, with the ETA), warnings and errors, so a long run is never silent.
- Every command that writes a run directory also appends its full log to
  ``<workdir>/jaxhybrid.log``, so the run keeps its own history whatever the console
  did. Lines logged before the run directory may be written (the checks) are held in
  memory and written once :func:`attach_workdir` is called, after every check passed:
  a command refused for bad input writes nothing.

Each command starts its part of a log file with a header line naming the time, host,
pid and the command line. With several processes only process 0 logs INFO (the others
warnings and errors, prefixed with their rank).
"""
from __future__ import annotations

import logging
import logging.handlers
import os
import socket
import sys
import threading
import time

import jax
from etils import epath

WORKDIR_LOG = "jaxhybrid.log"
PROGRESS = "jaxhybrid.progress"
BACKGROUND = "jaxhybrid.background"
_FORMAT = "%(asctime)s %(levelname)s {prefix}%(message)s"


def header() -> str:
    return (f"===== {time.strftime('%Y-%m-%d %H:%M:%S')} {socket.gethostname()} pid "
            f"{os.getpid()}: {' '.join(sys.argv)}")


class _ConsoleFilter(logging.Filter):
    """Beside a log file: warnings, errors and the progress lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name.startswith(PROGRESS)


class _Quiet(logging.Filter):
    """The console shows no library's traceback: orbax logs each failure of its background
    threads with one (the error that stops the command is printed as one line by the CLI;
    the log files keep them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and not record.name.startswith("jaxhybrid")) \
            and record.name != BACKGROUND


def _log_thread_error(args) -> None:
    """threading.excepthook: a background thread's failure (orbax's, after a failed save)
    goes to the log files, not as a traceback on the console."""
    logging.getLogger(BACKGROUND).error("background thread %s failed: %s: %s",
                                        getattr(args.thread, "name", "?"),
                                        args.exc_type.__name__, args.exc_value)


def _quiet_excepthook(original):
    """sys.excepthook, which also prints what a library's native callbacks raise (orbax's
    cancelled futures after a failed save: "Event loop is closed"): those go to the log
    files only; every other exception is printed as before."""
    def hook(exc_type, exc, tb):
        if exc_type is RuntimeError and "Event loop is closed" in str(exc):
            logging.getLogger(BACKGROUND).error("background callback failed: %s", exc)
            return
        original(exc_type, exc, tb)
    return hook


def _quiet_unraisablehook(original):
    """sys.unraisablehook, through which Python 3.12 reports the same callbacks' failures."""
    def hook(unraisable):
        exc = unraisable.exc_value
        if isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc):
            logging.getLogger(BACKGROUND).error("background callback failed: %s", exc)
            return
        original(unraisable)
    return hook


class _Held(logging.handlers.BufferingHandler):
    """The records logged before the run directory may be written (never flushed by
    itself; :func:`attach_workdir` writes them)."""

    def shouldFlush(self, record) -> bool:
        return False


def _file_handler(path, formatter) -> logging.Handler:
    handler = logging.FileHandler(os.fspath(path))
    handler.stream.write(header() + "\n")
    handler.setFormatter(formatter)
    return handler


def setup(log_file: str | None) -> None:
    """The handlers of a command (see the module docstring)."""
    rank, many = jax.process_index(), jax.process_count() > 1
    formatter = logging.Formatter(_FORMAT.format(prefix=f"[process {rank}] " if many else ""))
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        console = logging.StreamHandler(sys.stderr)
        console.addFilter(_ConsoleFilter())
        handlers = [_file_handler(log_file, formatter), console]
    else:
        console = logging.StreamHandler(sys.stdout)
        handlers = [console]
    console.addFilter(_Quiet())
    logging.raiseExceptions = False       # a log file on a full disk: no traceback per line
    threading.excepthook = _log_thread_error
    if not getattr(sys.excepthook, "quiet", False):
        sys.excepthook = _quiet_excepthook(sys.excepthook)
        sys.excepthook.quiet = True
    if not getattr(sys.unraisablehook, "quiet", False):
        sys.unraisablehook = _quiet_unraisablehook(sys.unraisablehook)
        sys.unraisablehook.quiet = True
    if rank == 0:
        handlers.append(_Held(capacity=100_000))
    for h in handlers:
        h.setFormatter(formatter)
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, force=True,
                        handlers=handlers)


def attach_workdir(workdir) -> None:
    """From now on the log also goes to ``<workdir>/jaxhybrid.log``, the held lines first.
    Does nothing where :func:`setup` was not called (the Python API) or on a remote
    run directory (object stores cannot append)."""
    root = logging.getLogger()
    held = [h for h in root.handlers if isinstance(h, _Held)]
    if not held or "://" in os.fspath(workdir):
        return
    path = epath.Path(workdir) / WORKDIR_LOG
    handler = _file_handler(path, held[0].formatter)
    for record in held[0].buffer:
        handler.handle(record)
    root.removeHandler(held[0])
    root.addHandler(handler)
