"""Declarative config tables: one row per field (default, check, one-line doc).

A :class:`Schema` is one section of a config (a family's ``model`` or ``objective``):
it builds the section's defaults (:meth:`Schema.defaults`), checks a given section
(:meth:`Schema.problems`: every bad or unknown field, one line each, naming the field
and what is valid) and reads it into a plain dict of checked values (:meth:`Schema.read`).
The checks are the small functions below, shared with :mod:`jaxhybrid.config_check`
(the fields every family has): a check takes a value and returns ``None`` (valid) or
what is valid, e.g. ``"must be an int >= 1"``.

Nothing here knows a family; the families declare their tables
(``jaxhybrid/families/*.py``: ``MODEL`` and ``OBJECTIVE``).
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable, Iterable, Optional

import ml_collections

Check = Callable[[Any], Optional[str]]   # value -> None (valid) or what is valid


# -- the checks --------------------------------------------------------------------------
def is_int(v, low=None) -> bool:
    ok = isinstance(v, numbers.Integral) and not isinstance(v, bool)
    return ok and (low is None or v >= low)


def is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def integer(low: int) -> Check:
    """An int >= ``low``."""
    return lambda v: None if is_int(v, low) else f"must be an int >= {low}"


def number(low: float | None = None, high: float | None = None, *,
           low_open: bool = False, high_open: bool = False) -> Check:
    """A finite number in the interval, e.g. ``number(0, 1, high_open=True)``: [0, 1)."""
    if low is None and high is None:
        want = "(finite)"
    elif high is None:
        want = f"{'>' if low_open else '>='} {low:g}"
    else:
        want = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def check(v):
        ok = is_number(v) and (low is None or (v > low if low_open else v >= low)) and \
            (high is None or (v < high if high_open else v <= high))
        return None if ok else f"must be a number {want}"
    return check


def boolean(v) -> str | None:
    return None if isinstance(v, bool) else "must be True or False"


def one_of(choices: Iterable) -> Check:
    """One of the names (or values) a registry lists."""
    valid = list(choices)

    def check(v):
        ok = v in valid and not isinstance(v, bool)
        return None if ok else f"must be one of {', '.join(map(str, valid))}"
    return check


def parsed_by(parser: Callable[[Any], Any]) -> Check:
    """Valid when the library's own parser of the field accepts it; else its message."""
    def check(v):
        try:
            parser(v)
        except (ValueError, TypeError) as e:
            return str(e)
        return None
    return check


def ints(length: int, low: int) -> Check:
    """A tuple of ``length`` ints >= ``low``."""
    def check(v):
        ok = isinstance(v, (tuple, list)) and len(v) == length and all(is_int(x, low) for x in v)
        return None if ok else f"must be {length} ints >= {low}"
    return check


def int_tuple(low: int) -> Check:
    """A tuple of ints >= ``low``, of any length (``()`` included)."""
    def check(v):
        ok = isinstance(v, (tuple, list)) and all(is_int(x, low) for x in v)
        return None if ok else f"must be a tuple of ints >= {low}, e.g. (256,), or () for none"
    return check


def text(v) -> str | None:
    return None if isinstance(v, str) else "must be a string"


def equals(value) -> Check:
    return lambda v: None if v == value else f"must be {value!r}"


# -- the table ---------------------------------------------------------------------------
_NOTHING = object()     # a value no check accepts: its message says what is valid

@dataclasses.dataclass(frozen=True)
class Field:
    default: Any
    check: Check
    doc: str
    cast: Optional[Callable] = None     # applied by Schema.read to a valid value (e.g. float)
    valid_doc: str = ""                 # what is valid, when the check cannot say it itself

    def valid(self) -> str:
        """What the check accepts, in its own words ('must be an int >= 1')."""
        return self.valid_doc or (self.check(_NOTHING) or "").removeprefix("must be ")


def num(default, doc, low=None, high=None, **open_) -> Field:
    """A number field, read as a float."""
    return Field(float(default), number(low, high, **open_), doc, cast=float)


