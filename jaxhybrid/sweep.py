"""Sweeps: a grid of ordinary runs, one subprocess per point, resumable.

    python -m jaxhybrid.sweep --config=configs/gffn.py:digits --workdir=runs/bs \\
        --sweep batch_size=16,64,256 --sweep joint_weight=0,1 --seeds 3 \\
        [--set num_epochs=5 ...] [--config.key=value ...] [--jobs 1] [--dry_run]

The grid is the cartesian product of the ``--sweep KEY=V1,V2,...`` values times the
seeds ``0..N-1`` (``--seeds N``; or ``--sweep seed=...`` for explicit seeds). KEY is any
config key, nested ones dotted (``optimizer.learning_rate``, ``objective.beta``); values
split at the commas outside brackets (``model.hidden=(16,),(32, 8)``).

Every value, of ``--sweep``, ``--set`` or ``get_sweep``, is parsed by ml_collections'
own ``--config.KEY=VALUE`` machinery (``config_flags``) to the type of the field it
replaces, exactly as on the command line of ``jaxhybrid.main``: ``joint_weight=0`` is the
float 0.0, ``model.hidden=16`` the tuple (16,), ``evals.pgd_random_start=true`` a bool,
and ``batch_size=1.5`` an error naming the key. An unknown key is an error naming the
closest and all valid keys. :func:`apply_overrides` is that one mechanism.

Without ``--sweep`` flags the config module's optional ``get_sweep(variant)`` declares
the grid. It returns a dict whose entries are config keys with their lists of values,
``seeds`` (a count, default 1), and optionally how :mod:`jaxhybrid.aggregate` presents
the sweep (also used when ``--sweep`` flags replace the grid)::

    {"batch_size": [16, 64, 256], "joint_weight": [0.0, 1.0], "seeds": 3,
     "x": "batch_size",                       # the x axis of the figures
     "x_label": "global batch size", "x_scale": "log2",       # linear, log2, log10
     "titles": {"joint_weight": "λ"},         # short column titles
     "labels": {"joint_weight": {0.0: "FFN", 1.0: "GFFN"}},   # labels of values
     "plots": [{"metrics": ["accuracy"]},     # figures: see aggregate.PLOT_FIELDS
               {"metrics": ["ood/*/max_softmax/auroc", "ood/*/log_px/auroc"],
                "title": "OOD: {}"},          # a panel per OOD set, a line per score
               {"kind": "reliability"}]}

These entries are checked here (their keys must be config keys) and recorded in
``DIR/sweep_status.json`` (``spec.aggregate``), where the aggregation reads them.

Every point is an ordinary run directory ``DIR/<name>``, named by its overrides with
the keys sorted and the seed last, e.g. ``batch_size=16,joint_weight=0,seed=0``
(without ``--seeds`` or a declared seed count, the config's own seed is the one seed).
``--set KEY=VALUE`` and ``--config.KEY=VALUE`` fix a key for every point. A point runs as
``python -m jaxhybrid.main --config=FILE:VARIANT --workdir=DIR/<name> --config.K=V ...``
(the exact command is in ``DIR/sweep_status.json``) with its output appended to
``DIR/<name>/train.log``, so a crash or a NaN in one point cannot take the sweep down
and its memory is released. Points whose ``final_metrics.json`` exists are skipped
(an interrupted sweep resumes; unfinished points resume from their checkpoints),
unless their saved config differs from the point's config, which is an error. A
failed point is logged with its error, recorded in ``DIR/sweep_status.json`` and the
others still run; the process exits with status 1 at the end if any point failed.
The learning rate of a point follows ``optimizer.lr_scaling`` (applied by the trainer;
logged here). Finally :mod:`jaxhybrid.aggregate` summarises ``DIR`` into
``DIR/aggregate``.

Points share one persistent XLA compilation cache (``$JAX_COMPILATION_CACHE_DIR``,
else ``DIR/jax_cache``; ``--compilation_cache=none`` turns it off): the seeds of a
point compile the same programs, so only the first pays the compile time.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import difflib
import importlib.util
import itertools
import json
import logging
import math
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Mapping, Sequence

log = logging.getLogger("jaxhybrid.sweep")

STATUS_FILE = "sweep_status.json"
LOG_FILE = "train.log"
FINISHED_MARKER = "final_metrics.json"
SEED_KEY = "seed"


# -- config keys and values --------------------------------------------------------------
def flatten(config) -> dict[str, Any]:
    """ConfigDict or nested dict -> {"a.b": leaf}."""
    out: dict[str, Any] = {}

    def walk(node, prefix):
        items = node.items() if hasattr(node, "items") else []
        for k, v in items:
            key = f"{prefix}{k}"
            if hasattr(v, "items"):
                walk(v, key + ".")
            else:
                out[key] = v
    walk(config, "")
    return out


def get_field(config, key: str):
    """Current value of the dotted ``key``; a clear error naming close valid keys."""
    node = config
    for part in key.split("."):
        if not hasattr(node, "keys") or part not in node.keys():
            valid = sorted(flatten(config))
            close = difflib.get_close_matches(key, valid, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise KeyError(f"Unknown config key {key!r}.{hint} Valid keys: {', '.join(valid)}")
        node = node[part]
    if hasattr(node, "items"):
        raise KeyError(f"Config key {key!r} is a section, not a value; sweep one of its "
                       f"fields: {', '.join(sorted(k for k in flatten(node)))}")
    return node


def apply_overrides(config, overrides: Mapping[str, Any]):
    """Set ``{"a.b": value}`` on ``config`` (in place; returned) through ml_collections'
    own ``--config.KEY=VALUE`` parser (``config_flags``), to the type of each field: a
    string is read as typed on a command line, any other value as :func:`flag_value`
    writes it. An unknown key or a bad value is an error naming it."""
    from absl import flags
    from ml_collections import config_flags
    for key, value in overrides.items():
        current = get_field(config, key)       # an unknown key names the valid ones
        text = value if isinstance(value, str) else flag_value(value)
        argv = ["jaxhybrid", f"--config.{key}={text}"]
        flag_values = flags.FlagValues()
        config_flags.DEFINE_config_dict("config", config, flag_values=flag_values,
                                        lock_config=False, sys_argv=argv)
        try:
            flag_values(argv)
        except (flags.Error, ValueError, TypeError) as e:
            raise ValueError(f"Bad value {text!r} for config key {key!r} (type "
                             f"{type(current).__name__}, now {current!r}): {e}") from None
    return config


def parse_value(config, key: str, value):
    """``value`` (a command-line string or a Python value) as config field ``key`` takes
    it from ``--config.KEY=VALUE`` (:func:`apply_overrides`); ``config`` is unchanged."""
    return get_field(apply_overrides(copy_config(config), {key: value}), key)


def split_values(text: str) -> list[str]:
    """'16,64,(16,),(32, 8)' -> ['16', '64', '(16,)', '(32, 8)']: commas inside
    brackets do not split."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur).strip())
    if any(p == "" for p in parts):
        raise ValueError(f"Empty value in {text!r}; write KEY=V1,V2,...")
    return parts


