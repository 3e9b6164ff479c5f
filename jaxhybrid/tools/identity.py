"""What a table row is: a metric, its exact ε, and the definition of the score it is of.

Two evaluations share a row only when the metric name AND what it measures agree:

* an attack accuracy is matched on its exact ε (as saved in metrics.json's
  ``adversarial.epsilons``), never on a rounded one: ε = 8/255 and ε = 0.03 are two rows;
* an OOD score, and the likelihood bound, carry the definition the family gives them
  (metrics.json ``definitions``; without one, the family's name stands for it): the
  classifier's ``log_px`` (log Z(x)) and the DHM's ``log_px`` (−(recon + c·KL)) are two
  rows, each labelled, with a footnote saying why.

:func:`entries` turns one metrics.json into those row identities with their values;
:func:`section_state` says why a section has no value (not run, not identifiable).
"""
from __future__ import annotations

import dataclasses

from jaxhybrid.evaluators import suite
from jaxhybrid.evaluators.adversarial import attack_accuracy, attack_name, parse_attack_accuracy
from jaxhybrid.evaluators.calibration import ECE, MCE, RMS_CE
from jaxhybrid.evaluators.classification import ACCURACY, BRIER, NLL
from jaxhybrid.evaluators.likelihood import BITS_PER_DIM, LOG_LIKELIHOOD
from jaxhybrid.evaluators.ood import parse_ood_auroc
from jaxhybrid.evaluators.temperature import ECE_AFTER_TS, NLL_AFTER_TS, TEMPERATURE

# headline name -> the evaluator section that writes it
SECTION_OF = {
    ACCURACY: "classification", NLL: "classification",
    BRIER: "classification", ECE: "calibration", MCE: "calibration",
    RMS_CE: "calibration", TEMPERATURE: "temperature",
    ECE_AFTER_TS: "temperature", NLL_AFTER_TS: "temperature",
    LOG_LIKELIHOOD: "likelihood", BITS_PER_DIM: "likelihood",
}
LIKELIHOOD_OUTPUT = "log_likelihood"     # the family output the likelihood rows are of
ROW_TITLES = {TEMPERATURE: "temperature T", ECE_AFTER_TS: "ece after TS",
              NLL_AFTER_TS: "nll after TS", LOG_LIKELIHOOD: "log p(x) bound",
              BITS_PER_DIM: "bits/dim"}


@dataclasses.dataclass(frozen=True)
class Entry:
    """One number of one evaluation, with what makes two numbers comparable."""
    key: tuple          # (metric, ε or None, definition or None): the row identity
    metric: str         # headline name (attack accuracies: ε to 4 significant digits)
    title: str          # row title without the definition
    section: str        # evaluator section of metrics.json
    defined: str        # the output or score the definition is of ('' when none applies)
    definition: str     # its definition ('' when none applies)
    value: float | None


def epsilon_text(eps: float, rel_tol: float = 1e-6) -> str:
    """0.03137254.. -> '0.03137 (8/255)'; 0.03 -> '0.03': 4 significant digits, and the
    k/255 it equals (to ``rel_tol``; 5e-4 for an ε already rounded to 4 digits)."""
    k = eps * 255
    text = f"{eps:.4g}"
    if k != 0 and abs(k - round(k)) <= rel_tol * max(k, 1.0):
        text += f" ({round(k)}/255)"
    return text


def family_of(metrics: dict, config: dict | None = None) -> str:
    """The family that wrote ``metrics``: its ``family`` field, else config.json's."""
    return str(metrics.get("family") or (config or {}).get("family") or "unknown")


def definition_of(output: str, metrics: dict, config: dict | None = None) -> str:
    """The definition of ``output`` (an OOD score or the likelihood output) in
    ``metrics``: metrics.json ``definitions``, else 'as family <name> defines it'."""
    defs = metrics.get("definitions") or {}
    if defs.get(output):
        return str(defs[output])
    return f"as family {family_of(metrics, config)} defines it"


def _scalar(metrics: dict, name: str, value, config: dict | None) -> Entry:
    defined = LIKELIHOOD_OUTPUT if SECTION_OF.get(name) == "likelihood" else ""
    definition = definition_of(defined, metrics, config) if defined else ""
    return Entry((name, None, definition or None), name, ROW_TITLES.get(name, name),
                 SECTION_OF.get(name, ""), defined, definition, value)


def _ood(metrics: dict, name: str, value, config: dict | None) -> Entry:
    set_name, score = parse_ood_auroc(name)
    definition = definition_of(score, metrics, config)
    return Entry((name, None, definition), name, f"AUROC {set_name} / {score}", "ood", score,
                 definition, value)


def _attacks(metrics: dict) -> list[Entry]:
    """Attack accuracies at the exact ε saved in metrics.json."""
    adv = metrics.get("adversarial", {})
    attack = attack_name(adv.get("attack", "attack"), adv.get("epsilon_space", "pixel"))
    out = []
    for eps, acc in zip(adv.get("epsilons", []), adv.get("accuracy", [])):
        eps = float(eps)
        out.append(Entry((attack, eps, None), attack_accuracy(attack, eps),
                         f"{attack.upper().replace('_NORMALIZED', ' (normalised units)')} acc "
                         f"ε={epsilon_text(eps)}", "adversarial", "", "",
                         acc))
    return out


def entries(metrics: dict, config: dict | None = None) -> list[Entry]:
    """The headline numbers of one metrics.json as row identities with their values
    (None where metrics.json saved none, e.g. a temperature that is not identifiable)."""
    out = []
    for name, value in suite.headline(metrics).items():
        if parse_attack_accuracy(name):
            continue
        maker = _ood if parse_ood_auroc(name) else _scalar
        out.append(maker(metrics, name, value, config))
    return out + _attacks(metrics)


def section_state(metrics: dict, section: str) -> tuple[str, str] | None:
    """Why ``section`` of ``metrics`` gives no number: ('not run', reason) or
    ('not identifiable', reason); None when it ran and has its numbers."""
    data = metrics.get(section)
    if data is None:
        return "not run", f"{section} was not among this evaluation's evals.names"
    if isinstance(data, dict) and data.get("skipped"):
        return "not run", str(data["skipped"])
    if section == "temperature" and isinstance(data, dict) \
            and data.get("identifiable") is False:
        return "not identifiable", str(data.get("reason") or "no finite NLL minimiser")
    return None
