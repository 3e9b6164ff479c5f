"""The paper's headline pair: HVAE trained on Fashion-MNIST, MNIST as the OOD set.

Writes docs/results/hvae_fashion_mnist.md and docs/results/hvae_fashion_mnist/ (figures,
``scores.npz`` with every per-example score, ``run.json`` with the run's facts)::

    .venv/bin/python docs/results/hvae_fashion_mnist.py --train   # training + evaluations + page
    .venv/bin/python docs/results/hvae_fashion_mnist.py            # evaluations + page
    .venv/bin/python docs/results/hvae_fashion_mnist.py --page     # page only, from the committed files

1. Training: configs/hvae.py:fashion_mnist_npz (:data:`TRAIN`), every epoch's checkpoint
   kept (the trend points below read three of them).
2. Evaluations (``--mode=eval``), each into its own ``eval/<step>/<eval_id>/``:
   ``S1``: the best checkpoint (highest validation ELBO), S = 1, the full test splits
   (10,000 Fashion-MNIST, 10,000 MNIST); ``S250``: the same checkpoint, S = 250, the first
   1,000 images of each test split (``evals.max_examples`` and ``evals.ood_max_examples``);
   ``trend_e<N>``: the checkpoint after N epochs, S = 1, full splits.
3. ``scores.npz``: the per-example L, L>1, L>2, −LLR>1, −LLR>2 of S1 and S250 (float32;
   keys ``S1/fashion_mnist/L``, ``S250/mnist/-LLR>1``, ...). Every number of the page's
   tables is recomputed from it (:func:`table`), the bootstrap intervals too.
   ``run.json``: training facts, the trend points' AUROCs, the machine and the load.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hvae_results as hr  # noqa: E402  (the MNIST page's run/read helpers)

from jaxhybrid.config_defaults import MNIST_NPZ  # noqa: E402
from jaxhybrid.evaluators.ood import ood_metrics  # noqa: E402

ROOT = hr.ROOT
CONFIG = "configs/hvae.py:fashion_mnist_npz"
TRAIN = ("--config.evals.names=likelihood", "--config.keep_checkpoints=30")
OOD = f"mnist=npz:{MNIST_NPZ}"
EVALS = {   # name: (checkpoint, S, score_chunk, max examples per split; 0 = all)
    "S1": ("best", 1, 1, 0),
    "S250": ("best", 250, 10, 1000),
}
TREND_EPOCHS = (4, 12)
STEPS_PER_EPOCH = 391                           # 50,000 / 128, rounded up
SCORES = ("L", "L>1", "L>2", "-LLR>1", "-LLR>2")
SETS = ("fashion_mnist", "mnist")               # in-distribution test split, OOD set
PAPER = {"L": (0.268, 0.363, 0.882), "L>1": (0.593, 0.591, 0.658),
         "L>2": (0.712, 0.750, 0.548), "-LLR>1": (0.964, 0.961, 0.036),
         "-LLR>1@250": (0.984, 0.984, 0.013)}
PAPER_BPD = {"fashion_mnist": 0.420, "mnist": 0.317}
BOOTSTRAP = 1000
OUT = ROOT / "docs" / "results"
PAGE, FILES = OUT / "hvae_fashion_mnist.md", OUT / "hvae_fashion_mnist"


# -- running -------------------------------------------------------------------------------
def train_command(workdir: Path) -> list[str]:
    return [sys.executable, "-m", "jaxhybrid.main", f"--config={CONFIG}",
            f"--workdir={hr.rel(workdir)}", *TRAIN]


def eval_command(workdir: Path, checkpoint, samples: int, chunk: int, cap: int) -> list[str]:
    return [sys.executable, "-m", "jaxhybrid.main", f"--config={CONFIG}",
            f"--workdir={hr.rel(workdir)}", "--mode=eval", f"--checkpoint={checkpoint}",
            f"--config.model.iwae_samples={samples}", f"--config.model.score_chunk={chunk}",
            "--config.eval_batch_size=500", "--config.evals.names=ood,likelihood",
            f"--config.evals.ood_sets={OOD}", f"--config.evals.max_examples={cap}",
            f"--config.evals.ood_max_examples={cap}"]


def evaluations() -> dict:
    plan = dict(EVALS)
    for e in TREND_EPOCHS:
        plan[f"trend_e{e}"] = (e * STEPS_PER_EPOCH, 1, 1, 0)
    return plan


def run_evaluations(workdir: Path) -> dict:
    done = {}
    for name, (ckpt, samples, chunk, cap) in evaluations().items():
        cmd = eval_command(workdir, ckpt, samples, chunk, cap)
        load = os.getloadavg()[0]
        seconds, final = hr.run(cmd, workdir / f"eval_{name}.log")
        done[name] = {"command": hr.portable(hr.shown(cmd)), "seconds": round(seconds, 1),
                      "load_before": load, "load_after": os.getloadavg()[0],
                      "eval_dir": hr.rel(eval_dir(final)), "samples": samples,
                      "max_examples": cap}
    return done


# -- collecting the run into the committed files --------------------------------------------
def eval_dir(info: dict) -> Path:
    p = Path(info["eval_dir"])
    return p if p.is_absolute() else ROOT / p


def per_example(info: dict) -> dict:
    """{'<set>/<score>': float32 [N]} from an evaluation's ood_scores.npz."""
    raw = np.load(eval_dir(info) / "ood_scores.npz")
    split = json.loads((eval_dir(info) / "metrics.json").read_text())["ood"]["in_distribution"]
    names = {split["split"]: "fashion_mnist", "mnist": "mnist"}
    return {f"{names[k.split('/')[0]]}/{k.split('/', 1)[1]}": np.asarray(raw[k], np.float32)
            for k in raw.files if k.split("/")[0] in names}


