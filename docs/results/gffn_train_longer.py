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
                        f"--sweep=batch_size={batch}", "--sweep=objective.joint_weight=0,1", "--seeds=1",
                        *common_flags(dataset, batch)])
    return out


def best_eval_command(run_dir: Path, dataset: str, batch: int) -> list[str]:
    variant, _ = DATASETS[dataset]
    return [sys.executable, "-m", "jaxhybrid.main", f"--config=configs/gffn.py:{variant}",
            f"--workdir={hr.rel(run_dir)}", "--mode=eval", "--checkpoint=best",
            f"--config.batch_size={batch}", "--config.objective.joint_weight=" + run_dir.name.split(
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



# -- collecting the runs into curves.json ------------------------------------------------------
def snapshot(metrics_path: Path) -> dict:
    """One evaluation: accuracy, NLL, ECE, mean confidence − accuracy, and the OOD AUROCs."""
    m = json.loads(metrics_path.read_text())
    cal = m["calibration"]["equal_width"]
    bin_conf = [0.0 if c is None else c for c in cal["bin_confidence"]]   # None: an empty bin
    conf = float(np.dot(cal["bin_counts"], bin_conf) / np.sum(cal["bin_counts"]))
    (ood_name, ood), = m["ood"]["sets"].items()
    return {"step": m["step"], "accuracy": m["classification"]["accuracy"],
            "nll": m["classification"]["nll"], "ece": cal["ece"],
            "overconfidence": conf - cal["accuracy"], "ood_set": ood_name,
            "auroc_max_softmax": ood["scores"]["max_softmax"]["auroc"],
            "auroc_log_px": ood["scores"]["log_px"]["auroc"]}


def run_dir(runs: Path, dataset: str, batch: int, lam: int) -> Path:
    return sweep_dir(runs, dataset, batch) / f"batch_size={batch},objective.joint_weight={lam},seed=0"


def one_run(d: Path, batch: int) -> dict:
    records = hr.read_jsonl(d / "metrics.jsonl")
    spe = steps_per_epoch(batch)
    val = [{"epoch": r["step"] / spe, "accuracy": r["val_accuracy"], "nll": r["val_nll"]}
           for r in records if r["kind"] == "validation"]
    snaps = sorted((snapshot(p) for p in d.glob("eval/*/*/metrics.json")),
                   key=lambda s: s["step"])
    final = json.loads((d / "final_metrics.json").read_text())
    best_step = final.get("best_step")
    for s in snaps:
        s["epoch"] = s["step"] / spe
    best = [s for s in snaps if s["step"] == best_step]
    return {"validation": val, "test": [s for s in snaps], "best_step": best_step,
            "best": best[0] if best else None, "last": snaps[-1] if snaps else None,
            "train_minutes": round(hr.train_seconds(records) / 60, 2)}


def collect(runs: Path) -> None:
    curves = {ds: {str(b): {str(lam): one_run(run_dir(runs, ds, b, lam), b) for lam in (0, 1)}
                   for b in BATCHES} for ds in DATASETS}
    FILES.mkdir(parents=True, exist_ok=True)
    facts = {"machine": hr.machine(), "date": datetime.date.today().isoformat(),
             "load": os.getloadavg(),
             "commands": [hr.portable(hr.shown(c)) for c in sweep_commands(runs)]}
    (FILES / "curves.json").write_text(json.dumps({"curves": curves, "facts": facts},
                                                   indent=1) + "\n")



# -- figures and page, from curves.json only -----------------------------------------------------
PANELS = (("validation", "nll", "validation NLL (nats)"), ("test", "ece", "test ECE (15 bins)"),
          ("test", "overconfidence", "test mean confidence − accuracy"),
          ("test", "accuracy", "test accuracy"), ("test", "auroc_log_px", "OOD AUROC, log p(x)"),
          ("test", "auroc_max_softmax", "OOD AUROC, max-softmax"))


def curves_figure(curves: dict, dataset: str, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(3.2 * len(PANELS), 3.0 * len(BATCHES)), dpi=90)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(BATCHES), len(PANELS), squeeze=False)
    for row, b in zip(axes, BATCHES):
        for ax, (part, key, title) in zip(row, PANELS):
            for lam, colour in (("0", "C0"), ("1", "C3")):
                r = curves[dataset][str(b)][lam]
                pts = r[part]
                ax.plot([p["epoch"] for p in pts], [p[key] for p in pts], color=colour,
                        marker="." if part == "test" else None, label=LABELS[float(lam)])
                if r["best"] is not None:
                    ax.axvline(r["best"]["epoch"], color=colour, linestyle=":", linewidth=1)
            ax.set_title(f"batch {b}: {title}", fontsize=9)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=7)
    fig.suptitle(f"{dataset.replace('_', '-')}: FFN vs GFFN trained {EPOCHS} epochs "
                 f"(dotted: the best validation-accuracy checkpoint)")
    fig.tight_layout()
    fig.savefig(path)


