"""Aggregate a sweep: ``python -m jaxhybrid.aggregate DIR [--out DIR/aggregate]``.

Collects every finished run under ``DIR`` (a directory with ``final_metrics.json``,
``config.json`` and ``eval/<step>/metrics.json``; the latest step is used), groups the
runs by every swept key except ``seed`` (the keys of ``DIR/sweep_status.json``, plus any
config key whose value differs between runs) and writes into the output directory:

* ``aggregate.csv`` and ``aggregate.md``: mean ± std over seeds (std with ddof=1 when
  n > 1, else 0; n shown) of test accuracy, NLL, ECE, ECE after temperature scaling,
  the OOD AUROC of every (set, score) present and the attack accuracy at every ε;
* the GFFN thesis' figures (SEEDS.md §1), error bars = std over seeds, log batch axis:
  ``accuracy_vs_batch_size.png``, ``ece_vs_batch_size.png``,
  ``ood_auroc_vs_batch_size.png`` (one panel per OOD set; max_softmax and log_px), and
  ``reliability_largest_batch.png`` (FFN and GFFN side by side at the largest batch
  size, the lowest seed's runs).

Library use: ``aggregate(run_root) -> rows`` and ``write_outputs(run_root, out_dir)``.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import math
import os
import sys
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jaxhybrid.compare import latest_eval
from jaxhybrid.evaluators import plots

log = logging.getLogger("jaxhybrid.aggregate")

SKIP_DIRS = {"checkpoints", "eval", "jax_cache", "aggregate", "__pycache__"}
FIGURE_SCORES = ("max_softmax", "log_px")   # the thesis' two OOD scores
MAIN_METRICS = ("accuracy", "nll", "ece", "ece_ts")
METRIC_TITLES = {"accuracy": "test accuracy", "nll": "NLL", "ece": "ECE",
                 "ece_ts": "ECE after TS", "steps": "steps", "train_seconds": "train s"}


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
    """The headline numbers of one run, keyed as in the evaluators' headlines:
    accuracy, nll, ece, ece_ts, ood/<set>/<score>/auroc, <attack>/eps=<ε>/accuracy,
    steps, train_seconds."""
    m: dict[str, float] = {}
    c = evaluation.get("classification", {})
    for k in ("accuracy", "nll"):
        if k in c:
            m[k] = c[k]
    cal = evaluation.get("calibration", {}).get("equal_width", {})
    if "ece" in cal:
        m["ece"] = cal["ece"]
    ts = evaluation.get("temperature", {})
    if "ece_after" in ts:
        m["ece_ts"] = ts["ece_after"]
    for set_name, s in evaluation.get("ood", {}).get("sets", {}).items():
        for score, r in s.get("scores", {}).items():
            m[f"ood/{set_name}/{score}/auroc"] = r["auroc"]
    adv = evaluation.get("adversarial", {})
    for eps, acc in zip(adv.get("epsilons", []), adv.get("accuracy", [])):
        m[f"{adv.get('attack', 'attack')}/eps={eps:.4g}/accuracy"] = acc
    if "step" in final:
        m["steps"] = final["step"]
    if "train_seconds" in final:
        m["train_seconds"] = final["train_seconds"]
    return {k: float(v) for k, v in m.items() if v is not None}


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


def swept_keys(run_root: str) -> list[str]:
    path = os.path.join(run_root, "sweep_status.json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return list(json.load(f).get("spec", {}).get("sweep", {}))


def group_keys(runs: list[Run], run_root: str = "") -> list[str]:
    """Swept keys (sweep_status.json) + config keys that differ between runs, minus seed;
    batch_size and joint_weight first."""
    keys = set(swept_keys(run_root)) if run_root else set()
    all_keys = set().union(*(r.config for r in runs)) if runs else set()
    for k in all_keys:
        if len({json.dumps(r.config.get(k), sort_keys=True) for r in runs}) > 1:
            keys.add(k)
    keys.discard("seed")
    first = [k for k in ("batch_size", "joint_weight") if k in keys]
    return first + sorted(keys - set(first))


def _sort_key(values: tuple) -> tuple:
    return tuple((0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool)
                 else (1, 0, json.dumps(v)) for v in values)


def mean_std(values) -> tuple[float, float]:
    """Mean and std over seeds: std with ddof=1 when n > 1, else 0."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return float("nan"), float("nan")
    std = float(x.std(ddof=1)) if x.size > 1 else 0.0
    return float(x.mean()), std