def run_facts(workdir: Path, evals: dict, train_cmd: str) -> dict:
    records = hr.read_jsonl(workdir / "metrics.jsonl")
    config = json.loads((workdir / "config.json").read_text())
    step = json.loads((eval_dir(evals["S1"]) / "metrics.json").read_text())["step"]
    train = [r for r in records if r["kind"] == "train"]
    val = [r for r in records if r["kind"] == "validation" and r["step"] == step]
    sizes = hr.latent_sizes(config["model"])
    near = min(train, key=lambda r: abs(r["step"] - step))
    trend = {}
    for name, info in evals.items():
        m = json.loads((eval_dir(info) / "metrics.json").read_text())
        trend[name] = {"step": m["step"], "auroc": {
            k: m["ood"]["sets"]["mnist"]["scores"][k]["auroc"] for k in SCORES}}
    return {
        "train_command": train_cmd, "evaluations": evals, "best_step": step,
        "total_steps": train[-1]["step"], "steps_per_epoch": STEPS_PER_EPOCH,
        "val_elbo": val[0].get("val_elbo") if val else None,
        "params": hr.num_params(workdir / "checkpoints" / str(step)),
        "train_minutes": round(hr.train_seconds(records) / 60, 1),
        **throughput(train),
        "active_units": [[near.get(f"active_z{i + 1}"), n] for i, n in enumerate(sizes)],
        "active_units_step": near["step"], "trend": trend, "model": config["model"],
        "objective": config["objective"],
        "num_epochs": config["num_epochs"], "lr": config["optimizer"]["learning_rate"],
        "machine": hr.machine(), "date": datetime.date.today().isoformat()}


def throughput(train: list[dict]) -> dict:
    """Median and best examples/s over the log steps (the best: the least shared stretch)."""
    v = [r["examples_per_sec"] for r in train if r.get("examples_per_sec", 0) > 0]
    return {"examples_per_s": float(np.median(v)), "examples_per_s_max": float(np.max(v))}


def collect(workdir: Path, evals: dict) -> None:
    FILES.mkdir(parents=True, exist_ok=True)
    arrays = {f"{name}/{k}": v for name in EVALS for k, v in per_example(evals[name]).items()}
    np.savez_compressed(FILES / "scores.npz", **arrays)
    facts = run_facts(workdir, evals, hr.shown(train_command(workdir)))
    (FILES / "run.json").write_text(json.dumps(facts, indent=1, default=float) + "\n")


# -- numbers, from scores.npz only ----------------------------------------------------------
def metrics(s_in: np.ndarray, s_out: np.ndarray) -> tuple[float, float, float]:
    """(AUROC, AUPRC, FPR80) with the paper's conventions: OOD positive, AUPRC = average
    precision, FPR80 = FPR at the first TPR ≥ 0.8 (jaxhybrid.evaluators.ood, checked
    against scikit-learn)."""
    m = ood_metrics(s_in, s_out)
    return m["auroc"], m["aupr_out"], m["fpr80_ood"]


