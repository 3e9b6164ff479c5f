"""Sweeps: a grid of ordinary runs, one subprocess per point, resumable.

    python -m jaxhybrid.tools.sweep --config=configs/gffn.py:digits --workdir=runs/bs \\
        --sweep batch_size=16,64,256 --sweep objective.joint_weight=0,1 --seeds 3 \\
        [--set num_epochs=5 ...] [--config.key=value ...] [--jobs 1] [--dry_run] \\
        [--timeout 0] [--kill_after 600]

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
if any failed. Bad input is one line ``error: ...``, exit status 1, with nothing written
(no ``sweep_status.json``, no point directory), ``--dry_run`` included: an unknown key, a
value that is not of the field's type, and a value the project's config checks reject
(every point's config goes through :func:`jaxhybrid.config_check.check_config` before
anything runs, e.g. ``--sweep batch_size=0,-1``: ``config field batch_size = 0: must be an
int >= 1``). Finally :mod:`jaxhybrid.tools.aggregate` summarises ``DIR`` into
``DIR/aggregate``.

SIGINT (Ctrl-C) or SIGTERM to the sweep is forwarded to every running point (``--jobs``
of them at most); each commits a checkpoint and exits (``jaxhybrid.main`` stops after its
current step, :mod:`jaxhybrid.interrupts`), the sweep waits for them, marks them
``interrupted`` in ``sweep_status.json`` (points not started stay ``pending``), starts no
further point, prints how to resume (the same command: the interrupted points resume from
their checkpoints) and exits 130 (SIGINT) or 143 (SIGTERM), without a traceback and
without aggregating. A further signal while it waits is forwarded too; a point still
running ``--kill_after`` seconds (default 600) after the first signal is killed with
SIGKILL, the last resort, so that no point outlives the sweep (it then resumes from its
last committed checkpoint). The points stay in the sweep's process group, so a Ctrl-C in
a terminal (or a scheduler signalling every process of a job) reaches them directly as
well as through the sweep; while training, ``jaxhybrid.main`` takes a repeated signal as
the first.

``DIR`` may be local or remote (gs://...): every file goes through ``etils.epath``. Points
share one persistent XLA compilation cache (``$JAX_COMPILATION_CACHE_DIR``, else
``DIR/jax_cache`` for a local DIR; ``--compilation_cache=none`` turns it off).
"""
from __future__ import annotations

import concurrent.futures
import logging
import os
import shlex
import signal
import sys
import time
from typing import Sequence

from absl import app, flags
from ml_collections import config_flags

from jaxhybrid.checkpointing import is_remote, run_path
from jaxhybrid.config_check import check_config
from jaxhybrid.flag_errors import parse_flags_or_exit
from jaxhybrid.optim import scaled_learning_rate
from jaxhybrid.tools import aggregate
from jaxhybrid.tools.configfile import (SEED_KEY, call_with_variant, check_presentation_keys,
                                        declared_sweep, load_config_module, split_config_arg)
from jaxhybrid.tools.grid import (FINISHED_MARKER, Point, config_overrides,
                                  expand_grid, parse_sweep, point_argv, point_state,
                                  refuse_changed_points)
from jaxhybrid.tools.overrides import (apply_overrides, copy_config, format_value,
                                       parse_assignment)
from jaxhybrid.tools.point_process import (KILL_AFTER, NotStarted, Runner, StatusFile,
                                           SweepStop, error_from_log, subprocess_runner)

log = logging.getLogger("jaxhybrid.sweep")

STATUS_FILE = aggregate.STATUS_FILE


def _learning_rate(p: Point) -> float:
    return scaled_learning_rate(p.config.optimizer, p.config.batch_size)


def _record(p: Point, head: str, status: StatusFile, outcome: tuple, stop: SweepStop | None
            ) -> None:
    """Record how a point that ran went: finished, failed, or interrupted (stopped by the
    sweep's signal; it resumes from its checkpoint when the sweep is run again)."""
    code, error, tail, seconds = outcome
    if stop is not None and stop.signum and (error or code != 0):
        name = signal.Signals(stop.signum).name
        log.warning("%s: interrupted by %s after %.0f s (exit status %s); log: %s", head,
                    name, seconds, code, p.log_path)
        status.update(p.name, status="interrupted", signal=name, returncode=code,
                      seconds=seconds, error=None, log_tail=tail or None)
    elif error:
        log.error("%s: FAILED after %.0f s: %s (log: %s)", head, seconds, error, p.log_path)
        status.update(p.name, status="failed", error=error, log_tail=tail,
                      returncode=code, seconds=seconds)
    else:
        log.info("%s: finished in %.0f s", head, seconds)
        status.update(p.name, status="finished", returncode=code, seconds=seconds,
                      error=None, log_tail=None)


def _run_point(p: Point, head: str, runner: Runner, status: StatusFile,
               stop: SweepStop | None = None) -> None:
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
    except NotStarted:                    # the sweep is stopping: the point stays pending
        status.update(p.name, status="pending", started=None)
        return
    except Exception as e:  # noqa: BLE001 -- a failed point must not stop the sweep
        error = f"{type(e).__name__}: {e}"
        _, tail = error_from_log(p.log_path)
    _record(p, head, status, (code, error, tail, time.time() - t0), stop)