def metric_names(runs: list[Run]) -> list[str]:
    """Main metrics, then OOD AUROCs, then attack accuracies (by ε), then budget."""
    seen: list[str] = []
    for r in runs:
        seen += [k for k in r.metrics if k not in seen]
    return metric_names_order(seen)


def metric_names_order(names: list[str]) -> list[str]:
    main = [k for k in MAIN_METRICS if k in names]
    ood = [k for k in names if k.startswith("ood/")]
    adv = sorted((k for k in names if "/eps=" in k),
                 key=lambda k: (k.split("/")[0], float(k.split("eps=")[1].split("/")[0])))
    budget = [k for k in ("steps", "train_seconds") if k in names]
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
    names = metric_names(runs)
    rows = []
    for members in groups.values():
        members = sorted(members, key=lambda r: r.seed)
        metrics = {}
        for name in names:
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
    digits = 0 if name in ("steps", "train_seconds") else 4
    s = f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"
    return s + (f" (n={stat['n']})" if stat["n"] != n else "")


def _column_title(name: str) -> str:
    if name in METRIC_TITLES:
        return METRIC_TITLES[name]
    parts = name.split("/")
    if name.startswith("ood/"):
        return f"{parts[1]} / {parts[2]}"
    if "/eps=" in name:
        return f"{parts[0].upper()} ε={epsilon_label(float(parts[1][4:]))}"
    return name


def _key_title(key: str) -> str:
    return {"joint_weight": "λ", "batch_size": "batch"}.get(key, key)


def markdown_tables(rows: list[dict], keys: list[str]) -> str:
    names = metric_names_order(list(dict.fromkeys(n for r in rows for n in r["metrics"])))
    sections = [
        ("Classification and calibration (test split)",
         [n for n in names if n in MAIN_METRICS or n in ("steps", "train_seconds")], True),
        ("OOD detection: AUROC (in-distribution = test split; set / score)",
         [n for n in names if n.startswith("ood/")], False),
        ("Adversarial robustness: accuracy under attack",
         [n for n in names if "/eps=" in n], False),
    ]
    out = []
    for title, cols, with_lr in sections:
        if not cols:
            continue
        header = [_key_title(k) for k in keys] + ["n"] + (["peak lr"] if with_lr else []) \
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
    names = metric_names_order(list(dict.fromkeys(n for r in rows for n in r["metrics"])))
    header = keys + ["n", "seeds", "learning_rate"]
    for n in names:
        header += [f"{n}_mean", f"{n}_std", f"{n}_n"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            line = [_fmt_value(r["group"][k]) for k in keys]
            line += [r["n"], " ".join(map(str, r["seeds"])),
                     "" if r["learning_rate"] is None else repr(r["learning_rate"])]
            for n in names:
                s = r["metrics"].get(n)
                line += ["", "", 0] if s is None else [repr(s["mean"]), repr(s["std"]), s["n"]]
            w.writerow(line)
    return path


# -- figures -----------------------------------------------------------------------------
def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=plots.DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=plots.DPI, format="png")
    fig.clear()
    return path


def series_label(group: dict) -> str:
    """{joint_weight: 0.0, ...} -> 'FFN (λ=0)', 'GFFN (λ=1)', 'λ=0.5', plus other keys."""
    parts = []
    for k, v in group.items():
        if k == "joint_weight":
            lam = float(v)
            parts.append({0.0: "FFN (λ=0)", 1.0: "GFFN (λ=1)"}.get(lam, f"λ={lam:g}"))
        else:
            parts.append(f"{k}={_fmt_value(v)}")
    return ", ".join(parts) or "all runs"


