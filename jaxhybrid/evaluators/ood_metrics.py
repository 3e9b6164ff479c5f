"""Out-of-distribution detection metrics: AUROC, AUPR-In/Out, FPR@95, FPR@80 (OOD-positive).

The maths of the ``ood`` evaluator (:mod:`jaxhybrid.evaluators.ood`, which also exports
:func:`ood_metrics` and :func:`roc_curve`).

Conventions follow docs/metrics.md ("Out-of-distribution detection"):
- a score s(x) where HIGHER means MORE in-distribution (max-softmax, log p(x), ELBO).
  Scores where higher means OOD (LLR>k) must be negated by the caller, and named so;
- ties are handled exactly as scikit-learn handles them: all examples with the same score
  share one threshold (one ROC / PR point), and the area under the ROC curve is the
  trapezoidal one, i.e. a tie between an in- and an OOD example counts 1/2.

Everything is computed from one sort of the pooled scores, in vectorised numpy
(benchmarks/metrics_speed.py times it on 10^6 scores); scikit-learn is only the test oracle.
"""

from __future__ import annotations

import numpy as np

# Stated in reports next to the numbers (docs/metrics.md, "Out-of-distribution detection").
FPR95_CONVENTION = (
    "FPR@95 (in-distribution positive, Hendrycks & Gimpel / Liu et al.): fraction of OOD "
    "samples with score >= t, at the largest t that keeps >= 95% of in-distribution samples"
)
FPR80_OOD_CONVENTION = (
    "FPR@80 (OOD positive, hvae-oodd): fraction of in-distribution samples with score <= u, "
    "at the smallest u that flags >= 80% of OOD samples"
)


def _as_scores(x, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of per-example scores, got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty; OOD metrics need at least one example on each side")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"{name} must be numeric, got dtype {x.dtype}")
    if np.issubdtype(x.dtype, np.integer):
        x = x.astype(np.float64)  # so that negation and inf are well defined
    if np.isnan(x).any():
        raise ValueError(f"{name} contains {np.count_nonzero(np.isnan(x))} NaN scores")
    return x


def _grouped_counts(score_in, score_out):
    """Pool, sort descending and group equal scores.

    score_in: [N_in], score_out: [N_out] ->
      thresholds: [G] distinct scores, descending;
      tps: [G] int, #in-distribution with score >= thresholds[g];
      fps: [G] int, #OOD with score >= thresholds[g].
    This is sklearn's `_binary_clf_curve` with in-distribution as the positive class.
    """
    s_in = _as_scores(score_in, "score_in")
    s_out = _as_scores(score_out, "score_out")
    n_in = s_in.shape[0]
    s = np.concatenate([s_in, s_out])  # exact promotion, so ties are the given ties
    order = np.argsort(s)[::-1]  # descending; the order inside a tie never matters below
    s_sorted = s[order]
    is_in = order < n_in  # pooled index < n_in  <=>  the example came from score_in
    # Last position of each run of equal scores: one threshold per distinct score.
    ends = np.append(np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), s.shape[0] - 1)
    tps = np.cumsum(is_in, dtype=np.int64)[ends]
    fps = ends + 1 - tps
    return s_sorted[ends], tps, fps, n_in, s_out.shape[0]


def _auroc(tps, fps, n_pos, n_neg) -> float:
    """Trapezoidal area under the ROC through (0,0) and every threshold, exact in int64."""
    t = np.concatenate([[0], tps])
    f = np.concatenate([[0], fps])
    twice_area = np.sum(np.diff(f) * (t[1:] + t[:-1]))  # integer, < 2^53 for N < 10^7
    return float(twice_area / (2.0 * n_pos * n_neg))


def _average_precision(tps, fps, n_pos) -> float:
    """sklearn's AP: sum over thresholds (descending) of (R_g - R_{g-1}) * P_g."""
    precision = tps / (tps + fps)
    d_recall = np.diff(np.concatenate([[0], tps])) / n_pos
    return float(np.sum(d_recall * precision))


def _fpr_at_tpr(tps, fps, n_pos, n_neg, target: float):
    """FPR at the first ROC point with TPR >= target, and that point's index into tps.

    Equals sklearn `fpr[np.searchsorted(tpr, target, side="left")]` for
    `fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)`.
    """
    tpr = np.concatenate([[0.0], tps / n_pos])
    k = int(np.searchsorted(tpr, target, side="left"))  # >= 1, since tpr[0] = 0 < target
    return float(fps[k - 1] / n_neg), k - 1


def ood_metrics(score_in, score_out) -> dict:
    """Threshold-free and fixed-recall OOD metrics over whole sets.

    Args:
      score_in: [N_in] scores of in-distribution examples (higher = more in-distribution).
      score_out: [N_out] scores of OOD examples, same convention.
      numpy or jax arrays, float or int; +-inf allowed, NaN rejected.

    Returns:
      dict with
        auroc: == sklearn roc_auc_score(is_in, s).
        aupr_in: == average_precision_score(is_in, s)   (in-distribution positive).
        aupr_out: == average_precision_score(is_out, -s) (OOD positive).
        fpr95: fraction of OOD with s >= fpr95_threshold, where fpr95_threshold is the
          LARGEST observed score t with fraction(score_in >= t) >= 0.95. Equivalently the
          FPR at the first point of the full ROC curve (every distinct score a threshold,
          sklearn `drop_intermediate=False`) with TPR >= 0.95. Ties: every example with
          score == t is accepted as in-distribution.
        fpr80_ood: fraction of in-distribution with s <= fpr80_ood_threshold, where
          fpr80_ood_threshold is the SMALLEST observed score u with
          fraction(score_out <= u) >= 0.80 (the same construction, OOD positive, score -s).
        num_in, num_out: N_in, N_out (AUPR depends on their ratio; report both).
    """
    thresholds, tps, fps, n_in, n_out = _grouped_counts(score_in, score_out)
    # The OOD-positive curve with score -s visits the same groups in reverse order.
    in_per_group = np.diff(np.concatenate([[0], tps]))
    out_per_group = np.diff(np.concatenate([[0], fps]))
    tps_ood = np.cumsum(out_per_group[::-1])
    fps_ood = np.cumsum(in_per_group[::-1])

    fpr95, k95 = _fpr_at_tpr(tps, fps, n_in, n_out, 0.95)  # docs/metrics.md FPR@95, in positive
    fpr80, k80 = _fpr_at_tpr(tps_ood, fps_ood, n_out, n_in, 0.80)  # hvae-oodd FPR80, OOD positive
    return {
        "auroc": _auroc(tps, fps, n_in, n_out),
        "aupr_in": _average_precision(tps, fps, n_in),
        "aupr_out": _average_precision(tps_ood, fps_ood, n_out),
        "fpr95": fpr95,
        "fpr95_threshold": float(thresholds[k95]),
        "fpr80_ood": fpr80,
        "fpr80_ood_threshold": float(thresholds[::-1][k80]),
        "num_in": int(n_in),
        "num_out": int(n_out),
    }


def roc_curve(score_in, score_out):
    """ROC curve with in-distribution as the positive class.

    score_in: [N_in], score_out: [N_out] (higher = more in-distribution) ->
      (fpr [G + 1], tpr [G + 1]) float64, starting at (0, 0), one point per distinct score
      in descending order, no point dropped; equal to sklearn
      `roc_curve(is_in, s, drop_intermediate=False)[:2]`.
    """
    _, tps, fps, n_in, n_out = _grouped_counts(score_in, score_out)
    fpr = np.concatenate([[0.0], fps / n_out])
    tpr = np.concatenate([[0.0], tps / n_in])
    return fpr, tpr
