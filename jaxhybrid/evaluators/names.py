"""Headline metric names: the flat keys the evaluator plug-ins emit (``Section.headline``).

They are built here and nowhere else; the plug-ins, :mod:`jaxhybrid.tools.compare` and
:mod:`jaxhybrid.tools.aggregate` all use these::

    accuracy, nll, brier                          classification
    ece, mce, rms_ce                              calibration (equal-width bins)
    temperature, ece_after_ts, nll_after_ts       temperature scaling
    log_likelihood, bits_per_dim                  likelihood (the family's bound on log p(x))
    ood/<set>/<score>/auroc                       ood_auroc(set, score)
    <attack>/eps=<ε to 4 significant digits>/accuracy    attack_accuracy(attack, ε)

:func:`headline` rebuilds the same flat dict from a saved ``eval/<step>/metrics.json``,
and :func:`matches` tests a name against a pattern in which ``*`` stands for one
``/``-separated part (``ood/*/max_softmax/auroc``).
"""
from __future__ import annotations

import fnmatch
import re

ACCURACY = "accuracy"
NLL = "nll"
BRIER = "brier"
ECE = "ece"
MCE = "mce"
RMS_CE = "rms_ce"
TEMPERATURE = "temperature"
ECE_AFTER_TS = "ece_after_ts"
NLL_AFTER_TS = "nll_after_ts"
LOG_LIKELIHOOD = "log_likelihood"
BITS_PER_DIM = "bits_per_dim"

# headline name -> its field in the plug-in's section of metrics.json
_SECTION_FIELDS = {
    "classification": ((ACCURACY, "accuracy"), (NLL, "nll"), (BRIER, "brier")),
    "calibration": ((ECE, "ece"), (MCE, "mce"), (RMS_CE, "rms_ce")),   # equal_width
    "temperature": ((TEMPERATURE, "temperature"), (ECE_AFTER_TS, "ece_after"),
                    (NLL_AFTER_TS, "nll_after")),
    "likelihood": ((LOG_LIKELIHOOD, "log_likelihood_nats"), (BITS_PER_DIM, "bits_per_dim")),
}
SCALARS = tuple(name for fields in _SECTION_FIELDS.values() for name, _ in fields)

_OOD_AUROC = re.compile(r"^ood/([^/]+)/([^/]+)/auroc$")
_ATTACK_ACCURACY = re.compile(r"^([^/]+)/eps=([^/]+)/accuracy$")


def ood_auroc(set_name: str, score: str) -> str:
    """AUROC of OOD set ``set_name`` against the in-distribution split, by ``score``."""
    return f"ood/{set_name}/{score}/auroc"


def attack_name(attack: str, epsilon_space: str = "pixel") -> str:
    """The attack's name in metric names: ``fgsm``/``pgd`` in pixel units, and
    ``fgsm_normalized``/``pgd_normalized`` for ε in normalised units
    (``evals.epsilon_space``), so that the two never share a name or a table row."""
    return attack if epsilon_space in ("", "pixel") else f"{attack}_{epsilon_space}"


def attack_accuracy(attack: str, epsilon: float) -> str:
    """Accuracy under ``attack`` (fgsm, pgd) at ``epsilon`` (pixel scale [0, 1])."""
    return f"{attack}/eps={epsilon:.4g}/accuracy"


def parse_ood_auroc(name: str) -> tuple[str, str] | None:
    """'ood/heldout/log_px/auroc' -> ('heldout', 'log_px'); None for other names."""
    m = _OOD_AUROC.match(name)
    return (m.group(1), m.group(2)) if m else None


def parse_attack_accuracy(name: str) -> tuple[str, float] | None:
    """'fgsm/eps=0.03137/accuracy' -> ('fgsm', 0.03137); None for other names."""
    m = _ATTACK_ACCURACY.match(name)
    if not m:
        return None
    try:
        return m.group(1), float(m.group(2))
    except ValueError:
        return None


def headline(metrics: dict) -> dict:
    """The plug-ins' headline dict, rebuilt from a saved ``metrics.json``: scalars in
    the order of :data:`SCALARS`, then OOD AUROCs, then attack accuracies (values as
    saved; a NaN is saved as None)."""
    out: dict = {}
    for section, fields in _SECTION_FIELDS.items():
        values = metrics.get(section, {})
        if section == "calibration":
            values = values.get("equal_width", {})
        for name, field in fields:
            if field in values:
                out[name] = values[field]
    for set_name, s in metrics.get("ood", {}).get("sets", {}).items():
        for score, r in s.get("scores", {}).items():
            out[ood_auroc(set_name, score)] = r["auroc"]
    adv = metrics.get("adversarial", {})
    for eps, acc in zip(adv.get("epsilons", []), adv.get("accuracy", [])):
        out[attack_accuracy(attack_name(adv.get("attack", "attack"),
                                        adv.get("epsilon_space", "pixel")), eps)] = acc
    return out


def matches(pattern: str, name: str) -> bool:
    """Whether ``name`` fits ``pattern``: the same number of ``/``-separated parts, each
    matched as a shell pattern (``*`` for any one part: ``ood/*/max_softmax/auroc``)."""
    parts, want = name.split("/"), pattern.split("/")
    return len(parts) == len(want) and all(fnmatch.fnmatchcase(p, w)
                                           for p, w in zip(parts, want))