def count(default, doc, low=1) -> Field:
    return Field(default, integer(low), doc)


def flag(default, doc) -> Field:
    return Field(default, boolean, doc)


def choice(default, choices, doc) -> Field:
    return Field(default, one_of(choices), doc)


# A rule across fields: (the checked values) -> [(field, what is valid)]; run once the
# fields it reads (:func:`reads`; undeclared: every field of the section) are valid.
Rule = Callable[[dict], list]


def reads(*fields: str) -> Callable[[Rule], Rule]:
    """Declare the fields a rule reads, so that it runs whenever those are valid, beside
    the problems of the section's other fields."""
    def mark(rule: Rule) -> Rule:
        rule.fields = fields
        return rule
    return mark


class Schema:
    """One config section: ``{field: Field}`` plus rules across its fields."""

    def __init__(self, section: str, fields: dict[str, Field], rules: Iterable[Rule] = ()):
        self.section, self.fields, self.rules = section, dict(fields), tuple(rules)

    def key(self, name: str) -> str:
        """The dotted config key of field ``name`` (the top-level section is '')."""
        return f"{self.section}.{name}" if self.section else name

    def defaults(self, **overrides) -> ml_collections.ConfigDict:
        """The section's ConfigDict: every field at its default, then ``overrides``."""
        unknown = set(overrides) - set(self.fields)
        if unknown:
            raise ValueError(self._unknown(unknown))
        d = ml_collections.ConfigDict({k: f.default for k, f in self.fields.items()})
        d.update(overrides)
        return d

    def _unknown(self, names, siblings=()) -> str:
        moved = [s.key(n) for n in sorted(names) for s in siblings if n in s.fields]
        hint = f" (did you mean {', '.join(moved)}?)" if moved else ""
        return (f"unknown config field(s) {', '.join(self.key(n) for n in sorted(names))}"
                f"{hint}; valid fields of {self.section}: {', '.join(self.fields)}")

    def _given(self, cfg) -> dict:
        """The section's values; of the top-level section (''), its own fields only (the
        other sections are their own schemas')."""
        if cfg is None:
            return {}
        return {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items()
                if self.section or k in self.fields}

    def problems(self, cfg, siblings=()) -> list[str]:
        """One line per bad field of the section ``cfg`` (missing fields take defaults); an
        unknown field that ``siblings`` (the other sections' schemas) have is named there."""
        given = self._given(cfg)
        unknown = set(given) - set(self.fields)
        out = [self._unknown(unknown, siblings)] if unknown else []
        values = {k: given.get(k, f.default) for k, f in self.fields.items()}
        bad = {k for k, f in self.fields.items() if f.check(values[k])}
        out += [f"config field {self.key(k)} = {values[k]!r}: {self.fields[k].check(values[k])}"
                for k in self.fields if k in bad]
        for rule in self.rules:
            if not (unknown or bad & set(getattr(rule, "fields", self.fields))):
                out += [f"config field {self.key(k)} = {values[k]!r}: {why}"
                        for k, why in rule(values)]
        return out

    def read(self, cfg) -> dict:
        """The section as a dict of checked values (lists as tuples, numbers as floats);
        a ValueError listing every problem otherwise."""
        found = self.problems(cfg)
        if found:
            raise ValueError("\n".join(found))
        given = self._given(cfg)
        return {k: (f.cast or (lambda v: v))(given.get(k, f.default))
                for k, f in self.fields.items()}

    def table(self) -> str:
        """A markdown table of the fields: default, what is valid, meaning (docs)."""
        cell = lambda text: str(text).replace("|", "\\|")  # noqa: E731
        rows = [f"| `{self.key(k)}` | `{cell(repr(_plain(f.default)))}` | {cell(f.valid())} | "
                f"{cell(f.doc)} |" for k, f in self.fields.items()]
        return "\n".join(["| field | default | valid | meaning |", "|---|---|---|---|", *rows])


def _plain(value):
    """A default as plain Python (ConfigDicts inside tuples as dicts) for the docs."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return type(value)(_plain(v) for v in value)
    return value
