"""Evaluator plug-ins, chosen by ``config.evals.names``.

An evaluator is ``fn(ctx: EvalContext) -> Section`` and declares what it needs:
named outputs of the family (``logits``, ``log_likelihood``), ``ood_scores`` and/or
``labels``. It asks the context for outputs (computed once per split and name, only
when asked for), computes its metrics over the whole set, draws its figures into
``ctx.out_dir`` and returns a report section. The suite runs the evaluators whose
needs the family and the data meet; the others are listed as skipped, with the
reason. Adding one means adding it to ``EVALUATORS``.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

import numpy as np

from jaxhybrid.progress import EvalProgress

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
        split = split or self.config.evals.split
        sources = {"test": self.exp.splits.test, "validation": self.exp.splits.validation,
                   "train": self.exp.splits.train}
        if split not in sources:
            raise ValueError(f"Unknown evals.split {split!r}; valid choices: "
                             f"{', '.join(sources)}")
        return sources[split]

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


@dataclasses.dataclass(frozen=True)
class Evaluator:
    fn: Callable[[EvalContext], Section]
    needs: frozenset      # output names, "ood_scores", "labels"


def _registry() -> dict[str, Evaluator]:
    from jaxhybrid.evaluators import plugins, predictions
    classes = frozenset({"logits", "labels"})
    return {
        "classification": Evaluator(plugins.classification, classes),
        "calibration": Evaluator(plugins.calibration, classes),
        "temperature": Evaluator(plugins.temperature_scaling, classes),
        "ood": Evaluator(plugins.ood, frozenset({"ood_scores"})),
        "adversarial": Evaluator(plugins.adversarial, classes),
        "likelihood": Evaluator(plugins.likelihood, frozenset({"log_likelihood"})),
        "predictions": Evaluator(predictions.predictions, frozenset()),
    }


def evaluator_names(names: str) -> list[str]:
    registry = _registry()
    out = [n.strip() for n in names.split(",") if n.strip()]
    for n in out:
        if n not in registry:
            raise ValueError(f"Unknown evaluator {n!r} in evals.names; valid choices: "
                             f"{', '.join(registry)}")
    return out


def unmet_needs(exp, evaluator: Evaluator) -> set[str]:
    """What ``evaluator`` needs that the family and the data do not provide."""
    available = exp.family.provides() | ({"labels"} if exp.has_labels else set())
    return set(evaluator.needs) - available


def _skipped(name: str, exp, missing: set[str]) -> Section:
    reason = (f"needs {', '.join(sorted(missing))}, which family {exp.family.name!r} "
              f"with data {exp.splits.name!r} does not provide")
    log.info("evaluator %s skipped: %s", name, reason)
    return Section(name, {"skipped": reason}, {}, f"Skipped: {reason}.")


def run_evaluators(exp, variables, predictor, out_dir: str) -> Results:
    """Every evaluator of ``evals.names``, logging progress (each evaluator and each
    split's outputs, with the suite's ETA)."""
    registry = _registry()
    ctx = EvalContext(exp, variables, predictor, out_dir)
    sections = []
    chosen = evaluator_names(exp.config.evals.names)
    progress = predictor.progress = EvalProgress(chosen)
    try:
        for name in chosen:
            missing = unmet_needs(exp, registry[name])
            if missing:
                sections.append(_skipped(name, exp, missing))
                continue
            progress.begin(name)
            sections.append(registry[name].fn(ctx))
            progress.end(name)
    finally:
        predictor.progress = None
    metrics = {s.name: s.metrics for s in sections}
    headline = {}
    for s in sections:
        headline.update(s.headline)
    return Results(sections, metrics, headline)
