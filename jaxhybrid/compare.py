"""Compare runs: ``python -m jaxhybrid.compare DIR1 DIR2 ... [--names A,B] [--out table.md]``.

Reads each run's latest ``eval/<step>/metrics.json`` and prints one table of the
headline metrics (accuracy, NLL, ECE before/after temperature scaling, OOD AUROCs
of every score and set, adversarial accuracies), also written as markdown.
"""
from __future__ import annotations

import argparse
import json
import os
import sys


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


def headline(metrics: dict) -> dict[str, float]:
    """Flat {row name: value} of the headline metrics of one metrics.json."""
    rows: dict[str, float] = {}
    c = metrics.get("classification", {})
    for k in ("accuracy", "nll", "brier"):
        if k in c:
            rows[k] = c[k]
    cal = metrics.get("calibration", {}).get("equal_width", {})
    for k in ("ece", "mce", "rms_ce"):
        if k in cal:
            rows[k] = cal[k]
    ts = metrics.get("temperature", {})
    if "temperature" in ts:
        rows["temperature T"] = ts["temperature"]
        rows["ece after TS"] = ts["ece_after"]
    for set_name, s in metrics.get("ood", {}).get("sets", {}).items():
        for score, r in s["scores"].items():
            rows[f"AUROC {set_name} / {score}"] = r["auroc"]
    adv = metrics.get("adversarial", {})
    for eps, acc in zip(adv.get("epsilons", []), adv.get("accuracy", [])):
        rows[f"{adv['attack'].upper()} acc ε={eps * 255:.0f}/255" if adv.get("epsilons")
             else "adv"] = acc
    return rows


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
