"""Compare runs: ``python -m jaxhybrid.compare DIR1 DIR2 ... [--names A,B] [--out table.md]``.

Reads each run's latest ``eval/<step>/metrics.json`` and prints one table of the
evaluators' headline metrics (:mod:`jaxhybrid.evaluators.names`: accuracy, NLL, ECE
before/after temperature scaling, OOD AUROCs of every score and set, adversarial
accuracies, likelihood), also written as markdown.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from jaxhybrid.evaluators import names as metric_names


def latest_eval(run_dir: str) -> tuple[int, dict]:
    eval_dir = os.path.join(run_dir, "eval")
    steps = sorted(int(s) for s in os.listdir(eval_dir) if s.isdigit()) \
        if os.path.isdir(eval_dir) else []
    for step in reversed(steps):
        path = os.path.join(eval_dir, str(step), "metrics.json")
        if os.path.exists(path):
            with open(path) as f:
                return step, json.load(f)
    raise FileNotFoundError(f"No eval/<step>/metrics.json in {run_dir}: train or run "
                            f"--mode=eval there first")


ROW_TITLES = {metric_names.TEMPERATURE: "temperature T",
              metric_names.ECE_AFTER_TS: "ece after TS", metric_names.NLL_AFTER_TS: "nll after TS"}


def row_title(name: str) -> str:
    """The table row of headline ``name``: 'AUROC heldout / <score>', 'FGSM acc ε=8/255'."""
    ood = metric_names.parse_ood_auroc(name)
    if ood:
        return f"AUROC {ood[0]} / {ood[1]}"
    attack = metric_names.parse_attack_accuracy(name)
    if attack:
        return f"{attack[0].upper()} acc ε={attack[1] * 255:.0f}/255"
    return ROW_TITLES.get(name, name)


def headline(metrics: dict) -> dict[str, float]:
    """Flat {row title: value} of the headline metrics of one metrics.json."""
    return {row_title(k): v for k, v in metric_names.headline(metrics).items()}


def compare(run_dirs: list[str], names: list[str] | None = None) -> str:
    names = names or [os.path.basename(os.path.normpath(d)) for d in run_dirs]
    if len(names) != len(run_dirs):
        raise ValueError(f"{len(names)} names for {len(run_dirs)} runs")
    tables, steps = [], []
    for d in run_dirs:
        step, m = latest_eval(d)
        steps.append(step)
        tables.append(headline(m))
    keys: list[str] = []
    for t in tables:
        keys += [k for k in t if k not in keys]
    header = "| metric | " + " | ".join(f"{n} (step {s})" for n, s in zip(names, steps)) + " |"
    lines = [header, "|---|" + "---|" * len(names)]
    for k in keys:
        vals = [f"{t[k]:.4f}" if isinstance(t.get(k), (int, float)) else "–" for t in tables]
        lines.append(f"| {k} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run directories (--workdir of each run)")
    p.add_argument("--names", default="", help="comma-separated column names")
    p.add_argument("--out", default="", help="also write the markdown table here")
    a = p.parse_args(argv)
    table = compare(a.runs, [n for n in a.names.split(",") if n] or None)
    print(table)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            f.write("# Run comparison\n\n" + table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