def bootstrap(s_in, s_out, draws: int = BOOTSTRAP, seed: int = 0) -> np.ndarray:
    """[draws, 3] metrics of sets resampled with replacement, each set on its own."""
    rng = np.random.default_rng(seed)
    return np.array([metrics(s_in[rng.integers(0, len(s_in), len(s_in))],
                             s_out[rng.integers(0, len(s_out), len(s_out))])
                     for _ in range(draws)])


def table(scores: dict, draws: int = BOOTSTRAP) -> dict:
    """{(S, score): {'point': (auroc, auprc, fpr80), 'lo': ..., 'hi': ..., 'n': (n_in, n_out)}},
    95 % percentile bootstrap intervals."""
    out = {}
    for s in EVALS:
        for k in SCORES:
            s_in, s_out = scores[f"{s}/fashion_mnist/{k}"], scores[f"{s}/mnist/{k}"]
            boot = bootstrap(s_in, s_out, draws)
            out[(s, k)] = {"point": metrics(s_in, s_out),
                           "lo": tuple(np.percentile(boot, 2.5, axis=0)),
                           "hi": tuple(np.percentile(boot, 97.5, axis=0)),
                           "n": (len(s_in), len(s_out))}
    return out


def bits_per_dim(nats: np.ndarray) -> float:
    return float(-np.mean(nats) / (784 * math.log(2)))


