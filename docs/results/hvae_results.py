"""The HVAE results page (docs/methods/hvae.md): docs/results/hvae.md and docs/results/hvae/.

One script trains (``--train``), evaluates and writes the page from the numbers::

    .venv/bin/python docs/results/hvae_results.py --train   # ≈ 45 min training + ≈ 10 min eval
    .venv/bin/python docs/results/hvae_results.py       # after training: eval + page (≈ 10 min)
    .venv/bin/python docs/results/hvae_results.py --skip-eval   # figures + page from the run
    .venv/bin/python docs/results/hvae_results.py --page        # page only, from collected.json
    .venv/bin/python docs/results/hvae_results.py --smoke --train   # tiny check (≈ 3 min)

1. ``--train`` runs exactly the lead's training command (:func:`train_command`:
   configs/hvae.py:mnist_npz with ``TRAIN_OVERRIDES`` and ``TRAIN_EVALS`` below: 30
   epochs, warm-up 10, free nats 2 for 10 epochs then 10 of cooling; only the
   ``likelihood`` evaluator (the config's S = 8) at the end). ≈ 45 min here::

       python -m jaxhybrid.main --config=configs/hvae.py:mnist_npz --workdir=runs/hvae_mnist \
         --config.num_epochs=30 --config.objective.warmup_epochs=10 \
         --config.objective.free_nats_constant_epochs=10 --config.objective.free_nats_cooldown_epochs=10 \
         --config.evals.names=likelihood

2. The evaluation: ``--mode=eval --checkpoint=best`` (highest validation ELBO) with
   S = ``SAMPLES`` importance samples and the evaluators ``ood,likelihood`` (in that
   order: ``ood`` computes L and L>k of the test split in one pass and ``likelihood``
   reuses it; the other order scores the test split twice) against ``OOD_SETS``, each
   capped at ``OOD_MAX_EXAMPLES``. The in-distribution test split (10,000 MNIST images)
   cannot be capped: no config field limits the evaluation split (``evals.ood_max_examples``
   caps the OOD sets only; ``evals.split=validation`` would swap in the checkpoint-selection
   split), so the test split is scored in full.
3. The collection (:func:`collect`): from
   ``<workdir>/eval/<best step>/<eval_id>/metrics.json`` and ``ood_scores.npz``, ``metrics.jsonl``, ``config.json`` and the checkpoint's metadata,
   every number of the page, at the precision the page prints it, into the committed
   docs/results/hvae/collected.json; the figures from the per-example scores.
4. The page (:func:`page`), from collected.json alone: ``--page`` re-renders it without
   the run directory (the figures need the per-example scores and stay as they are).

Why S = 16 and 1,000 examples per OOD set. Scoring costs 3·S forward passes per example
(L, L>1 and L>2 share the same S samples: one batch of 3·S). Measured on this shared
2-core CPU (2026-11-23, load average ≈ 5 from other jobs, niced) with a 20-step checkpoint
of the same architecture (the cost does not depend on the training length), timing
``Predictor.outputs`` after compilation: 1,450–1,700 sample-passes/s wall clock
(2,150–2,460 per CPU-second; score_chunk 8 was the fastest of 4/8/16). Examples: 10,000
test + 6 × 1,000 OOD = 16,000, i.e. 16,000 × 3 × 16 = 768,000 passes ≈ 7.5–9 min, plus
≤ 1 min of start-up, data, compilation and figures: ≈ 8–9.5 min at that load (less on an
idle machine: ≈ 5 CPU-minutes of scoring), inside the ≈ 12 min budget. S = 32 would take ≈ 15–17 min and 2,000
examples per set ≈ 11–12 min (no margin). The paper uses S = 250 (Fashion-MNIST) and 1000
(CIFAR-10). Check: the smoke evaluation below (S = 2, 200 per set: 72,000 passes, the
whole command including start-up and figures) took 65 s wall clock at load average ≈ 6.

The evaluation writes into its own ``<workdir>/eval/<best step>/<eval_id>/`` beside the
training run's end-of-training evaluation (S = 8), which it never replaces.

``--smoke`` shrinks everything (20 training steps with S = 1 at the end of training,
evaluation S = 2 and 200 examples per OOD set; ≈ 3 min on the loaded CPU) and writes into
a temporary directory, never into docs/results/hvae.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from jaxhybrid.config_defaults import FASHION_MNIST_NPZ, MNIST_NPZ  # noqa: E402
from jaxhybrid.evaluators.ood import ood_metrics  # noqa: E402

CONFIG = "configs/hvae.py:mnist_npz"
TRAIN_OVERRIDES = ("--config.num_epochs=30", "--config.objective.warmup_epochs=10",
                   "--config.objective.free_nats_constant_epochs=10",
                   "--config.objective.free_nats_cooldown_epochs=10")
TRAIN_EVALS = "--config.evals.names=likelihood"
MODEL_OVERRIDES = TRAIN_OVERRIDES[1:]        # repeated in eval mode (same model config)
OOD_SETS = ("digits_resized", "digits", "inverted", "uniform_noise", "gaussian_noise",
            "constant")
SAMPLES = 16
OOD_MAX_EXAMPLES = 1000
SCORE_CHUNK = 8
EVAL_BATCH = 500                             # divides 10,000 and 1,000: no padded examples
SMOKE_TRAIN = ("--config.num_steps=20", "--config.log_every=10",
               "--config.checkpoint_every=10", "--config.model.iwae_samples=1")
SMOKE_SAMPLES, SMOKE_OOD_MAX = 2, 200
DEFAULT_WORKDIR, DEFAULT_OUT = "runs/hvae_mnist", "docs/results/hvae.md"
SIDECAR = "hvae_results_eval.json"           # in the workdir: what the last eval ran
COLLECTED = "collected.json"                 # beside the figures: every number of the page

SCORES = ("L", "L>1", "L>2", "-LLR>1", "-LLR>2")
FAIL, SUCCEED = 0.5, 0.9                     # AUROC: below chance / a working detector
ORIGINAL = {"width": 64, "epochs": 1000, "params": 2_588_898, "S": 250}
# Havtorn et al. 2021, FashionMNIST→MNIST (docs/methods/hvae.md): AUROC / AUPRC / FPR80, OOD positive,
# in-distribution and OOD test sets subsampled to equal size; LLR>2 not reported there.
PAPER = {"L": "0.268 / 0.363 / 0.882", "L>1": "0.593 / 0.591 / 0.658",
         "L>2": "0.712 / 0.750 / 0.548",
         "-LLR>1": "S = 1: 0.964 / 0.961 / 0.036; S = 250: 0.984 / 0.984 / 0.013",
         "-LLR>2": "—"}
PAPER_BPD = {"in": 0.420, "out": 0.317}      # HVAE Fashion-MNIST test / MNIST as OOD


# -- commands ------------------------------------------------------------------------------
def train_command(workdir: Path, smoke: bool) -> list[str]:
    return [sys.executable, "-m", "jaxhybrid.main", f"--config={CONFIG}",
            f"--workdir={rel(workdir)}", *TRAIN_OVERRIDES, TRAIN_EVALS,
            *(SMOKE_TRAIN if smoke else ())]


def eval_command(workdir: Path, samples: int, max_examples: int) -> list[str]:
    return [sys.executable, "-m", "jaxhybrid.main", f"--config={CONFIG}",
            f"--workdir={rel(workdir)}", "--mode=eval", "--checkpoint=best", *MODEL_OVERRIDES,
            f"--config.model.iwae_samples={samples}", f"--config.model.score_chunk={SCORE_CHUNK}",
            f"--config.eval_batch_size={EVAL_BATCH}", "--config.evals.names=ood,likelihood",
            f"--config.evals.ood_sets={','.join(OOD_SETS)}",
            f"--config.evals.ood_max_examples={max_examples}"]


def rel(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def shown(cmd: list[str]) -> str:
    return " ".join(["python", *cmd[1:]])


def portable(command: str) -> str:
    """A shown command with the data files this checkout resolves (an absolute path of
    this machine, or $JAXHYBRID_*_NPZ) written as the names the configs give them,
    ``$MNIST_NPZ`` and ``$FASHION_MNIST_NPZ`` (jaxhybrid.config_defaults)."""
    return (command.replace(FASHION_MNIST_NPZ, "$FASHION_MNIST_NPZ")
            .replace(MNIST_NPZ, "$MNIST_NPZ"))


def run(cmd: list[str], log_path: Path) -> tuple[float, dict]:
    """Run from the repository root, tee stdout+stderr to ``log_path``; -> (seconds,
    {"eval_dir": the evaluation directory the command's summary names}). Exits with the
    command's status if it fails."""
    print("+", shown(cmd), flush=True)
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": os.environ.get(
        "JAX_COMPILATION_CACHE_DIR", str(ROOT / ".jax_cache"))}
    t0, final = time.time(), {}
    with open(log_path, "w") as log, subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True) as p:
        for line in p.stdout:
            sys.stdout.write(line)
            log.write(line)
            found = re.match(r"^evaluated .*?: (\S+)/report\.md$", line.strip())
            if found:
                final = {"eval_dir": found.group(1)}
    if p.returncode:
        sys.exit(f"command failed (exit {p.returncode}); log: {log_path}")
    return time.time() - t0, final


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text()
                .splitlines() if ln.startswith("model name")), platform.processor() or "?")
    import jax
    return (f"{os.cpu_count()} CPU cores ({cpu}), {platform.system()} {platform.machine()}, "
            f"Python {platform.python_version()}, JAX {jax.__version__} on "
            f"{jax.devices()[0].platform}")


