"""The ``ood`` evaluator: every OOD set of ``evals.ood_sets`` (:mod:`.ood_sets`) against
the evaluated split, by every OOD score of the family (higher = more in-distribution).

Per set and score: AUROC, AUPR-In/Out, FPR@95 and FPR@80 (OOD positive), computed by
:mod:`.ood_metrics` (whose :func:`ood_metrics` and :func:`roc_curve` this module
exports); per score: the histograms of every set and the ROC curves. Every per-example
score goes to ``ood_scores.npz``. Headline names: ``ood/<set>/<score>/auroc``
(:func:`ood_auroc`, read back by :func:`parse_ood_auroc`).
"""
from __future__ import annotations

import os
import re

import numpy as np
from matplotlib.figure import Figure

from jaxhybrid.evaluators import EvalContext, Evaluator, Section, definition, md_table
from jaxhybrid.evaluators import ood_sets as ood_sets_lib
from jaxhybrid.evaluators.canvas import new_figure, save_figure
from jaxhybrid.evaluators.ood_metrics import (FPR80_OOD_CONVENTION, FPR95_CONVENTION,
                                               ood_metrics, roc_curve)

OOD_SCORES_FILE = "ood_scores.npz"
_MAX_CURVE_POINTS = 2000  # ROC curves of 10^6 examples are thinned to about this many points
_OOD_AUROC = re.compile(r"^ood/([^/]+)/([^/]+)/auroc$")


# -- headline names ---------------------------------------------------------------------------
def ood_auroc(set_name: str, score: str) -> str:
    """AUROC of OOD set ``set_name`` against the in-distribution split, by ``score``."""
    return f"ood/{set_name}/{score}/auroc"


def parse_ood_auroc(name: str) -> tuple[str, str] | None:
    """'ood/heldout/log_px/auroc' -> ('heldout', 'log_px'); None for other names."""
    m = _OOD_AUROC.match(name)
    return (m.group(1), m.group(2)) if m else None


def headline(section: dict) -> dict:
    """{ood/<set>/<score>/auroc: AUROC} of every set and score of the section."""
    return {ood_auroc(set_name, score): r["auroc"]
            for set_name, s in section.get("sets", {}).items()
            for score, r in s.get("scores", {}).items()}


# -- the evaluator ----------------------------------------------------------------------------
def evaluate(ctx: EvalContext) -> Section:
    """Every OOD set of evals.ood_sets × every score of the family (higher = in-dist)."""
    fam = ctx.family
    in_scores = ctx.ood_scores(ctx.outputs(names=fam.ood_outputs))
    sets = ood_sets_lib.build_ood_sets(ctx.exp, ctx.config.evals.ood_sets,
                                       max_examples=ctx.config.evals.ood_max_examples)
    m: dict = {"convention": {"score": "higher = more in-distribution",
                              "fpr95": FPR95_CONVENTION, "fpr80_ood": FPR80_OOD_CONVENTION},
        "definitions": {name: definition(fam, name) for name in in_scores},
        "in_distribution": {"split": ctx.config.evals.split,
                            "num_examples": int(len(next(iter(in_scores.values()))))},
        "sets": {}}
    out_scores: dict[str, dict[str, np.ndarray]] = {}
    for s in sets:
        fn, normalization = ood_sets_lib.normalized_predict_fn(ctx, s.source, fam.ood_outputs)
        scores = ctx.ood_scores(ctx.predictor.outputs(ctx.variables, s.source, fam.ood_outputs,
                                                      fn=fn))
        out_scores[s.name] = scores
        m["sets"][s.name] = {"description": s.description, "num_examples": int(len(s.source)),
                             **normalization, "scores": {}}
        for score_name, s_in in in_scores.items():
            m["sets"][s.name]["scores"][score_name] = ood_metrics(s_in, scores[score_name])
    save_scores(os.path.join(ctx.out_dir, OOD_SCORES_FILE), ctx.config.evals.split,
                in_scores, out_scores)
    m["per_example_scores"] = OOD_SCORES_FILE
    figures = _figures(ctx, in_scores, out_scores, m)
    return Section("ood", m, headline(m), _markdown(ctx, m, sets), figures)


