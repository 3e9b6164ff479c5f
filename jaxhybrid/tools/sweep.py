"""Sweeps: a grid of ordinary runs, one subprocess per point, resumable.

    python -m jaxhybrid.tools.sweep --config=configs/gffn.py:digits --workdir=runs/bs \\
        --sweep batch_size=16,64,256 --sweep objective.joint_weight=0,1 --seeds 3 \\
        [--set num_epochs=5 ...] [--config.key=value ...] [--jobs 1] [--dry_run]

The grid is the cartesian product of the ``--sweep KEY=V1,V2,...`` values times the
seeds ``0..N-1`` (``--seeds N``; or ``--sweep seed=...`` for explicit seeds). KEY is any
config key, nested ones dotted (``optimizer.learning_rate``, ``objective.beta``); values
split at the commas outside brackets (``model.hidden=(16,),(32, 8)``), and each is parsed
as ``jaxhybrid.main`` parses ``--config.KEY=VALUE`` (:mod:`jaxhybrid.tools.overrides`).
Without ``--sweep`` flags the config module's ``get_sweep(variant)`` declares the grid
and how :mod:`jaxhybrid.tools.aggregate` presents it (:mod:`jaxhybrid.tools.configfile`);
the presentation is recorded in ``DIR/sweep_status.json`` (``spec.aggregate``).

Every point is an ordinary run directory ``DIR/<name>``, named by its overrides with
the keys sorted and the seed last (``batch_size=16,objective.joint_weight=0,seed=0``). ``--set
KEY=VALUE`` and ``--config.KEY=VALUE`` fix a key for every point. A point runs as
``python -m jaxhybrid.main --config=FILE:VARIANT --workdir=DIR/<name> --config.K=V ...``
with its output appended to ``DIR/<name>/train.log``, so a crash in one point cannot take
the sweep down. Finished points (with ``final_metrics.json``) are skipped, so an
interrupted sweep resumes. A point directory whose saved ``config.json`` differs from the
point's config (e.g. after changing a fixed override) is listed by ``--dry_run`` as
``config differs: <keys>``, and the sweep refuses to start, writing nothing. A failed
point is recorded in ``sweep_status.json`` and the others still run; the exit status is 1
if any failed. Bad input (an unknown key, a bad value) is ``error: ...``, nothing written.
Finally :mod:`jaxhybrid.tools.aggregate` summarises ``DIR`` into ``DIR/aggregate``.

``DIR`` may be local or remote (gs://...): every file goes through ``etils.epath``. Points
share one persistent XLA compilation cache (``$JAX_COMPILATION_CACHE_DIR``, else
``DIR/jax_cache`` for a local DIR; ``--compilation_cache=none`` turns it off).
"""
from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Sequence

from absl import app, flags
from ml_collections import config_flags

from jaxhybrid.checkpointing import is_remote, run_path
from jaxhybrid.flag_errors import parse_flags_or_exit
from jaxhybrid.optim import scaled_learning_rate
from jaxhybrid.tools import aggregate
from jaxhybrid.tools.configfile import (SEED_KEY, call_with_variant, check_presentation_keys,
                                        declared_sweep, load_config_module, split_config_arg)
from jaxhybrid.tools.grid import (FINISHED_MARKER, LOG_FILE, Point, config_overrides,
                                  expand_grid, parse_sweep, point_argv, point_state,
                                  refuse_changed_points)
from jaxhybrid.tools.overrides import (apply_overrides, copy_config, format_value,
                                       parse_assignment)

log = logging.getLogger("jaxhybrid.sweep")

STATUS_FILE = aggregate.STATUS_FILE


# -- running -----------------------------------------------------------------------------
Runner = Callable[[Point], int]


def _append_log(point: Point, text: str) -> None:
    path = point.path / LOG_FILE
    old = path.read_text() if path.exists() else ""
    path.write_text(old + text)


