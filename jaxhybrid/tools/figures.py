"""Figures of a sweep: metrics against the x key (one line per series and metric, each its
own colour, error bars = std over seeds), and reliability diagrams at the largest x.
Drawn and written on :mod:`jaxhybrid.evaluators.canvas` (Agg canvas, epath)."""
from __future__ import annotations

import json
import logging
import re

import numpy as np

from jaxhybrid.evaluators import calibration, canvas, suite
from jaxhybrid.tools.presentation import LINE_STYLES, View
from jaxhybrid.tools.runs import Run
from jaxhybrid.tools.stats import is_number, same_value, sort_key
from jaxhybrid.tools.tables import fmt_value

log = logging.getLogger("jaxhybrid.tools")


def series_label(group: dict, view: View | None = None) -> str:
    """{key: value} -> the declared label of that value, else 'title=value'
    ('β=0.5'); parts joined by ', '."""
    view = view or View()
    parts = []
    for k, v in group.items():
        label = _declared_label(view, k, v)
        parts.append(label if label is not None else f"{view.title(k)}={fmt_value(v)}")
    return ", ".join(parts) or "all runs"


def _declared_label(view: View, key: str, value) -> str | None:
    return next((text for v, text in view.labels.get(key, []) if same_value(v, value)), None)


def _series(rows: list[dict], keys: list[str], view: View) -> dict[str, list[dict]]:
    """{label: rows sorted by x} over the group keys other than x."""
    other = [k for k in keys if k != view.x]
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(series_label({k: r["group"][k] for k in other}, view), []).append(r)
    for label in out:
        out[label].sort(key=lambda r: sort_key((r["group"][view.x],)))
    return out


def _x_positions(rows: list[dict], view: View) -> tuple[dict, list, list[str]]:
    """{value as JSON: position}, tick positions and tick labels (the declared label of a
    value, else the value): numbers stand for themselves, other values for their rank."""
    x = view.x
    values = sorted({json.dumps(r["group"][x]): r["group"][x] for r in rows}.values(),
                    key=lambda v: sort_key((v,)))
    numeric = all(is_number(v) for v in values) and view.x_scale != "categorical"
    pos = {json.dumps(v): (v if numeric else i) for i, v in enumerate(values)}
    labels = [_declared_label(view, x, v) or fmt_value(v) for v in values]
    return pos, [pos[json.dumps(v)] for v in values], labels


