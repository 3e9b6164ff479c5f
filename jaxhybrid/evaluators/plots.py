"""Figures of the evaluation suite: reliability diagrams, OOD score histograms, ROC curves,
accuracy against FGSM epsilon.

Figures are built on `matplotlib.figure.Figure` with the Agg canvas directly, not through
pyplot: no global backend switch, no global figure registry, nothing left open. Each
function writes one small PNG (dpi 100) to `path` (a local path or any `etils.epath`
location, e.g. gs://) and returns `path`. In a multi-process run only process 0 renders and
writes the PNG (the others return at once), so hosts never race on the same files.
"""

from __future__ import annotations

import io
import os

import jax
import numpy as np
from etils import epath
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 100
_MAX_CURVE_POINTS = 2000  # ROC curves of 10^6 examples are thinned to about this many points


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path) -> str:
    path = os.fspath(path)
    if jax.process_index() == 0:
        buf = io.BytesIO()
        fig.savefig(buf, dpi=DPI, format="png")
        target = epath.Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(buf.getvalue())
    fig.clear()  # release the artists; the figure is not registered with pyplot
    return path


def _draw_reliability(ax_top, ax_bottom, cal: dict, title: str) -> None:
    """Reliability bars (accuracy per bin) + gap to mean confidence + count histogram.

    cal: output of `calibration.calibration_metrics`. Empty bins get no bar at all. The
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
    fig = _new_figure(4.5, 5.5)
    ax_top, ax_bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    _draw_reliability(ax_top, ax_bottom, cal_metrics, title)
    fig.tight_layout()
    return fig


def reliability_diagram(cal_metrics: dict, path, title: str = "") -> str:
    """cal_metrics: `calibration_metrics(...)` output -> PNG at path; returns path."""
    return _save(reliability_figure(cal_metrics, title), path)


def reliability_side_by_side(cal_dict: dict, path, title: str = "") -> str:
    """cal_dict: {model name -> calibration_metrics(...)} -> one column per model; returns path."""
    if not cal_dict:
        raise ValueError("reliability_side_by_side needs at least one model, got an empty dict")
    n = len(cal_dict)
    fig = _new_figure(3.6 * n, 5.5)
    axes = fig.subplots(2, n, sharex=True, squeeze=False, gridspec_kw={"height_ratios": [3, 1]})
    for j, (name, cal) in enumerate(cal_dict.items()):
        _draw_reliability(axes[0, j], axes[1, j], cal, str(name))
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def score_histograms(score_in, scores_out: dict, path, score_name: str, *, title: str = "",
                     unit: str = "") -> str:
    """:func:`score_histogram_figure` as a PNG at ``path``; returns path."""
    return _save(score_histogram_figure(score_in, scores_out, score_name, title=title,
                                        unit=unit), path)


def score_histogram_figure(score_in, scores_out: dict, score_name: str, *, title: str = "",
                           unit: str = "") -> Figure:
    """Overlaid density histograms of an OOD score.

    score_in: [N_in]; scores_out: {OOD set name -> [N_j]}; score_name and ``unit`` (e.g.
    "nats"; "" for a unitless score) label the x axis, with the direction (higher =
    in-distribution). The common bins span from the lowest 0.5th to the highest 99.5th
    percentile of the sets' finite scores, so a small, far-off set is still shown. Each
    density is normalised by the set's number of finite scores; scores outside the range
    and non-finite scores are counted in the legend, not drawn. The OOD sets are filled;
    the in-distribution histogram is drawn last, as a thick black outline, so it stays
    visible above them.
    """
    sets = {"in-distribution": np.asarray(score_in, dtype=np.float64).ravel()}
    for name, s in scores_out.items():
        sets[str(name)] = np.asarray(s, dtype=np.float64).ravel()
    finite = {name: s[np.isfinite(s)] for name, s in sets.items()}
    ranges = [np.quantile(f, [0.005, 0.995]) for f in finite.values() if f.size]
    lo = min((r[0] for r in ranges), default=0.0)
    hi = max((r[1] for r in ranges), default=1.0)
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, 61)

    fig = _new_figure(5.5, 3.8)
    ax = fig.subplots()
    order = [n for n in sets if n != "in-distribution"] + ["in-distribution"]
    for i, name in enumerate(order):
        s, f = sets[name], finite[name]
        counts, _ = np.histogram(f, bins=edges)
        dens = counts / (max(f.size, 1) * np.diff(edges))
        label = f"{name} (n={s.size})"
        hidden = f.size - int(counts.sum())
        if hidden:
            label += f", {hidden} out of range"
        if f.size < s.size:
            label += f", {s.size - f.size} non-finite"
        if name == "in-distribution":
            ax.stairs(dens, edges, lw=2, color="black", label=label, zorder=3)
        else:
            color = f"C{i % 10}"
            ax.stairs(dens, edges, fill=True, alpha=0.3, color=color, label=label)
            ax.stairs(dens, edges, lw=1, color=color)
    ax.set_xlabel(f"{score_name}{f' ({unit})' if unit else ''}; higher = in-distribution")
    ax.set_ylabel(f"density (per {unit})" if unit else "density")
    ax.set_title(title or f"OOD score: {score_name}", fontsize=10)
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def _thin_curve(fpr, tpr):
    """Keep about _MAX_CURVE_POINTS points, evenly spaced along fpr + tpr, plus both ends."""
    fpr = np.asarray(fpr, dtype=float)
    tpr = np.asarray(tpr, dtype=float)
    if fpr.size <= _MAX_CURVE_POINTS:
        return fpr, tpr
    arc = fpr + tpr  # monotone along an ROC curve, from 0 to 2
    _, keep = np.unique(np.floor(arc * (_MAX_CURVE_POINTS / 2)), return_index=True)
    keep = np.union1d(keep, [0, fpr.size - 1])
    return fpr[keep], tpr[keep]


def roc_curves(curves: dict, path, title: str = "") -> str:
    """curves: {name -> (fpr [G], tpr [G], auroc float)} -> ROC plot; returns path."""
    fig = _new_figure(4.5, 4.5)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ls="--", color="0.5", lw=1)
    for name, (fpr, tpr, auroc) in curves.items():
        f, t = _thin_curve(fpr, tpr)
        ax.plot(f, t, lw=1.5, label=f"{name} (AUROC {auroc:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate (OOD accepted)")
    ax.set_ylabel("true positive rate (in-distribution accepted)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=7, frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def accuracy_vs_epsilon(curves: dict, path, title: str = "") -> str:
    """curves: {name -> (eps list, accuracy list)} -> accuracy under attack vs eps; returns path."""
    fig = _new_figure(5.0, 3.8)
    ax = fig.subplots()
    for name, (eps, acc) in curves.items():
        ax.plot(np.asarray(eps, float), np.asarray(acc, float), marker="o", ms=4, lw=1.5,
                label=str(name))
    ax.set_xlabel("ε (pixel scale [0,1])")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return _save(fig, path)


# -- generic helpers for figures drawn elsewhere (jaxhybrid.tools.figures) ------------------
def new_figure(width: float, height: float) -> Figure:
    """A Figure on the Agg canvas, ``width`` × ``height`` inches at :data:`DPI`."""
    return _new_figure(width, height)


def save_figure(fig: Figure, path) -> str:
    """Write ``fig`` as PNG to ``path`` (local or epath; process 0 only); returns path."""
    return _save(fig, path)


def distinct_colours(labels: list) -> dict:
    """{label: colour}, a different colour for each label: tab10 up to 10 labels, tab20
    up to 20, else evenly spaced hues."""
    from matplotlib import colormaps
    n = len(labels)
    if n <= 10:
        colours = [f"C{i}" for i in range(n)]
    elif n <= 20:
        colours = [colormaps["tab20"](i) for i in range(n)]
    else:
        colours = [colormaps["hsv"](i / n) for i in range(n)]
    return dict(zip(labels, colours))


def add_legends(fig: Figure, axes, *, shared: bool = False, **legend_kwargs) -> None:
    """A legend in each of ``axes`` that has labelled artists or, ``shared``, one legend
    of every label (each once) below the panels; then lays the figure out."""
    if not shared:
        for ax in axes:
            if ax.get_legend_handles_labels()[1]:
                ax.legend(**legend_kwargs)
        fig.tight_layout()
        return
    entries: dict = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if not entries:
        fig.tight_layout()
        return
    kwargs = {k: v for k, v in legend_kwargs.items() if k not in ("loc", "bbox_to_anchor")}
    ncol = min(4, len(entries))
    rows = -(-len(entries) // ncol)
    bottom = min(0.5, (0.18 * rows + 0.12) / fig.get_figheight())
    fig.legend(list(entries.values()), list(entries), loc="lower center", ncol=ncol,
               **kwargs)
    fig.tight_layout(rect=(0, bottom, 1, 1))
