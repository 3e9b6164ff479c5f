"""The batch-size study's headline tables in docs/results/README.md, from the aggregates.

docs/results/run_study.sh runs the two sweeps (digits, MNIST) and writes each one's
aggregate (``python -m jaxhybrid.tools.aggregate``) into docs/results/<dataset>/
(aggregate.md, aggregate.csv, figures). This script writes the tables of the README's
"Headline numbers" section, between its two marker lines, from the committed
``<dataset>/aggregate.csv`` alone (mean ± std over the seeds of each batch size and λ)::

    .venv/bin/python docs/results/batch_study.py --run    # run_study.sh, then the tables
    .venv/bin/python docs/results/batch_study.py          # aggregate the runs, the tables
    .venv/bin/python docs/results/batch_study.py --page   # the tables from aggregate.csv

The CSV is the aggregate's machine-readable form that every version of
jaxhybrid.tools.aggregate writes (the committed ones predate its aggregate.json). The
prose around the tables is written by hand.
"""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hvae_results as hr  # noqa: E402  (the results pages' shared helpers)

ROOT = hr.ROOT
OUT = ROOT / "docs" / "results"
PAGE = OUT / "README.md"
DATASETS = {"mnist": "MNIST", "digits": "digits"}        # folder: name on the page
LAMBDA = ("objective.joint_weight", "joint_weight")       # today's key, the older aggregates'
METRICS = ("accuracy", "accuracy", "ece", "ece")          # FFN, GFFN, FFN, GFFN
BEGIN = "<!-- batch_study.py: the tables below are written from <dataset>/aggregate.csv -->"
END = "<!-- batch_study.py: end -->"


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def lam(row: dict) -> float:
    key = next(k for k in LAMBDA if k in row)
    return float(row[key])


def cell(row: dict, metric: str) -> str:
    std = row[f"{metric}_std"]
    return f"{float(row[f'{metric}_mean']):.4f} ± {float(std or 0):.4f}"


def dataset_table(rows: list[dict]) -> str:
    """One line per batch size: FFN (λ = 0) and GFFN (λ = 1) accuracy and ECE."""
    by = {(int(r["batch_size"]), lam(r)): r for r in rows}
    lines = []
    for batch in sorted({b for b, _ in by}):
        runs = (by[(batch, 0.0)], by[(batch, 1.0)]) * 2
        lines.append([batch, *(cell(r, m) for r, m in zip(runs, METRICS))])
    return hr.md_table(["batch", "FFN accuracy", "GFFN accuracy", "FFN ECE", "GFFN ECE"],
                       lines)


def tables() -> str:
    return "\n\n".join(f"{name} (test accuracy / ECE):\n\n"
                       + dataset_table(read_rows(OUT / folder / "aggregate.csv"))
                       for folder, name in DATASETS.items())


def render() -> None:
    """Replace the text between the README's marker lines by the tables."""
    text = PAGE.read_text()
    if text.count(BEGIN + "\n") != 1 or text.count(END + "\n") != 1:
        sys.exit(f"{PAGE} needs the marker lines {BEGIN!r} and {END!r}, once each")
    head, rest = text.split(BEGIN + "\n")
    _, tail = rest.split(END + "\n")
    PAGE.write_text(f"{head}{BEGIN}\n\n{tables()}\n\n{END}\n{tail}")
    print(f"wrote the tables of {hr.rel(PAGE)}")


def run_all(runs: Path) -> None:
    env = {**os.environ, "RUNS": hr.rel(runs), "PY": sys.executable}
    subprocess.run(["bash", str(OUT / "run_study.sh")], cwd=ROOT, env=env, check=True)


def collect(runs: Path) -> None:
    """run_study.sh's last step: each sweep's aggregate into docs/results/<dataset>/."""
    for folder in DATASETS:
        subprocess.run([sys.executable, "-m", "jaxhybrid.tools.aggregate", hr.rel(runs / folder),
                        "--out", hr.rel(OUT / folder)], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)


def main(argv=None) -> None:
    hr.sweep_page_main(__doc__, ROOT / "runs" / "study", run_all, collect, render,
                       "<dataset>/aggregate.csv", argv)


if __name__ == "__main__":
    main()
