"""The evaluation suite: the registry of evaluator types (:data:`EVALUATORS`, each found
by its type name in the module of that name), the run of those of ``config.evals.names``
in order, each skipped with its reason where the family or the data do not meet its
needs, and the headline metric names across evaluators.

Headline names (``Section.headline``; each built by the evaluator that produces it)::

    accuracy, nll, brier                          classification
    ece, mce, rms_ce                              calibration (equal-width bins)
    temperature, ece_after_ts, nll_after_ts       temperature scaling
    log_likelihood, bits_per_dim                  likelihood (the family's bound on log p(x))
    ood/<set>/<score>/auroc                       ood.ood_auroc(set, score)
    <attack>/eps=<ε to 4 significant digits>/accuracy    adversarial.attack_accuracy(attack, ε)

:func:`headline` rebuilds the same flat dict from a saved ``eval/<step>/metrics.json``,
and :func:`matches` tests a name against a pattern in which ``*`` stands for one
``/``-separated part (``ood/*/max_softmax/auroc``).
"""
from __future__ import annotations

import fnmatch
import logging

from jaxhybrid.evaluators import (EvalContext, Evaluator, Results, Section, adversarial,
                                  calibration, classification, likelihood, ood, predictions,
                                  temperature)
from jaxhybrid.progress import EvalProgress

log = logging.getLogger("jaxhybrid")

# type name -> evaluator, in the order of evals.names' "valid choices"
EVALUATORS: dict[str, Evaluator] = {
    m.EVALUATOR.name: m.EVALUATOR
    for m in (classification, calibration, temperature, ood, adversarial, likelihood,
              predictions)}
# the order of a rebuilt headline: the scalars, then OOD AUROCs, then attack accuracies
_HEADLINE_ORDER = ("classification", "calibration", "temperature", "likelihood", "ood",
                   "adversarial")


def headline(metrics: dict) -> dict:
    """The evaluators' headline dict, rebuilt from a saved ``metrics.json`` (each
    evaluator's ``headline`` of its section): the scalars, then OOD AUROCs, then attack
    accuracies (values as saved; a NaN is saved as None)."""
    out: dict = {}
    for name in _HEADLINE_ORDER:
        out.update(EVALUATORS[name].headline(metrics.get(name, {})))
    return out


def matches(pattern: str, name: str) -> bool:
    """Whether ``name`` fits ``pattern``: the same number of ``/``-separated parts, each
    matched as a shell pattern (``*`` for any one part: ``ood/*/max_softmax/auroc``)."""
    parts, want = name.split("/"), pattern.split("/")
    return len(parts) == len(want) and all(fnmatch.fnmatchcase(p, w)
                                           for p, w in zip(parts, want))


def title(name: str) -> str:
    """The report heading of evaluator ``name``."""
    known = EVALUATORS.get(name)
    return (known.title if known else "") or name.capitalize()


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
    flat = {}
    for s in sections:
        flat.update(s.headline)
    return Results(sections, metrics, flat)