def file_safe(name: str) -> str:
    """A score name as a portable file-name part: ">" -> "gt", anything but [A-Za-z0-9_.]
    -> "_" ("-LLR>1" -> "_LLRgt1")."""
    return re.sub(r"[^A-Za-z0-9_.]", "_", name.replace(">", "gt"))


def save_scores(path: str, split: str, in_scores: dict, out_scores: dict) -> None:
    """Every per-example score, for analysis: npz keys ``"<split>/<score>"`` for the
    in-distribution split and ``"<OOD set>/<score>"`` for each OOD set (float64 arrays)."""
    arrays = {f"{split}/{k}": np.asarray(v, np.float64) for k, v in in_scores.items()}
    for set_name, scores in out_scores.items():
        arrays.update({f"{set_name}/{k}": np.asarray(v, np.float64) for k, v in scores.items()})
    np.savez_compressed(path, **arrays)


def _markdown(ctx: EvalContext, m: dict, sets) -> str:
    """The OOD section: the conventions, the sets, then per score its definition and a
    table of every set."""
    split = ctx.config.evals.split
    desc = "\n".join(f"- **{s.name}**: {s.description} ({len(s.source)} examples)"
                      for s in sets)
    header = ["OOD set", "AUROC", "AUPR-In", "AUPR-Out", "FPR@95", "FPR@80 (OOD+)", "# in",
              "# OOD"]
    parts = [f"In-distribution: the {split} split ({m['in_distribution']['num_examples']} "
             f"examples). Every score is higher = more in-distribution. AUROC, AUPR-In "
             f"(in-distribution positive) and AUPR-Out (OOD positive) as scikit-learn "
             f"computes them.\n\n- {FPR95_CONVENTION};\n- {FPR80_OOD_CONVENTION} "
             f"(the column FPR@80 (OOD+)).", desc]
    for score, text in m["definitions"].items():
        rows = [[n, *(r[k] for k in ("auroc", "aupr_in", "aupr_out", "fpr95", "fpr80_ood",
                                     "num_in", "num_out"))]
                for n, r in ((n, v["scores"][score]) for n, v in m["sets"].items())]
        parts += [f"### {score}\n\n{score} = {text}", md_table(rows, header)]
    return "\n\n".join(parts)


# -- figures ----------------------------------------------------------------------------------
def _figures(ctx: EvalContext, in_scores: dict, out_scores: dict, m: dict) -> list:
    """Per score: the histograms of every set and the ROC curves; -> [(title, file)]."""
    figures = []
    for score_name, s_in in in_scores.items():
        if not out_scores:
            break
        hist = f"ood_hist_{file_safe(score_name)}.png"
        score_histograms(s_in, {n: v[score_name] for n, v in out_scores.items()},
                         os.path.join(ctx.out_dir, hist), score_name,
                         title=f"{ctx.family.label or ctx.family.name}: {score_name} "
                               f"({ctx.config.evals.split} split vs OOD sets)",
                         unit=_score_unit(ctx.family, score_name))
        curves = {}
        for n, v in out_scores.items():
            fpr, tpr = roc_curve(s_in, v[score_name])
            curves[n] = (fpr, tpr, m["sets"][n]["scores"][score_name]["auroc"])
        roc = f"ood_roc_{file_safe(score_name)}.png"
        roc_curves(curves, os.path.join(ctx.out_dir, roc), title=f"ROC: {score_name}")
        figures += [(f"Score histograms: {score_name}", hist), (f"ROC curves: {score_name}", roc)]
    return figures


def _score_unit(family, score_name: str) -> str:
    """The unit of a score, read from its definition: 'nats' when it says so, else ''."""
    return "nats" if "nats" in family.definitions.get(score_name, "") else ""


def score_histograms(score_in, scores_out: dict, path, score_name: str, *, title: str = "",
                     unit: str = "") -> str:
    """:func:`score_histogram_figure` as a PNG at ``path``; returns path."""
    return save_figure(score_histogram_figure(score_in, scores_out, score_name, title=title,
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

    fig = new_figure(5.5, 3.8)
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
    fig = new_figure(4.5, 4.5)
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
    return save_figure(fig, path)


EVALUATOR = Evaluator("ood", evaluate, frozenset({"ood_scores"}), headline, "OOD detection")
