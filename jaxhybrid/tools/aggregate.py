"""Aggregate a sweep: ``python -m jaxhybrid.tools.aggregate DIR [--out DIR/aggregate]
[--x KEY] [--metrics NAME,PATTERN,...] [--checkpoint best|latest|STEP] [--format md|csv|json]``.

Collects every finished run under ``DIR`` (local or gs://; a directory with
``final_metrics.json`` and ``config.json``), reads of each the evaluation
``final_metrics.json`` names (``--checkpoint best``: the run's selected checkpoint;
``latest`` or a step instead) and groups the runs by the sweep's keys, never ``seed``: the
swept keys of ``DIR/sweep_status.json`` in their sweep order, then any other config key
whose value differs between runs (sorted). It writes into the output directory:

* ``aggregate.md``, ``aggregate.csv`` and ``aggregate.json``: mean ± std over seeds (std
  with ddof=1; '± n/a' when n = 1) of the headline metrics (accuracy, NLL, ECE, ECE after
  temperature scaling, the likelihood bound, the OOD AUROC of every (set, score), the
  attack accuracy at every exact ε, then steps and training seconds), and the evaluation
  of each run; ``--format`` chooses which one is printed. A score whose definition
  differs between runs is split into ``<score>~1``, ``<score>~2``, each defined in a note;
* figures: metrics against one grouping key ``x``, one line per combination of the other
  keys and metric, each its own colour, error bars = std over seeds; and reliability
  diagrams of every line at the largest ``x`` (each from its lowest-seed run).

What is plotted comes from the sweep's ``get_sweep`` (:mod:`jaxhybrid.tools.presentation`,
recorded by :mod:`jaxhybrid.tools.sweep` in ``sweep_status.json``), e.g.
``{"x": "objective.beta", "x_scale": "log10", "titles": {"objective.beta": "β"}, "plots":
[{"metrics": ["ood/*/max_softmax/auroc", "ood/*/log_px/auroc"], "title": "OOD: {}"}]}``
(a panel per OOD set, a line per score). ``--x KEY`` picks another x among the grouping
keys (with the default figures), and ``--metrics accuracy,ece,ood/*/*/auroc`` plots those
headline names or patterns (``*`` = any one ``/``-separated part), one figure each.

Library use: ``aggregate(run_root) -> rows`` and ``write_outputs(run_root, out_dir, x=...,
metrics=..., checkpoint=...)``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from jaxhybrid.checkpointing import run_path
from jaxhybrid.tools import figures, runs, stats, tables
from jaxhybrid.tools.configfile import declared_sweep, load_config_module, split_config_arg
from jaxhybrid.tools.presentation import check_presentation, resolve_view

log = logging.getLogger("jaxhybrid.aggregate")

STATUS_FILE = "sweep_status.json"
FORMATS = ("md", "csv", "json")


def sweep_spec(run_root) -> dict:
    """The ``spec`` of ``run_root/sweep_status.json``; {} without one."""
    path = run_path(run_root) / STATUS_FILE
    return runs.read_json(path).get("spec", {}) if path.exists() else {}


def declared_presentation(run_root) -> dict:
    """What the sweep declared for aggregation: ``spec.aggregate`` of sweep_status.json,
    else the ``get_sweep`` of the config file named there; {} when neither exists."""
    spec = sweep_spec(run_root)
    if "aggregate" in spec:
        return check_presentation(spec["aggregate"])
    if not spec.get("config"):
        return {}
    try:
        path, variant = split_config_arg(spec["config"])
        declared = declared_sweep(load_config_module(path), variant)
    except Exception as e:  # noqa: BLE001 -- an old sweep whose config moved: defaults
        log.warning("cannot read get_sweep of %s (%s): default figures", spec["config"], e)
        return {}
    return declared.presentation if declared is not None else {}


def _collect(run_root, checkpoint) -> tuple[list[runs.Run], list[str], list[dict], list[str]]:
    """The runs, grouping keys, rows and notes of ``run_root``."""
    found = runs.collect_runs(run_root, checkpoint)
    if not found:
        raise FileNotFoundError(f"No finished run (a directory with final_metrics.json and "
                                f"an evaluation) under {run_root}")
    keys = stats.group_keys(found, list(sweep_spec(run_root).get("sweep", {})))
    metrics, notes = stats.run_metrics(found)
    return found, keys, stats.group_runs(found, metrics, keys), notes


def aggregate(run_root, checkpoint="best") -> list[dict]:
    """Rows (see :func:`jaxhybrid.tools.stats.group_runs`) of every finished run under
    ``run_root``."""
    return _collect(run_root, checkpoint)[2]


def _which(selected_by: str) -> str:
    return {"best": "the one its final_metrics.json names (its selected checkpoint)",
            "latest": "its highest evaluated step"}.get(selected_by, f"at {selected_by}")


def _markdown(run_root, found, rows, keys, view, notes, figure_paths) -> str:
    md = ["# Sweep aggregate\n",
          f"{len(found)} finished run(s) under `{run_root}` in {len(rows)} group(s), grouped "
          f"by {', '.join(f'`{k}`' for k in keys) or 'nothing'}. Each cell is mean ± std over "
          f"the seeds of the group (std with ddof=1; n/a when n = 1); n is the number of "
          f"seeds (shown in a cell when fewer runs have that metric). Each run's evaluation: "
          f"{_which(found[0].evaluation.selected_by)} (each listed in aggregate.csv). Test "
          f"split; peak lr after the config's lr scaling.\n",
          tables.aggregate_markdown(rows, keys, view.title)]
    if notes:
        md += ["\nScores defined differently in different runs, kept apart:\n"]
        md += [f"- {n}" for n in notes]
    if figure_paths:
        md.append("\n### Figures\n")
        md += [f"![{os.path.basename(p)}]({os.path.basename(p)})\n" for p in figure_paths]
    return "\n".join(md) + "\n"


def write_outputs(run_root, out_dir=None, *, x: str | None = None,
                  metrics: list[str] | None = None, checkpoint="best") -> dict:
    """Aggregate ``run_root`` and write markdown, CSV, JSON and figures into ``out_dir``
    (default ``run_root/aggregate``); ``x``, ``metrics`` and ``checkpoint`` as the flags.
    Returns {"dir", "csv", "markdown", "json", "figures", "rows", "view", "text"}."""
    runs.parse_checkpoint(checkpoint)
    found, keys, rows, notes = _collect(run_root, checkpoint)
    view = resolve_view(rows, keys, declared_presentation(run_root), x=x, metrics=metrics)
    out = run_path(out_dir) if out_dir else run_path(run_root) / "aggregate"
    out.mkdir(parents=True, exist_ok=True)
    figure_paths = figures.write_figures(found, rows, keys, view, os.fspath(out))
    text = {"md": _markdown(run_root, found, rows, keys, view, notes, figure_paths),
            "csv": tables.aggregate_csv(rows, keys),
            "json": tables.aggregate_json(rows, keys, notes)}
    paths = {fmt: tables.write_text(out / f"aggregate.{fmt}", text[fmt]) for fmt in FORMATS}
    return {"dir": os.fspath(out), "csv": paths["csv"], "markdown": paths["md"],
            "json": paths["json"], "figures": figure_paths, "rows": rows, "view": view,
            "text": text}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m jaxhybrid.tools.aggregate",
        description=("Mean ± std over seeds of every finished run under a sweep "
                     "directory: tables (md, csv, json) and figures."))
    p.add_argument("run_root", help="sweep directory (searched recursively for runs)")
    p.add_argument("--out", default="", help="output directory (default RUN_ROOT/aggregate)")
    p.add_argument("--x", default="", help="grouping key on the x axis of the figures "
                   "(default: the sweep's declared x, else the first numeric grouping key)")
    p.add_argument("--metrics", default="", help="comma-separated headline names or "
                   "patterns to plot against x, one figure each, e.g. "
                   "accuracy,ece,ood/*/*/auroc ('*' = one '/'-separated part); "
                   "default: the sweep's declared figures")
    p.add_argument("--checkpoint", default="best", help="which evaluation of each run: best "
                   "(the one final_metrics.json names), latest, or a step number")
    p.add_argument("--format", default="md", choices=FORMATS, help="what is printed (all "
                   "three are written)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        out = write_outputs(a.run_root, a.out or None, x=a.x or None, checkpoint=a.checkpoint,
                            metrics=[m.strip() for m in a.metrics.split(",") if m.strip()])
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(out["text"][a.format], end="")
    print(f"written: {out['markdown']}, {out['csv']}, {out['json']}"
          + "".join(f", {p}" for p in out["figures"]), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
