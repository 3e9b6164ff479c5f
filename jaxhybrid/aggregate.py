"""Aggregate a sweep: ``python -m jaxhybrid.aggregate DIR [--out DIR/aggregate] [--x KEY]
[--metrics NAME,PATTERN,...]``.

Collects every finished run under ``DIR`` (a directory with ``final_metrics.json``,
``config.json`` and ``eval/<step>/metrics.json``; the latest step is used) and groups
the runs by the sweep's keys, never ``seed``: the swept keys of ``DIR/sweep_status.json``
in their sweep order, then any other config key whose value differs between runs
(sorted). It writes into the output directory:

* ``aggregate.csv`` and ``aggregate.md``: mean ± std over seeds (std with ddof=1 when
  n > 1, else 0; n shown) of the evaluators' headline metrics
  (:mod:`jaxhybrid.evaluators.names`): accuracy, NLL, ECE, ECE after temperature
  scaling, the likelihood bound, the OOD AUROC of every (set, score) present, the
  attack accuracy at every ε, then steps and training seconds;
* figures: metrics against one grouping key ``x``, one line per combination of the
  other keys, error bars = std over seeds; and reliability diagrams of every line at
  the largest ``x`` (each from its lowest-seed run).

What is plotted, and how keys and values are named, comes from the sweep:

* The config module's ``get_sweep(variant)`` declares it beside the grid (see
  :mod:`jaxhybrid.sweep`, which records it in ``sweep_status.json``; for a status file
  without it the config file named there is imported again). Its entries:

  - ``x``: the grouping key on the x axis, a dotted config key (``"objective.beta"``);
    ``x_label``: its axis label (default: its title); ``x_scale``: ``linear``
    (default), ``log2`` or ``log10``;
  - ``titles``: ``{key: column title}``, e.g. ``{"objective.beta": "β"}``;
  - ``labels``: ``{key: {value: label}}`` for the lines (and x ticks), e.g.
    ``{"objective.beta": {1.0: "VAE"}}``; other values read ``title=value``;
  - ``plots``: a list of figures, each a dict of the fields of :data:`PLOT_FIELDS`,
    e.g. ``{"metrics": ["ood/*/llr_1/auroc", "ood/*/llr_2/auroc"], "title": "OOD: {}",
    "file": "ood_vs_beta.png"}`` (a panel per OOD set, a line style per score) or
    ``{"kind": "reliability"}``.

* On the command line, ``--x KEY`` picks the x axis among the grouping keys (the
  declared figures, x label and scale go with the declared x: another x gets the
  default figures) and ``--metrics accuracy,ece,ood/*/*/auroc`` plots those
  headline names or patterns (``*`` = any one ``/``-separated part), one figure each (a
  pattern's first ``*`` gives a panel per match), in place of the curve figures.
* With neither, ``x`` is the first numeric grouping key and the figures are the
  defaults: accuracy, ECE, the OOD AUROCs (``ood/*/*/auroc``: a panel per set, a line
  style per score) and the reliability diagrams.

Library use: ``aggregate(run_root) -> rows`` and ``write_outputs(run_root, out_dir,
x=..., metrics=...)``.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import math
import os
import re
import sys
from typing import Any

import numpy as np

from jaxhybrid.compare import latest_eval
from jaxhybrid.evaluators import names

log = logging.getLogger("jaxhybrid.aggregate")

SKIP_DIRS = {"checkpoints", "eval", "jax_cache", "aggregate", "__pycache__"}
STATUS_FILE = "sweep_status.json"
BUDGET = ("steps", "train_seconds")       # from final_metrics.json
MAIN_METRICS = (names.ACCURACY, names.NLL, names.ECE, names.ECE_AFTER_TS)
LIKELIHOOD_METRICS = (names.LOG_LIKELIHOOD, names.BITS_PER_DIM)
METRIC_TITLES = {names.ACCURACY: "test accuracy", names.NLL: "NLL", names.ECE: "ECE",
                 names.ECE_AFTER_TS: "ECE after TS", names.LOG_LIKELIHOOD: "log p(x) bound",
                 names.BITS_PER_DIM: "bits/dim", "steps": "steps", "train_seconds": "train s"}

# -- what get_sweep may declare for aggregation --------------------------------------------
PRESENTATION_KEYS = ("x", "x_label", "x_scale", "titles", "labels", "plots")
X_SCALES = ("linear", "log2", "log10")
PLOT_FIELDS = {
    "kind": "curve (default): metrics against x; reliability: reliability diagrams of "
            "every line at the largest x",
    "metrics": "curve: headline names or patterns ('*' = one '/'-separated part)",
    "file": "PNG file name (default <metrics>_vs_<x>.png, reliability.png)",
    "panels": "single: one panel; metric: a panel per metric; match: a panel per value of "
              "the patterns' first '*' (the default when a pattern has one)",
    "title": "figure or panel title; '{}' is the panel's match; for reliability '{x}' is "
             "the largest x and '{key}' the title of x",
    "panel_titles": "panels=metric: {metric: panel title}",
    "ylabel": "y-axis label (default: the metrics' common last part)",
    "ylim": "[low, high]; high None: 1.1 × the largest mean + std",
    "hline": "{'y': 0.5, 'label': 'chance'}: a dotted reference line",
    "panel_size": "[width, height] of a panel in inches (default [4.6, 3.8])",
    "ncols": "panels per row (default 3)",
    "legend": "keyword arguments of matplotlib's legend (default fontsize 7, no frame)",
    "legend_panels": "all or first (the default for panels=match: same lines in each)",
}
PLOT_KINDS = ("curve", "reliability")
PANEL_MODES = ("single", "metric", "match")
LEGEND_PANELS = ("all", "first")
LINE_STYLES = ("-", "--", ":", "-.")
DEFAULT_PLOTS = ({"metrics": [names.ACCURACY]}, {"metrics": [names.ECE]},
                 {"metrics": [names.ood_auroc("*", "*")]}, {"kind": "reliability"})


@dataclasses.dataclass
class Run:
    directory: str
    config: dict                 # flat {"a.b": value} of config.json
    raw_config: dict             # config.json as saved
    final: dict                  # final_metrics.json
    step: int                    # the eval step used
    evaluation: dict             # eval/<step>/metrics.json
    metrics: dict[str, float]    # flat headline metrics (see run_metrics)

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))


@dataclasses.dataclass
class View:
    """How rows are shown: the x key, titles, value labels and the figures."""
    x: str | None = None
    x_label: str = ""
    x_scale: str = "linear"
    titles: dict = dataclasses.field(default_factory=dict)
    labels: dict = dataclasses.field(default_factory=dict)   # {key: [[value, label], ...]}
    plots: list = dataclasses.field(default_factory=list)

    def title(self, key: str) -> str:
        return self.titles.get(key, key)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
    return out


def epsilon_label(eps: float) -> str:
    """0.03137 -> '8/255' (metric names keep 4 significant digits of ε)."""
    k = eps * 255
    if k == 0:
        return "0"
    return f"{round(k)}/255" if abs(k - round(k)) <= 1e-3 * max(k, 1.0) else f"{eps:.4g}"


def run_metrics(final: dict, evaluation: dict) -> dict[str, float]:
    """The headline numbers of one run: the evaluators' headline
    (:func:`jaxhybrid.evaluators.names.headline`), then steps and train_seconds."""
    m = dict(names.headline(evaluation))
    if "step" in final:
        m["steps"] = final["step"]
    if "train_seconds" in final:
        m["train_seconds"] = final["train_seconds"]
    return {k: float(v) for k, v in m.items() if isinstance(v, (int, float))}


def find_runs(run_root: str) -> list[str]:
    """Every directory under ``run_root`` (itself included) holding final_metrics.json."""
    found = []
    for dirpath, dirnames, filenames in os.walk(run_root):
        if "final_metrics.json" in filenames:
            found.append(dirpath)
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
    return sorted(found)


def load_run(directory: str) -> Run:
    with open(os.path.join(directory, "final_metrics.json")) as f:
        final = json.load(f)
    with open(os.path.join(directory, "config.json")) as f:
        raw = json.load(f)
    step, evaluation = latest_eval(directory)
    return Run(directory, _flatten(raw), raw, final, step, evaluation,
               run_metrics(final, evaluation))


def collect_runs(run_root: str) -> list[Run]:
    runs = []
    for d in find_runs(run_root):
        try:
            runs.append(load_run(d))
        except (OSError, ValueError) as e:
            log.warning("skipping %s: %s", d, e)
    return runs


def sweep_spec(run_root: str) -> dict:
    """The ``spec`` of ``run_root/sweep_status.json``; {} without one."""
    path = os.path.join(run_root, STATUS_FILE)
    if not run_root or not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f).get("spec", {})


def swept_keys(run_root: str) -> list[str]:
    return list(sweep_spec(run_root).get("sweep", {}))


def group_keys(runs: list[Run], run_root: str = "") -> list[str]:
    """The swept keys (sweep_status.json, in sweep order), then the other config keys
    whose values differ between runs (sorted); never seed."""
    differ = set()
    all_keys = set().union(*(r.config for r in runs)) if runs else set()
    for k in all_keys:
        if len({json.dumps(r.config.get(k), sort_keys=True) for r in runs}) > 1:
            differ.add(k)
    keys = list(dict.fromkeys(swept_keys(run_root) + sorted(differ)))
    return [k for k in keys if k != "seed"]


def _sort_key(values: tuple) -> tuple:
    return tuple((0, v, "") if _is_number(v) else (1, 0, json.dumps(v)) for v in values)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def mean_std(values) -> tuple[float, float]:
    """Mean and std over seeds: std with ddof=1 when n > 1, else 0."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return float("nan"), float("nan")
    std = float(x.std(ddof=1)) if x.size > 1 else 0.0
    return float(x.mean()), std