def parse_assignment(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    key = key.strip()
    if key.startswith("config."):
        key = key[len("config."):]
    if not eq or not key or not value.strip():
        raise ValueError(f"Expected KEY=VALUE(S), got {text!r} (e.g. batch_size=16,64)")
    return key, value


def format_value(value) -> str:
    """Stable, short text of a value for point names: 0.0 -> '0', 1e-3 -> '0.001'."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "(" + "-".join(format_value(v) for v in value) + ")"
    return re.sub(r"[^A-Za-z0-9._+-]", "_", str(value))


def _literal(value) -> str:
    if isinstance(value, (tuple, list)):
        items = [_literal(v) for v in value]
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    return repr(value)


def flag_value(value) -> str:
    """A value as text for ``--config.KEY=``, which ml_collections' parser reads back as
    the same value: 'true', '0.001', '(16,)', "('a', 'b')"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return _literal(tuple(value))
    return str(value)


# -- the grid ----------------------------------------------------------------------------
@dataclasses.dataclass
class Point:
    name: str
    overrides: dict[str, Any]          # swept keys (and seed) -> typed values
    workdir: str
    config: Any = None                 # the resolved ConfigDict of this point
    argv: list[str] = dataclasses.field(default_factory=list)

    @property
    def log_path(self) -> str:
        return os.path.join(self.workdir, LOG_FILE)

    @property
    def finished(self) -> bool:
        return os.path.exists(os.path.join(self.workdir, FINISHED_MARKER))


def point_name(overrides: dict[str, Any]) -> str:
    """Keys sorted, seed last: 'batch_size=16,joint_weight=0,seed=0'."""
    keys = sorted(k for k in overrides if k != SEED_KEY)
    if SEED_KEY in overrides:
        keys.append(SEED_KEY)
    return ",".join(f"{k}={format_value(overrides[k])}" for k in keys)


def parse_sweep(config, specs: Sequence[str]) -> dict[str, list]:
    """['batch_size=16,64', 'joint_weight=0,1'] -> {key: [typed values]} (order kept)."""
    sweep: dict[str, list] = {}
    for spec in specs:
        key, text = parse_assignment(spec)
        if key in sweep:
            raise ValueError(f"--sweep {key} given twice")
        sweep[key] = [parse_value(config, key, v) for v in split_values(text)]
    return sweep


def expand_grid(config, sweep: dict[str, Sequence], seeds: Sequence[int] | None,
                root: str) -> list[Point]:
    """The cartesian product of ``sweep`` (key -> values, parsed to the fields' types by
    :func:`parse_value`) times ``seeds`` (None: the config's seed, unless ``seed`` is a
    swept key); each point gets its name, run directory and resolved config."""
    sweep = {k: [parse_value(config, k, v) for v in vals] for k, vals in sweep.items()}
    for k, vals in sweep.items():
        if not vals:
            raise ValueError(f"--sweep {k} has no values")
        if len(set(map(format_value, vals))) != len(vals):
            raise ValueError(f"--sweep {k} repeats a value: {vals}")
    if SEED_KEY in sweep:
        if seeds is not None:
            raise ValueError("Give the seeds either as --sweep seed=... or as --seeds N, "
                             "not both")
        axes = dict(sweep)
    else:
        axes = {**sweep, SEED_KEY: list(seeds if seeds is not None else [config.seed])}
    keys = list(axes)
    points = []
    for combo in itertools.product(*(axes[k] for k in keys)):
        overrides = dict(zip(keys, combo))
        cfg = apply_overrides(copy_config(config), overrides)
        name = point_name(overrides)
        points.append(Point(name, overrides, os.path.join(root, name), cfg))
    return points


def copy_config(config):
    import ml_collections
    cfg = ml_collections.ConfigDict(config.to_dict())
    cfg.lock()
    return cfg


# -- config modules ----------------------------------------------------------------------
def split_config_arg(arg: str) -> tuple[str, str | None]:
    """'configs/gffn.py:digits' -> ('configs/gffn.py', 'digits')."""
    m = re.match(r"^(.*?\.py)(?::(.*))?$", arg)
    if not m:
        raise ValueError(f"--config must be FILE.py[:VARIANT], got {arg!r}")
    return m.group(1), m.group(2)


def load_config_module(path: str):
    spec = importlib.util.spec_from_file_location(
        "_jaxhybrid_sweep_config_" + re.sub(r"\W", "_", os.path.abspath(path)), path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"Cannot load config file {path!r}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def call_with_variant(fn, variant):
    return fn(variant) if variant is not None else fn()


@dataclasses.dataclass
class DeclaredSweep:
    grid: dict[str, list]     # config key -> values
    seeds: int | None         # the 'seeds' count
    presentation: dict        # x, x_label, x_scale, titles, labels, plots: for aggregate


def declared_sweep(module, variant) -> DeclaredSweep | None:
    """The module's ``get_sweep(variant)`` split into grid, seeds and presentation
    (checked by :func:`jaxhybrid.aggregate.check_presentation`); None without one."""
    from jaxhybrid import aggregate
    fn = getattr(module, "get_sweep", None)
    if fn is None:
        return None
    spec = dict(call_with_variant(fn, variant) or {})
    seeds = spec.pop("seeds", None)
    presentation = aggregate.check_presentation(
        {k: spec.pop(k) for k in aggregate.PRESENTATION_KEYS if k in spec})
    for k, values in spec.items():
        if not isinstance(values, (list, tuple)):
            raise ValueError(f"get_sweep({variant!r})[{k!r}] must be a list of values, got "
                             f"{values!r} (entries that are not config keys: seeds, "
                             f"{', '.join(aggregate.PRESENTATION_KEYS)})")
    return DeclaredSweep({k: list(v) for k, v in spec.items()},
                         None if seeds is None else int(seeds), presentation)


def check_presentation_keys(config, presentation: dict) -> None:
    """The keys named by ``x``, ``titles`` and ``labels`` must be config keys."""
    keys = [presentation.get("x")] + list(presentation.get("titles", {})) \
        + list(presentation.get("labels", {}))
    for key in keys:
        if key and key != SEED_KEY:
            get_field(config, key)


def config_overrides(config, reference) -> dict[str, Any]:
    """The leaves of ``config`` that differ from ``reference`` (the file's own config)."""
    ref = flatten(reference)
    return {k: v for k, v in flatten(config).items() if k not in ref or ref[k] != v}


def point_argv(config_arg: str, point: Point, reference) -> list[str]:
    """The command line that runs ``point``: the config file plus ``--config.KEY=VALUE``
    for the point's swept keys and every other field that differs from the file's."""
    path, variant = split_config_arg(config_arg)
    config_flag = os.path.abspath(path) + (f":{variant}" if variant is not None else "")
    argv = [sys.executable, "-m", "jaxhybrid.main", f"--config={config_flag}",
            f"--workdir={point.workdir}"]
    overrides = config_overrides(point.config, reference)
    overrides.update({k: sweep_value for k, sweep_value in point.overrides.items()})
    for k, v in sorted(overrides.items()):
        argv.append(f"--config.{k}={flag_value(v)}")
    return argv


def saved_config_mismatch(point: Point) -> list[str]:
    """Keys whose value in ``point.workdir/config.json`` differs from the point's config
    (keys only one side has, e.g. a field added to the defaults since, are ignored)."""
    path = os.path.join(point.workdir, "config.json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        saved = flatten(json.load(f))
    want = flatten(json.loads(point.config.to_json_best_effort()))
    return sorted(k for k in set(saved) & set(want) if saved[k] != want[k])


# -- running -----------------------------------------------------------------------------
Runner = Callable[[Point], int]


def subprocess_runner(point: Point, *, env: dict | None = None, timeout: float = 0) -> int:
    """Run ``point.argv``, appending stdout and stderr to ``point.log_path``; the exit code."""
    os.makedirs(point.workdir, exist_ok=True)
    with open(point.log_path, "a") as f:
        f.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(point.argv)}\n")
        f.flush()
        proc = subprocess.Popen(point.argv, stdout=f, stderr=subprocess.STDOUT,
                                env=env, cwd=os.getcwd())
        try:
            return proc.wait(timeout=timeout or None)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            f.write(f"\n=== killed by the sweep after its timeout of {timeout:.0f} s\n")
            raise TimeoutError(f"point exceeded the sweep's --timeout of {timeout:.0f} s") \
                from None


def error_from_log(path: str, tail: int = 30) -> tuple[str, str]:
    """(the last error line, the last ``tail`` lines) of a point's log."""
    if not os.path.exists(path):
        return "", ""
    with open(path, errors="replace") as f:
        lines = [l.rstrip("\n") for l in f.readlines()[-400:]]
    errors = [l for l in lines if re.match(r"^\s*[\w.]*(Error|Exception|Exit)\b.*", l)
              or re.match(r"^[\w.]+(Error|Exception): ", l)]
    last = errors[-1].strip() if errors else next((l for l in reversed(lines) if l.strip()), "")
    return last, "\n".join(lines[-tail:])


class StatusFile:
    """``DIR/sweep_status.json``: the sweep's spec and one record per point (thread-safe)."""

    def __init__(self, root: str, spec: dict):
        self.path = os.path.join(root, STATUS_FILE)
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
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(self.data, f, indent=2, sort_keys=True, default=str)
            os.replace(tmp, self.path)


def run_sweep(points: Sequence[Point], root: str, *, runner: Runner | None = None,
              jobs: int = 1, spec: dict | None = None) -> dict:
    """Run every unfinished point with ``runner`` (default: a subprocess each).

    Returns the status dict also written to ``root/sweep_status.json``:
    ``{"spec", "points": {name: {"status": finished|skipped|failed, ...}}, "counts"}``.
    A point fails when the runner raises or returns non-zero, or when it returns 0
    without writing ``final_metrics.json``; the other points still run.
    """
    from jaxhybrid.optim import scaled_learning_rate
    runner = runner or subprocess_runner
    os.makedirs(root, exist_ok=True)
    status = StatusFile(root, spec or {})
    n = len(points)
    for p in points:
        lr = scaled_learning_rate(p.config.optimizer, p.config.batch_size)
        status.update(p.name, status="pending", overrides=p.overrides, workdir=p.workdir,
                      log=p.log_path, command=shlex.join(p.argv), learning_rate=lr)

    def run_one(i: int, p: Point) -> None:
        opt = p.config.optimizer
        lr = scaled_learning_rate(opt, p.config.batch_size)
        head = f"[{i + 1}/{n}] {p.name}"
        mismatch = saved_config_mismatch(p)
        if mismatch:
            msg = (f"{p.workdir} holds a run with a different config (keys "
                   f"{', '.join(mismatch[:8])}); delete it or use a fresh --workdir")
            log.error("%s: FAILED: %s", head, msg)
            status.update(p.name, status="failed", error=msg)
            return
        if p.finished:
            log.info("%s: already finished, skipped", head)
            status.update(p.name, status="skipped")
            return
        log.info("%s: global batch %d, peak lr %.4g (%s scaling from batch %d, base lr %.4g); "
                 "log: %s", head, p.config.batch_size, lr, opt.lr_scaling,
                 opt.base_batch_size, opt.learning_rate, p.log_path)
        status.update(p.name, status="running", started=time.strftime("%Y-%m-%d %H:%M:%S"))
        os.makedirs(p.workdir, exist_ok=True)
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
    from absl import flags
    from ml_collections import config_flags
    config_flags.DEFINE_config_file(
        "config", None, "Config file, e.g. configs/gffn.py:digits.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Sweep directory; one run directory per point.")
    flags.DEFINE_multi_string("sweep", [], "KEY=V1,V2,... (repeatable); the grid is the "
                              "product. Default: the config module's get_sweep(variant).")
    flags.DEFINE_integer("seeds", None, "Seeds 0..N-1 per point (default: get_sweep's "
                         "'seeds', else the config's seed).")
    flags.DEFINE_multi_string("set", [], "KEY=VALUE fixed for every point (repeatable).")
    flags.DEFINE_integer("jobs", 1, "Points run at once (each uses ~1.5 CPU cores).")
    flags.DEFINE_float("timeout", 0.0, "Kill a point after this many seconds (0 = never).")
    flags.DEFINE_string("compilation_cache", "", "Persistent XLA compilation cache shared "
                        "by the points: '' = $JAX_COMPILATION_CACHE_DIR or WORKDIR/jax_cache; "
                        "'none' = off; or a directory.")
    flags.DEFINE_bool("aggregate", True, "Aggregate DIR into DIR/aggregate at the end.")
    flags.DEFINE_bool("dry_run", False, "List the points (name, state, lr, command); run "
                      "nothing.")
    flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> None:
    from absl import app, flags
    from ml_collections import config_flags
    FLAGS = flags.FLAGS
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(message)s", force=True)
    logging.getLogger("absl").setLevel(logging.WARNING)

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
        sweep = parse_sweep(config, FLAGS.sweep)
        source = "--sweep flags"
    else:
        if declared is None or not declared.grid:
            raise app.UsageError(f"Nothing to sweep: give --sweep KEY=V1,V2,... or define "
                                 f"get_sweep(variant) in {path}")
        sweep = declared.grid
        if seeds is None and declared.seeds is not None:
            seeds = list(range(declared.seeds))
        source = f"get_sweep({variant!r}) of {path}"
    if seeds is not None and not seeds:
        raise app.UsageError("--seeds must be >= 1")

    root = os.path.abspath(FLAGS.workdir)
    points = expand_grid(config, sweep, seeds, root)
    for p in points:
        p.argv = point_argv(config_arg, p, reference)
    fixed = config_overrides(config, reference)
    spec = {"config": config_arg, "source": source,
            "sweep": {k: list(v) for k, v in sweep.items()},
            "seeds": sorted({p.overrides[SEED_KEY] for p in points}),
            "fixed_overrides": fixed, "num_points": len(points), "aggregate": presentation}
    log.info("sweep of %s over %s (%s) x %d seed(s) = %d points in %s; fixed overrides: %s",
             config_arg, " × ".join(f"{k}={','.join(map(format_value, v))}"
                                    for k, v in sweep.items()),
             source, len(spec["seeds"]), len(points), root, fixed or "none")

    if FLAGS.dry_run:
        from jaxhybrid.optim import scaled_learning_rate
        for i, p in enumerate(points):
            state = "finished" if p.finished else ("started" if os.path.isdir(p.workdir)
                                                   else "new")
            lr = scaled_learning_rate(p.config.optimizer, p.config.batch_size)
            print(f"[{i + 1}/{len(points)}] {p.name} ({state}, peak lr {lr:.4g})\n    "
                  + shlex.join(p.argv))
        return

    env = dict(os.environ)
    cache = FLAGS.compilation_cache
    if cache.lower() != "none":
        cache = cache or env.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(root, "jax_cache")
        env["JAX_COMPILATION_CACHE_DIR"] = os.path.abspath(cache)

    def runner(point: Point) -> int:
        return subprocess_runner(point, env=env, timeout=FLAGS.timeout)

    result = run_sweep(points, root, runner=runner, jobs=FLAGS.jobs, spec=spec)
    failed = failed_points(result)
    log.info("sweep done: %s", ", ".join(f"{v} {k}" for k, v in sorted(result["counts"].items())))
    if FLAGS.aggregate:
        from jaxhybrid import aggregate
        try:
            out = aggregate.write_outputs(root)
            log.info("aggregate written to %s", out["dir"])
        except Exception:  # noqa: BLE001 -- report, and still give the failure exit code
            log.exception("aggregation of %s failed", root)
            failed.append("<aggregate>")
    if failed:
        log.error("%d point(s) failed: %s (details in %s)", len(failed), ", ".join(failed),
                  os.path.join(root, STATUS_FILE))
        sys.exit(1)


def run() -> None:
    from absl import app
    _define_flags()
    app.run(main)


if __name__ == "__main__":
    run()
