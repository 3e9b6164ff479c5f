"""Compare runs: ``python -m jaxhybrid.tools.compare DIR1 DIR2 ... [--names A,B]
[--checkpoint best|latest|STEP] [--eval_id ID] [--format md|csv|json] [--out FILE]``.

One column per run: the evaluation ``final_metrics.json`` names (``--checkpoint best``,
the run's selected checkpoint), the highest evaluated step (``latest``) or a step; the
table says which step and evaluation each column is. One row per headline metric
(:mod:`jaxhybrid.evaluators.suite`); rows follow :mod:`jaxhybrid.tools.identity`: ε is
matched exactly, and a score shares a row only with a score of the same definition. A
number that is missing says why: ``not run`` or ``not identifiable`` with the reason in
a note, ``–`` where the evaluation does not report it. Below the table (md, csv; json:
``config_differences``): every config field whose value differs between the runs or that
only some runs have (another family's ``model.*``, ``objective.*``), ``—`` on the side
that lacks it.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import sys

from jaxhybrid.checkpointing import run_path
from jaxhybrid.config_keys import flatten
from jaxhybrid.tools import identity, runs, tables

FORMATS = ("md", "csv", "json")
SHARED_NOTE = ("Rows of one name with different definitions are kept apart: two runs share a "
               "row only when the metric and the definition of its score agree.")


@dataclasses.dataclass
class Column:
    name: str
    run: str
    evaluation: runs.Evaluation
    config: dict

    @property
    def family(self) -> str:
        return identity.family_of(self.evaluation.metrics, self.config)


@dataclasses.dataclass
class Row:
    key: tuple
    title: str
    section: str
    epsilon: float | None
    definition: str
    values: list            # one per column: float, or None
    cells: list[str]        # one per column: the text shown
    present: list[bool]     # one per column: whether its evaluation has this row
    notes: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Table:
    columns: list[Column]
    rows: list[Row]
    notes: list[str]        # notes of the whole table
    config_diff: list = dataclasses.field(default_factory=list)   # config_differences


MISSING = "—"    # a config field that a run's config.json does not have


def config_differences(columns: list[Column]) -> list[tuple[str, list[str]]]:
    """(field, one cell per column) for every config field whose value differs between the
    runs or that only some of them have (runs of different families: each one's own
    ``model.*`` and ``objective.*``), sorted; :data:`MISSING` where a run lacks it."""
    flat = [flatten(c.config, lists_as_tuples=True) for c in columns]
    out = []
    for key in sorted(set().union(*flat)):
        seen = {json.dumps(f[key], sort_keys=True) if key in f else MISSING for f in flat}
        if len(seen) > 1:
            out.append((key, [tables.fmt_value(f[key]) if key in f else MISSING
                              for f in flat]))
    return out


def column_names(run_dirs: list[str], names: list[str] | None) -> list[str]:
    """``names``, or the runs' directory names; a count that differs is an error."""
    if not names:
        return [str(run_path(d).name) for d in run_dirs]
    if len(names) != len(run_dirs):
        raise ValueError(f"--names gives {len(names)} name(s) ({', '.join(names)}) for "
                         f"{len(run_dirs)} run(s) ({', '.join(run_dirs)}); give one per run")
    return names


def read_columns(run_dirs: list[str], names: list[str] | None, checkpoint="best",
                 eval_id: str | None = None) -> list[Column]:
    names = column_names(run_dirs, names)
    runs.parse_checkpoint(checkpoint)
    for d in run_dirs:                 # every directory checked before any is read
        runs.check_run_dir(d)
    columns = []
    for name, d in zip(names, run_dirs):
        run = runs.check_run_dir(d)
        config_path = run / runs.CONFIG_FILE
        config = runs.read_json(config_path) if config_path.exists() else {}
        columns.append(Column(name, d, runs.select_evaluation(d, checkpoint, eval_id), config))
    return columns


def _row_order(entry: identity.Entry, first_seen: int, position: int) -> tuple:
    """Scalars, then OOD scores, then attack accuracies by (attack, ε); rows of one
    metric name (split by definition) side by side."""
    if entry.section == "adversarial":
        return (2, entry.key[0], entry.key[1], 0, 0)
    return (1 if entry.section == "ood" else 0, "", 0.0, first_seen, position)


def _collect(columns: list[Column]) -> dict[tuple, identity.Entry]:
    """Every row identity of the columns, in table order."""
    seen: dict[tuple, tuple[identity.Entry, int]] = {}
    first: dict[str, int] = {}
    for c in columns:
        for e in identity.entries(c.evaluation.metrics, c.config):
            first.setdefault(e.metric, len(first))
            seen.setdefault(e.key, (e, len(seen)))
    order = sorted(seen.values(), key=lambda p: _row_order(p[0], first[p[0].metric], p[1]))
    return {e.key: e for e, _ in order}