def _series(rows: list[dict], keys: list[str]) -> dict[str, list[dict]]:
    """{label: rows sorted by batch size} over the group keys other than batch_size."""
    other = [k for k in keys if k != "batch_size"]
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(series_label({k: r["group"][k] for k in other}), []).append(r)
    for label in out:
        out[label].sort(key=lambda r: r["group"]["batch_size"])
    return out


def _batch_axis(ax, batch_sizes) -> None:
    ax.set_xscale("log", base=2)
    ticks = sorted(set(batch_sizes))
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(int(b)) for b in ticks], fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel("global batch size")
    ax.grid(alpha=0.3)


def _plot_metric(ax, series: dict, metric: str, *, linestyle="-", label_suffix="",
                 color_offset: int = 0) -> bool:
    drawn = False
    for i, (label, rows) in enumerate(series.items()):
        pts = [(r["group"]["batch_size"], r["metrics"][metric]) for r in rows
               if metric in r["metrics"]]
        if not pts:
            continue
        x = np.array([p[0] for p in pts], float)
        y = np.array([p[1]["mean"] for p in pts])
        e = np.array([p[1]["std"] for p in pts])
        ax.errorbar(x, y, yerr=e, marker="o", ms=4, lw=1.5, capsize=3, ls=linestyle,
                    color=f"C{(i + color_offset) % 10}", label=label + label_suffix)
        drawn = True
    return drawn