def subprocess_runner(point: Point, *, env: dict | None = None, timeout: float = 0) -> int:
    """Run ``point.argv``, appending stdout and stderr to the point's train.log (through a
    local file, copied there after the run when the run directory is remote)."""
    point.path.mkdir(parents=True, exist_ok=True)
    remote = is_remote(point.workdir)
    with (tempfile.TemporaryFile("w+") if remote else open(point.log_path, "a")) as f:
        f.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(point.argv)}\n")
        f.flush()
        proc = subprocess.Popen(point.argv, stdout=f, stderr=subprocess.STDOUT, env=env,
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


def _learning_rate(p: Point) -> float:
    return scaled_learning_rate(p.config.optimizer, p.config.batch_size)


def _run_point(p: Point, head: str, runner: Runner, status: StatusFile) -> None:
    """Run one unfinished point and record how it went."""
    opt = p.config.optimizer
    log.info("%s: global batch %d, peak lr %.4g (%s scaling from batch %d, base lr %.4g); "
             "log: %s", head, p.config.batch_size, _learning_rate(p), opt.lr_scaling,
             opt.base_batch_size, opt.learning_rate, p.log_path)
    status.update(p.name, status="running", started=time.strftime("%Y-%m-%d %H:%M:%S"))
    p.path.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    error, tail, code = "", "", None
    try:
        code = runner(p)
        if code != 0:
            error, tail = error_from_log(p.log_path)
            error = f"exit status {code}" + (f": {error}" if error else "")
        elif not p.finished:
            error = f"exited 0 but wrote no {FINISHED_MARKER}"
    except Exception as e:  # noqa: BLE001 -- a failed point must not stop the sweep
        error = f"{type(e).__name__}: {e}"
        _, tail = error_from_log(p.log_path)
    seconds = time.time() - t0
    if error:
        log.error("%s: FAILED after %.0f s: %s (log: %s)", head, seconds, error, p.log_path)
        status.update(p.name, status="failed", error=error, log_tail=tail,
                      returncode=code, seconds=seconds)
    else:
        log.info("%s: finished in %.0f s", head, seconds)
        status.update(p.name, status="finished", returncode=code, seconds=seconds,
                      error=None, log_tail=None)


def run_sweep(points: Sequence[Point], root, *, runner: Runner | None = None,
              jobs: int = 1, spec: dict | None = None) -> dict:
    """Run every unfinished point with ``runner`` (default: a subprocess each).

    A point directory holding a run of another config is refused before anything is
    written (:func:`refuse_changed_points`). Returns the status dict also written to
    ``root/sweep_status.json``: ``{"spec", "points": {name: {"status":
    finished|skipped|failed, ...}}, "counts"}``. A point fails when the runner raises or
    returns non-zero, or returns 0 without writing ``final_metrics.json``; the other
    points still run.
    """
    refuse_changed_points(points)
    runner = runner or subprocess_runner
    run_path(root).mkdir(parents=True, exist_ok=True)
    status = StatusFile(root, spec or {})
    for p in points:
        status.update(p.name, status="pending", overrides=p.overrides, workdir=p.workdir,
                      log=p.log_path, command=shlex.join(p.argv),
                      learning_rate=_learning_rate(p))

    def run_one(i: int, p: Point) -> None:
        head = f"[{i + 1}/{len(points)}] {p.name}"
        if p.finished:
            log.info("%s: already finished, skipped", head)
            status.update(p.name, status="skipped")
        else:
            _run_point(p, head, runner, status)

    if jobs <= 1:
        for i, p in enumerate(points):
            run_one(i, p)
    else:
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            for f in [pool.submit(run_one, i, p) for i, p in enumerate(points)]:
                f.result()
    return status.data


def failed_points(result: dict) -> list[str]:
    return [k for k, v in result["points"].items() if v.get("status") == "failed"]


# -- command line ------------------------------------------------------------------------
def _define_flags():
    config_flags.DEFINE_config_file(
        "config", None, "Config file, e.g. configs/gffn.py:digits.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Sweep directory (local or gs://...); one run "
                        "directory per point.")
    flags.DEFINE_multi_string("sweep", [], "KEY=V1,V2,... (repeatable); the grid is the "
                              "product. Default: the config module's get_sweep(variant).")
    flags.DEFINE_integer("seeds", None, "Seeds 0..N-1 per point (default: get_sweep's "
                         "'seeds', else the config's seed).")
    flags.DEFINE_multi_string("set", [], "KEY=VALUE fixed for every point (repeatable).")
    flags.DEFINE_integer("jobs", 1, "Points run at once (each uses ~1.5 CPU cores).")
    flags.DEFINE_float("timeout", 0.0, "Kill a point after this many seconds (0 = never).")
    flags.DEFINE_string("compilation_cache", "", "Persistent XLA compilation cache shared "
                        "by the points: '' = $JAX_COMPILATION_CACHE_DIR or WORKDIR/jax_cache "
                        "(local WORKDIR); 'none' = off; or a directory.")
    flags.DEFINE_bool("aggregate", True, "Aggregate DIR into DIR/aggregate at the end.")
    flags.DEFINE_bool("dry_run", False, "List the points (name, state, lr, command); run "
                      "nothing.")
    flags.mark_flags_as_required(["config", "workdir"])


def plan(FLAGS) -> tuple[list[Point], dict]:
    """The points and the spec of the sweep the flags describe; every bad input (an
    unknown key, a bad value, nothing to sweep) raises before anything is written."""
    config_arg = config_flags.get_config_filename(FLAGS["config"])
    path, variant = split_config_arg(config_arg)
    module = load_config_module(path)
    reference = call_with_variant(module.get_config, variant)
    config = copy_config(FLAGS.config)            # the file's config + --config.* overrides
    apply_overrides(config, dict(parse_assignment(spec) for spec in FLAGS.set))
    seeds = None if FLAGS.seeds is None else list(range(FLAGS.seeds))
    declared = declared_sweep(module, variant)
    presentation = declared.presentation if declared is not None else {}
    check_presentation_keys(config, presentation)
    if FLAGS.sweep:
        sweep, source = parse_sweep(config, FLAGS.sweep), "--sweep flags"
    elif declared is None or not declared.grid:
        raise ValueError(f"Nothing to sweep: give --sweep KEY=V1,V2,... or define "
                         f"get_sweep(variant) in {path}")
    else:
        sweep, source = declared.grid, f"get_sweep({variant!r}) of {path}"
        if seeds is None and declared.seeds is not None:
            seeds = list(range(declared.seeds))
    if seeds is not None and not seeds:
        raise ValueError("--seeds must be >= 1")
    points = expand_grid(config, sweep, seeds, run_path(FLAGS.workdir))
    for p in points:
        p.argv = point_argv(config_arg, p, reference)
    spec = {"config": config_arg, "source": source,
            "sweep": {k: list(v) for k, v in sweep.items()},
            "seeds": sorted({p.overrides[SEED_KEY] for p in points}),
            "fixed_overrides": config_overrides(config, reference),
            "num_points": len(points), "aggregate": presentation}
    return points, spec


def dry_run(points: Sequence[Point]) -> None:
    """Print each point: its name, state (new, started, finished or 'config differs:
    <keys>'), peak learning rate and command."""
    for i, p in enumerate(points):
        print(f"[{i + 1}/{len(points)}] {p.name} ({point_state(p)}, peak lr "
              f"{_learning_rate(p):.4g})\n    " + shlex.join(p.argv))


def _environment(root: str, cache: str) -> dict:
    env = dict(os.environ)
    if cache.lower() != "none":
        local_root = None if is_remote(root) else os.path.join(root, "jax_cache")
        cache = cache or env.get("JAX_COMPILATION_CACHE_DIR") or local_root or ""
        if cache:
            env["JAX_COMPILATION_CACHE_DIR"] = cache if is_remote(cache) \
                else os.path.abspath(cache)
    return env


def _finish(root: str, result: dict, aggregate_it: bool) -> None:
    failed = failed_points(result)
    log.info("sweep done: %s", ", ".join(f"{v} {k}" for k, v in sorted(result["counts"].items())))
    if aggregate_it:
        try:
            out = aggregate.write_outputs(root)
            log.info("aggregate written to %s", out["dir"])
        except (OSError, ValueError) as e:     # report it, and still give the exit code
            log.error("aggregation of %s failed: %s", root, e)
            failed.append("<aggregate>")
    if failed:
        log.error("%d point(s) failed: %s (details in %s/%s)", len(failed), ", ".join(failed),
                  root, STATUS_FILE)
        sys.exit(1)


def main(argv) -> None:
    FLAGS = flags.FLAGS
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(message)s", force=True)
    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        points, spec = plan(FLAGS)
        root = os.fspath(run_path(FLAGS.workdir))
        log.info("sweep of %s over %s (%s) x %d seed(s) = %d points in %s; fixed overrides: "
                 "%s", spec["config"], " × ".join(f"{k}={','.join(map(format_value, v))}"
                                                  for k, v in spec["sweep"].items()),
                 spec["source"], len(spec["seeds"]), len(points), root,
                 spec["fixed_overrides"] or "none")
        if FLAGS.dry_run:
            dry_run(points)
            return
        runner_env = _environment(root, FLAGS.compilation_cache)
        result = run_sweep(points, root, jobs=FLAGS.jobs, spec=spec,
                           runner=lambda p: subprocess_runner(p, env=runner_env,
                                                              timeout=FLAGS.timeout))
    except (ValueError, FileNotFoundError) as e:
        if os.environ.get("JAXHYBRID_DEBUG"):
            raise
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
    _finish(root, result, FLAGS.aggregate)


def run() -> None:
    _define_flags()
    app.run(main, flags_parser=parse_flags_or_exit)


if __name__ == "__main__":
    run()