def metric_names(runs: list[Run]) -> list[str]:
    """The table metrics in table order (:func:`metric_names_order`), then the rest."""
    seen: list[str] = []
    for r in runs:
        seen += [k for k in r.metrics if k not in seen]
    ordered = metric_names_order(seen)
    return ordered + [k for k in seen if k not in ordered]


def metric_names_order(found: list[str]) -> list[str]:
    """The metrics of the tables: main metrics, likelihood, OOD AUROCs, attack accuracies
    (by attack and ε), then budget."""
    main = [k for k in MAIN_METRICS + LIKELIHOOD_METRICS if k in found]
    ood = [k for k in found if names.parse_ood_auroc(k)]
    adv = sorted((k for k in found if names.parse_attack_accuracy(k)),
                 key=names.parse_attack_accuracy)
    budget = [k for k in BUDGET if k in found]
    return main + ood + adv + budget


def _learning_rate(raw_config: dict) -> float | None:
    from jaxhybrid.optim import scaled_learning_rate
    try:
        import ml_collections
        return scaled_learning_rate(ml_collections.ConfigDict(raw_config["optimizer"]),
                                    int(raw_config["batch_size"]))
    except (KeyError, ValueError, TypeError):
        return None


def group_runs(runs: list[Run], keys: list[str]) -> list[dict]:
    """One row per group: {"group": {key: value}, "n", "seeds", "runs", "learning_rate",
    "metrics": {name: {"mean", "std", "n", "values"}}}, sorted by the group values."""
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(json.dumps([r.config.get(k) for k in keys]), []).append(r)
    all_names = metric_names(runs)
    rows = []
    for members in groups.values():
        members = sorted(members, key=lambda r: r.seed)
        metrics = {}
        for name in all_names:
            vals = [r.metrics[name] for r in members
                    if name in r.metrics and math.isfinite(r.metrics[name])]
            if not vals:
                continue
            mean, std = mean_std(vals)
            metrics[name] = {"mean": mean, "std": std, "n": len(vals), "values": vals}
        rows.append({"group": {k: members[0].config.get(k) for k in keys},
                     "n": len(members), "seeds": [r.seed for r in members],
                     "runs": [r.directory for r in members],
                     "learning_rate": _learning_rate(members[0].raw_config),
                     "metrics": metrics})
    rows.sort(key=lambda row: _sort_key(tuple(row["group"][k] for k in keys)))
    return rows


