"""The failures of absl's flag parsing, as one ``error: ...`` line for every command.

:func:`parse_flags_or_exit` parses ``jaxhybrid.main``'s and ``jaxhybrid.tools.sweep``'s
flags; :func:`flag_error_message` turns a failure (an unknown ``--config.a.b`` key, a
value of the wrong type, a config file or variant that fails) into the line printed as
``error: ...``. An unknown key names the valid keys of its sub-config, a close spelling,
and the section that has a field of that name (``model.beta`` -> ``objective.beta``,
``joint_weight`` -> ``objective.joint_weight``). The values themselves are checked
afterwards by :mod:`jaxhybrid.config_check`.
"""
from __future__ import annotations

import os
import re
import sys
from typing import Sequence

from absl import flags
from ml_collections import config_flags

from jaxhybrid.config_keys import field_value, unknown_key_message


def _config_arg(argv: Sequence[str]) -> str | None:
    """The value of the last ``--config=...`` of ``argv`` (the one absl keeps)."""
    value = None
    for i, a in enumerate(argv[1:], 1):
        m = re.match(r"^--?config=(.*)$", a)
        if m:
            value = m.group(1)
        elif a in ("--config", "-config") and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def _overrides(argv: Sequence[str]) -> list[tuple[str, str]]:
    out = []
    for a in argv[1:]:
        m = re.match(r"^--?config\.([^=]+)(?:=(.*))?$", a)
        if m:
            out.append((m.group(1), m.group(2) or ""))
    return out


def load_config(argv: Sequence[str]):
    """The config ``--config=FILE[:VARIANT]`` of ``argv`` builds (no overrides), or None."""
    value = _config_arg(argv)
    if not value:
        return None
    try:
        args = ["jaxhybrid", f"--config={value}"]
        flag_values = flags.FlagValues()
        config_flags.DEFINE_config_file("config", flag_values=flag_values, lock_config=False,
                                        sys_argv=args)
        flag_values(args)
        config = flag_values.config
        config.keys()   # a file that could not be read raises here
        return config
    except Exception:  # noqa: BLE001 - the original error is reported instead
        return None


_TYPE_NAMES = {int: "an int", float: "a number", str: "a string", bool: "True or False",
               tuple: "a tuple, e.g. (1, 2)", list: "a list"}


def _root(error: BaseException) -> BaseException:
    seen = {id(error)}
    while True:
        nxt = error.__cause__ or error.__context__
        if nxt is None or id(nxt) in seen:
            return error
        seen.add(id(nxt))
        error = nxt


def parse_flags_or_exit(argv: Sequence[str]) -> list[str]:
    """absl's flag parsing for every jaxhybrid command (main, tools.sweep): any bad flag or
    config (an unknown ``--config.a.b`` key, a value of the wrong type, an unknown variant,
    a config file that cannot be read) is ``error: ...`` and exit status 1, like every other
    bad input; the traceback only with JAXHYBRID_DEBUG=1."""
    given = list(argv)   # the message names what was given, not what absl left over
    try:
        rest = flags.FLAGS(argv)
        flags.FLAGS.config.keys()   # a config file that could not be read raises here
        return rest
    except Exception as e:  # noqa: BLE001 - whatever fails while parsing is bad input
        if os.environ.get("JAXHYBRID_DEBUG"):
            raise
        print(f"error: {flag_error_message(e, given)}", file=sys.stderr)
        sys.exit(1)


def flag_error_message(error: BaseException, argv: Sequence[str]) -> str:
    """One line (no traceback) for a failure of absl's parsing of ``argv``: an unknown
    ``--config.KEY`` names the key and the valid keys of its sub-config; a failing config
    file or variant gives the config file's own message; a value of the wrong type names
    the field's type."""
    text = str(error)
    if "Error whilst parsing config file" in text or isinstance(error, (OSError, SyntaxError)):
        value = _config_arg(argv) or ""
        path = value.split(":", 1)[0]
        if path and not os.path.exists(path):
            return f"--config={value}: no config file {path!r}"
        root = _root(error)
        return f"--config={value}: {type(root).__name__}: {' '.join(str(root).split())}"
    config = load_config(argv)
    if config is not None:
        for key, _ in _overrides(argv):
            msg = unknown_key_message(config, key)
            if msg:
                return msg
        m = re.match(r"^flag --config\.([^=]+)=(.*?): (.*)$", text, re.S)
        if m:
            current = field_value(config, m.group(1), None)
            if current is not None:
                kind = _TYPE_NAMES.get(type(current), f"a {type(current).__name__}")
                return f"{text} (config field {m.group(1)} takes {kind}, now {current!r})"
    if isinstance(error, KeyError) and error.args:
        text = str(error.args[0])
    return text