def _x_axis(ax, view: View, ticks: list, labels: list[str]) -> None:
    if view.x_scale == "log2":
        ax.set_xscale("log", base=2)
    elif view.x_scale == "log10":
        ax.set_xscale("log")
    ax.set_xticks(ticks)
    ax.set_xticklabels(labels, fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel(view.x_label)
    ax.grid(alpha=0.3)


def _first_wildcard(pattern: str) -> int | None:
    return next((i for i, part in enumerate(pattern.split("/")) if "*" in part), None)


def _panels(rows: list[dict], spec: dict) -> list[tuple[str, list[str], int | None]]:
    """[(panel title, metrics, the '/'-part that picks the panel)] of a curve plot."""
    patterns, mode = spec["metrics"], spec["panels"]
    found = list(dict.fromkeys(n for r in rows for n in r["metrics"]))
    matched = list(dict.fromkeys(n for p in patterns for n in found if suite.matches(p, n)))
    if mode == "single":
        return [(spec.get("title", ""), matched, None)] if matched else []
    if mode == "metric":
        titles = spec.get("panel_titles", {})
        return [(titles.get(n, n), [n], None) for n in matched]
    panels: dict[str, list[str]] = {}
    part: dict[str, int | None] = {}
    for n in found:                        # panels in the order the metrics appear
        for p in patterns:
            if suite.matches(p, n):
                i = _first_wildcard(p)
                value = n.split("/")[i] if i is not None else ""
                panels.setdefault(value, [])
                part[value] = i
    for n in matched:
        for p in patterns:
            if suite.matches(p, n):
                i = _first_wildcard(p)
                value = n.split("/")[i] if i is not None else ""
                if n not in panels[value]:
                    panels[value].append(n)
    title = spec.get("title", "{}")
    return [(title.replace("{}", v), ms, part[v]) for v, ms in panels.items()]


def _line_suffix(name: str, patterns: list[str], panel_part: int | None) -> str:
    """What tells the lines of one series apart: the '/'-parts of ``name`` where the
    patterns differ or hold a '*' (other than the panel's part)."""
    parts = name.split("/")
    shapes = [p.split("/") for p in patterns]
    keep = []
    for i in range(len(parts)):
        if i == panel_part:
            continue
        if any(len(s) != len(parts) for s in shapes) or len({s[i] for s in shapes}) > 1 \
                or any("*" in s[i] for s in shapes):
            keep.append(i)
    return "/".join(parts[i] for i in keep)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def _ylim(spec: dict, rows: list[dict], panels) -> list | None:
    """The declared ylim; a high of None: 1.1 × the largest mean + std."""
    ylim = spec.get("ylim")
    if ylim is None or ylim[1] is not None:
        return ylim
    top = max((r["metrics"][m]["mean"] + (r["metrics"][m]["std"] or 0.0)
               for _, ms, _ in panels for m in ms for r in rows if m in r["metrics"]),
              default=1.0)
    return [ylim[0], top * 1.1 if top > 0 else 1]


def _ylabel(spec: dict) -> str:
    last = {p.split("/")[-1] for p in spec["metrics"]}     # 'accuracy', 'auroc', ...
    common = next(iter(last)) if len(last) == 1 and "*" not in next(iter(last)) else ""
    return spec.get("ylabel", common)


def _lines(rows, series, panels, spec, view, pos) -> list[dict]:
    """Every line of the figure: {panel, label, style, x, y, err}; a line is a series
    and, unless panels=metric, the metric's distinguishing part (its line style)."""
    patterns, by_metric = spec["metrics"], spec["panels"] != "metric"
    suffixes = list(dict.fromkeys(_line_suffix(n, patterns, part) if by_metric else ""
                                  for _, ms, part in panels for n in ms))
    out = []
    for j, (_, metrics, part) in enumerate(panels):
        for metric in metrics:
            suffix = _line_suffix(metric, patterns, part) if by_metric else ""
            for label, members in series.items():
                pts = [(pos[json.dumps(r["group"][view.x])], r["metrics"][metric])
                       for r in members if metric in r["metrics"]]
                if pts:
                    out.append({"panel": j, "label": label + (f": {suffix}" if suffix else ""),
                                "style": LINE_STYLES[suffixes.index(suffix) % len(LINE_STYLES)],
                                "x": np.array([p[0] for p in pts], float),
                                "y": np.array([p[1]["mean"] for p in pts]),
                                "err": np.array([p[1]["std"] or 0.0 for p in pts])})
    return out


def plot_curves(rows: list[dict], keys: list[str], view: View, spec: dict,
                out_dir: str) -> str | None:
    """A curve figure: each panel's metrics against x, one line per series and metric,
    each in its own colour (the same line keeps its colour across panels), error bars =
    std over seeds; a legend in every panel, or one shared by the figure."""
    panels = _panels(rows, spec)
    if not panels:
        return None
    pos, ticks, tick_labels = _x_positions(rows, view)
    lines = _lines(rows, _series(rows, keys, view), panels, spec, view, pos)
    colours = canvas.distinct_colours(list(dict.fromkeys(line["label"] for line in lines)))
    ncols = min(int(spec.get("ncols", 3)), len(panels))
    nrows = -(-len(panels) // ncols)
    width, height = spec.get("panel_size", (4.6, 3.8))
    fig = canvas.new_figure(width * ncols, height * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    ylim, ylabel, hline = _ylim(spec, rows, panels), _ylabel(spec), spec.get("hline")
    for j, (ax, (title, _, _)) in enumerate(zip(axes, panels)):
        if hline:
            ax.axhline(hline["y"], color="0.5", lw=1, ls=":", label=hline.get("label"))
        for line in (ln for ln in lines if ln["panel"] == j):
            ax.errorbar(line["x"], line["y"], yerr=line["err"], marker="o", ms=4, lw=1.5,
                        capsize=3, ls=line["style"], color=colours[line["label"]],
                        label=line["label"])
        _x_axis(ax, view, ticks, tick_labels)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    legend = spec.get("legend") or {"fontsize": 7, "frameon": False}
    canvas.add_legends(fig, axes[:len(panels)], shared=spec["legend_panels"] == "shared",
                       **legend)
    file = spec.get("file") or _slug("_".join(
        part for p in spec["metrics"] for part in p.split("/") if "*" not in part)) \
        + f"_vs_{_slug(view.x)}.png"
    return canvas.save_figure(fig, f"{out_dir}/{file}")


def plot_reliability(runs: list[Run], rows: list[dict], keys: list[str], view: View,
                     spec: dict, out_dir: str) -> str | None:
    """Every series side by side at the largest x (all rows without an x); each from its
    lowest-seed run (seed 0 in a normal sweep)."""
    if view.x is not None:
        largest = max((r["group"][view.x] for r in rows), key=lambda v: sort_key((v,)))
        chosen = [r for r in rows if same_value(r["group"][view.x], largest)]
        title = spec.get("title", "Reliability at the largest {key}, {x}") \
            .replace("{key}", view.title(view.x)).replace("{x}", fmt_value(largest))
    else:
        chosen, title = rows, "Reliability"
    other = [k for k in keys if k != view.x]
    by_dir = {run.directory: run for run in runs}
    cal_dict = {}
    for row in chosen:
        run = by_dir[row["runs"][0]]  # members are sorted by seed
        cal = run.evaluation.metrics.get("calibration", {}).get("equal_width")
        if cal:
            label = series_label({k: row["group"][k] for k in other}, view)
            cal_dict[f"{label}, seed {run.seed}"] = cal
    if not cal_dict:
        return None
    return calibration.reliability_side_by_side(
        cal_dict, f"{out_dir}/{spec.get('file', 'reliability.png')}", title)


def write_figures(runs: list[Run], rows: list[dict], keys: list[str], view: View,
                  out_dir: str) -> list[str]:
    figures = []
    if view.x is None and any(s["kind"] == "curve" for s in view.plots):
        log.info("no x key (grouping keys: %s): no figures against one",
                 ", ".join(keys) or "none")
    for spec in view.plots:
        if spec["kind"] == "reliability":
            path = plot_reliability(runs, rows, keys, view, spec, out_dir)
        elif view.x is not None and rows:
            path = plot_curves(rows, keys, view, spec, out_dir)
        else:
            path = None
        if path:
            figures.append(path)
    return figures

