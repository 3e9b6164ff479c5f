"""Evaluators, chosen by ``config.evals.names``: one module per evaluator type.

An evaluator is ``fn(ctx: EvalContext) -> Section`` and declares what it needs:
named outputs of the family (``logits``, ``log_likelihood``), ``ood_scores`` and/or
``labels``. It asks the context for outputs (computed once per split and name, only
when asked for), computes its metrics over the whole set, draws its figures into
``ctx.out_dir`` and returns a report section. The suite runs the evaluators whose
needs the family and the data meet; the others are listed as skipped, with the
reason.

Each type lives in the module of its name (``classification``, ``calibration``,
``temperature``, ``ood``, ``adversarial``, ``likelihood``, ``predictions``): its entry
function, report section, figures and headline metric names, and its
``EVALUATOR = Evaluator(...)``, which the registry (:mod:`jaxhybrid.evaluators.suite`)
finds by that name. Adding an evaluator means adding its module and naming it there.
This module holds what an evaluator is, returns and reads, and the two helpers every
section uses (:func:`probs`, :func:`md_table`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from jaxhybrid.data.sources import SubsetSource
from jaxhybrid.metrics_core import log_softmax


@dataclasses.dataclass
class Section:
    name: str
    metrics: dict                                  # everything, for metrics.json
    headline: dict = dataclasses.field(default_factory=dict)   # flat scalars for tables
    markdown: str = ""                             # report section body
    figures: list = dataclasses.field(default_factory=list)    # (title, filename)


@dataclasses.dataclass
class EvalContext:
    exp: Any
    variables: Any
    predictor: Any
    out_dir: str
    cache: dict = dataclasses.field(default_factory=dict)

    @property
    def config(self):
        return self.exp.config

    @property
    def family(self):
        return self.exp.family

    def split_source(self, split: str | None = None):
        """The split's source; with ``evals.max_examples`` = N > 0, its first N examples
        (e.g. equal-size in-distribution and OOD sets for an expensive S = 250 score)."""
        split = split or self.config.evals.split
        sources = {"test": self.exp.splits.test, "validation": self.exp.splits.validation,
                   "train": self.exp.splits.train}
        if split not in sources:
            raise ValueError(f"Unknown evals.split {split!r}; valid choices: "
                             f"{', '.join(sources)}")
        source, cap = sources[split], int(self.config.evals.max_examples)
        if 0 < cap < len(source):
            source = SubsetSource(source, np.arange(cap))
        return source

    def outputs(self, split: str | None = None, names=("logits",)) -> dict[str, np.ndarray]:
        """Family outputs ``names`` (+ 'label' if any) on a split; each name is computed
        once per suite run, and only when some evaluator asks for it."""
        split = split or self.config.evals.split
        have = self.cache.setdefault(split, {})
        missing = tuple(n for n in names if n not in have)
        if missing:
            have.update(self.predictor.outputs(self.variables, self.split_source(split),
                                               missing))
        return {k: have[k] for k in (*names, "label") if k in have}

    def ood_scores(self, outputs) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in self.family.ood_score_fn(outputs).items()}


@dataclasses.dataclass
class Results:
    sections: list
    metrics: dict
    headline: dict


def _no_headline(section_metrics: dict) -> dict:
    return {}


@dataclasses.dataclass(frozen=True)
class Evaluator:
    """One evaluator type. ``name``: its ``evals.names`` entry and metrics.json section;
    ``fn(ctx) -> Section``; ``needs``: output names, "ood_scores", "labels";
    ``headline(section) -> {name: value}``: its headline rebuilt from its saved section
    of metrics.json; ``title``: its report heading (default: the name, capitalised)."""
    name: str
    fn: Callable[[EvalContext], Section]
    needs: frozenset
    headline: Callable[[dict], dict] = _no_headline
    title: str = ""


def probs(logits) -> np.ndarray:
    """softmax in float64 on the host: [N, K] -> [N, K]."""
    return np.exp(log_softmax(np.asarray(logits, np.float64)))


def md_table(rows: list[list], header: list[str]) -> str:
    """A markdown table; floats to 4 decimals, a '|' inside a cell escaped."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4f}"
        return str(v).replace("|", "\\|")   # a '|' inside a cell (q(z|x)) would split it
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def definition(family, name: str) -> str:
    """The family's one-line definition of output or score ``name`` (or says it has none)."""
    return family.definitions.get(name, f"(family {family.name!r} gives no definition)")
