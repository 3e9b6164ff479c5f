"""Dotted config keys, written once: flatten a config to ``{"a.b": leaf}`` and back, look
a key up, and name the valid keys near an unknown one.

Used by the run directory (``config.json`` against a given config), the saved-config
reader, the sweep and comparison tools, and the flag errors of every command, so that a
key is spelled, found and suggested the same way everywhere.
"""
from __future__ import annotations

import difflib
from typing import Any

MISSING = object()      # "no default": field_value raises KeyError


class ConfigKeyError(ValueError, KeyError):
    """An unknown config key, or a section where a value is needed (a ValueError, so the
    command lines print it as ``error: ...``; a KeyError for callers that look keys up)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _is_section(node) -> bool:
    return hasattr(node, "items") and hasattr(node, "keys")


def flatten(tree: Any, prefix: str = "", *, lists_as_tuples: bool = False) -> dict[str, Any]:
    """A ConfigDict or nested dict -> ``{"a.b": leaf}`` (lists as tuples if asked, the
    form a ConfigDict holds them in; an empty section has no keys)."""
    if not _is_section(tree):
        leaf = tuple(tree) if lists_as_tuples and isinstance(tree, list) else tree
        return {prefix[:-1]: leaf}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(flatten(v, f"{prefix}{k}.", lists_as_tuples=lists_as_tuples))
    return out


def unflatten(flat: dict[str, Any]) -> dict:
    """``{"a.b": leaf}`` -> the nested dict (the inverse of :func:`flatten`)."""
    out: dict = {}
    for key, value in flat.items():
        node = out
        *sections, last = key.split(".")
        for s in sections:
            node = node.setdefault(s, {})
        node[last] = value
    return out


def field_value(config, dotted: str, default=MISSING):
    """The value of the dotted field of ``config``; ``default`` (else KeyError) if absent."""
    node = config
    for part in dotted.split("."):
        try:
            node = node[part]
        except (KeyError, TypeError, AttributeError):
            if default is MISSING:
                raise KeyError(dotted) from None
            return default
    return node


def moved_keys(key: str, valid: list[str]) -> list[str]:
    """The valid keys with ``key``'s last part in another section (``model.beta`` ->
    ``objective.beta``, ``joint_weight`` -> ``objective.joint_weight``)."""
    last = key.rpartition(".")[2]
    return [k for k in valid if k.rpartition(".")[2] == last and k != key]


def near_keys(key: str, valid: list[str], *, section: bool = True) -> list[str]:
    """The valid keys near ``key``: moved to another section first, then close spellings,
    then (``section``) the other fields of its section."""
    near = moved_keys(key, valid) + difflib.get_close_matches(key, valid, n=3)
    prefix = key.rpartition(".")[0]
    if section and prefix:
        near += [k for k in valid if k.startswith(prefix + ".")]
    return list(dict.fromkeys(near))


def get_field(config, key: str):
    """The current value of the dotted ``key``; a :class:`ConfigKeyError` naming the
    valid keys near it when it is unknown or names a section."""
    node = config
    for part in key.split("."):
        if not _is_section(node) or part not in node.keys():
            valid = sorted(flatten(config))
            near = near_keys(key, valid)
            hint = f" Did you mean {', '.join(near)}?" if near else ""
            raise ConfigKeyError(f"Unknown config key {key!r}.{hint} Valid keys: "
                                 f"{', '.join(valid)}")
        node = node[part]
    if _is_section(node):
        raise ConfigKeyError(f"Config key {key!r} is a section, not a value; sweep one of "
                             f"its fields: {', '.join(sorted(flatten(node)))}")
    return node


def unknown_key_message(config, key: str) -> str | None:
    """For an override ``--config.KEY``: the message naming its first unknown part and the
    valid keys of the sub-config it is missing from (with the key it was likely meant to
    be); None when ``key`` exists."""
    node, path = config, []
    for part in key.split("."):
        name = part.split("[", 1)[0]
        where = ".".join(path)
        if not _is_section(node):
            return (f"unknown config key {key!r}: {where} is a {type(node).__name__} "
                    f"({node!r}), not a sub-config")
        if name not in node:
            valid = sorted(node.keys())
            scope = f"of {where}" if where else "at the top level"
            close = difflib.get_close_matches(name, valid, n=1)       # a misspelt part
            near = [".".join(path + close)] if close else []
            near += moved_keys(".".join(path + [name]), sorted(flatten(config)))
            hint = f" (did you mean {', '.join(dict.fromkeys(near))}?)" if near else ""
            return (f"unknown config key {key!r}{hint}; valid keys {scope}: "
                    f"{', '.join(valid)}")
        node, path = node[name], path + [name]
    return None
