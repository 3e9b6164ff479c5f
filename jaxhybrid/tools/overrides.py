"""Config values, parsed exactly as ``jaxhybrid.main`` parses ``--config.KEY=VALUE``.

Every value, of ``--sweep``, ``--set`` or ``get_sweep``, goes through ml_collections' own
``config_flags`` parser to the type of the field it replaces: ``objective.joint_weight=0`` is the
float 0.0, ``model.hidden=16`` the tuple (16,), ``evals.pgd_random_start=true`` a bool,
and ``batch_size=1.5`` an error naming the key. An unknown key is an error naming the keys
near it and all valid keys (:mod:`jaxhybrid.config_keys`). :func:`apply_overrides` is that
one mechanism.
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping

import ml_collections
from absl import flags
from ml_collections import config_flags

from jaxhybrid.config_keys import get_field


def apply_overrides(config, overrides: Mapping[str, Any]):
    """Set ``{"a.b": value}`` on ``config`` (in place; returned) through ml_collections'
    own ``--config.KEY=VALUE`` parser (``config_flags``), to the type of each field: a
    string is read as typed on a command line, any other value as :func:`flag_value`
    writes it. An unknown key or a bad value is an error naming it."""
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


def copy_config(config):
    """A locked copy of ``config`` (a ConfigDict)."""
    cfg = ml_collections.ConfigDict(config.to_dict())
    cfg.lock()
    return cfg