def aggregate(run_root: str) -> list[dict]:
    """Rows (see :func:`group_runs`) of every finished run under ``run_root``."""
    runs = collect_runs(run_root)
    return group_runs(runs, group_keys(runs, run_root))


# -- the declared presentation ---------------------------------------------------------
def _choice(what: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"Unknown {what} {value!r}; valid choices: "
                         f"{', '.join(map(str, choices))}")


def _plain(value):
    """A value as JSON keeps it: tuples as lists."""
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


def _same_value(a, b) -> bool:
    if _is_number(a) and _is_number(b):
        return float(a) == float(b)
    return _plain(a) == _plain(b)


def check_plot(spec: dict) -> dict:
    """One entry of ``plots``, checked; a JSON-able copy with its kind and panels set."""
    if not isinstance(spec, dict):
        raise ValueError(f"A plot is a dict of {', '.join(PLOT_FIELDS)}; got {spec!r}")
    unknown = sorted(set(spec) - set(PLOT_FIELDS))
    if unknown:
        raise ValueError(f"Unknown plot field(s) {', '.join(map(repr, unknown))}; valid "
                         f"fields: {', '.join(PLOT_FIELDS)}")
    out = json.loads(json.dumps(spec))
    kind = out.setdefault("kind", "curve")
    _choice("plot kind", kind, PLOT_KINDS)
    if kind == "curve":
        metrics = out.get("metrics")
        if isinstance(metrics, str):
            metrics = [metrics]
        if not metrics or not all(isinstance(m, str) and m for m in metrics):
            raise ValueError(f"A curve plot needs 'metrics': a list of headline names or "
                             f"patterns, e.g. ['accuracy'] or ['ood/*/*/auroc']; "
                             f"got {spec.get('metrics')!r}")
        out["metrics"] = list(metrics)
        ylim, hline = out.get("ylim"), out.get("hline")
        if ylim is not None and not (isinstance(ylim, list) and len(ylim) == 2):
            raise ValueError(f"ylim must be [low, high] (high may be None), got {ylim!r}")
        if hline is not None and not (isinstance(hline, dict) and "y" in hline):
            raise ValueError(f"hline must be {{'y': value, 'label': text}}, got {hline!r}")
        out.setdefault("panels", "match" if any("*" in m for m in metrics) else "single")
        _choice("plot panels", out["panels"], PANEL_MODES)
    out.setdefault("legend_panels", "first" if out.get("panels") == "match" else "all")
    _choice("plot legend_panels", out["legend_panels"], LEGEND_PANELS)
    return out