def run_eval(workdir: Path, samples: int, max_examples: int) -> dict:
    """Evaluate the best checkpoint; record what ran (and how long) in the sidecar."""
    cmd = eval_command(workdir, samples, max_examples)
    load = os.getloadavg()[0]
    seconds, final = run(cmd, workdir / "hvae_results_eval.log")
    info = {"command": shown(cmd), "seconds": seconds, "load_before": load,
            "load_after": os.getloadavg()[0], "eval_dir": final["eval_dir"], "samples": samples,
            "max_examples": max_examples, "machine": machine(),
            "date": datetime.date.today().isoformat()}
    (workdir / SIDECAR).write_text(json.dumps(info, indent=2))
    return info


def sweep_page_main(doc: str, default_runs: Path, run_all, collect, render, collected: str,
                    argv=None) -> None:
    """The command line of a page made from several runs: ``--run`` runs them first,
    ``--page`` renders from the committed ``collected`` file alone."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--runs", default=str(default_runs), help="the runs' directory")
    p.add_argument("--run", action="store_true", help="run the runs first")
    p.add_argument("--page", action="store_true", help=f"only the page, from {collected}")
    a = p.parse_args(argv)
    runs = Path(a.runs).resolve()
    if a.run:
        run_all(runs)
    if not a.page:
        collect(runs)
    render()


# -- reading the run -----------------------------------------------------------------------
def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def num_params(checkpoint_dir: Path) -> int:
    """Parameters of a checkpoint, from orbax's tree metadata (no restore)."""
    tree = json.loads((checkpoint_dir / "model" / "_METADATA").read_text())["tree_metadata"]
    return sum(math.prod(v["value_metadata"]["write_shape"]) for k, v in tree.items()
               if k.startswith("('params'"))


