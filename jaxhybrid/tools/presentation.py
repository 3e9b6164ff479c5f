"""What a sweep declares for its aggregation (``get_sweep``'s presentation entries), and
the view of a table and its figures that the declaration and the command line give.

The entries (checked by :func:`check_presentation`):

* ``x``: the grouping key on the x axis, a dotted config key (``"objective.beta"``);
  ``x_label``: its axis label (default: its title); ``x_scale``: ``linear`` (default),
  ``log2``, ``log10`` or ``categorical`` (equally spaced values, in order: a grid with 0
  and powers of ten, e.g. β ∈ {0, 0.01, 1, 100});
* ``titles``: ``{key: column title}``, e.g. ``{"objective.beta": "β"}``;
* ``labels``: ``{key: {value: label}}`` for the lines (and x ticks), e.g.
  ``{"objective.beta": {1.0: "VAE"}}``; other values read ``title=value``;
* ``plots``: a list of figures, each a dict of the fields of :data:`PLOT_FIELDS`.
"""
from __future__ import annotations

import dataclasses
import json
import logging

from jaxhybrid.evaluators import suite
from jaxhybrid.evaluators.calibration import ECE
from jaxhybrid.evaluators.classification import ACCURACY
from jaxhybrid.evaluators.ood import ood_auroc
from jaxhybrid.tools.stats import is_number, plain

log = logging.getLogger("jaxhybrid.tools")

PRESENTATION_KEYS = ("x", "x_label", "x_scale", "titles", "labels", "plots")
X_SCALES = ("linear", "log2", "log10", "categorical")
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
    "legend_panels": "all: a legend in each panel; shared: one legend for the figure (the "
                     "default for panels=match: the same lines in each panel)",
}
PLOT_KINDS = ("curve", "reliability")
PANEL_MODES = ("single", "metric", "match")
LEGEND_PANELS = ("all", "shared")
LINE_STYLES = ("-", "--", ":", "-.")
DEFAULT_PLOTS = ({"metrics": [ACCURACY]}, {"metrics": [ECE]},
                 {"metrics": [ood_auroc("*", "*")]}, {"kind": "reliability"})


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


def _choice(what: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"Unknown {what} {value!r}; valid choices: "
                         f"{', '.join(map(str, choices))}")


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
    out.setdefault("legend_panels", "shared" if out.get("panels") == "match" else "all")
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
                out["labels"][str(key)] = [[plain(v), str(text)] for v, text in pairs]
            except (TypeError, ValueError):
                raise ValueError(f"labels[{key!r}] must be {{value: label}}, got "
                                 f"{mapping!r}") from None
    if "plots" in p:
        out["plots"] = [check_plot(s) for s in p["plots"]]
    return out


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
        x = next((k for k in keys if rows and all(is_number(r["group"][k]) for r in rows)),
                 None)
    # the declared figures, axis label and scale belong to the declared x
    own = p.get("x") is None or x == p.get("x")
    plots = (own and p.get("plots")) or [check_plot(s) for s in DEFAULT_PLOTS]
    if metrics:
        found = list(dict.fromkeys(n for r in rows for n in r["metrics"]))
        for pattern in metrics:
            if not any(suite.matches(pattern, n) for n in found):
                raise ValueError(f"--metrics {pattern!r} matches no metric of these runs; "
                                 f"valid names: {', '.join(found)}")
        plots = [check_plot({"metrics": [m]}) for m in metrics] \
            + [s for s in plots if s["kind"] == "reliability"]
    titles = p.get("titles", {})
    return View(x=x, x_label=(own and p.get("x_label")) or (titles.get(x, x) if x else ""),
                x_scale=p.get("x_scale", "linear") if own else "linear", titles=titles,
                labels=p.get("labels", {}), plots=plots)