def check_presentation(presentation: dict | None) -> dict:
    """The aggregation entries of a ``get_sweep`` dict (:data:`PRESENTATION_KEYS`),
    checked and made JSON-able: labels become ``{key: [[value, label], ...]}``."""
    p = dict(presentation or {})
    unknown = sorted(set(p) - set(PRESENTATION_KEYS))
    if unknown:
        raise ValueError(f"Unknown aggregation entr(ies) {', '.join(map(repr, unknown))}; "
                         f"valid: {', '.join(PRESENTATION_KEYS)}")
    out: dict = {}
    for key in ("x", "x_label"):
        if p.get(key) is not None:
            if not isinstance(p[key], str):
                raise ValueError(f"{key} must be a string, got {p[key]!r}")
            out[key] = p[key]
    if "x_scale" in p:
        _choice("x_scale", p["x_scale"], X_SCALES)
        out["x_scale"] = p["x_scale"]
    if "titles" in p:
        if not isinstance(p["titles"], dict):
            raise ValueError(f"titles must be {{key: title}}, got {p['titles']!r}")
        out["titles"] = {str(k): str(v) for k, v in p["titles"].items()}
    if "labels" in p:
        if not isinstance(p["labels"], dict):
            raise ValueError(f"labels must be {{key: {{value: label}}}}, got {p['labels']!r}")
        out["labels"] = {}
        for key, mapping in p["labels"].items():
            pairs = mapping.items() if isinstance(mapping, dict) else mapping
            try:
                out["labels"][str(key)] = [[_plain(v), str(text)] for v, text in pairs]
            except (TypeError, ValueError):
                raise ValueError(f"labels[{key!r}] must be {{value: label}}, got "
                                 f"{mapping!r}") from None
    if "plots" in p:
        out["plots"] = [check_plot(s) for s in p["plots"]]
    return out


