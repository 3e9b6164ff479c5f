"""Evaluator plug-ins, chosen by ``config.evals.names``.

An evaluator is ``fn(ctx: EvalContext) -> Section``: it asks the context for
per-example outputs of the model family (computed once per split and shared),
computes its metrics over the whole set, draws its figures into ``ctx.out_dir``
and returns a report section. Adding one means adding it to ``EVALUATORS``.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

import numpy as np

log = logging.getLogger("jaxhybrid")


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
    params: Any
    predictor: Any
    out_dir: str
    cache: dict = dataclasses.field(default_factory=dict)

    @property
    def config(self):
        return self.exp.config

    def split_source(self, split: str | None = None):
        split = split or self.config.evals.split
        sources = {"test": self.exp.splits.test, "validation": self.exp.splits.validation,
                   "train": self.exp.splits.train}
        if split not in sources:
            raise ValueError(f"Unknown evals.split {split!r}; valid choices: "
                             f"{', '.join(sources)}")
        return sources[split]

    def outputs(self, split: str | None = None) -> dict[str, np.ndarray]:
        """Family outputs (+ 'label') on a split, computed once per suite run."""
        split = split or self.config.evals.split
        if split not in self.cache:
            self.cache[split] = self.predictor.outputs(self.params, self.split_source(split))
        return self.cache[split]

    def require_logits(self, evaluator: str) -> None:
        if self.exp.family.logits_fn is None:
            raise ValueError(f"evaluator {evaluator!r} needs class logits, which family "
                             f"{self.exp.family.name!r} does not provide")


@dataclasses.dataclass
class Results:
    sections: list
    metrics: dict
    headline: dict


def _registry() -> dict[str, Callable[[EvalContext], Section]]:
    from jaxhybrid.evaluators import plugins
    return {
        "classification": plugins.classification,
        "calibration": plugins.calibration,
        "temperature": plugins.temperature_scaling,
        "ood": plugins.ood,
        "adversarial": plugins.adversarial,
    }


def evaluator_names(names: str) -> list[str]:
    registry = _registry()
    out = [n.strip() for n in names.split(",") if n.strip()]
    for n in out:
        if n not in registry:
            raise ValueError(f"Unknown evaluator {n!r} in evals.names; valid choices: "
                             f"{', '.join(registry)}")
    return out


def run_evaluators(exp, params, predictor, out_dir: str) -> Results:
    registry = _registry()
    ctx = EvalContext(exp, params, predictor, out_dir)
    sections = []
    for name in evaluator_names(exp.config.evals.names):
        sections.append(registry[name](ctx))
    metrics = {s.name: s.metrics for s in sections}
    headline = {}
    for s in sections:
        headline.update(s.headline)
    return Results(sections, metrics, headline)