def train_seconds(records: list[dict]) -> float:
    """Training wall time to the last log step, summed over resumed segments."""
    total, last = 0.0, None
    for r in (r for r in records if r["kind"] == "train"):
        if last is not None and r["time"] < last:
            total += last
        last = r["time"]
    return total + (last or 0.0)


def latent_sizes(model_cfg: dict) -> list[int]:
    from jaxhybrid.families.hvae import build_module, module_options
    shapes = build_module(module_options(model_cfg), 1).latent_shapes((28, 28, 1))
    return [math.prod(s) for s in shapes]


def load(workdir: Path, info: dict) -> dict:
    eval_dir = Path(info["eval_dir"])
    if not eval_dir.is_absolute():
        eval_dir = ROOT / eval_dir
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    records = read_jsonl(workdir / "metrics.jsonl")
    config = json.loads((workdir / "config.json").read_text())
    step = int(metrics["step"])
    return {"info": info, "metrics": metrics, "records": records, "config": config,
            "step": step, "scores": dict(np.load(eval_dir / "ood_scores.npz")),
            "final": json.loads((workdir / "final_metrics.json").read_text()),
            "params": num_params(workdir / "checkpoints" / str(step)),
            "data": json.loads((workdir / "data.json").read_text()), "eval_dir": eval_dir}


# -- numbers ------------------------------------------------------------------------------
def bpd(nats) -> float:
    return float(-np.mean(nats) / (784 * math.log(2)))


def bpd_rows(r: dict) -> list[tuple[str, int, dict]]:
    """(set, n, {score: mean bits/dim}) for the test split and each OOD set."""
    out = []
    for name in ("test", *set_names(r)):
        cols = {k: bpd(r["scores"][f"{name}/{k}"]) for k in ("L", "L>1", "L>2")}
        out.append((name, len(r["scores"][f"{name}/L"]), cols))
    return out


def balanced_aupr_out(s_in, s_out, draws: int = 20) -> float:
    """AUPR-Out with the in-distribution scores subsampled to the OOD count (the paper's
    equal-size sets): the mean over ``draws`` seeded subsamples."""
    if len(s_in) <= len(s_out):
        return ood_metrics(s_in, s_out)["aupr_out"]
    rng = np.random.default_rng(0)
    return float(np.mean([ood_metrics(rng.choice(s_in, len(s_out), replace=False),
                                      s_out)["aupr_out"] for _ in range(draws)]))


def auroc_se(a: float, n_in: int, n_out: int) -> float:
    """Hanley & McNeil (1982) standard error of an AUROC."""
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    v = a * (1 - a) + (n_in - 1) * (q1 - a * a) + (n_out - 1) * (q2 - a * a)
    return math.sqrt(max(v, 0.0) / (n_in * n_out))


def set_names(r: dict) -> list[str]:
    """The evaluated OOD sets, in the order of OOD_SETS (metrics.json sorts them)."""
    sets = r["metrics"]["ood"]["sets"]
    return [s for s in OOD_SETS if s in sets] + [s for s in sets if s not in OOD_SETS]


def ood_table(r: dict) -> dict:
    """{set: {score: metrics + aupr_out_balanced}}."""
    split = r["metrics"]["ood"]["in_distribution"]["split"]
    out = {}
    for name in set_names(r):
        s = r["metrics"]["ood"]["sets"][name]
        out[name] = {}
        for k in SCORES:
            m = dict(s["scores"][k])
            m["aupr_out_balanced"] = balanced_aupr_out(r["scores"][f"{split}/{k}"],
                                                       r["scores"][f"{name}/{k}"])
            out[name][k] = m
    return out


def active_units(r: dict) -> list[tuple[float, int]]:
    last = [x for x in r["records"] if x["kind"] == "train"][-1]
    sizes = latent_sizes(r["config"]["model"])
    return [(last.get(f"active_z{i + 1}"), n) for i, n in enumerate(sizes)]


# -- collecting the run into collected.json (every number of the page) ---------------------
OOD_COLUMNS = ("auroc", "aupr_out", "aupr_out_balanced", "fpr80_ood", "aupr_in")
MODEL_KEYS = ("config_stochastic", "config_deterministic", "iwae_samples")
OBJECTIVE_KEYS = ("warmup_epochs", "free_nats", "free_nats_mode", "free_nats_constant_epochs",
                  "free_nats_cooldown_epochs")


def rounded(x, digits: int):
    """``x`` at the page's precision (None stays None): what collected.json keeps."""
    return None if x is None else round(float(x), digits)


