"""Evaluator plug-ins, chosen by ``config.evals.names``.

An evaluator is ``fn(ctx: EvalContext) -> Section`` and declares what it needs:
named outputs of the family (``logits``, ``log_likelihood``), ``ood_scores`` and/or
``labels``. It asks the context for outputs (computed once per split and name, only
when asked for), computes its metrics over the whole set, draws its figures into
``ctx.out_dir`` and returns a report section. The suite runs the evaluators whose
needs the family and the data meet; the others are listed as skipped, with the
reason. Adding one means adding it to ``EVALUATORS`` (:mod:`jaxhybrid.evaluators.suite`,
which runs them; this module holds what an evaluator returns and reads).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jaxhybrid.data.sources import SubsetSource



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
