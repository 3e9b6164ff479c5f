"""The grid of a sweep: its points (name, run directory, config, command line) and their
state on disk. Every path is an ``etils.epath`` path, so a sweep may live on gs://.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import sys
from typing import Any, Sequence

from etils import epath

from jaxhybrid.checkpointing import run_path
from jaxhybrid.config_keys import flatten
from jaxhybrid.tools.configfile import SEED_KEY, split_config_arg
from jaxhybrid.tools.overrides import (apply_overrides, copy_config, flag_value,
                                       format_value, parse_assignment, parse_value,
                                       split_values)

LOG_FILE = "train.log"
FINISHED_MARKER = "final_metrics.json"


@dataclasses.dataclass
class Point:
    name: str
    overrides: dict[str, Any]          # swept keys (and seed) -> typed values
    workdir: str                       # local path or URI
    config: Any = None                 # the resolved ConfigDict of this point
    argv: list[str] = dataclasses.field(default_factory=list)

    @property
    def path(self) -> epath.Path:
        return run_path(self.workdir)

    @property
    def log_path(self) -> str:
        return os.fspath(self.path / LOG_FILE)

    @property
    def finished(self) -> bool:
        return (self.path / FINISHED_MARKER).exists()


def point_name(overrides: dict[str, Any]) -> str:
    """Keys sorted, seed last: 'batch_size=16,objective.joint_weight=0,seed=0'."""
    keys = sorted(k for k in overrides if k != SEED_KEY)
    if SEED_KEY in overrides:
        keys.append(SEED_KEY)
    return ",".join(f"{k}={format_value(overrides[k])}" for k in keys)


def parse_sweep(config, specs: Sequence[str]) -> dict[str, list]:
    """['batch_size=16,64', 'objective.joint_weight=0,1'] -> {key: [typed values]} (order kept)."""
    sweep: dict[str, list] = {}
    for spec in specs:
        key, text = parse_assignment(spec)
        if key in sweep:
            raise ValueError(f"--sweep {key} given twice")
        sweep[key] = [parse_value(config, key, v) for v in split_values(text)]
    return sweep


def _axes(config, sweep: dict[str, Sequence], seeds: Sequence[int] | None) -> dict:
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
        return dict(sweep)
    return {**sweep, SEED_KEY: list(seeds if seeds is not None else [config.seed])}


def expand_grid(config, sweep: dict[str, Sequence], seeds: Sequence[int] | None,
                root) -> list[Point]:
    """The cartesian product of ``sweep`` (key -> values, parsed to the fields' types by
    :func:`parse_value`) times ``seeds`` (None: the config's seed, unless ``seed`` is a
    swept key); each point gets its name, run directory under ``root`` (local or a URI)
    and resolved config."""
    axes = _axes(config, sweep, seeds)
    keys = list(axes)
    root = run_path(root)
    points = []
    for combo in itertools.product(*(axes[k] for k in keys)):
        overrides = dict(zip(keys, combo))
        cfg = apply_overrides(copy_config(config), overrides)
        name = point_name(overrides)
        points.append(Point(name, overrides, os.fspath(root / name), cfg))
    return points


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
    overrides.update(point.overrides)
    return argv + [f"--config.{k}={flag_value(v)}" for k, v in sorted(overrides.items())]


def saved_config_mismatch(point: Point) -> list[str]:
    """Keys whose value in ``point.workdir/config.json`` differs from the point's config
    (keys only one side has, e.g. a field added to the defaults since, are ignored)."""
    path = point.path / "config.json"
    if not path.exists():
        return []
    saved = flatten(json.loads(path.read_text()))
    want = flatten(json.loads(point.config.to_json_best_effort()))
    return sorted(k for k in set(saved) & set(want) if saved[k] != want[k])


def point_state(point: Point) -> str:
    """'config differs: <keys>', 'finished', 'started' or 'new'."""
    mismatch = saved_config_mismatch(point)
    if mismatch:
        return f"config differs: {', '.join(mismatch)}"
    if point.finished:
        return "finished"
    return "started" if point.path.exists() else "new"


def refuse_changed_points(points: Sequence[Point]) -> None:
    """A ValueError listing every point whose directory holds a run of another config."""
    changed = [(p, saved_config_mismatch(p)) for p in points]
    changed = [(p, keys) for p, keys in changed if keys]
    if changed:
        lines = "; ".join(f"{p.name}: config differs: {', '.join(keys)}" for p, keys in changed)
        raise ValueError(f"{len(changed)} point(s) of this sweep already hold a run with "
                         f"another config ({lines}); use a fresh --workdir, or restore the "
                         f"overrides those runs were made with")