def evaluation_facts(r: dict) -> dict:
    info = r["info"]
    return {"command": info["command"], "samples": info["samples"],
            "max_examples": info["max_examples"], "score_chunk": SCORE_CHUNK,
            "minutes": rounded(info["seconds"] / 60, 1),
            "load_before": rounded(info["load_before"], 1),
            "load_after": rounded(info["load_after"], 1), "eval_dir": rel(r["eval_dir"]),
            "machine": info["machine"], "date": info["date"]}


def config_facts(c: dict) -> dict:
    return {"model": {k: c["model"][k] for k in MODEL_KEYS},
            "objective": {k: c["objective"][k] for k in OBJECTIVE_KEYS},
            "num_steps": c["num_steps"], "num_epochs": c["num_epochs"],
            "batch_size": c["batch_size"], "optimizer": {
                k: c["optimizer"][k] for k in ("name", "learning_rate")}}


def training_facts(r: dict) -> dict:
    rec = [x for x in r["records"] if x["kind"] == "train"]
    val = {x["step"]: x["val_elbo"] for x in r["records"] if x["kind"] == "validation"}
    return {"last_step": rec[-1]["step"], "minutes": rounded(train_seconds(r["records"]) / 60, 1),
            "examples_per_s": round(float(np.median([x["examples_per_sec"]
                                                     for x in rec[1:] or rec]))),
            "checkpoint": r["metrics"]["checkpoint"], "step": r["step"],
            "val_elbo": rounded(val.get(r["step"]), 2),
            "final_log_likelihood": rounded(r["final"].get("log_likelihood"), 2),
            "final_evaluated_step": r["final"].get("evaluated_step")}


def score_facts(r: dict, table: dict) -> dict:
    sets = r["metrics"]["ood"]["sets"]
    return {
        "in_distribution": {k: r["metrics"]["ood"]["in_distribution"][k]
                            for k in ("split", "num_examples")},
        "test_L_nats": rounded(np.mean(r["scores"]["test/L"]), 2),
        "sets": {n: {k: sets[n][k] for k in ("description", "num_examples")} for n in table},
        "bits_per_dim": {n: {"n": cnt, **{k: rounded(v, 4) for k, v in cols.items()}}
                         for n, cnt, cols in bpd_rows(r)},
        "ood": {n: {k: {**{m: rounded(v[m], 3) for m in OOD_COLUMNS},
                        "num_in": v["num_in"], "num_out": v["num_out"]}
                    for k, v in scores.items()} for n, scores in table.items()}}


def collect(r: dict, table: dict, train_cmd: str) -> dict:
    """Every number of the page, at the precision the page prints it, from the run's files."""
    d = r["data"]
    return {"train_command": train_cmd, "evaluation": evaluation_facts(r),
            "data": {"npz_path": os.path.relpath(d["npz_path"], ROOT),
                     **{k: d[k] for k in ("num_train", "num_validation", "num_test")}},
            "config": config_facts(r["config"]), "params": r["params"],
            "training": training_facts(r),
            "active_units": [[rounded(a, 0), n] for a, n in active_units(r)],
            **score_facts(r, table)}


def write_collected(c: dict, path: Path) -> None:
    path.write_text(json.dumps(c, indent=1, ensure_ascii=False) + "\n")


# -- figures ------------------------------------------------------------------------------
def _figure(w: float, h: float, cols: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, cols)


def _hist(ax, groups: dict, edges, xscale: str, xlabel: str) -> None:
    for i, (name, v) in enumerate(groups.items()):
        kw = {"alpha": 0.35} if i == 0 else {"histtype": "step", "linewidth": 1.5}
        ax.hist(np.clip(v, edges[0], edges[-1]), bins=edges, density=True, label=name, **kw)
    ax.set_xscale(xscale, **({"linthresh": 1.0} if xscale == "symlog" else {}))
    ax.set_xlabel(xlabel)
    ax.set_yscale("log")


def symlog_edges(lo: float, hi: float, n: int) -> np.ndarray:
    """n edges evenly spaced in sign(x)·log10(1 + |x|)."""
    f = lambda x: np.sign(x) * np.log10(1 + abs(x))  # noqa: E731
    y = np.linspace(f(lo), f(hi), n)
    return np.sign(y) * (10 ** np.abs(y) - 1)


def histogram_figure(r: dict, path: Path) -> None:
    split = r["metrics"]["ood"]["in_distribution"]["split"]
    keys = [split, *set_names(r)]
    names = [f"MNIST {split}", *keys[1:]]
    fig, (a, b) = _figure(12, 4.2, 2)
    l_bpd = {n: -r["scores"][f"{k}/L"] / (784 * math.log(2)) for n, k in zip(names, keys)}
    lo, hi = (np.percentile(np.concatenate(list(l_bpd.values())), q) for q in (0.1, 99.9))
    _hist(a, l_bpd, np.geomspace(max(lo, 1e-3), hi, 60), "log", "bits/dim of L (lower = likelier)")
    llr = {n: r["scores"][f"{k}/-LLR>1"] for n, k in zip(names, keys)}
    lo, hi = (np.percentile(np.concatenate(list(llr.values())), q) for q in (0.1, 99.9))
    _hist(b, llr, symlog_edges(lo, hi, 80), "symlog",
          "−LLR>1 = L>1 − L (nats; higher = in-distribution)")
    from matplotlib.ticker import FormatStrFormatter
    for axis in (a.xaxis, b.xaxis):
        axis.set_major_formatter(FormatStrFormatter("%g"))
    a.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
    a.set_ylabel("density (log)")
    a.legend(fontsize=8)
    fig.suptitle(f"HVAE on MNIST, S = {r['info']['samples']}: in-distribution (filled) vs OOD")
    fig.tight_layout()
    fig.savefig(path)