def fmt(v, digits=4):
    return "—" if v is None else f"{v:.{digits}f}"


def point_table(curves: dict, dataset: str) -> str:
    rows = []
    for b in BATCHES:
        for lam in ("0", "1"):
            r = curves[dataset][str(b)][lam]
            for when in ("best", "last"):
                s = r[when]
                rows.append([b, LABELS[float(lam)], f"{when} (epoch {s['epoch']:.0f})",
                             fmt(s["accuracy"]), fmt(s["nll"]), fmt(s["ece"]),
                             fmt(s["overconfidence"], 3), fmt(s["auroc_max_softmax"], 3),
                             fmt(s["auroc_log_px"], 3)])
    return hr.md_table(["batch", "model", "checkpoint", "accuracy", "NLL", "ECE",
                        "conf − acc", "AUROC max-softmax", "AUROC log p(x)"], rows)


def nll_turn(r: dict) -> tuple[float, float, float]:
    """(epoch of the lowest validation NLL, that NLL, the last NLL)."""
    v = r["validation"]
    low = min(v, key=lambda p: p["nll"])
    return low["epoch"], low["nll"], v[-1]["nll"]



def overconfidence_lines(curves: dict) -> list[str]:
    lines = []
    for ds in DATASETS:
        for b in BATCHES:
            parts = []
            for lam in ("0", "1"):
                r = curves[ds][str(b)][lam]
                e, low, last = nll_turn(r)
                parts.append(f"{LABELS[float(lam)].split()[0]}: validation NLL lowest "
                             f"{low:.3f} at epoch {e:.0f}, {last:.3f} at the end "
                             f"(×{last / low:.2f}); test ECE {r['best']['ece']:.4f} → "
                             f"{r['last']['ece']:.4f}, confidence − accuracy "
                             f"{r['last']['overconfidence']:+.3f} at the end")
            lines.append(f"- {ds.replace('_', '-')}, batch {b}: " + "; ".join(parts) + ".")
    return lines


def compare(curves: dict, when: str, key: str, datasets=DATASETS) -> list[tuple]:
    """[(dataset, batch, FFN value, GFFN value)] at checkpoint ``when``."""
    return [(ds, b, curves[ds][str(b)]["0"][when][key], curves[ds][str(b)]["1"][when][key])
            for ds in datasets for b in BATCHES]


def verdict(pairs: list[tuple], gffn_better) -> str:
    wins = sum(bool(gffn_better(f, g)) for _, _, f, g in pairs)
    detail = ", ".join(f"{ds.replace('_', '-')} {b}: FFN {f:.4f} vs GFFN {g:.4f}"
                       for ds, b, f, g in pairs)
    return f"GFFN ahead in {wins} of {len(pairs)} ({detail})"


def reading(curves: dict) -> str:
    grew = [curves[ds][str(b)]["0"] for ds in DATASETS for b in BATCHES]
    ffn_up = sum(nll_turn(r)[2] > 1.1 * nll_turn(r)[1] for r in grew)
    gffn = [curves[ds][str(b)]["1"] for ds in DATASETS for b in BATCHES]
    gffn_up = sum(nll_turn(r)[2] > 1.1 * nll_turn(r)[1] for r in gffn)
    ece_last = compare(curves, "last", "ece")
    fm = ("fashion_mnist",)
    return "\n".join([
        f"**1. Does the FFN grow over-confident with long training while the GFFN does not?** "
        f"The FFN's validation NLL ends more than 10 % above its minimum in {ffn_up} of "
        f"{len(grew)} runs; the GFFN's in {gffn_up} of {len(gffn)}. Per run:", "",
        *overconfidence_lines(curves), "",
        f"**2. Thesis finding 2 (GFFN has lower ECE than the FFN) after long training:** "
        f"{verdict(ece_last, lambda f, g: g < f)}.", "",
        f"**3. Fashion-MNIST at the plateau (best validation-accuracy checkpoint).** "
        f"Finding 1 (GFFN accuracy ≥ FFN): "
        f"{verdict(compare(curves, 'best', 'accuracy', fm), lambda f, g: g >= f)}. "
        f"Finding 2 (lower ECE): {verdict(compare(curves, 'best', 'ece', fm), lambda f, g: g < f)}.",
        "", "One seed per point: differences of a few tenths of a point in accuracy or a few "
        "thousandths in ECE are within run-to-run noise (the batch-size study's seed std: "
        "0.2–0.5 points of accuracy, 0.002–0.008 of ECE)."])