def declared_presentation(run_root: str) -> dict:
    """What the sweep declared for aggregation: ``spec.aggregate`` of sweep_status.json,
    else the ``get_sweep`` of the config file named there; {} when neither exists."""
    spec = sweep_spec(run_root)
    if "aggregate" in spec:
        return check_presentation(spec["aggregate"])
    if not spec.get("config"):
        return {}
    from jaxhybrid import sweep
    try:
        path, variant = sweep.split_config_arg(spec["config"])
        declared = sweep.declared_sweep(sweep.load_config_module(path), variant)
    except Exception as e:  # noqa: BLE001 -- an old sweep whose config moved: defaults
        log.warning("cannot read get_sweep of %s (%s): default figures", spec["config"], e)
        return {}
    return declared.presentation if declared is not None else {}


def resolve_view(rows: list[dict], keys: list[str], presentation: dict | None = None, *,
                 x: str | None = None, metrics: list[str] | None = None) -> View:
    """The declared presentation with the command line's ``x`` and ``metrics`` on top.
    The declared figures, x label and scale go with the declared x; another ``x`` gets
    the default figures (or ``metrics``)."""
    p = check_presentation(presentation)
    if x:
        if x not in keys:
            raise ValueError(f"--x {x!r} is not a grouping key of these runs; valid "
                             f"choices: {', '.join(keys) or 'none (one group)'}")
    elif p.get("x"):
        x = p["x"]
        if x not in keys:
            log.info("%s (the declared x) is not a grouping key here (%s): no figures "
                     "against it; choose one with --x", x, ", ".join(keys) or "none")
            x = None
    else:
        x = next((k for k in keys if rows and all(_is_number(r["group"][k]) for r in rows)),
                 None)
    # the declared figures, axis label and scale belong to the declared x
    own = p.get("x") is None or x == p.get("x")
    plots = (own and p.get("plots")) or [check_plot(s) for s in DEFAULT_PLOTS]
    if metrics:
        found = list(dict.fromkeys(n for r in rows for n in r["metrics"]))
        for pattern in metrics:
            if not any(names.matches(pattern, n) for n in found):
                raise ValueError(f"--metrics {pattern!r} matches no metric of these runs; "
                                 f"valid names: {', '.join(found)}")
        plots = [check_plot({"metrics": [m]}) for m in metrics] \
            + [s for s in plots if s["kind"] == "reliability"]
    titles = p.get("titles", {})
    return View(x=x, x_label=(own and p.get("x_label")) or (titles.get(x, x) if x else ""),
                x_scale=p.get("x_scale", "linear") if own else "linear", titles=titles,
                labels=p.get("labels", {}), plots=plots)


# -- tables ------------------------------------------------------------------------------
def _fmt_value(v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (tuple, list)):
        return "(" + ", ".join(_fmt_value(x) for x in v) + ")"
    return str(v)


def _fmt_stat(stat: dict | None, n: int, name: str) -> str:
    if stat is None:
        return "–"
    digits = 0 if name in BUDGET else 4
    s = f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"
    return s + (f" (n={stat['n']})" if stat["n"] != n else "")


def _column_title(name: str) -> str:
    if name in METRIC_TITLES:
        return METRIC_TITLES[name]
    ood = names.parse_ood_auroc(name)
    if ood:
        return f"{ood[0]} / {ood[1]}"
    attack = names.parse_attack_accuracy(name)
    if attack:
        return f"{attack[0].upper()} ε={epsilon_label(attack[1])}"
    return name


