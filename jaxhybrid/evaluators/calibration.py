"""The ``calibration`` evaluator: top-label ECE, MCE, RMS-CE and the reliability diagram.

The metrics (:func:`calibration_metrics`, also the temperature evaluator's), the
reliability diagram (:func:`reliability_diagram`, also drawn side by side by
:mod:`jaxhybrid.tools.figures`), the evaluator (:func:`evaluate`) and its headline names
(:data:`ECE`, :data:`MCE`, :data:`RMS_CE`: the section's ``equal_width`` numbers).

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

The metrics are pure numpy on the host, with no per-example Python loop.
"""

from __future__ import annotations

import os

import numpy as np
from matplotlib.figure import Figure

from jaxhybrid.evaluators import EvalContext, Evaluator, Section, md_table, probs
from jaxhybrid.evaluators.canvas import new_figure, save_figure
from jaxhybrid.metrics_core import check_scores_and_labels

ECE = "ece"
MCE = "mce"
RMS_CE = "rms_ce"

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


def _check_binning(num_bins, binning: str) -> int:
    """Validates `num_bins` (a positive int, not a bool) and `binning`; returns int(num_bins)."""
    if not isinstance(num_bins, (int, np.integer)) or isinstance(num_bins, bool) or num_bins < 1:
        raise ValueError(f"num_bins must be a positive int, got {num_bins!r}")
    if binning not in BINNINGS:
        raise ValueError(f"unknown binning {binning!r}; valid choices: {', '.join(BINNINGS)}")
    return int(num_bins)


def _checked_top_label(probs, labels):
    """`_top_label`, plus checks that every confidence is a finite probability.

    Returns (confidence [N] float64, correct [N] bool). A little float slack above 1 is
    accepted (it lands in the last bin); anything further off means logits were passed
    instead of probabilities.
    """
    conf, correct = _top_label(probs, labels)
    if not np.all(np.isfinite(conf)):
        raise ValueError(f"probs contain {np.count_nonzero(~np.isfinite(conf))} non-finite confidences")
    if conf.min() < 0.0 or conf.max() > 1.0 + 1e-5:
        raise ValueError(
            f"probs must be probabilities in [0, 1], got top-label confidences in "
            f"[{conf.min():.6g}, {conf.max():.6g}] (pass softmax(logits), not logits)"
        )
    return conf, correct


def _bin_statistics(conf, correct, edges):
    """Per-bin count n_m, accuracy acc_m and mean confidence conf_m, and the non-empty mask.

    conf: [N] float64, correct: [N] bool, edges: [M + 1] (see `assign_bins`).
    Returns (counts [M] int, acc_m [M], conf_m [M], nonempty [M] bool); acc_m and conf_m
    are 0 for empty bins.
    """
    num_bins = len(edges) - 1
    idx = assign_bins(conf, edges)
    counts = np.bincount(idx, minlength=num_bins)
    sum_correct = np.bincount(idx, weights=correct.astype(np.float64), minlength=num_bins)
    sum_conf = np.bincount(idx, weights=conf, minlength=num_bins)
    nonempty = counts > 0
    safe = np.maximum(counts, 1)
    return counts, sum_correct / safe, sum_conf / safe, nonempty


def _calibration_errors(counts, acc_m, conf_m, nonempty, n: int) -> tuple[float, float, float]:
    """(ECE, MCE, RMS-CE) from the per-bin statistics of `_bin_statistics` over N = n."""
    gap = np.abs(acc_m - conf_m)  # zero for empty bins, which carry weight n_m/N = 0
    weights = counts / n
    ece = float(np.sum(weights * gap))  # docs/metrics.md: ECE = sum_m (n_m/N)|acc_m - conf_m|
    mce = float(np.max(gap[nonempty]))  # docs/metrics.md: max over non-empty bins
    rms_ce = float(np.sqrt(np.sum(weights * gap**2)))  # docs/metrics.md: RMS-CE
    return ece, mce, rms_ce


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
    num_bins = _check_binning(num_bins, binning)
    conf, correct = _checked_top_label(probs, labels)
    n = conf.shape[0]
    edges = bin_edges(conf, num_bins, binning)
    counts, acc_m, conf_m, nonempty = _bin_statistics(conf, correct, edges)
    ece, mce, rms_ce = _calibration_errors(counts, acc_m, conf_m, nonempty, n)
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