# -- figures ---------------------------------------------------------------------------------
def l_vs_lk_figure(scores: dict, path: Path) -> None:
    """L against L>1 and L>2 (bits/dim) per example, both test sets (S = 1)."""
    fig, axes = hr._figure(11, 4.6, 2)
    to_bpd = lambda v: -v / (784 * math.log(2))  # noqa: E731
    for ax, k in zip(axes, ("L>1", "L>2")):
        for name, colour in zip(SETS, ("C0", "C3")):
            ax.scatter(to_bpd(scores[f"S1/{name}/L"]), to_bpd(scores[f"S1/{name}/{k}"]),
                       s=2, alpha=0.25, color=colour, label=name.replace("_", "-"))
        ax.set_xlabel("L (bits/dim)")
        ax.set_ylabel(f"{k} (bits/dim)")
        ax.set_title(f"L vs {k}: LLR>{k[-1]} is the distance to the diagonal")
        lim = ax.get_xlim()
        ax.plot(lim, lim, "k:", linewidth=1)
        ax.legend(markerscale=6, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def histogram_figure(scores: dict, path: Path) -> None:
    fig, axes = hr._figure(15, 4, 3)
    panels = (("L", "bits/dim of L"), ("L>1", "bits/dim of L>1"), ("-LLR>1", "LLR>1 (nats)"))
    for ax, (k, label) in zip(axes, panels):
        groups = {n.replace("_", "-"): scores[f"S1/{n}/{k}"] for n in SETS}
        if k.startswith("L"):
            groups = {n: -v / (784 * math.log(2)) for n, v in groups.items()}
        else:
            groups = {n: -v for n, v in groups.items()}
        lo, hi = (np.percentile(np.concatenate(list(groups.values())), q) for q in (0.5, 99.5))
        for i, (n, v) in enumerate(groups.items()):
            kw = {"alpha": 0.4} if i == 0 else {"histtype": "step", "linewidth": 1.5}
            ax.hist(np.clip(v, lo, hi), bins=np.linspace(lo, hi, 70), density=True, label=n, **kw)
        ax.set_xlabel(label)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("density")
    fig.suptitle("HVAE trained on Fashion-MNIST, S = 1: Fashion-MNIST test (filled) vs MNIST test")
    fig.tight_layout()
    fig.savefig(path)


# -- the page --------------------------------------------------------------------------------
def label(k: str) -> str:
    return k[1:] if k.startswith("-") else k


def cell(r: dict, i: int) -> str:
    return f"{r['point'][i]:.3f} [{r['lo'][i]:.3f}, {r['hi'][i]:.3f}]"


def headline_section(t: dict) -> str:
    rows = []
    for k in SCORES:
        paper = PAPER.get(k)
        p250 = PAPER.get(k + "@250") if k == "-LLR>1" else None
        ours = [" / ".join(f"{t[(s, k)]['point'][i]:.3f}" for i in range(3)) for s in EVALS]
        rows.append([label(k), " / ".join(f"{v:.3f}" for v in paper) if paper else "—",
                     " / ".join(f"{v:.3f}" for v in p250) if p250 else "—", *ours])
    n1, n250 = t[("S1", "L")]["n"], t[("S250", "L")]["n"]
    return (f"AUROC / AUPRC / FPR80. OOD (MNIST) is the positive class; AUPRC is the average "
            f"precision; FPR80 is the false-positive rate at the first threshold with TPR ≥ 0.8. "
            f"Both sets have equal size, as in the paper: {n1[0]:,} + {n1[1]:,} at S = 1, the "
            f"first {n250[0]:,} + {n250[1]:,} of each test split at S = 250.\n\n" +
            hr.md_table(["score", "paper, S = 1", "paper, S = 250", "ours, S = 1",
                         "ours, S = 250"], rows))


def interval_section(t: dict) -> str:
    rows = [[label(k), f"S = {s[1:]}", cell(t[(s, k)], 0), cell(t[(s, k)], 1),
             cell(t[(s, k)], 2)] for s in EVALS for k in SCORES]
    return (f"Point estimate [95 % percentile bootstrap interval, {BOOTSTRAP} resamples of each "
            f"set on its own, seed 0]:\n\n" +
            hr.md_table(["score", "S", "AUROC", "AUPRC", "FPR80"], rows))


def bpd_section(scores: dict) -> str:
    rows = []
    for name in SETS:
        rows.append([name.replace("_", "-") + (" (OOD)" if name == "mnist" else " test"),
                     f"{PAPER_BPD[name]:.3f}",
                     *(f"{bits_per_dim(scores[f'{s}/{name}/L']):.3f}" for s in EVALS)])
    return ("Mean of −L/(784·ln 2) over each set: a mass over {0, 1}^784 (binarised pixels), "
            "lower = more likely.\n\n" +
            hr.md_table(["set", "paper (S = 250)", "ours, S = 1 (all)",
                         f"ours, S = 250 (first {len(scores['S250/mnist/L']):,})"], rows))


def active_section(f: dict) -> str:
    rows = [[f"z{i + 1}", f"{int(a)} of {n}" if a is not None else "?"]
            for i, (a, n) in enumerate(f["active_units"])]
    return (f"Active units (Cov_x E_q[u] > 0.01 over a training batch, at training step "
            f"{f['active_units_step']}, the log step nearest the evaluated checkpoint):\n\n" +
            hr.md_table(["layer", "active"], rows))


def trend_section(f: dict) -> str:
    rows = []
    for name, r in sorted(f["trend"].items(), key=lambda kv: kv[1]["step"]):
        if name == "S250":
            continue
        ep = r["step"] / f["steps_per_epoch"]
        rows.append([f"{ep:.0f}", r["step"], *(f"{r['auroc'][k]:.3f}" for k in SCORES)])
    return ("AUROC at S = 1 on the full test splits, for checkpoints of the same run after "
            "more and more training (the last row is the evaluated, best-ELBO checkpoint; "
            "the free-nats and warm-up schedules are still running before epoch 15):\n\n" +
            hr.md_table(["epochs", "step", *map(label, SCORES)], rows))


def stages(model: dict) -> str:
    return "; ".join(", ".join(f"{b['out_channels']} ch k{b['kernel_size']} s{b['stride']}"
                               for b in stage) for stage in model["config_deterministic"])


def differences_section(f: dict) -> str:
    m, o, ev = f["model"], f["objective"], f["evaluations"]
    rows = [
        ["data", "TFDS fashion_mnist / mnist", "the same images from npz files (official order); "
         "10,000 training images held out (seeded) for checkpoint selection, 50,000 trained on"],
        ["deterministic stages", "64 channels: 64 k5 s1, 64 k5 s1, 64 k5 s2; 64 k3 s1, 64 k3 s1, "
         "64 k3 s2; 64 k3 ×3 s1", stages(m)],
        ["latents", "z1 conv 8 @ 14×14, z2 dense 16, z3 dense 8", "the same"],
        ["parameters", "2,588,898 (our count of the original's model)", f"{f['params']:,}"],
        ["epochs", "1000", f"{f['num_epochs']:g} ({f['total_steps']:,} steps of 128)"],
        ["KL warm-up", "200 epochs", f"{o['warmup_epochs']:g} epochs"],
        ["free nats 2", "200 epochs constant, then cooled over 200",
         f"{o['free_nats_constant_epochs']:g} constant, cooled over "
         f"{o['free_nats_cooldown_epochs']:g}"],
        ["learning rate", "Adam 3e-4", f"Adam {f['lr']:g} (shorter schedule)"],
        ["evaluated checkpoint", "—", f"best validation ELBO (step {f['best_step']:,}; here "
                                      f"also the last)" if f["best_step"] == f["total_steps"]
         else f"best validation ELBO (step {f['best_step']:,})"],
        ["S = 250 sets", "equal-size subsamples", f"the first {ev['S250']['max_examples']:,} "
         f"of each test split"],
        ["seeds", "1 reported", "1 (training seed 0); intervals are over test examples only"],
    ]
    return hr.md_table(["", "paper (Havtorn et al. 2021)", "here"], rows)


def reading(t: dict, scores: dict, f: dict) -> str:
    a = {k: t[("S1", k)]["point"][0] for k in SCORES}
    a250 = t[("S250", "-LLR>1")]
    b_in, b_out = (bits_per_dim(scores[f"S1/{n}/L"]) for n in SETS)
    lines = [
        f"1. **L fails on MNIST.** AUROC of L {a['L']:.3f} (paper 0.268): "
        + ("below chance, as in the paper." if a["L"] < 0.5 else
           "not below chance here, unlike the paper."),
        f"2. **MNIST is more likely than the training data.** {b_out:.3f} bits/dim on MNIST "
        f"against {b_in:.3f} on Fashion-MNIST test (paper 0.317 vs 0.420): "
        + ("reproduced." if b_out < b_in else "not reproduced."),
        f"3. **L>k moves towards chance and above as k grows.** L {a['L']:.3f}, L>1 "
        f"{a['L>1']:.3f}, L>2 {a['L>2']:.3f} (paper 0.268, 0.593, 0.712): "
        + ("rising with k." if a["L"] < a["L>1"] < a["L>2"] else "not monotone in k here."),
        f"4. **LLR>k detects MNIST.** LLR>1 {a['-LLR>1']:.3f} at S = 1 (paper 0.964) and "
        f"{a250['point'][0]:.3f} [{a250['lo'][0]:.3f}, {a250['hi'][0]:.3f}] at S = 250 "
        f"(paper 0.984); LLR>2 {a['-LLR>2']:.3f}. "
        + ("A working detector (AUROC ≥ 0.9), as the paper reports." if a["-LLR>1"] >= 0.9
           else "Short of the paper: see the trend below and what would close it."),
    ]
    trend = sorted((r for n, r in f["trend"].items() if n != "S250"), key=lambda r: r["step"])
    first, last = trend[0], trend[-1]
    d = last["auroc"]["-LLR>1"] - first["auroc"]["-LLR>1"]
    lines.append(
        f"5. **Trend with training.** LLR>1's AUROC goes from {first['auroc']['-LLR>1']:.3f} "
        f"after {first['step'] / f['steps_per_epoch']:.0f} epochs to "
        f"{last['auroc']['-LLR>1']:.3f} after {last['step'] / f['steps_per_epoch']:.0f}: "
        + ("it grows with training, the direction the paper's longer, wider run is on."
           if d > 0 else "it does not grow with training here."))
    return "\n".join(lines)


def setup_section(f: dict) -> str:
    ev = f["evaluations"]
    secs = ", ".join(f"{n} {ev[n]['seconds'] / 60:.1f} min (load {ev[n]['load_before']:.1f} "
                     f"before, {ev[n]['load_after']:.1f} after)" for n in ev)
    return hr.md_table(["", ""], [
        ["training", f"`{f['train_command']}`: {f['train_minutes']} min, median "
                     f"{f['examples_per_s']:.0f} examples/s (best log interval "
                     f"{f['examples_per_s_max']:.0f}: the machine was shared with other runs)"],
        ["best checkpoint", f"step {f['best_step']:,}, validation ELBO {f['val_elbo']:.2f} nats "
                            f"(one sample)"],
        ["evaluations", secs],
        ["machine", f"{f['machine']}, shared ({f['date']})"],
    ])


def page(t: dict, scores: dict, f: dict) -> str:
    cmds = "\n".join(info["command"] for info in f["evaluations"].values())   # $MNIST_NPZ
    return f"""# Results: HVAE, Fashion-MNIST → MNIST (the paper's headline pair)

The hierarchical VAE of hvae-oodd (Havtorn et al. 2021; docs/methods/hvae.md) trained on
Fashion-MNIST and scored against the MNIST test split with L, L>k and LLR>k. Everything on
this page is written by one command from the run's files:

```bash
python docs/results/hvae_fashion_mnist.py --train    # training, the evaluations, this page
python docs/results/hvae_fashion_mnist.py --page     # this page again, from the committed files
```

The tables are computed from `hvae_fashion_mnist/scores.npz` (every per-example score of
both evaluations, float32); `hvae_fashion_mnist/run.json` holds the run's facts. To check an
AUROC with scikit-learn:

```python
import numpy as np; from sklearn.metrics import roc_auc_score
s = np.load("docs/results/hvae_fashion_mnist/scores.npz")
i, o = s["S1/fashion_mnist/-LLR>1"], s["S1/mnist/-LLR>1"]    # higher = in-distribution
print(roc_auc_score(np.r_[np.zeros(len(i)), np.ones(len(o))], -np.r_[i, o]))   # OOD positive
```

## Setup

{setup_section(f)}

The evaluation commands (each writes its own `eval/<step>/<eval_id>/`; `$MNIST_NPZ` is the
MNIST file the config names, `jaxhybrid.config_defaults.MNIST_NPZ`: `$JAXHYBRID_MNIST_NPZ`, or
the shared data folder beside the checkout):

```
{cmds}
```

## Side by side with the paper

{headline_section(t)}

## With bootstrap intervals

{interval_section(t)}

## Bits/dim

{bpd_section(scores)}

## Latent use

{active_section(f)}

## Does LLR>k improve with training?

{trend_section(f)}

## Figures

![L against L>1 and L>2 per example](hvae_fashion_mnist/l_vs_lk.png)

![Histograms of L, L>1 (bits/dim) and LLR>1](hvae_fashion_mnist/histograms.png)

(The histograms span the 0.5–99.5 % quantiles of both sets together; values beyond them are
counted in the edge bins.)

## Reading

{reading(t, scores, f)}

These numbers come from this run; nothing was tuned toward the paper. The sentences above
are written by the script from the numbers.

## Differences from the paper's settings

{differences_section(f)}

What would close the gap: the paper's 64-channel model for 1000 epochs (configs/hvae.py:
fashion_mnist or fashion_mnist_paper_npz), a GPU job; benchmarks/device_suite.py runs it for
a fixed wall-clock budget on a lent accelerator.
"""


def render(draws: int = BOOTSTRAP, out: Path | None = None, files: Path | None = None) -> None:
    out, files = out or PAGE, files or FILES          # at call time: PAGE, FILES as they are now
    scores = dict(np.load(files / "scores.npz"))
    facts = json.loads((files / "run.json").read_text())
    t = table(scores, draws)
    l_vs_lk_figure(scores, files / "l_vs_lk.png")
    histogram_figure(scores, files / "histograms.png")
    out.write_text(page(t, scores, facts))
    print(f"wrote {hr.rel(out)}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default=str(ROOT / "runs" / "hvae_fmnist"))
    p.add_argument("--train", action="store_true", help="run the training first")
    p.add_argument("--page", action="store_true", help="only the page, from the committed files")
    a = p.parse_args(argv)
    workdir = Path(a.workdir).resolve()
    if not a.page:
        if a.train:
            hr.run(train_command(workdir), workdir.parent / f"{workdir.name}_train.log")
        if not (workdir / "final_metrics.json").exists():
            sys.exit(f"error: {workdir} holds no finished training run; pass --train")
        collect(workdir, run_evaluations(workdir))
    render()


if __name__ == "__main__":
    main()