def _table_names(rows: list[dict]) -> list[str]:
    return metric_names_order(list(dict.fromkeys(n for r in rows for n in r["metrics"])))


def markdown_tables(rows: list[dict], keys: list[str], view: View | None = None) -> str:
    view = view or View()
    table = _table_names(rows)
    sections = [
        ("Classification and calibration (test split)",
         [n for n in table if n in MAIN_METRICS or n in BUDGET], True),
        ("Likelihood (test split)", [n for n in table if n in LIKELIHOOD_METRICS], False),
        ("OOD detection: AUROC (in-distribution = test split; set / score)",
         [n for n in table if names.parse_ood_auroc(n)], False),
        ("Adversarial robustness: accuracy under attack",
         [n for n in table if names.parse_attack_accuracy(n)], False),
    ]
    out = []
    for title, cols, with_lr in sections:
        if not cols:
            continue
        header = [view.title(k) for k in keys] + ["n"] + (["peak lr"] if with_lr else []) \
            + [_column_title(c) for c in cols]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in rows:
            cells = [_fmt_value(r["group"][k]) for k in keys] + [str(r["n"])]
            if with_lr:
                cells.append("–" if r["learning_rate"] is None else f"{r['learning_rate']:.3g}")
            cells += [_fmt_stat(r["metrics"].get(c), r["n"], c) for c in cols]
            lines.append("| " + " | ".join(cells) + " |")
        out.append(f"### {title}\n\n" + "\n".join(lines))
    return "\n\n".join(out)


def write_csv(rows: list[dict], keys: list[str], path: str) -> str:
    table = _table_names(rows)
    header = keys + ["n", "seeds", "learning_rate"]
    for n in table:
        header += [f"{n}_mean", f"{n}_std", f"{n}_n"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            line = [_fmt_value(r["group"][k]) for k in keys]
            line += [r["n"], " ".join(map(str, r["seeds"])),
                     "" if r["learning_rate"] is None else repr(r["learning_rate"])]
            for n in table:
                s = r["metrics"].get(n)
                line += ["", "", 0] if s is None else [repr(s["mean"]), repr(s["std"]), s["n"]]
            w.writerow(line)
    return path


# -- figures -----------------------------------------------------------------------------
def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from jaxhybrid.evaluators import plots
    fig = Figure(figsize=(width, height), dpi=plots.DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str) -> str:
    from jaxhybrid.evaluators import plots
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=plots.DPI, format="png")
    fig.clear()
    return path


def series_label(group: dict, view: View | None = None) -> str:
    """{key: value} -> the declared label of that value, else 'title=value'
    ('β=0.5'); parts joined by ', '."""
    view = view or View()
    parts = []
    for k, v in group.items():
        label = _declared_label(view, k, v)
        parts.append(label if label is not None else f"{view.title(k)}={_fmt_value(v)}")
    return ", ".join(parts) or "all runs"


def _declared_label(view: View, key: str, value) -> str | None:
    return next((text for v, text in view.labels.get(key, []) if _same_value(v, value)), None)


def _series(rows: list[dict], keys: list[str], view: View) -> dict[str, list[dict]]:
    """{label: rows sorted by x} over the group keys other than x."""
    other = [k for k in keys if k != view.x]
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(series_label({k: r["group"][k] for k in other}, view), []).append(r)
    for label in out:
        out[label].sort(key=lambda r: _sort_key((r["group"][view.x],)))
    return out


def _x_positions(rows: list[dict], view: View) -> tuple[dict, list, list[str]]:
    """{value as JSON: position}, tick positions and tick labels (the declared label of a
    value, else the value): numbers stand for themselves, other values for their rank."""
    x = view.x
    values = sorted({json.dumps(r["group"][x]): r["group"][x] for r in rows}.values(),
                    key=lambda v: _sort_key((v,)))
    numeric = all(_is_number(v) for v in values)
    pos = {json.dumps(v): (v if numeric else i) for i, v in enumerate(values)}
    labels = [_declared_label(view, x, v) or _fmt_value(v) for v in values]
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
    matched = list(dict.fromkeys(n for p in patterns for n in found if names.matches(p, n)))
    if mode == "single":
        return [(spec.get("title", ""), matched, None)] if matched else []
    if mode == "metric":
        titles = spec.get("panel_titles", {})
        return [(titles.get(n, n), [n], None) for n in matched]
    panels: dict[str, list[str]] = {}
    part: dict[str, int | None] = {}
    for n in found:                        # panels in the order the metrics appear
        for p in patterns:
            if names.matches(p, n):
                i = _first_wildcard(p)
                value = n.split("/")[i] if i is not None else ""
                panels.setdefault(value, [])
                part[value] = i
    for n in matched:
        for p in patterns:
            if names.matches(p, n):
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