# -- the reliability diagram ----------------------------------------------------------------
def _draw_reliability(ax_top, ax_bottom, cal: dict, title: str) -> None:
    """Reliability bars (accuracy per bin) + gap to mean confidence + count histogram.

    cal: output of `calibration_metrics`. Empty bins get no bar at all. The
    gap has two colours, each in the legend: above the accuracy bar where the bin is
    overconfident, drawn over the bar where it is underconfident. The counts are on a log
    axis and printed above each bar, so bins of 1-3 examples (which can carry the MCE)
    are visible.
    """
    lower = np.asarray(cal["bin_lower"], dtype=float)
    upper = np.asarray(cal["bin_upper"], dtype=float)
    counts = np.asarray(cal["bin_counts"], dtype=float)
    nonempty = counts > 0
    acc = np.array([a for a in cal["bin_accuracy"] if a is not None], dtype=float)
    conf = np.array([c for c in cal["bin_confidence"] if c is not None], dtype=float)
    left, width = lower[nonempty], (upper - lower)[nonempty]

    ax_top.plot([0, 1], [0, 1], ls="--", color="0.4", lw=1, label="perfect calibration")
    ax_top.bar(left, acc, width=width, align="edge", color="tab:blue", edgecolor="black",
               lw=0.5, label="accuracy")
    over = conf > acc
    ax_top.bar(left[over], (conf - acc)[over], bottom=acc[over], width=width[over],
               align="edge", color="tab:red", alpha=0.3, edgecolor="tab:red", hatch="//",
               lw=0.5, label="gap: confidence > accuracy")
    ax_top.bar(left[~over], (acc - conf)[~over], bottom=conf[~over], width=width[~over],
               align="edge", color="tab:orange", edgecolor="black", hatch="\\\\", lw=0.5,
               label="gap: accuracy > confidence")
    ax_top.hlines(conf, left, left + width, color="black", lw=1.5, label="mean confidence")
    ax_top.set_xlim(0, 1)
    ax_top.set_ylim(0, 1)
    ax_top.set_ylabel("accuracy")
    binning = cal.get("binning", "equal_width").replace("_", "-")
    ax_top.set_title(title or f"reliability ({cal['num_bins']} {binning} bins)", fontsize=10)
    ax_top.legend(
        loc="upper left", fontsize=7, frameon=True, framealpha=0.9,
        title=f"ECE {cal['ece']:.4f}  MCE {cal['mce']:.4f}\nN = {cal['num_examples']}",
        title_fontsize=7,
    )

    ax_bottom.bar(left, counts[nonempty], width=width, align="edge", color="0.5",
                  edgecolor="black", lw=0.5)
    for x, w, n in zip(left, width, counts[nonempty]):
        ax_bottom.text(x + w / 2, n, f"{int(n)}", ha="center", va="bottom", fontsize=6)
    ax_bottom.set_yscale("log")
    ax_bottom.set_ylim(0.5, max(counts.max(initial=1.0), 1.0) * 4)
    ax_bottom.set_xlim(0, 1)
    ax_bottom.set_xlabel("confidence (top-label)")
    ax_bottom.set_ylabel("count (log)")


def reliability_figure(cal_metrics: dict, title: str = "") -> Figure:
    """cal_metrics: `calibration_metrics(...)` output -> the reliability diagram's Figure."""
    fig = new_figure(4.5, 5.5)
    ax_top, ax_bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    _draw_reliability(ax_top, ax_bottom, cal_metrics, title)
    fig.tight_layout()
    return fig


def reliability_diagram(cal_metrics: dict, path, title: str = "") -> str:
    """cal_metrics: `calibration_metrics(...)` output -> PNG at path; returns path."""
    return save_figure(reliability_figure(cal_metrics, title), path)


def reliability_side_by_side(cal_dict: dict, path, title: str = "") -> str:
    """cal_dict: {model name -> calibration_metrics(...)} -> one column per model; returns path."""
    if not cal_dict:
        raise ValueError("reliability_side_by_side needs at least one model, got an empty dict")
    n = len(cal_dict)
    fig = new_figure(3.6 * n, 5.5)
    axes = fig.subplots(2, n, sharex=True, squeeze=False, gridspec_kw={"height_ratios": [3, 1]})
    for j, (name, cal) in enumerate(cal_dict.items()):
        _draw_reliability(axes[0, j], axes[1, j], cal, str(name))
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


# -- the evaluator ----------------------------------------------------------------------------
def headline(section: dict) -> dict:
    """{ece, mce, rms_ce} of the section's equal-width binning (those it holds)."""
    values = section.get("equal_width", {})
    return {name: values[name] for name in (ECE, MCE, RMS_CE) if name in values}


def evaluate(ctx: EvalContext) -> Section:
    """Top-label calibration of softmax(logits) over the evaluated split, with
    ``evals.num_bins`` equal-width and equal-mass bins; the equal-width reliability
    diagram -> reliability.png."""
    out = ctx.outputs()
    p, labels = probs(out["logits"]), out["label"]
    bins = int(ctx.config.evals.num_bins)
    cal = calibration_metrics(p, labels, num_bins=bins)
    cal_mass = calibration_metrics(p, labels, num_bins=bins, binning="equal_mass")
    fig = "reliability.png"
    reliability_diagram(cal, os.path.join(ctx.out_dir, fig),
                        title=ctx.family.label or ctx.family.name)
    m = {"equal_width": cal, "equal_mass": {k: cal_mass[k] for k in ("ece", "mce", "rms_ce")}}
    md = (f"Top-label confidence, {bins} equal-width bins (lo, hi], confidence 1.0 in the "
          f"last bin, computed over the whole split.\n\n"
          + md_table([["equal-width", cal["ece"], cal["mce"], cal["rms_ce"]],
                      ["equal-mass", cal_mass["ece"], cal_mass["mce"], cal_mass["rms_ce"]]],
                     ["binning", "ECE", "MCE", "RMS-CE"]))
    return Section("calibration", m, headline(m), md, [("Reliability diagram", fig)])


EVALUATOR = Evaluator("calibration", evaluate, frozenset({"logits", "labels"}), headline)