def check_points(points: Sequence[Point]) -> None:
    """:func:`jaxhybrid.config_check.check_config` on every point's config: one ValueError
    (one line) naming each bad field, its value and what is valid, and the points it is
    bad in. Called before anything is written or run (``--dry_run`` too)."""
    bad: dict[str, list[str]] = {}
    for p in points:
        try:
            check_config(p.config)
        except ValueError as e:
            for line in str(e).splitlines():
                bad.setdefault(line.strip(), []).append(p.name)
    if bad:
        n = len({name for names in bad.values() for name in names})
        where = {line: ", ".join(names[:3]) + (f" and {len(names) - 3} more"
                                               if len(names) > 3 else "")
                 for line, names in bad.items()}
        raise ValueError(f"{n} of the {len(points)} point(s) have a bad config: " + "; ".join(
            f"{line} (point{'s' if len(bad[line]) > 1 else ''} {where[line]})"
            for line in bad))


def run_sweep(points: Sequence[Point], root, *, runner: Runner | None = None,
              jobs: int = 1, spec: dict | None = None, stop: SweepStop | None = None) -> dict:
    """Run every unfinished point with ``runner`` (default: a subprocess each).

    Every point's config is checked (:func:`check_points`), and a point directory holding
    a run of another config is refused (:func:`refuse_changed_points`), before anything
    is written. Returns the status dict also written to ``root/sweep_status.json``:
    ``{"spec", "points": {name: {"status": finished|skipped|failed|interrupted|pending,
    ...}}, "counts"}``. A point fails when the runner raises or returns non-zero, or
    returns 0 without writing ``final_metrics.json``; the other points still run. Once
    ``stop`` has received a signal no point starts (they stay ``pending``), and a point
    that then ends without finishing is ``interrupted``.
    """
    check_points(points)
    refuse_changed_points(points)
    runner = runner or (lambda p: subprocess_runner(p, stop=stop))
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
        elif stop is None or not stop.signum:        # stopping: the point stays pending
            _run_point(p, head, runner, status, stop)

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
    flags.DEFINE_float("kill_after", KILL_AFTER, "After a SIGINT/SIGTERM (forwarded to the "
                       "running points, which save a checkpoint and stop), SIGKILL a point "
                       "still running this many seconds later (0 = never).")
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
    check_points(points)
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


def resume_command() -> str:
    """The command line of this sweep, to run again."""
    return shlex.join(["python", "-m", "jaxhybrid.tools.sweep", *sys.argv[1:]])


def _interrupted(root: str, result: dict, signum: int) -> None:
    """After a signal: what was stopped, how to resume; exit 128 + the signal number."""
    points = result["points"].values()
    stopped = sum(p.get("status") == "interrupted" for p in points)
    pending = sum(p.get("status") == "pending" for p in points)
    print(f"sweep interrupted by {signal.Signals(signum).name}: {stopped} running point(s) "
          f"stopped (each kept its last checkpoint; marked interrupted), {pending} not "
          f"started (pending); status in {root}/{STATUS_FILE}. To resume, run the same "
          f"command again:\n  {resume_command()}", file=sys.stderr)
    sys.exit(128 + signum)


def _log_plan(points: Sequence[Point], spec: dict, root: str) -> None:
    log.info("sweep of %s over %s (%s) x %d seed(s) = %d points in %s; fixed overrides: "
             "%s", spec["config"], " × ".join(f"{k}={','.join(map(format_value, v))}"
                                              for k, v in spec["sweep"].items()),
             spec["source"], len(spec["seeds"]), len(points), root,
             spec["fixed_overrides"] or "none")


def main(argv) -> None:
    FLAGS = flags.FLAGS
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(message)s", force=True)
    logging.getLogger("absl").setLevel(logging.WARNING)
    stop = SweepStop(kill_after=FLAGS.kill_after)
    try:
        points, spec = plan(FLAGS)
        root = os.fspath(run_path(FLAGS.workdir))
        _log_plan(points, spec, root)
        if FLAGS.dry_run:
            dry_run(points)
            return
        runner_env = _environment(root, FLAGS.compilation_cache)
        with stop.installed():
            result = run_sweep(points, root, jobs=FLAGS.jobs, spec=spec, stop=stop,
                               runner=lambda p: subprocess_runner(
                                   p, env=runner_env, timeout=FLAGS.timeout, stop=stop))
        if stop.signum:
            _interrupted(root, result, stop.signum)
        _finish(root, result, FLAGS.aggregate)
    except (ValueError, FileNotFoundError) as e:
        if os.environ.get("JAXHYBRID_DEBUG"):
            raise
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:      # before or after the points ran (no point is running)
        print(f"interrupted (no point was running); to resume, run the same command "
              f"again:\n  {resume_command()}", file=sys.stderr)
        sys.exit(130)


def run() -> None:
    _define_flags()
    app.run(main, flags_parser=parse_flags_or_exit)


if __name__ == "__main__":
    run()
