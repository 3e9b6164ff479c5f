"""The ``temperature`` evaluator: temperature scaling (Guo et al., 2017), one scalar T > 0
for softmax(logits / T).

docs/metrics.md ("Temperature scaling"): fit T on a held-out split by minimising NLL, then report ECE
before and after. The fit is host-side numpy in float64.

:func:`fit_temperature` returns the minimiser clamped to [T_MIN, T_MAX];
:func:`temperature_fit` says in addition whether the minimiser is *identifiable*: a
finite T strictly inside the search range. It is not when the fit split is perfectly
classified (the NLL falls monotonically as T -> 0: no finite minimiser), when the logits
are no better than uniform on it (the NLL falls as T -> infinity), or when the minimum
lies outside [T_MIN, T_MAX]. A clamped T is then the search bound, not a calibrated
temperature, and the evaluator reports no "after" numbers.

The evaluator (:func:`evaluate`) and its headline names (:data:`TEMPERATURE`,
:data:`ECE_AFTER_TS`, :data:`NLL_AFTER_TS`: the section's ``temperature``, ``ece_after``,
``nll_after``) follow the fit.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from jaxhybrid.evaluators import EvalContext, Evaluator, Section, md_table, probs
from jaxhybrid.evaluators.calibration import calibration_metrics, reliability_diagram
# the softmax NLL is shared with training (model selection), so it lives below both
from jaxhybrid.metrics_core import check_logits, log_softmax, nll  # noqa: F401

TEMPERATURE = "temperature"
ECE_AFTER_TS = "ece_after_ts"
NLL_AFTER_TS = "nll_after_ts"

# Search range for T. The optimum is clamped to it (e.g. separable training logits would
# otherwise drive T -> 0).
T_MIN = 0.05
T_MAX = 20.0


def apply_temperature(logits, temperature):
    """logits: [..., K] -> logits / T (same array type as the input; T a positive scalar)."""
    return logits / temperature


@dataclasses.dataclass(frozen=True)
class TemperatureFit:
    """The result of :func:`temperature_fit`.

    temperature: the NLL minimiser, or None when it is not identifiable;
    bound: the search bound the NLL keeps falling towards (T_MIN or T_MAX), else None;
    reason: why it is not identifiable ('' when it is).
    """
    temperature: float | None
    identifiable: bool
    bound: float | None
    reason: str
    num_examples: int
    accuracy: float          # of the fit split's logits (argmax)


def _nll_slopes(z, z_true):
    """d NLL / d beta (beta = 1/T) at beta -> 0 and its limit at beta -> infinity."""
    at_zero = float(np.mean(z.mean(axis=1) - z_true))
    at_infinity = float(np.mean(z.max(axis=1) - z_true))
    return at_zero, at_infinity


def temperature_fit(logits, labels, *, init: float = 1.0) -> TemperatureFit:
    """Fit T as :func:`fit_temperature` does, and say whether it is identifiable.

    logits: [N, K], labels: [N] ints. With beta = 1/T the NLL is convex in beta, its slope
    rising from mean_i(mean_k z_ik - z_iy) at beta -> 0 to mean_i(max_k z_ik - z_iy) at
    beta -> infinity. The second is 0 exactly when every example's label is an argmax (the
    split is perfectly classified): the NLL then falls all the way to T -> 0 and no T is
    fitted. The first is >= 0 when the true-class logit is on average no higher than the
    mean logit: the NLL falls all the way to T -> infinity (uniform predictions). Otherwise
    a finite minimiser exists; it is identifiable here when it lies strictly inside
    [T_MIN, T_MAX].
    """
    logits, labels = check_logits(logits, labels)
    t = fit_temperature(logits, labels, init=init)
    z_true = logits[np.arange(logits.shape[0]), labels]
    at_zero, at_infinity = _nll_slopes(logits, z_true)
    acc = float(np.mean(logits.argmax(axis=1) == labels))
    n = int(logits.shape[0])
    if at_zero >= 0.0 and at_infinity <= 0.0:
        why = "the NLL does not depend on T: every example's logits tie"
        return TemperatureFit(None, False, None, why, n, acc)
    if at_infinity <= 0.0:
        why = ("the fit split is perfectly classified: its NLL falls monotonically as T -> 0, "
               "so there is no finite minimiser")
        return TemperatureFit(None, False, T_MIN, why, n, acc)
    if at_zero >= 0.0:
        why = ("the logits are no better than uniform on the fit split: its NLL falls "
               "monotonically as T -> infinity")
        return TemperatureFit(None, False, T_MAX, why, n, acc)
    if t in (T_MIN, T_MAX):
        why = (f"the NLL minimum lies {'below' if t == T_MIN else 'above'} the search range "
               f"[{T_MIN}, {T_MAX}]")
        return TemperatureFit(None, False, t, why, n, acc)
    return TemperatureFit(t, True, None, "", n, acc)


def fit_temperature(logits, labels, *, init: float = 1.0) -> float:
    """Fit one T > 0 minimising mean NLL of softmax(logits / T).

    logits: [N, K] held-out logits, labels: [N] ints -> T (Python float) in [T_MIN, T_MAX].

    Method: safeguarded Newton on beta = 1/T. The mean NLL
        f(beta) = mean_i [logsumexp(beta z_i) - beta z_{i, y_i}]
    is convex in beta with f'(beta) = mean_i (E_{p_beta}[z_i] - z_{i,y_i}) and
    f''(beta) = mean_i Var_{p_beta}[z_i] >= 0, so its minimiser (the same point as the
    minimiser over log T) is the root of f'. Newton steps start at beta = 1/init and fall
    back to bisection whenever they leave the bracket [1/T_MAX, 1/T_MIN] that is kept
    around the root. When f' has one sign on the whole bracket the optimum lies outside it
    and the nearer end is returned.
    """
    logits, labels = check_logits(logits, labels)
    if not (np.isfinite(init) and init > 0):
        raise ValueError(f"init must be a positive finite temperature, got {init!r}")
    z = logits
    z_true = z[np.arange(z.shape[0]), labels]

    def grad_hess(beta):
        logp = log_softmax(beta * z)
        p = np.exp(logp)
        mean_z = np.sum(p * z, axis=1)
        var_z = np.sum(p * (z - mean_z[:, None]) ** 2, axis=1)
        return float(np.mean(mean_z - z_true)), float(np.mean(var_z))

    lo, hi = 1.0 / T_MAX, 1.0 / T_MIN
    g_lo, _ = grad_hess(lo)
    if g_lo >= 0:  # NLL increasing in beta on the whole bracket: T as large as allowed
        return T_MAX
    g_hi, _ = grad_hess(hi)
    if g_hi <= 0:  # NLL decreasing on the whole bracket: T as small as allowed
        return T_MIN
    beta = float(np.clip(1.0 / init, lo, hi))
    for _ in range(100):
        g, h = grad_hess(beta)
        if g == 0.0:
            break
        if g > 0:
            hi = beta
        else:
            lo = beta
        step = g / h if h > 0 else np.inf
        new = beta - step
        if not (lo < new < hi):
            new = 0.5 * (lo + hi)  # bisection fallback keeps the bracket shrinking
        if abs(new - beta) <= 1e-12 * max(1.0, beta) or hi - lo <= 1e-12 * hi:
            beta = new
            break
        beta = new
    return float(1.0 / beta)


# -- the evaluator ----------------------------------------------------------------------------
_HEADLINE_FIELDS = ((TEMPERATURE, "temperature"), (ECE_AFTER_TS, "ece_after"),
                    (NLL_AFTER_TS, "nll_after"))


def headline(section: dict) -> dict:
    """{temperature, ece_after_ts, nll_after_ts} from the section's ``temperature``,
    ``ece_after``, ``nll_after`` (those it holds: a non-identifiable fit saved
    ``temperature: null`` and no "after" numbers)."""
    return {name: section[field] for name, field in _HEADLINE_FIELDS if field in section}


def evaluate(ctx: EvalContext) -> Section:
    """Fit T on the validation split (NLL), report ECE/NLL before and after on the eval split.

    A degenerate fit is reported as such, never as a result. T is fitted on the
    validation split only: never on the split reported on (that would fit the answer),
    and the training split is no alternative (the model fits it at least as closely).
    When the validation NLL has no minimiser strictly inside [T_MIN, T_MAX]
    (:func:`temperature_fit`: a perfectly classified
    validation split, whose NLL falls all the way to T -> 0; logits no better than
    uniform; a minimum outside the range), metrics.json says ``identifiable: false`` with
    ``temperature: null``, the ``bound`` the NLL runs towards and the ``reason``, and has
    no ``ece_after``/``nll_after`` and no headline ``temperature``/``ece_after_ts``/
    ``nll_after_ts``: the "after" numbers of a T clamped to the bound are those of an
    arbitrary sharpening (digits: NLL 0.036 -> 0.495 at T = 0.05), not a calibration.
    The report says why and shows the unscaled numbers only.
    """
    if len(ctx.exp.splits.validation) == 0:
        return Section("temperature", {"skipped": "empty validation split"}, {},
                       "Skipped: the validation split is empty (data.validation_size=0).")
    val = ctx.outputs("validation")
    fit = temperature_fit(val["logits"], val["label"])
    out = ctx.outputs()
    logits, labels = out["logits"], out["label"]
    bins = int(ctx.config.evals.num_bins)
    before = calibration_metrics(probs(logits), labels, num_bins=bins)
    split = ctx.config.evals.split
    m = {"identifiable": fit.identifiable, "temperature": fit.temperature,
         "fitted_on": "validation", "num_fit_examples": fit.num_examples,
         "fit_accuracy": fit.accuracy, "search_range": [T_MIN, T_MAX], "reported_on": split,
         "ece_before": before["ece"], "nll_before": nll(logits, labels)}
    if not fit.identifiable:
        return _not_identifiable(fit, m, split)
    t = fit.temperature
    scaled = np.asarray(apply_temperature(logits, t))
    after = calibration_metrics(probs(scaled), labels, num_bins=bins)
    fig = "reliability_temperature_scaled.png"
    reliability_diagram(after, os.path.join(ctx.out_dir, fig), title=f"after T={t:.3f}")
    m.update(ece_after=after["ece"], nll_after=nll(scaled, labels), reliability_after=after)
    md = (f"T = {t:.4f}, fitted by minimising NLL on the validation split ({fit.num_examples} "
          f"examples, accuracy {fit.accuracy:.4f}; the minimum lies inside the search range "
          f"[{T_MIN}, {T_MAX}]); reported on the {split} split.\n\n"
          + md_table([["before", m["ece_before"], m["nll_before"]],
                      [f"after (T={t:.3f})", m["ece_after"], m["nll_after"]]],
                     ["", "ECE", "NLL"]))
    return Section("temperature", m, headline(m), md,
                   [("Reliability after temperature scaling", fig)])


def _not_identifiable(fit: TemperatureFit, m: dict, split: str) -> Section:
    """The section of a fit with no T: why, and the unscaled numbers only; no headline."""
    m.update(bound=fit.bound, reason=fit.reason)
    bound = f" (here {fit.bound})" if fit.bound is not None else ""
    md = (f"**Not identifiable:** {fit.reason}. T was searched in [{T_MIN}, {T_MAX}] by "
          f"minimising NLL on the validation split ({fit.num_examples} examples, accuracy "
          f"{fit.accuracy:.4f}). No temperature and no "
          f"\"after\" numbers are reported: a T clamped to the search bound{bound} is "
          f"not a calibrated temperature. The {split} split, unscaled:\n\n"
          + md_table([["unscaled", m["ece_before"], m["nll_before"]]], ["", "ECE", "NLL"]))
    return Section("temperature", m, {}, md)


EVALUATOR = Evaluator("temperature", evaluate, frozenset({"logits", "labels"}), headline,
                      "Temperature scaling")