def _cell(column: Column, entry: identity.Entry | None, row_entry: identity.Entry,
          notes: list[str]) -> tuple[float | None, str]:
    if entry is not None and isinstance(entry.value, (int, float)):
        return float(entry.value), f"{entry.value:.4f}"
    state = identity.section_state(column.evaluation.metrics, row_entry.section)
    if state is None:
        return None, "–"
    notes.append(f"{column.name}: {state[0]}: {state[1]}")
    return None, state[0]


def _definition_titles(rows: list[Row], columns: list[Column], entries) -> list[str]:
    """Rows of one title with different definitions: each title gets its definition,
    and a note says which columns it is of; the table gets :data:`SHARED_NOTE`."""
    by_title: dict[str, list[Row]] = {}
    for r in rows:
        by_title.setdefault(r.title, []).append(r)
    split = False
    for title, group in by_title.items():
        if len(group) < 2 or not all(r.definition for r in group):
            continue
        split = True
        for r in group:
            e = entries[r.key]
            of = [c.name for c, has in zip(columns, r.present) if has]
            r.title = f"{title} ({e.defined}: {r.definition})"
            r.notes.append(f"{e.defined} in this row, of {', '.join(of)}: {r.definition}")
    return [SHARED_NOTE] if split else []


def build_table(columns: list[Column]) -> Table:
    entries = _collect(columns)
    by_column = [{e.key: e for e in identity.entries(c.evaluation.metrics, c.config)}
                 for c in columns]
    rows = []
    for key, entry in entries.items():
        notes: list[str] = []
        values, cells = zip(*(_cell(c, found.get(key), entry, notes)
                              for c, found in zip(columns, by_column)))
        rows.append(Row(key, entry.title, entry.section, key[1], entry.definition,
                        list(values), list(cells), [key in f for f in by_column], notes))
    notes = _definition_titles(rows, columns, entries)
    _unique_titles(rows)
    return Table(columns, rows, notes, config_differences(columns) if len(columns) > 1 else [])


def _unique_titles(rows: list[Row]) -> None:
    """Two ε rows whose rounded ε reads the same get their exact ε in the title."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.title] = counts.get(r.title, 0) + 1
    for r in rows:
        if counts[r.title] > 1 and r.epsilon is not None:
            r.title += f" [ε = {r.epsilon!r}]"


def compare(run_dirs: list[str], names: list[str] | None = None, *, checkpoint="best",
            eval_id: str | None = None, fmt: str = "md") -> str:
    """The comparison table of ``run_dirs`` as text in ``fmt`` (md, csv, json)."""
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}; valid choices: {', '.join(FORMATS)}")
    table = build_table(read_columns(run_dirs, names, checkpoint, eval_id))
    return _with_config_diff(tables.render_comparison(table, fmt), table, fmt)


def _with_config_diff(text: str, table: Table, fmt: str) -> str:
    """The rendered table and, below it (md, csv) or beside it (json), every config field
    that differs between the runs (:data:`MISSING` where a run has no such field)."""
    if not table.config_diff:
        return text
    names = [c.name for c in table.columns]
    if fmt == "json":
        data = json.loads(text)
        data["config_differences"] = [{"field": k, "cells": dict(zip(names, cells))}
                                      for k, cells in table.config_diff]
        return json.dumps(data, indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(
            [f"config: {k}", ""] + cells + [""] for k, cells in table.config_diff)
        return text + buf.getvalue()
    row = lambda cells: "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"  # noqa: E731
    md = ["", "## Config differences", "", f"Every config field that differs between the "
          f"runs; {MISSING}: the run's config has no such field.", "",
          row(["field", *names]), "|" + "---|" * (len(names) + 1)]
    return text + "\n" + "\n".join(md + [row([k, *cells]) for k, cells in table.config_diff])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m jaxhybrid.tools.compare",
        description=("One table of the headline metrics of several runs, a column per "
                     "run (the evaluation its final_metrics.json names, unless "
                     "--checkpoint says otherwise)."))
    p.add_argument("runs", nargs="+", help="run directories (--workdir of each run)")
    p.add_argument("--names", default="", help="comma-separated column names, one per run")
    p.add_argument("--checkpoint", default="best", help="which evaluation of each run: best "
                   "(the one final_metrics.json names), latest, or a step number")
    p.add_argument("--eval_id", default="", help="which evaluation at that step, when the "
                   "step has several")
    p.add_argument("--format", default="md", choices=FORMATS, help="output format")
    p.add_argument("--out", default="", help="also write the table to this file")
    a = p.parse_args(argv)
    try:
        text = compare(a.runs, [n.strip() for n in a.names.split(",") if n.strip()] or None,
                       checkpoint=a.checkpoint, eval_id=a.eval_id or None, fmt=a.format)
        print(text, end="" if text.endswith("\n") else "\n")
        if a.out:
            replaced = run_path(a.out).exists()
            print(f"written: {tables.write_text(a.out, text)}"
                  + (" (replacing the table written there before)" if replaced else ""),
                  file=sys.stderr)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
