"""Top-label calibration metrics: ECE, MCE, RMS-CE and reliability-diagram statistics.

Conventions follow docs/metrics.md ("Calibration"):
- confidence c_i = max_k p(k|x_i), prediction = argmax_k p(k|x_i), correct = 1[pred == y];
- bin m (0-based) covers (lo_m, hi_m]; c == 0 goes to the first bin, c == 1.0 to the last;
- every metric is computed over the whole evaluation set in one call, never averaged
  over batches. Callers accumulate probabilities (or confidences) for the full set first.

Bin assignment, precisely: the edges are float64 values e_0 < ... < e_M (for equal-width
bins e_m = m / M, the float64 nearest to the rational m/M, so e_0 = 0.0 and e_M = 1.0).
The confidence is taken exactly as given (float32 inputs are promoted to float64, which is
lossless), and its bin is

    bin(c) = clip(searchsorted(e, c, side="left") - 1, 0, M - 1),

i.e. the m with e_m < c <= e_{m+1}. A confidence equal to an edge e_m (m >= 1) therefore
lands in bin m - 1, the bin that edge closes. Note that a float32 value such as
float32(0.2) = 0.20000000298... is strictly above the float64 edge 3/15 and lands in the
bin (0.2, 0.2667], while the float64 value 0.2 == 3/15 lands in (0.1333, 0.2].

Pure numpy on the host: no jax import, no per-example Python loop.
"""

from __future__ import annotations

import numpy as np

from jaxhybrid.metrics_core import check_scores_and_labels

BINNINGS = ("equal_width", "equal_mass")


def _top_label(probs, labels):
    """probs: [N, K], labels: [N] ints -> (confidence [N] float64, correct [N] bool)."""
    probs, labels = check_scores_and_labels(probs, labels, "probs")
    pred = probs.argmax(axis=1)  # docs/metrics.md: prediction = argmax_k p(k|x)
    # Gather at the argmax instead of probs.max(1): the same value, about 3x faster.
    conf = probs[np.arange(probs.shape[0]), pred].astype(np.float64)  # top-label confidence
    return conf, pred == labels


def bin_edges(confidence, num_bins: int, binning: str) -> np.ndarray:
    """Bin edges e_0..e_M: [M + 1] float64, e_0 = 0.0, e_M = 1.0, non-decreasing.

    equal_width: e_m = m / M.
    equal_mass: e_m = the m/M quantile of the confidences (numpy's default "linear"
      quantile), for 0 < m < M. Bins close on the right like the equal-width ones, so tied
      confidences are never split across bins; when many confidences tie (float32
      softmax saturating at 1.0), several edges coincide and the bins between them are
      empty.
    """
    if binning == "equal_width":
        return np.arange(num_bins + 1, dtype=np.float64) / num_bins
    if binning == "equal_mass":
        inner = np.quantile(np.asarray(confidence, np.float64), np.arange(1, num_bins) / num_bins)
        return np.concatenate([[0.0], np.clip(inner, 0.0, 1.0), [1.0]])
    raise ValueError(f"unknown binning {binning!r}; valid choices: {', '.join(BINNINGS)}")


def assign_bins(confidence, edges) -> np.ndarray:
    """confidence: [N] in [0, 1], edges: [M + 1] -> bin index [N] int in [0, M - 1].

    Bin m covers (e_m, e_{m+1}]; 0 goes to bin 0 and 1.0 to bin M - 1 (docs/metrics.md).
    """
    num_bins = len(edges) - 1
    idx = np.searchsorted(edges, np.asarray(confidence, np.float64), side="left") - 1
    return np.clip(idx, 0, num_bins - 1)


def calibration_metrics(probs, labels, num_bins: int = 15, binning: str = "equal_width") -> dict:
    """Top-label calibration of a whole evaluation set.

    Args:
      probs: [N, K] predicted class probabilities (numpy or jax; any float dtype).
      labels: [N] integer true labels.
      num_bins: M, number of bins (15 by default, as in docs/metrics.md).
      binning: "equal_width" (bins (m/M, (m+1)/M]) or "equal_mass" (edges at the
        confidence quantiles; see `bin_edges`). The choice is echoed in the output.

    Returns:
      dict with
        ece, mce, rms_ce: floats. ECE = sum_m (n_m/N)|acc_m - conf_m|, MCE = max over
          non-empty bins, RMS-CE = sqrt(sum_m (n_m/N)(acc_m - conf_m)^2).
        num_bins, binning: as used.
        bin_lower, bin_upper: [M] lists of float edges; bin m is (lower, upper].
        bin_counts: [M] list of ints n_m.
        bin_accuracy, bin_confidence: [M] lists of floats, None for empty bins.
        accuracy: float, top-1 accuracy; num_examples: int N.
    """
    if not isinstance(num_bins, (int, np.integer)) or isinstance(num_bins, bool) or num_bins < 1:
        raise ValueError(f"num_bins must be a positive int, got {num_bins!r}")
    num_bins = int(num_bins)
    if binning not in BINNINGS:
        raise ValueError(f"unknown binning {binning!r}; valid choices: {', '.join(BINNINGS)}")
    conf, correct = _top_label(probs, labels)
    if not np.all(np.isfinite(conf)):
        raise ValueError(f"probs contain {np.count_nonzero(~np.isfinite(conf))} non-finite confidences")
    # Top-label confidences must be probabilities; a little float slack above 1 lands in the
    # last bin, anything further off means logits were passed instead of probabilities.
    if conf.min() < 0.0 or conf.max() > 1.0 + 1e-5:
        raise ValueError(
            f"probs must be probabilities in [0, 1], got top-label confidences in "
            f"[{conf.min():.6g}, {conf.max():.6g}] (pass softmax(logits), not logits)"
        )
    n = conf.shape[0]
    edges = bin_edges(conf, num_bins, binning)
    idx = assign_bins(conf, edges)

    counts = np.bincount(idx, minlength=num_bins)
    sum_correct = np.bincount(idx, weights=correct.astype(np.float64), minlength=num_bins)
    sum_conf = np.bincount(idx, weights=conf, minlength=num_bins)
    nonempty = counts > 0
    safe = np.maximum(counts, 1)
    acc_m = sum_correct / safe
    conf_m = sum_conf / safe
    gap = np.abs(acc_m - conf_m)  # zero for empty bins, which carry weight n_m/N = 0

    weights = counts / n
    ece = float(np.sum(weights * gap))  # docs/metrics.md: ECE = sum_m (n_m/N)|acc_m - conf_m|
    mce = float(np.max(gap[nonempty]))  # docs/metrics.md: max over non-empty bins
    rms_ce = float(np.sqrt(np.sum(weights * gap**2)))  # docs/metrics.md: RMS-CE

    return {
        "ece": ece,
        "mce": mce,
        "rms_ce": rms_ce,
        "num_bins": num_bins,
        "binning": binning,
        "bin_lower": edges[:-1].tolist(),
        "bin_upper": edges[1:].tolist(),
        "bin_counts": counts.astype(int).tolist(),
        "bin_accuracy": [float(a) if ne else None for a, ne in zip(acc_m, nonempty)],
        "bin_confidence": [float(c) if ne else None for c, ne in zip(conf_m, nonempty)],
        "accuracy": float(np.mean(correct)),
        "num_examples": int(n),
    }