def page(data: dict) -> str:
    curves, f = data["curves"], data["facts"]
    cmds = "\n".join(f["commands"])           # collected with $MNIST_NPZ, $FASHION_MNIST_NPZ
    tables = "\n\n".join(f"### {ds.replace('_', '-')}\n\n{point_table(curves, ds)}\n\n"
                         f"![{ds} curves](gffn_train_longer/{ds}.png)" for ds in DATASETS)
    minutes = sum(curves[ds][str(b)][lam]["train_minutes"] for ds in DATASETS for b in BATCHES
                  for lam in ("0", "1"))
    return f"""# Results: GFFN vs FFN trained longer (the thesis' second schedule)

The GFFN thesis trains with two schedules: until validation accuracy plateaus, and longer.
The batch-size study (docs/results/README.md) used the first and found the GFFN *less*
calibrated than the FFN. This page runs the second: both trained {EPOCHS} epochs, far past
the plateau, to see whether the FFN grows over-confident while the GFFN does not. Written by
one command from the runs:

```bash
python docs/results/gffn_train_longer.py --run     # the 8 runs (≈ {minutes:.0f} min of training here) + this page
python docs/results/gffn_train_longer.py --page    # this page from gffn_train_longer/curves.json
```

## Setup

- **Data.** MNIST and Fashion-MNIST (the shared npz files, official test splits), 28×28
  zero-padded to 32×32. A fixed {SUBSET:,}-example training subset (seeded, stratified) so
  that {EPOCHS} epochs fit this CPU; {VALIDATION:,} validation images held out of the
  training split. The OOD set of each is the other dataset's test split (first {OOD_MAX:,}).
- **Models.** The thesis CNN at width 8 with one hidden layer of 128 (the batch-size
  study's MNIST model); λ = 0 is the FFN (cross-entropy), λ = 1 the GFFN (the joint
  likelihood with the global-batch partition function). Adam, lr 1e-3 at batch 128 with
  square-root scaling (5e-4 at 32, 2e-3 at 512), one seed (0).
- **Over training.** Validation accuracy and NLL every epoch; every {SNAPSHOT_EPOCHS} epochs
  the test-set evaluation (accuracy, NLL, ECE with 15 equal-width bins, mean confidence −
  accuracy, OOD AUROC of max-softmax and of log p(x) = log Σ_k exp f_k(x)); the same at
  the end (last) and at the best validation-accuracy checkpoint ("best", the plateau
  schedule's checkpoint).
- **Machine.** {f['machine']}, shared ({f['date']}; load average at collection
  {f['load'][0]:.1f}).
- **Differences from the thesis.** A {SUBSET:,}-example subset instead of the full
  training set, a width-8 CNN instead of width 32, {EPOCHS} epochs, one seed instead of
  three, two batch sizes. The thesis does not say how long "longer" is; here it is long
  enough for the validation NLL to turn up.

The sweeps (`$MNIST_NPZ`, `$FASHION_MNIST_NPZ`: the files the configs name,
`jaxhybrid.config_defaults`):

```
{cmds}
```

## Results

{tables}

## Reading

{reading(curves)}
"""


def render() -> None:
    data = json.loads((FILES / "curves.json").read_text())
    for ds in DATASETS:
        curves_figure(data["curves"], ds, FILES / f"{ds}.png")
    PAGE.write_text(page(data))
    print(f"wrote {hr.rel(PAGE)}")


def main(argv=None) -> None:
    hr.sweep_page_main(__doc__, ROOT / "runs" / "train_longer", run_all, collect, render,
                       "curves.json", argv)

if __name__ == "__main__":
    main()
