"""Checking a family's ``config.model`` fields: one mechanism for every family.

:class:`Options` merges the given fields over the family's defaults, refuses unknown
ones (naming the valid options), and collects every bad value as ``config field
model.<f> = <value>: <what is valid>``; :meth:`Options.result` raises them together.
"""
from __future__ import annotations

import numbers

import numpy as np


def is_int(v, low=None) -> bool:
    ok = isinstance(v, numbers.Integral) and not isinstance(v, bool)
    return ok and (low is None or v >= low)


def is_num(v, low=None, low_open=False) -> bool:
    ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and bool(np.isfinite(v))
    return ok and (low is None or (v > low if low_open else v >= low))


class Options:
    def __init__(self, model_cfg, defaults: dict, model: str, lists_to_tuples=True):
        given = {k: (tuple(v) if lists_to_tuples and isinstance(v, list) else v)
                 for k, v in model_cfg.items() if k != "name"}
        unknown = set(given) - set(defaults)
        if unknown:
            raise ValueError(f"Unknown option(s) {sorted(unknown)} for model {model!r}; valid "
                             f"options: {', '.join(sorted(defaults))}")
        self.o, self.bad = {**defaults, **given}, []

    def need(self, field: str, ok: bool, what: str) -> None:
        if not ok:
            self.bad.append(f"config field model.{field} = {self.o[field]!r}: {what}")

    def ints(self, fields, low: int) -> None:
        for f in fields:
            self.need(f, is_int(self.o[f], low), f"must be an int >= {low}")

    def numbers(self, fields, low: float, low_open=False) -> None:
        for f in fields:
            self.need(f, is_num(self.o[f], low, low_open),
                      f"must be a number {'>' if low_open else '>='} {low:g}")

    def one_of(self, field: str, choices) -> None:
        self.need(field, self.o[field] in choices,
                  f"must be one of {', '.join(map(str, choices))}")

    def result(self, floats=()) -> dict:
        """The options (``floats`` converted to float); raises every collected error."""
        if self.bad:
            raise ValueError("\n".join(self.bad))
        for f in floats:
            self.o[f] = float(self.o[f])
        return self.o
