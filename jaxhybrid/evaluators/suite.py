"""The evaluation suite: the evaluators of ``config.evals.names`` (:data:`EVALUATORS`),
run in order, each skipped with its reason where the family or the data do not meet its
needs."""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable

from jaxhybrid.evaluators import EvalContext, Results, Section, plugins, predictions
from jaxhybrid.progress import EvalProgress

log = logging.getLogger("jaxhybrid")


@dataclasses.dataclass(frozen=True)
class Evaluator:
    fn: Callable[[EvalContext], Section]
    needs: frozenset      # output names, "ood_scores", "labels"


_CLASSES = frozenset({"logits", "labels"})
EVALUATORS: dict[str, Evaluator] = {
    "classification": Evaluator(plugins.classification, _CLASSES),
    "calibration": Evaluator(plugins.calibration, _CLASSES),
    "temperature": Evaluator(plugins.temperature_scaling, _CLASSES),
    "ood": Evaluator(plugins.ood, frozenset({"ood_scores"})),
    "adversarial": Evaluator(plugins.adversarial, _CLASSES),
    "likelihood": Evaluator(plugins.likelihood, frozenset({"log_likelihood"})),
    "predictions": Evaluator(predictions.predictions, frozenset()),
}


def evaluator_names(names: str) -> list[str]:
    out = [n.strip() for n in names.split(",") if n.strip()]
    for n in out:
        if n not in EVALUATORS:
            raise ValueError(f"Unknown evaluator {n!r} in evals.names; valid choices: "
                             f"{', '.join(EVALUATORS)}")
    return out


def unmet_needs(exp, evaluator: Evaluator) -> set[str]:
    """What ``evaluator`` needs that the family and the data do not provide."""
    available = exp.family.provides() | ({"labels"} if exp.has_labels else set())
    return set(evaluator.needs) - available


def served_by(family) -> list[str]:
    """The evaluators whose needs ``family`` meets (labels aside: the data's part)."""
    return [n for n, e in EVALUATORS.items()
            if not set(e.needs) - {"labels"} - family.provides()]


def _skipped(name: str, exp, missing: set[str]) -> Section:
    reason = (f"needs {', '.join(sorted(missing))}, which family {exp.family.name!r} "
              f"with data {exp.splits.name!r} does not provide")
    log.info("evaluator %s skipped: %s", name, reason)
    return Section(name, {"skipped": reason}, {}, f"Skipped: {reason}.")


def run_evaluators(exp, variables, predictor, out_dir: str) -> Results:
    """Every evaluator of ``evals.names``, logging progress (each evaluator and each
    split's outputs, with the suite's ETA)."""
    ctx = EvalContext(exp, variables, predictor, out_dir)
    sections = []
    chosen = evaluator_names(exp.config.evals.names)
    progress = predictor.progress = EvalProgress(chosen)
    try:
        for name in chosen:
            missing = unmet_needs(exp, EVALUATORS[name])
            if missing:
                sections.append(_skipped(name, exp, missing))
                continue
            progress.begin(name)
            sections.append(EVALUATORS[name].fn(ctx))
            progress.end(name)
    finally:
        predictor.progress = None
    metrics = {s.name: s.metrics for s in sections}
    headline = {}
    for s in sections:
        headline.update(s.headline)
    return Results(sections, metrics, headline)
