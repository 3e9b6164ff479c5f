"""The GFFN thesis' "train longer" schedule: FFN vs GFFN trained well past the plateau.

Writes docs/results/gffn_train_longer.md and docs/results/gffn_train_longer/ (figures and
``curves.json``, every number of the page)::

    .venv/bin/python docs/results/gffn_train_longer.py --run    # the 8 runs + the page
    .venv/bin/python docs/results/gffn_train_longer.py          # the page from the runs
    .venv/bin/python docs/results/gffn_train_longer.py --page   # the page from curves.json

The runs (:func:`sweep_commands`): for MNIST and Fashion-MNIST (configs/gffn.py:mnist_npz,
fashion_mnist_npz), global batch 32 and 512, λ = 0 (FFN) and λ = 1 (GFFN), one seed,
:data:`EPOCHS` epochs of a :data:`SUBSET`-example training subset (so that a CPU reaches
the over-confident regime in minutes), the thesis CNN at width 8. Over training:
- every epoch, validation accuracy and NLL (the checkpoint cadence);
- every :data:`SNAPSHOT_EPOCHS` epochs, the test-set suite (``eval_every``): accuracy,
  NLL, ECE, and OOD AUROC of max-softmax and log p(x) against the other dataset's test
  split (its first 2,000 images);
- at the end, the same suite on the last checkpoint and, by a second command, on the best
  one by validation accuracy (the "until plateau" checkpoint).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hvae_results as hr  # noqa: E402  (run/read helpers)

from jaxhybrid.config_defaults import FASHION_MNIST_NPZ, MNIST_NPZ  # noqa: E402

ROOT = hr.ROOT
DATASETS = {"mnist": ("mnist_npz", f"fashion_mnist=npz:{FASHION_MNIST_NPZ}"),
            "fashion_mnist": ("fashion_mnist_npz", f"mnist=npz:{MNIST_NPZ}")}
BATCHES = (32, 512)
SUBSET, EPOCHS, SNAPSHOT_EPOCHS, VALIDATION = 4000, 40, 4, 2000
OOD_MAX = 2000
EVALS = "classification,calibration,ood"
OUT = ROOT / "docs" / "results"
PAGE, FILES = OUT / "gffn_train_longer.md", OUT / "gffn_train_longer"
LABELS = {0.0: "FFN (λ = 0)", 1.0: "GFFN (λ = 1)"}


def steps_per_epoch(batch: int) -> int:
    return math.ceil(SUBSET / batch)


def common_flags(dataset: str, batch: int) -> list[str]:
    _, ood = DATASETS[dataset]
    return [f"--config.num_epochs={EPOCHS}", f"--config.data.train_subset={SUBSET}",
            f"--config.data.validation_size={VALIDATION}", "--config.model.width=8",
            "--config.model.hidden=(128,)", f"--config.evals.names={EVALS}",
            f"--config.evals.ood_sets={ood}", f"--config.evals.ood_max_examples={OOD_MAX}",
            f"--config.eval_every={SNAPSHOT_EPOCHS * steps_per_epoch(batch)}",
            "--config.evals.checkpoint=latest", f"--config.keep_checkpoints={EPOCHS}"]


def sweep_dir(runs: Path, dataset: str, batch: int) -> Path:
    return runs / dataset / f"batch{batch}"


def sweep_commands(runs: Path) -> list[list[str]]:
    out = []
    for dataset, (variant, _) in DATASETS.items():
        for batch in BATCHES:
            out.append([sys.executable, "-m", "jaxhybrid.tools.sweep",
                        f"--config=configs/gffn.py:{variant}",
                        f"--workdir={hr.rel(sweep_dir(runs, dataset, batch))}",
                        f"--sweep=batch_size={batch}", "--sweep=joint_weight=0,1", "--seeds=1",
                        *common_flags(dataset, batch)])
    return out


def best_eval_command(run_dir: Path, dataset: str, batch: int) -> list[str]:
    variant, _ = DATASETS[dataset]
    return [sys.executable, "-m", "jaxhybrid.main", f"--config=configs/gffn.py:{variant}",
            f"--workdir={hr.rel(run_dir)}", "--mode=eval", "--checkpoint=best",
            f"--config.batch_size={batch}", "--config.joint_weight=" + run_dir.name.split(
                "joint_weight=")[1].split(",")[0], "--config.seed=0",
            *common_flags(dataset, batch)]


def run_all(runs: Path) -> None:
    for cmd in sweep_commands(runs):
        print("+", hr.shown(cmd), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True)
    for dataset in DATASETS:
        for batch in BATCHES:
            for run_dir in sorted(sweep_dir(runs, dataset, batch).glob("batch_size=*")):
                hr.run(best_eval_command(run_dir, dataset, batch), run_dir / "eval_best.log")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default=str(ROOT / "runs" / "train_longer"))
    p.add_argument("--run", action="store_true", help="train and evaluate first")
    p.add_argument("--page", action="store_true", help="only the page, from curves.json")
    a = p.parse_args(argv)
    runs = Path(a.runs).resolve()
    if a.run:
        run_all(runs)
    if not a.page:
        collect(runs)
    render()


if __name__ == "__main__":
    main()
