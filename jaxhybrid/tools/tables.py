"""Tables as text: the comparison of runs and the aggregate of a sweep, each as markdown,
CSV or JSON. A mean without a spread (n = 1) reads '± n/a' (CSV and JSON: empty / null).
"""
from __future__ import annotations

import csv
import io
import json
import os

from jaxhybrid.checkpointing import run_path
from jaxhybrid.evaluators.adversarial import parse_attack_accuracy
from jaxhybrid.evaluators.calibration import ECE
from jaxhybrid.evaluators.classification import ACCURACY, NLL
from jaxhybrid.evaluators.likelihood import BITS_PER_DIM, LOG_LIKELIHOOD
from jaxhybrid.evaluators.ood import parse_ood_auroc
from jaxhybrid.evaluators.temperature import ECE_AFTER_TS
from jaxhybrid.tools import identity
from jaxhybrid.tools.stats import BUDGET, LIKELIHOOD_METRICS, MAIN_METRICS, metric_order

METRIC_TITLES = {ACCURACY: "test accuracy", NLL: "NLL", ECE: "ECE",
                 ECE_AFTER_TS: "ECE after TS", LOG_LIKELIHOOD: "log p(x) bound",
                 BITS_PER_DIM: "bits/dim", "steps": "steps", "train_seconds": "train s"}


def write_text(path, text: str) -> str:
    """Write ``text`` to ``path`` (local or gs://, through epath); returns the path."""
    target = run_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text if text.endswith("\n") else text + "\n")
    return os.fspath(target)


def fmt_value(v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (tuple, list)):
        return "(" + ", ".join(fmt_value(x) for x in v) + ")"
    return str(v)


def fmt_stat(stat: dict | None, n: int, name: str) -> str:
    """'0.9123 ± 0.0100', '0.9123 ± n/a' (one value), '(n=2)' when fewer than the group."""
    if stat is None:
        return "–"
    digits = 0 if name in BUDGET else 4
    spread = "n/a" if stat["std"] is None else f"{stat['std']:.{digits}f}"
    s = f"{stat['mean']:.{digits}f} ± {spread}"
    return s + (f" (n={stat['n']})" if stat["n"] != n else "")


def column_title(name: str) -> str:
    if name in METRIC_TITLES:
        return METRIC_TITLES[name]
    ood = parse_ood_auroc(name)
    if ood:
        return f"{ood[0]} / {ood[1]}"
    attack = parse_attack_accuracy(name)
    if attack:
        return f"{attack[0].upper()} ε={identity.epsilon_text(attack[1], rel_tol=5e-4)}"
    base, _, k = name.partition("~")
    return f"{METRIC_TITLES.get(base, base)} ({k})" if k else name


def _md_row(cells: list[str]) -> str:
    """One markdown table row; a '|' inside a cell (p(y|x)) is escaped."""
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _md_table(header: list[str], lines: list[list[str]]) -> str:
    out = [_md_row(header), "|" + "---|" * len(header)]
    return "\n".join(out + [_md_row(cells) for cells in lines])


# -- the aggregate of a sweep -------------------------------------------------------------
def table_metrics(rows: list[dict]) -> list[str]:
    return metric_order(list(dict.fromkeys(n for r in rows for n in r["metrics"])))


def _is_main(n: str) -> bool:
    return n.split("~")[0] in MAIN_METRICS or n in BUDGET


def aggregate_markdown(rows: list[dict], keys: list[str], title) -> str:
    """The tables of :func:`jaxhybrid.tools.stats.group_runs` rows; ``title(key)`` the
    column title of a grouping key."""
    table = table_metrics(rows)
    sections = [
        ("Classification and calibration (test split)", [n for n in table if _is_main(n)],
         True),
        ("Likelihood (test split)",
         [n for n in table if n.split("~")[0] in LIKELIHOOD_METRICS], False),
        ("OOD detection: AUROC (in-distribution = test split; set / score)",
         [n for n in table if parse_ood_auroc(n)], False),
        ("Adversarial robustness: accuracy under attack",
         [n for n in table if parse_attack_accuracy(n)], False),
    ]
    out = []
    for heading, cols, with_lr in sections:
        if not cols:
            continue
        header = [title(k) for k in keys] + ["n"] + (["peak lr"] if with_lr else []) \
            + [column_title(c) for c in cols]
        lines = []
        for r in rows:
            cells = [fmt_value(r["group"][k]) for k in keys] + [str(r["n"])]
            if with_lr:
                cells.append("–" if r["learning_rate"] is None else f"{r['learning_rate']:.3g}")
            lines.append(cells + [fmt_stat(r["metrics"].get(c), r["n"], c) for c in cols])
        out.append(f"### {heading}\n\n" + _md_table(header, lines))
    return "\n\n".join(out)


