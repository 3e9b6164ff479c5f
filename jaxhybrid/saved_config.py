"""The config a run directory saved (``config.json``), as a ConfigDict again.

``config_from_run(workdir)`` reads ``workdir/config.json`` with the budget changes of
``config_changes.jsonl`` applied, and gives the values their config types back (JSON has
lists where the config has tuples). A run saved before the families' ``objective``
section existed has its loss fields moved there, as :mod:`jaxhybrid.rundir` reads them.

This file is also a config file for ``--config``: ``jaxhybrid.main`` turns
``--config=RUN``, ``--config=RUN/config.json`` and a missing ``--config`` (with
``--workdir=RUN``) into ``--config=<this file>:RUN``, so ``--config.KEY=VALUE``
overrides work on a saved config as on any other.
"""
from __future__ import annotations

import os
import re
from typing import Any, Sequence

import ml_collections

from jaxhybrid.checkpointing import run_path
from jaxhybrid.config_defaults import base_config
from jaxhybrid.families import FAMILIES
from jaxhybrid.config_keys import flatten, unflatten
from jaxhybrid.rundir import CONFIG_FILE, RunDir, moved_to_objective


def _typed(value: Any, like: Any) -> Any:
    """A JSON value with the config's type: a list is a tuple unless the field is a list."""
    if isinstance(value, list):
        return list(value) if isinstance(like, list) else tuple(_typed(v, None) for v in value)
    if isinstance(value, float) and isinstance(like, int) and not isinstance(like, bool) \
            and value.is_integer():
        return int(value)
    return value


def config_from_run(workdir) -> ml_collections.ConfigDict:
    """The run's saved config (a locked ConfigDict); an error if it has none."""
    saved = RunDir(workdir).saved_config()
    if saved is None:
        raise FileNotFoundError(f"{run_path(workdir)} has no {CONFIG_FILE}: it holds no run "
                                f"(give --config=FILE[:VARIANT] to start one)")
    family = saved.get("family", "classifier")
    base = flatten(base_config(family).to_dict()) if family in FAMILIES else {}
    saved = moved_to_objective(saved, base)
    if base:      # a field this version no longer has cannot matter to the run: left out
        saved = {k: v for k, v in saved.items() if k in base}
    config = ml_collections.ConfigDict(unflatten(
        {k: _typed(v, base.get(k)) for k, v in saved.items()}))
    config.lock()
    return config


def get_config(workdir: str = "") -> ml_collections.ConfigDict:
    """``--config=<this file>:RUN``."""
    if not workdir:
        raise ValueError("give the run directory: --config=RUN (or --workdir=RUN alone)")
    return config_from_run(workdir)


# -- the command line: --config=RUN, --config=RUN/config.json, or no --config ----------------

def _value(argv: Sequence[str], name: str) -> tuple[int, str] | None:
    """(index, value) of the last ``--name=V`` / ``--name V`` of ``argv``."""
    found = None
    for i, a in enumerate(argv):
        m = re.match(rf"^--?{name}=(.*)$", a)
        if m:
            found = (i, m.group(1))
        elif a in (f"--{name}", f"-{name}") and i + 1 < len(argv):
            found = (i, argv[i + 1])
    return found


def _run_dir_of(value: str) -> str | None:
    """The run directory a ``--config`` value names, or None for a config file."""
    path = value.split(":", 1)[0] if "://" not in value else value
    if os.path.basename(path) == CONFIG_FILE and "://" not in value:
        return os.path.dirname(path) or "."
    if os.path.isdir(path) and (run_path(path) / CONFIG_FILE).exists():
        return path
    return None


def with_saved_config(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``--config`` pointing at a run directory's saved config where it names
    a run directory (``RUN`` or ``RUN/config.json``) or is missing (``--workdir``'s)."""
    argv = list(argv)
    this = os.path.abspath(__file__)
    given = _value(argv, "config")
    if given is not None:
        run = _run_dir_of(given[1])
        if run is not None:
            i = given[0]
            del argv[i:i + (1 if argv[i].startswith(("--config=", "-config=")) else 2)]
            argv.insert(i, f"--config={this}:{os.path.abspath(run)}")
        return argv
    workdir = _value(argv, "workdir")
    if workdir is None or any(a in ("--help", "-h", "--helpfull") for a in argv):
        return argv
    if not (run_path(workdir[1]) / CONFIG_FILE).exists():
        raise FileNotFoundError(f"no --config given, and --workdir={workdir[1]} holds no "
                                f"saved run ({CONFIG_FILE}): give --config=FILE[:VARIANT]")
    return argv[:1] + [f"--config={this}:{run_path(workdir[1])}"] + argv[1:]