def auroc_figure(table: dict, path: Path) -> None:
    fig, ax = _figure(12, 4, 1)
    sets, width = list(table), 0.8 / len(SCORES)
    for j, k in enumerate(SCORES):
        x = np.arange(len(sets)) + (j - len(SCORES) / 2 + 0.5) * width
        ax.bar(x, [table[s][k]["auroc"] for s in sets], width, label=score_label(k))
    for v, style, what in ((0.5, ":", "chance"), (0.268, "--", "paper L (FMNIST→MNIST)"),
                           (0.984, "-.", "paper LLR>1, S = 250")):
        ax.axhline(v, color="k", linestyle=style, linewidth=1, label=what)
    ax.set_xticks(np.arange(len(sets)), sets)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("AUROC")
    ax.set_title("OOD AUROC against MNIST test (higher = better detection)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path)


# -- the page, from collected.json only ----------------------------------------------------
def score_label(k: str) -> str:
    return k[1:] if k.startswith("-") else k


def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def minutes(s: float) -> str:
    return f"{s / 60:.1f} min"


def length(c: dict) -> str:
    return f"{c['num_steps']} steps" if c["num_steps"] else f"{c['num_epochs']:g} epochs"


def model_text(c: dict) -> str:
    m = c["config"]["model"]
    lat = ", ".join(f"z{i + 1} {d['block'].replace('Gaussian', '').lower()} "
                    f"{d['latent_features']}" for i, d in enumerate(m["config_stochastic"]))
    stages = "; ".join(f"stage {i + 1}: " + ", ".join(
        f"{b['out_channels']} ch k{b['kernel_size']} s{b.get('stride', 1)}" for b in st)
        for i, st in enumerate(m["config_deterministic"]))
    return (f"HVAE, {len(m['config_stochastic'])} stochastic layers ({lat}); ResBlocks "
            f"({stages}; the original: {ORIGINAL['width']} channels); {c['params']:,} "
            f"parameters (the original's Fashion-MNIST model: {ORIGINAL['params']:,})")


def training_text(c: dict) -> str:
    cfg, t = c["config"], c["training"]
    return (f"{length(cfg)} ({t['last_step']:,} steps of batch {cfg['batch_size']}), "
            f"{cfg['optimizer']['name']} lr {cfg['optimizer']['learning_rate']:g} (the "
            f"original: 1000 epochs, lr 3e-4); {t['minutes']:.1f} min of training to the "
            f"last log step (median {t['examples_per_s']:.0f} examples/s)")


def number(v, spec: str) -> str:
    return "?" if v is None else format(v, spec)


def setup_section(c: dict) -> str:
    m, d, ev, t = c["config"]["objective"], c["data"], c["evaluation"], c["training"]
    act = ", ".join(f"z{i + 1} {number(a, '.0f')} of {n}"
                    for i, (a, n) in enumerate(c["active_units"]))
    rows = [
        ["data", f"`{d['npz_path']}`: {d['num_train']:,} train / "
                 f"{d['num_validation']:,} validation (from train) / {d['num_test']:,} test; "
                 "dynamically binarised in training, one fixed seeded binarisation in "
                 "evaluation (OOD images too)"],
        ["model", model_text(c)],
        ["objective", f"Bernoulli likelihood; KL warm-up over {m['warmup_epochs']:g} epochs; "
                      f"free nats {m['free_nats']:g} ({m['free_nats_mode']}) for "
                      f"{m['free_nats_constant_epochs']} epochs, then to 0 over "
                      f"{m['free_nats_cooldown_epochs']} (the original: 200, 200, 200 epochs)"],
        ["training", training_text(c)],
        ["checkpoint", f"{t['checkpoint']}: validation ELBO {number(t['val_elbo'], '.2f')} "
                       "nats (single sample)"],
        ["active units (Cov_x E_q[u] > 0.01, last log step)", act],
        ["evaluation", f"S = {ev['samples']} importance samples (score_chunk "
                       f"{ev['score_chunk']}); {ev['minutes']:.1f} min wall clock for the "
                       f"evaluation command (load average {ev['load_before']:.1f} before, "
                       f"{ev['load_after']:.1f} after)"],
        ["machine", f"{ev['machine']}, shared with other jobs ({ev['date']})"],
    ]
    return md_table(["", ""], rows)


def ood_sets_section(c: dict) -> str:
    return "\n".join(f"- **{n}**: {s['description']} ({s['num_examples']:,} examples)"
                     for n, s in c["sets"].items())


def bpd_section(c: dict) -> str:
    rows = [[f"MNIST {n}" if n == "test" else n, f"{b['n']:,}",
             *(f"{b[k]:.4f}" for k in ("L", "L>1", "L>2"))]
            for n, b in c["bits_per_dim"].items()]
    return md_table(["set", "examples", "L", "L>1", "L>2"], rows)


def ood_section(table: dict) -> str:
    rows = []
    for name, scores in table.items():
        for k in SCORES:
            m = scores[k]
            rows.append([name, score_label(k), f"{m['auroc']:.3f}", f"{m['aupr_out']:.3f}",
                         f"{m['aupr_out_balanced']:.3f}", f"{m['fpr80_ood']:.3f}",
                         f"{m['aupr_in']:.3f}", f"{m['num_in']:,} / {m['num_out']:,}"])
    return md_table(["OOD set", "score", "AUROC", "AUPRC (OOD+)", "AUPRC (OOD+, equal sizes)",
                     "FPR80 (OOD+)", "AUPR-In", "# in / # OOD"], rows)


def l_bpd(c: dict) -> dict:
    """{set: mean bits/dim of L}, the test split first."""
    return {n: b["L"] for n, b in c["bits_per_dim"].items()}


def paper_section(c: dict) -> str:
    table = c["ood"]
    sets = list(table)
    rows = [[score_label(k), PAPER[k], *(" / ".join(f"{table[s][k][m]:.3f}" for m in
                                                    ("auroc", "aupr_out_balanced", "fpr80_ood"))
                                         for s in sets)] for k in SCORES]
    head = ["score", "paper, FMNIST→MNIST", *(f"ours, MNIST→{s}" for s in sets)]
    b = l_bpd(c)
    bpd_line = (f"Bits/dim of L: the paper's HVAE gives {PAPER_BPD['in']:.3f} on Fashion-MNIST "
                f"test and {PAPER_BPD['out']:.3f} on MNIST (OOD); here {b['test']:.3f} on "
                "MNIST test and "
                + ", ".join(f"{b[s]:.3f} on {s}" for s in sets) + ".")
    return ("AUROC / AUPRC (OOD positive, equal-size sets) / FPR80 (OOD positive); ours with "
            f"S = {c['evaluation']['samples']}.\n\n" + md_table(head, rows) + "\n\n" + bpd_line)


def _fmt_scores(table: dict, s: str, keys) -> str:
    return ", ".join(f"{score_label(k)} {table[s][k]['auroc']:.3f}" for k in keys)


def best_llr(table: dict, s: str) -> tuple[str, float]:
    k = max(("-LLR>1", "-LLR>2"), key=lambda k: table[s][k]["auroc"])
    return score_label(k), table[s][k]["auroc"]


def claim_l_fails(table: dict) -> str:
    fails = [s for s in table if table[s]["L"]["auroc"] < FAIL]
    if not fails:
        low = min(table, key=lambda s: table[s]["L"]["auroc"])
        return (f"**1. \"L fails on some OOD data: AUROC below chance\" — not observed.** L "
                f"is above chance on every offline set (lowest: {low}, AUROC "
                f"{table[low]['L']['auroc']:.3f}), so this suite cannot show LLR>k rescuing a "
                f"failing likelihood.")
    parts = []
    for s in fails:
        k, a = best_llr(table, s)
        verdict = ("as in the paper" if a >= SUCCEED else
                   "better than L, but short of the paper's level" if a > FAIL else
                   "so LLR>k does not fix it here")
        parts.append(f"on **{s}** L has AUROC {table[s]['L']['auroc']:.3f} and {k} "
                     f"{a:.3f} ({verdict})")
    return (f"**1. \"L fails on near-OOD data while LLR>k detects it\" (paper: L 0.268, LLR>1 "
            f"0.984 on FashionMNIST→MNIST).** L is below chance (AUROC < {FAIL}) on "
            f"{len(fails)} of {len(table)} offline sets: " + "; ".join(parts) + ".")


def claim_bpd(c: dict) -> str:
    b = l_bpd(c)
    lower = [s for s in b if s != "test" and b[s] < b["test"]]
    if not lower:
        return (f"**2. \"OOD data can get a higher likelihood than the training data\" — not "
                f"observed.** Every OOD set has more bits/dim than MNIST test "
                f"({b['test']:.3f}).")
    return (f"**2. \"OOD data can get a higher likelihood than the training data\" (paper: "
            f"MNIST {PAPER_BPD['out']:.3f} vs Fashion-MNIST {PAPER_BPD['in']:.3f} bits/dim) — "
            f"reproduced.** " + ", ".join(f"{s} gets {b[s]:.3f}" for s in lower)
            + f" bits/dim against {b['test']:.3f} for MNIST test.")


def claim_l_gt_k(table: dict) -> str:
    fails = [s for s in table if table[s]["L"]["auroc"] < FAIL]
    if not fails:
        return ""
    rising = [s for s in fails if table[s]["L"]["auroc"] < table[s]["L>1"]["auroc"]
              < table[s]["L>2"]["auroc"]]
    seqs = "; ".join(f"{s}: {_fmt_scores(table, s, ('L', 'L>1', 'L>2'))}" for s in fails)
    verdict = ("rises with k on every such set, as in the paper" if len(rising) == len(fails)
               else "does not rise with k" if not rising
               else f"rises with k on only {len(rising)} of {len(fails)} such sets")
    return (f"**3. \"L>k alone moves towards chance and above as k grows\" (paper: 0.268, "
            f"0.593, 0.712).** Where L fails, the AUROC of L, L>1, L>2 {verdict} ({seqs}).")


def claim_far_ood(table: dict) -> str:
    bad = [s for s in table if table[s]["L"]["auroc"] >= SUCCEED and best_llr(table, s)[1] < FAIL]
    good = [s for s in table if table[s]["L"]["auroc"] >= SUCCEED
            and best_llr(table, s)[1] >= SUCCEED]
    text = "**4. Sets on which L already works.** "
    if good:
        text += ("LLR>k keeps working on " + ", ".join(
            f"{s} ({_fmt_scores(table, s, ('L', '-LLR>1', '-LLR>2'))})" for s in good) + ". ")
    if bad:
        text += ("LLR>k is below chance on " + ", ".join(
            f"{s} ({_fmt_scores(table, s, ('L', '-LLR>1', '-LLR>2'))})" for s in bad)
            + ": it is not a universal score; there the likelihood itself separates the sets "
              "and the likelihood ratio ranks them the wrong way. The paper evaluates LLR>k on "
              "pairs of real datasets (docs/methods/hvae.md: MNIST, KMNIST, notMNIST, Omniglot, "
              "SmallNORB, SVHN, CIFAR-100 as OOD); synthetic sets like these are not among them.")
    return text if (good or bad) else ""


def claim_collapse(c: dict) -> str:
    table, units = c["ood"], c["active_units"]
    dead = [i + 1 for i, (a, _) in enumerate(units) if a == 0]
    diff = max(abs(table[s]["-LLR>2"]["auroc"] - table[s]["-LLR>1"]["auroc"]) for s in table)
    if not dead:
        return (f"**5. Latent use.** No stochastic layer is collapsed (active units: "
                f"{', '.join(number(a, '.0f') + f'/{n}' for a, n in units)}); LLR>1 and "
                f"LLR>2 "
                f"differ by at most {diff:.3f} AUROC.")
    return (f"**5. Latent use.** Layer(s) {', '.join(f'z{i}' for i in dead)} have no active "
            f"units at the end of training, so L>2 carries little beyond L>1: LLR>1 and LLR>2 "
            f"differ by at most {diff:.3f} AUROC.")


def untestable(c: dict) -> str:
    cfg, ev = c["config"], c["evaluation"]
    width = cfg["model"]["config_deterministic"][0][0]["out_channels"]
    return ("**What cannot be tested here.** Fashion-MNIST and CIFAR-10/SVHN are not "
            "available offline, so neither of the paper's pairs is run: the closest analogue "
            "is MNIST against sklearn digits (a different digit dataset: resized to 28×28, "
            "and separately zero-padded into the 28×28 frame); the direction is reversed (MNIST is in-distribution here, "
            f"it is the OOD set in the paper). The model is narrower ({width} channels instead of "
            f"{ORIGINAL['width']}; {c['params']:,} parameters instead of "
            f"{ORIGINAL['params']:,}), trained for {length(cfg)} instead of "
            f"{ORIGINAL['epochs']} epochs with proportionally shortened schedules, and scored with "
            f"S = {ev['samples']} importance samples instead of {ORIGINAL['S']}. "
            f"The OOD sets hold at most {ev['max_examples']:,} examples each against "
            f"the full {c['in_distribution']['num_examples']:,}-image "
            "test split; the equal-size AUPRC column subsamples the test split to the paper's "
            "1:1 ratio. One training seed: no spread is given.")


def s_note(c: dict) -> str:
    t, s = c["training"], c["evaluation"]["samples"]
    ll_train, step = t["final_log_likelihood"], t["final_evaluated_step"]
    s_train, test_l = c["config"]["model"]["iwae_samples"], c["test_L_nats"]
    se = max(auroc_se(m["auroc"], m["num_in"], m["num_out"])
             for scores in c["ood"].values() for m in scores.values())
    out = (f"AUROC standard errors (Hanley & McNeil) are at most {se:.3f} in this table. ")
    if ll_train is None:
        return out
    which = "the same checkpoint" if step == t["step"] else f"step {step}"
    out += (f"Test L = {test_l:.2f} nats with S = {s} against {ll_train:.2f} with the "
            f"training run's own evaluation (S = {s_train}) of {which}")
    if s > s_train and step == t["step"]:
        return out + (": the larger S gives the tighter bound." if test_l > ll_train else
                      ": the larger S does not give a tighter mean bound here.")
    return out + "."


def page(c: dict, fig_dir: str) -> str:
    table, ev = c["ood"], c["evaluation"]
    findings = [claim_l_fails(table), claim_bpd(c), claim_l_gt_k(table), claim_far_ood(table),
                claim_collapse(c), untestable(c)]
    return "\n\n".join([
        "# Results: HVAE likelihood and LLR>k OOD scores on MNIST",
        "The hierarchical VAE of hvae-oodd (Havtorn et al. 2021, docs/methods/hvae.md) trained on the "
        "shared MNIST file, and its OOD scores L, L>k and LLR>k = L − L>k against the OOD "
        "sets available offline. Everything on this page is written by one script from the "
        f"run's files (evaluated {ev['date']}):",
        f"```bash\npython docs/results/hvae_results.py --train   # training "
        f"({c['training']['minutes']:.1f} min here) + evaluation "
        f"({ev['minutes']:.1f} min) + this page\n```",
        f"It runs the training\n\n```bash\n{c['train_command']}\n```\n\nand then the "
        f"evaluation of the best checkpoint (highest validation ELBO)\n\n```bash\n"
        f"{ev['command']}\n```",
        "The in-distribution test split is scored in full (no config field caps the "
        "evaluation split); the OOD sets are capped by `evals.ood_max_examples`. "
        f"Per-run details: `{ev['eval_dir']}/report.md` and `ood_scores.npz`.",
        "## Setup", setup_section(c),
        "OOD sets (each binarised like the test images before scoring):", ood_sets_section(c),
        "## Bits/dim", "Mean over each set of −score/(784·ln 2) from the per-example scores "
        f"(S = {ev['samples']}; Bernoulli on binarised pixels, so no 8-bit correction; lower "
        "= more likely under the model):", bpd_section(c),
        "## OOD detection", "Scores are used with higher = in-distribution: L, L>k, and "
        "−LLR>k for the rows named LLR>k. AUROC does not depend on the positive class. "
        "**AUPRC and FPR80 take OOD as the positive class, as the paper does** "
        "(docs/metrics.md: AUPR-Out, FPR@80 (OOD-positive)); AUPR-In is given for completeness. "
        "The paper subsamples both sets to equal size; AUPRC depends on that ratio, so it is "
        "given for the full sets and as the mean over 20 seeded equal-size subsamples of the "
        "test split.", ood_section(table), s_note(c),
        "## Side by side with the paper", paper_section(c),
        "## Figures",
        f"![Histograms of L (bits/dim) and −LLR>1]({fig_dir}/histograms.png)\n\n"
        f"![AUROC per OOD set and score]({fig_dir}/auroc.png)",
        "## Which of the paper's claims the offline pairs reproduce",
        *[f for f in findings if f],
        "These are results of this setup; nothing was tuned to agree with the paper. The "
        "conclusions above are written by the script from the measured numbers "
        f"(below chance: AUROC < {FAIL}; working detector: AUROC ≥ {SUCCEED}).",
    ]) + "\n"


def render(workdir: Path, out: Path, smoke: bool) -> None:
    """From the run's files: the figures, collected.json beside them, and the page."""
    if not (workdir / SIDECAR).exists():
        sys.exit(f"{workdir / SIDECAR} is missing: run without --skip-eval first")
    r = load(workdir, json.loads((workdir / SIDECAR).read_text()))
    table = ood_table(r)
    fig_dir = out.with_suffix("")
    fig_dir.mkdir(parents=True, exist_ok=True)
    histogram_figure(r, fig_dir / "histograms.png")
    auroc_figure(table, fig_dir / "auroc.png")
    write_collected(collect(r, table, shown(train_command(workdir, smoke))), fig_dir / COLLECTED)
    render_page(out)


def render_page(out: Path) -> None:
    """The page from ``<out without .md>/collected.json`` alone (the figures stay as they
    are: they need the per-example scores, which only the run directory holds)."""
    fig_dir = out.with_suffix("")
    c = json.loads((fig_dir / COLLECTED).read_text())
    out.write_text(page(c, fig_dir.name))
    print(f"wrote {out}", flush=True)


# -- command line -------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default=None, help=f"run directory (default {DEFAULT_WORKDIR}; "
                   "--smoke: a new temporary directory)")
    p.add_argument("--train", action="store_true", help="run the training command first")
    p.add_argument("--samples", type=int, default=None, help=f"S of the evaluation ({SAMPLES})")
    p.add_argument("--ood-max-examples", type=int, default=None,
                   help=f"cap per OOD set ({OOD_MAX_EXAMPLES})")
    p.add_argument("--out", default=None, help=f"page (default {DEFAULT_OUT}; --smoke: "
                   "<workdir>/hvae.md); figures go to the folder of the same name")
    p.add_argument("--skip-eval", action="store_true", help="re-render from the last evaluation")
    p.add_argument("--page", action="store_true", help="only the page, from the committed "
                   f"{COLLECTED} beside it (<out without .md>/{COLLECTED}); no run directory")
    p.add_argument("--smoke", action="store_true", help="tiny end-to-end check in a temp dir")
    a = p.parse_args(argv)
    if a.smoke and a.out and Path(a.out).resolve() == (ROOT / DEFAULT_OUT).resolve():
        p.error(f"--smoke never writes {DEFAULT_OUT}; give another --out")
    smoke_dir = tempfile.mkdtemp(prefix="hvae_smoke_") if a.smoke and not a.workdir else None
    a.workdir = Path(a.workdir or smoke_dir or ROOT / DEFAULT_WORKDIR).resolve()
    a.out = Path(a.out or (a.workdir / "hvae.md" if a.smoke else ROOT / DEFAULT_OUT)).resolve()
    a.samples = a.samples or (SMOKE_SAMPLES if a.smoke else SAMPLES)
    a.ood_max_examples = a.ood_max_examples or (SMOKE_OOD_MAX if a.smoke else OOD_MAX_EXAMPLES)
    return a


def main(argv=None) -> None:
    a = parse_args(argv)
    if a.page:
        return render_page(a.out)
    if a.train:
        a.workdir.mkdir(parents=True, exist_ok=True)
        seconds, _ = run(train_command(a.workdir, a.smoke), a.workdir / "hvae_results_train.log")
        print(f"training command: {minutes(seconds)}", flush=True)
    if not (a.workdir / "final_metrics.json").exists():
        sys.exit(f"{a.workdir} has no finished training run; pass --train")
    if not a.skip_eval:
        info = run_eval(a.workdir, a.samples, a.ood_max_examples)
        print(f"evaluation command: {minutes(info['seconds'])}", flush=True)
    render(a.workdir, a.out, a.smoke)


if __name__ == "__main__":
    main()