def aggregate_csv(rows: list[dict], keys: list[str]) -> str:
    """One line per group: keys, n, seeds, evaluations, learning_rate, then
    <metric>_mean, <metric>_std (empty when n = 1), <metric>_n."""
    table = table_metrics(rows)
    header = keys + ["n", "seeds", "evaluations", "learning_rate"]
    for n in table:
        header += [f"{n}_mean", f"{n}_std", f"{n}_n"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        line = [fmt_value(r["group"][k]) for k in keys]
        line += [r["n"], " ".join(map(str, r["seeds"])), " ".join(r["evaluations"]),
                 "" if r["learning_rate"] is None else repr(r["learning_rate"])]
        for n in table:
            s = r["metrics"].get(n)
            line += ["", "", 0] if s is None else [
                repr(s["mean"]), "" if s["std"] is None else repr(s["std"]), s["n"]]
        w.writerow(line)
    return buf.getvalue()


def aggregate_json(rows: list[dict], keys: list[str], notes: list[str]) -> str:
    return json.dumps({"keys": keys, "rows": rows, "notes": notes}, indent=2, default=str) + "\n"


# -- the comparison of runs ----------------------------------------------------------------
def _columns_md(table) -> list[str]:
    out = []
    for c in table.columns:
        e = c.evaluation
        why = {"best": "the run's selected checkpoint, as final_metrics.json names it",
               "latest": "the highest evaluated step"}.get(e.selected_by, e.selected_by)
        out.append(f"- **{c.name}**: `{c.run}`, {e.label} (`{e.relative}`; {why}), "
                   f"family {c.family}")
    return out


def comparison_markdown(table) -> str:
    notes: list[str] = list(table.notes)
    lines = []
    for r in table.rows:
        marks = []
        for text in r.notes:
            if text not in notes:
                notes.append(text)
            marks.append(f"[{notes.index(text) + 1}]")
        lines.append([r.title + (" " + "".join(marks) if marks else "")] + r.cells)
    header = ["metric"] + [f"{c.name} ({c.evaluation.label})" for c in table.columns]
    out = ["# Run comparison", "", "Columns:", *_columns_md(table), "",
           _md_table(header, lines)]
    if notes:
        out += ["", "Notes:", *[f"{i + 1}. {t}" for i, t in enumerate(notes)]]
    return "\n".join(out)


def comparison_csv(table) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["metric", "definition"] + [c.name for c in table.columns] + ["notes"])
    w.writerow(["run", ""] + [c.run for c in table.columns] + [""])
    w.writerow(["evaluation", ""] + [c.evaluation.relative for c in table.columns]
               + ["; ".join(table.notes)])
    w.writerow(["selected_by", ""] + [c.evaluation.selected_by for c in table.columns] + [""])
    for r in table.rows:
        cells = [repr(v) if v is not None else text for v, text in zip(r.values, r.cells)]
        w.writerow([r.title, r.definition] + cells + ["; ".join(r.notes)])
    return buf.getvalue()


def comparison_json(table) -> str:
    cols = [{"name": c.name, "run": c.run, "step": c.evaluation.step,
             "eval_id": c.evaluation.eval_id, "eval_dir": c.evaluation.relative,
             "selected_by": c.evaluation.selected_by, "family": c.family}
            for c in table.columns]
    rows = [{"title": r.title, "metric": r.key[0], "epsilon": r.epsilon,
             "definition": r.definition or None,
             "values": {c.name: v for c, v in zip(table.columns, r.values)},
             "cells": {c.name: t for c, t in zip(table.columns, r.cells)}, "notes": r.notes}
            for r in table.rows]
    return json.dumps({"columns": cols, "rows": rows, "notes": table.notes}, indent=2)


def render_comparison(table, fmt: str) -> str:
    return {"md": comparison_markdown, "csv": comparison_csv, "json": comparison_json}[fmt](table)