def plot_curves(rows: list[dict], keys: list[str], view: View, spec: dict,
                out_dir: str) -> str | None:
    """A curve figure: each panel's metrics against x, a line per series (colour) and
    metric (line style), error bars = std over seeds."""
    panels = _panels(rows, spec)
    if not panels:
        return None
    patterns = spec["metrics"]
    series = _series(rows, keys, view)
    pos, ticks, tick_labels = _x_positions(rows, view)
    by_metric = spec["panels"] != "metric"      # lines of a series told apart by metric
    suffixes = list(dict.fromkeys(_line_suffix(n, patterns, part) if by_metric else ""
                                  for _, ms, part in panels for n in ms))
    ylim = spec.get("ylim")
    if ylim is not None and ylim[1] is None:
        top = max((r["metrics"][m]["mean"] + r["metrics"][m]["std"] for _, ms, _ in panels
                   for m in ms for r in rows if m in r["metrics"]), default=1.0)
        ylim = [ylim[0], top * 1.1 if top > 0 else 1]
    last = {p.split("/")[-1] for p in patterns}     # 'accuracy', 'auroc', ...
    common = next(iter(last)) if len(last) == 1 and "*" not in next(iter(last)) else ""
    ylabel = spec.get("ylabel", common)
    hline = spec.get("hline")
    legend = spec.get("legend") or {"fontsize": 7, "frameon": False}
    ncols = min(int(spec.get("ncols", 3)), len(panels))
    nrows = -(-len(panels) // ncols)
    width, height = spec.get("panel_size", (4.6, 3.8))
    fig = _new_figure(width * ncols, height * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for j, (ax, (title, metrics, part)) in enumerate(zip(axes, panels)):
        if hline:
            ax.axhline(hline["y"], color="0.5", lw=1, ls=":", label=hline.get("label"))
        for metric in metrics:
            suffix = _line_suffix(metric, patterns, part) if by_metric else ""
            style = LINE_STYLES[suffixes.index(suffix) % len(LINE_STYLES)]
            for i, (label, members) in enumerate(series.items()):
                pts = [(pos[json.dumps(r["group"][view.x])], r["metrics"][metric])
                       for r in members if metric in r["metrics"]]
                if not pts:
                    continue
                ax.errorbar(np.array([p[0] for p in pts], float),
                            np.array([p[1]["mean"] for p in pts]),
                            yerr=np.array([p[1]["std"] for p in pts]), marker="o", ms=4,
                            lw=1.5, capsize=3, ls=style, color=f"C{i % 10}",
                            label=label + (f": {suffix}" if suffix else ""))
        _x_axis(ax, view, ticks, tick_labels)
        if ylim is not None:
            ax.set_ylim(*ylim)
        if ylabel:
            ax.set_ylabel(ylabel)
        if title:
            ax.set_title(title, fontsize=10)
        if spec["legend_panels"] == "all" or j == 0:
            ax.legend(**legend)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    file = spec.get("file") or _slug("_".join(
        part for p in patterns for part in p.split("/") if "*" not in part)) \
        + f"_vs_{_slug(view.x)}.png"
    return _save(fig, os.path.join(out_dir, file))


def plot_reliability(runs: list[Run], rows: list[dict], keys: list[str], view: View,
                     spec: dict, out_dir: str) -> str | None:
    """Every series side by side at the largest x (all rows without an x); each from its
    lowest-seed run (seed 0 in a normal sweep)."""
    from jaxhybrid.evaluators import plots
    if view.x is not None:
        largest = max((r["group"][view.x] for r in rows), key=lambda v: _sort_key((v,)))
        chosen = [r for r in rows if _same_value(r["group"][view.x], largest)]
        title = spec.get("title", "Reliability at the largest {key}, {x}") \
            .replace("{key}", view.title(view.x)).replace("{x}", _fmt_value(largest))
    else:
        chosen, title = rows, "Reliability"
    other = [k for k in keys if k != view.x]
    by_dir = {run.directory: run for run in runs}
    cal_dict = {}
    for row in chosen:
        run = by_dir[row["runs"][0]]  # members are sorted by seed
        cal = run.evaluation.get("calibration", {}).get("equal_width")
        if cal:
            label = series_label({k: row["group"][k] for k in other}, view)
            cal_dict[f"{label}, seed {run.seed}"] = cal
    if not cal_dict:
        return None
    return plots.reliability_side_by_side(
        cal_dict, os.path.join(out_dir, spec.get("file", "reliability.png")), title)


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


def write_outputs(run_root: str, out_dir: str | None = None, *, x: str | None = None,
                  metrics: list[str] | None = None) -> dict:
    """Aggregate ``run_root`` and write CSV, markdown and figures into ``out_dir``
    (default ``run_root/aggregate``); ``x`` and ``metrics`` as ``--x`` and ``--metrics``.
    Returns {"dir", "csv", "markdown", "figures", "rows", "view"}."""
    runs = collect_runs(run_root)
    if not runs:
        raise FileNotFoundError(f"No finished run (a directory with final_metrics.json) "
                                f"under {run_root}")
    keys = group_keys(runs, run_root)
    rows = group_runs(runs, keys)
    view = resolve_view(rows, keys, declared_presentation(run_root), x=x, metrics=metrics)
    out_dir = out_dir or os.path.join(run_root, "aggregate")
    os.makedirs(out_dir, exist_ok=True)
    csv_path = write_csv(rows, keys, os.path.join(out_dir, "aggregate.csv"))
    figures = write_figures(runs, rows, keys, view, out_dir)
    md = ["# Sweep aggregate\n",
          f"{len(runs)} finished run(s) under `{os.path.relpath(run_root)}` in {len(rows)} "
          f"group(s), grouped by {', '.join(f'`{k}`' for k in keys) or 'nothing'}. Each cell "
          f"is mean ± std over the seeds of the group (std with ddof=1, 0 when n = 1); n is "
          f"the number of seeds (shown in a cell when fewer runs have that metric). Test "
          f"split; ECE with 15 equal-width bins; peak lr after the config's lr scaling.\n",
          markdown_tables(rows, keys, view)]
    if figures:
        md.append("\n### Figures\n")
        md += [f"![{os.path.basename(p)}]({os.path.relpath(p, out_dir)})\n" for p in figures]
    md_path = os.path.join(out_dir, "aggregate.md")
    with open(md_path, "w") as f:
        f.write("\n".join(md) + "\n")
    return {"dir": out_dir, "csv": csv_path, "markdown": md_path, "figures": figures,
            "rows": rows, "view": view}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_root", help="sweep directory (searched recursively for runs)")
    p.add_argument("--out", default="", help="output directory (default RUN_ROOT/aggregate)")
    p.add_argument("--x", default="", help="grouping key on the x axis of the figures "
                   "(default: the sweep's declared x, else the first numeric grouping key)")
    p.add_argument("--metrics", default="", help="comma-separated headline names or "
                   "patterns to plot against x, one figure each, e.g. "
                   "accuracy,ece,ood/*/*/auroc ('*' = one '/'-separated part); "
                   "default: the sweep's declared figures")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        out = write_outputs(a.run_root, a.out or None, x=a.x or None,
                            metrics=[m.strip() for m in a.metrics.split(",") if m.strip()])
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    with open(out["markdown"]) as f:
        print(f.read())
    print(f"written: {out['csv']}, {out['markdown']}, " + ", ".join(out["figures"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