def plot_metric_vs_batch(rows, keys, metric: str, path: str, ylabel: str, title: str) -> str:
    series = _series(rows, keys)
    fig = _new_figure(5.0, 3.8)
    ax = fig.subplots()
    _plot_metric(ax, series, metric)
    _batch_axis(ax, [r["group"]["batch_size"] for r in rows])
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def plot_ece_vs_batch(rows, keys, path: str) -> str:
    series = _series(rows, keys)
    panels = [("ece", "ECE (15 equal-width bins)")]
    if any("ece_ts" in r["metrics"] for r in rows):
        panels.append(("ece_ts", "ECE after temperature scaling"))
    fig = _new_figure(4.6 * len(panels), 3.8)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    top = max((r["metrics"][m]["mean"] + r["metrics"][m]["std"] for m, _ in panels
               for r in rows if m in r["metrics"]), default=1.0)
    for ax, (metric, title) in zip(axes, panels):
        _plot_metric(ax, series, metric)
        _batch_axis(ax, [r["group"]["batch_size"] for r in rows])
        ax.set_ylim(0, top * 1.1 if top > 0 else 1)
        ax.set_ylabel("ECE")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def plot_ood_vs_batch(rows, keys, path: str) -> str | None:
    """One panel per OOD set; a line per series and score (max_softmax solid, log_px
    dashed); chance at 0.5."""
    sets = list(dict.fromkeys(m.split("/")[1] for r in rows for m in r["metrics"]
                              if m.startswith("ood/") and m.split("/")[2] in FIGURE_SCORES))
    if not sets:
        return None
    series = _series(rows, keys)
    ncols = min(3, len(sets))
    nrows = -(-len(sets) // ncols)
    fig = _new_figure(4.4 * ncols, 3.6 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    styles = {"max_softmax": "-", "log_px": "--"}
    for ax, set_name in zip(axes, sets):
        ax.axhline(0.5, color="0.5", lw=1, ls=":", label="chance")
        for score in FIGURE_SCORES:
            _plot_metric(ax, series, f"ood/{set_name}/{score}/auroc", linestyle=styles[score],
                         label_suffix=f": {score}")
        _batch_axis(ax, [r["group"]["batch_size"] for r in rows])
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("AUROC")
        ax.set_title(f"OOD: {set_name}", fontsize=10)
        if ax is axes[0]:
            ax.legend(fontsize=6, frameon=True, framealpha=0.8, loc="best")
    for ax in axes[len(sets):]:
        ax.set_visible(False)
    fig.tight_layout()
    return _save(fig, path)


def plot_reliability_largest_batch(runs: list[Run], rows: list[dict], keys: list[str],
                                   path: str) -> str | None:
    """FFN and GFFN (every series) side by side at the largest batch size; each from its
    lowest-seed run (seed 0 in a normal sweep)."""
    if "batch_size" in keys:
        largest = max(r["group"]["batch_size"] for r in rows)
        chosen = [r for r in rows if r["group"]["batch_size"] == largest]
        title = f"Reliability at the largest global batch, {largest}"
    else:
        chosen, title = rows, "Reliability"
    other = [k for k in keys if k != "batch_size"]
    by_dir = {run.directory: run for run in runs}
    cal_dict = {}
    for row in chosen:
        run = by_dir[row["runs"][0]]  # members are sorted by seed
        cal = run.evaluation.get("calibration", {}).get("equal_width")
        if cal:
            label = series_label({k: row["group"][k] for k in other})
            cal_dict[f"{label}, seed {run.seed}"] = cal
    if not cal_dict:
        return None
    return plots.reliability_side_by_side(cal_dict, path, title)


def write_figures(runs: list[Run], rows: list[dict], keys: list[str], out_dir: str) -> list[str]:
    figures = []
    if "batch_size" in keys and rows:
        if any("accuracy" in r["metrics"] for r in rows):
            figures.append(plot_metric_vs_batch(
                rows, keys, "accuracy", os.path.join(out_dir, "accuracy_vs_batch_size.png"),
                "test accuracy", "Test accuracy vs batch size (mean ± std over seeds)"))
        if any("ece" in r["metrics"] for r in rows):
            figures.append(plot_ece_vs_batch(rows, keys,
                                             os.path.join(out_dir, "ece_vs_batch_size.png")))
        ood = plot_ood_vs_batch(rows, keys, os.path.join(out_dir, "ood_auroc_vs_batch_size.png"))
        if ood:
            figures.append(ood)
    else:
        log.info("batch_size is not a swept key: no figures against batch size")
    rel = plot_reliability_largest_batch(runs, rows, keys,
                                         os.path.join(out_dir, "reliability_largest_batch.png"))
    if rel:
        figures.append(rel)
    return figures


def write_outputs(run_root: str, out_dir: str | None = None) -> dict:
    """Aggregate ``run_root`` and write CSV, markdown and figures into ``out_dir``
    (default ``run_root/aggregate``). Returns {"dir", "csv", "markdown", "figures", "rows"}."""
    runs = collect_runs(run_root)
    if not runs:
        raise FileNotFoundError(f"No finished run (a directory with final_metrics.json) "
                                f"under {run_root}")
    keys = group_keys(runs, run_root)
    rows = group_runs(runs, keys)
    out_dir = out_dir or os.path.join(run_root, "aggregate")
    os.makedirs(out_dir, exist_ok=True)
    csv_path = write_csv(rows, keys, os.path.join(out_dir, "aggregate.csv"))
    figures = write_figures(runs, rows, keys, out_dir)
    md = ["# Sweep aggregate\n",
          f"{len(runs)} finished run(s) under `{os.path.relpath(run_root)}` in {len(rows)} "
          f"group(s), grouped by {', '.join(f'`{k}`' for k in keys) or 'nothing'}. Each cell "
          f"is mean ± std over the seeds of the group (std with ddof=1, 0 when n = 1); n is "
          f"the number of seeds (shown in a cell when fewer runs have that metric). Test "
          f"split; ECE with 15 equal-width bins; peak lr after the config's lr scaling.\n",
          markdown_tables(rows, keys)]
    if figures:
        md.append("\n### Figures\n")
        md += [f"![{os.path.basename(p)}]({os.path.relpath(p, out_dir)})\n" for p in figures]
    md_path = os.path.join(out_dir, "aggregate.md")
    with open(md_path, "w") as f:
        f.write("\n".join(md) + "\n")
    return {"dir": out_dir, "csv": csv_path, "markdown": md_path, "figures": figures,
            "rows": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_root", help="sweep directory (searched recursively for runs)")
    p.add_argument("--out", default="", help="output directory (default RUN_ROOT/aggregate)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        out = write_outputs(a.run_root, a.out or None)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    with open(out["markdown"]) as f:
        print(f.read())
    print(f"written: {out['csv']}, {out['markdown']}, " + ", ".join(out["figures"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
