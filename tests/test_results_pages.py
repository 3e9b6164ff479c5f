"""The results pages' scripts (docs/results/*.py) on synthetic inputs: their numbers
against scikit-learn and plain loops, and each page rendered end to end from the files a
run leaves, so that the committed pages can always be regenerated."""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from tests.helpers import REPO

sys.path.insert(0, os.path.join(REPO, "docs", "results"))
import batch_study  # noqa: E402
import dhm_beta  # noqa: E402
import gffn_train_longer  # noqa: E402
import hvae_fashion_mnist as hfm  # noqa: E402
import hvae_results  # noqa: E402

RESULTS = os.path.join(REPO, "docs", "results")


def _fpr80_loop(s_in, s_out) -> float:
    """OOD positive with score −s: the FPR at the first threshold (descending) where
    TPR ≥ 0.8, every distinct score a threshold."""
    for t in sorted(set(np.r_[-s_in, -s_out]), reverse=True):
        tpr = np.mean(-s_out >= t)
        if tpr >= 0.8:
            return float(np.mean(-s_in >= t))
    return 1.0


def _synthetic_scores(rng, n_in=300, n_out=250) -> dict:
    out = {}
    for s in hfm.EVALS:
        for k in hfm.SCORES:
            shift = 0.0 if k == "L" else 1.0
            out[f"{s}/fashion_mnist/{k}"] = rng.normal(shift, 1, n_in).astype(np.float32) - 200
            out[f"{s}/mnist/{k}"] = rng.normal(0, 1, n_out).astype(np.float32) - 200
    return out


def test_hvae_table_matches_sklearn_and_a_loop():
    rng = np.random.default_rng(0)
    scores = _synthetic_scores(rng)
    t = hfm.table(scores, draws=50)
    for s in hfm.EVALS:
        for k in hfm.SCORES:
            s_in, s_out = scores[f"{s}/fashion_mnist/{k}"], scores[f"{s}/mnist/{k}"]
            y = np.r_[np.zeros(len(s_in)), np.ones(len(s_out))]
            auroc, auprc, fpr80 = t[(s, k)]["point"]
            assert auroc == pytest.approx(roc_auc_score(y, -np.r_[s_in, s_out]), abs=1e-12)
            assert auprc == pytest.approx(average_precision_score(y, -np.r_[s_in, s_out]), abs=1e-12)
            assert fpr80 == pytest.approx(_fpr80_loop(s_in, s_out), abs=1e-12)
            for i in range(3):
                assert t[(s, k)]["lo"][i] <= t[(s, k)]["point"][i] + 1e-9
                assert t[(s, k)]["point"][i] <= t[(s, k)]["hi"][i] + 1e-9
    assert hfm.bits_per_dim(np.full(4, -784 * math.log(2))) == pytest.approx(1.0)


def test_hvae_page_renders_from_the_committed_files(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    files = tmp_path / "hvae_fashion_mnist"
    files.mkdir()
    np.savez_compressed(files / "scores.npz", **_synthetic_scores(rng))
    ev = {"command": "python -m jaxhybrid.main ...", "seconds": 60.0, "load_before": 1.0,
          "load_after": 1.5, "eval_dir": "x", "samples": 1, "max_examples": 0}
    trend = {n: {"step": st, "auroc": {k: 0.5 + st / 1e5 for k in hfm.SCORES}}
             for n, st in (("S1", 9384), ("S250", 9384), ("trend_e4", 1564),
                           ("trend_e12", 4692))}
    facts = {"train_command": "python -m jaxhybrid.main ...", "best_step": 9384,
             "evaluations": {"S1": ev, "S250": {**ev, "samples": 250, "max_examples": 1000}},
             "total_steps": 9384, "steps_per_epoch": 391, "val_elbo": -240.0,
             "params": 136674, "train_minutes": 50.0, "examples_per_s": 600.0, "examples_per_s_max": 700.0,
             "active_units": [[100.0, 1568], [10.0, 16], [0.0, 8]], "active_units_step": 9300,
             "trend": trend, "model": {"config_deterministic": [[{"out_channels": 16,
                                                                   "kernel_size": 3, "stride": 1}]]},
             "objective": {"warmup_epochs": 5, "free_nats_constant_epochs": 5,
                           "free_nats_cooldown_epochs": 5},
             "num_epochs": 24.0, "lr": 1e-3, "machine": "test", "date": "2026-01-01"}
    (files / "run.json").write_text(json.dumps(facts))
    page = tmp_path / "page.md"
    hfm.render(draws=20, out=page, files=files)
    text = page.read_text()
    t = hfm.table(dict(np.load(files / "scores.npz")), draws=20)
    assert f"{t[('S1', '-LLR>1')]['point'][0]:.3f}" in text
    assert "0.964" in text and "0.984" in text          # the paper's numbers beside ours
    assert (files / "l_vs_lk.png").stat().st_size > 0 and (files / "histograms.png").exists()
    assert "grows with training" in text                # the trend point rises by construction


def _dhm_points(rng) -> list[dict]:
    pts = []
    for b in dhm_beta.BETAS:
        for seed in (0, 1):
            acc = 0.85 - 0.01 * math.log10(1 + b) + 0.002 * seed
            pts.append({"beta": b, "seed": seed, "step": 94, "accuracy": acc, "nll": 0.4,
                        "ece": 0.02 + 0.001 * seed, "ece_ts": 0.01, "temperature": 1.1,
                        "auroc": {s: {k: float(rng.uniform(0.2, 0.9)) for k in dhm_beta.SCORES}
                                  for s in dhm_beta.SETS},
                        "test_elbo_nats": -300.0, "test_neg_loss_sampled": -1.0,
                        "mnist_elbo_nats": -250.0, "epsilons": [0.0, 0.02, 0.04],
                        "fgsm_pixel": [acc, 0.5, 0.3], "fgsm_normalized": [acc, 0.6, 0.4],
                        "normalized_units": "normalised input", "train_minutes": 2.0})
    return pts


def test_dhm_statistics_and_page(tmp_path, monkeypatch):
    pts = _dhm_points(np.random.default_rng(2))
    acc = dhm_beta.by_beta(pts, lambda p: p["accuracy"])
    zero = [p["accuracy"] for p in pts if p["beta"] == 0.0]
    assert acc[0.0] == pytest.approx((np.mean(zero), np.std(zero, ddof=1), 2))
    assert dhm_beta.significant((1.0, 0.01, 2), (0.9, 0.01, 2))
    assert not dhm_beta.significant((1.0, 0.2, 2), (0.9, 0.2, 2))
    files = tmp_path / "dhm_beta"
    files.mkdir()
    (files / "points.json").write_text(json.dumps({"points": pts, "facts": {
        "machine": "test", "date": "2026-01-01", "load": [1.0, 1.0, 1.0],
        "command": "python -m jaxhybrid.tools.sweep ...", "normalized_eval": "python ..."}}))
    monkeypatch.setattr(dhm_beta, "FILES", files)
    monkeypatch.setattr(dhm_beta, "PAGE", tmp_path / "dhm_beta.md")
    dhm_beta.render()
    text = (tmp_path / "dhm_beta.md").read_text()
    assert f"{100 * acc[0.0][0]:.1f} %" in text and (files / "fgsm.png").exists()
    assert "under the original's OOD protocol" not in text      # no own evaluation: no table
    # the original's protocol: its table, and claim 2 counted over the β > 0 cells
    for p in pts:
        p["auroc_own"] = {s: {k: 0.9 for k in dhm_beta.SCORES} for s in dhm_beta.SETS}
        if p["beta"] == 1.0:
            p["auroc_own"]["mnist"]["elbo"] = 0.3                  # below chance at β = 1
    assert "range over 0.300–0.900, 1 of 8 below chance: the protocol changes the " \
           "conclusion" in dhm_beta.own_protocol_sentence(pts)
    assert "of 8 (score, β > 0) cells" in dhm_beta.claims(pts)
    table = dhm_beta.ood_table(pts, "auroc_own")
    assert "| mnist | elbo | 0.900 ± 0.000 | 0.900 ± 0.000 | 0.300 ± 0.000 |" in table


def test_gffn_page_renders_and_reads_the_curves(tmp_path, monkeypatch):
    def run(lam, b):
        val = [{"epoch": e, "accuracy": 0.9, "nll": 0.3 - 0.005 * e + (0.004 * e * e if lam == 0
                                                                      else 0)} for e in range(1, 41)]
        test = [{"step": e * 10, "epoch": e, "accuracy": 0.95 + 0.001 * lam, "nll": 0.2,
                 "ece": 0.01 + (0.001 * e if lam == 0 else 0.0), "overconfidence": 0.01,
                 "ood_set": "x", "auroc_max_softmax": 0.9, "auroc_log_px": 0.8}
                for e in range(4, 41, 4)]
        return {"validation": val, "test": test, "best_step": 120, "best": test[2],
                "last": test[-1], "train_minutes": 1.0}
    curves = {ds: {str(b): {str(lam): run(lam, b) for lam in (0, 1)}
                   for b in gffn_train_longer.BATCHES} for ds in gffn_train_longer.DATASETS}
    files = tmp_path / "g"
    files.mkdir()
    (files / "curves.json").write_text(json.dumps({"curves": curves, "facts": {
        "machine": "test", "date": "2026-01-01", "load": [1, 1, 1], "commands": ["a"]}}))
    monkeypatch.setattr(gffn_train_longer, "FILES", files)
    monkeypatch.setattr(gffn_train_longer, "PAGE", tmp_path / "g.md")
    gffn_train_longer.render()
    text = (tmp_path / "g.md").read_text()
    n = len(gffn_train_longer.DATASETS) * len(gffn_train_longer.BATCHES)
    assert f"more than 10 % above its minimum in {n} of {n} runs; the GFFN's in 0 of {n}" in text
    assert f"GFFN ahead in {n} of {n}" in text           # lower ECE at the end, by construction
    assert all((files / f"{ds}.png").exists() for ds in gffn_train_longer.DATASETS)


# -- every committed page, re-rendered with --page from the committed files only ---------------
def _copy_inputs(tmp_path, folder: str, names) -> Path:
    """The page's committed input files, copied into tmp_path/<folder>/."""
    files = tmp_path / folder
    files.mkdir()
    for name in names:
        shutil.copy(os.path.join(RESULTS, folder, name), files / name)
    return files


def _page_via_main(module, folder, names, tmp_path, monkeypatch) -> Path:
    files = _copy_inputs(tmp_path, folder, names)
    monkeypatch.setattr(module, "FILES", files)
    monkeypatch.setattr(module, "PAGE", tmp_path / f"{folder}.md")
    module.main(["--page"])
    return tmp_path / f"{folder}.md"


def _render_hvae(tmp_path, monkeypatch) -> Path:
    _copy_inputs(tmp_path, "hvae", ["collected.json"])
    hvae_results.main(["--page", "--out", str(tmp_path / "hvae.md")])
    return tmp_path / "hvae.md"


def _render_batch_study(tmp_path, monkeypatch) -> Path:
    """The README with its generated part emptied, then re-rendered in place."""
    text = Path(RESULTS, "README.md").read_text()
    head, rest = text.split(batch_study.BEGIN + "\n")
    marked, tail = rest.split(batch_study.END + "\n")
    assert "| batch |" in marked                                 # the tables are the marked part
    stale = f"{head}{batch_study.BEGIN}\n(stale)\n{batch_study.END}\n{tail}"
    (tmp_path / "README.md").write_text(stale)
    monkeypatch.setattr(batch_study, "PAGE", tmp_path / "README.md")
    batch_study.main(["--page"])
    return tmp_path / "README.md"


RENDERERS = {
    "hvae.md": _render_hvae,
    "dhm_beta.md": lambda t, m: _page_via_main(dhm_beta, "dhm_beta", ["points.json"], t, m),
    "gffn_train_longer.md": lambda t, m: _page_via_main(
        gffn_train_longer, "gffn_train_longer", ["curves.json"], t, m),
    "hvae_fashion_mnist.md": lambda t, m: _page_via_main(
        hfm, "hvae_fashion_mnist", ["scores.npz", "run.json"], t, m),
    "README.md": _render_batch_study,
}


@pytest.mark.parametrize("page", sorted(RENDERERS))
def test_committed_page_re_renders_byte_for_byte(page, tmp_path, monkeypatch):
    rendered = RENDERERS[page](tmp_path, monkeypatch)
    assert rendered.read_bytes() == Path(RESULTS, page).read_bytes()


def test_every_results_page_has_a_renderer():
    pages = {p.name for p in Path(RESULTS).glob("*.md")}
    assert pages == set(RENDERERS)


def _absolute_paths(text: str) -> list[str]:
    """Tokens like /work/shared/data/mnist.npz: a slash after a separator, two parts or more
    (not the /std of "(x − mean)/std")."""
    return re.findall(r"(?:^|[\s=:,`'\"(\[])(/[\w.-]+(?:/[\w.-]+)+)", text, re.M)


INPUTS = ("hvae/collected.json", "dhm_beta/points.json", "gffn_train_longer/curves.json",
          "hvae_fashion_mnist/run.json", "digits/aggregate.csv", "mnist/aggregate.csv")


@pytest.mark.parametrize("name", [*INPUTS, *sorted(RENDERERS)])
def test_pages_and_their_inputs_hold_no_absolute_path(name):
    """Paths relative to the repository, or the data files as the configs name them."""
    assert _absolute_paths(Path(RESULTS, name).read_text()) == []


def test_collected_commands_name_the_data_files_as_the_configs_do():
    """What collect writes: the run directories relative to the repository (nothing is
    created there), the data files as $MNIST_NPZ / $FASHION_MNIST_NPZ."""
    from jaxhybrid.config_defaults import FASHION_MNIST_NPZ, MNIST_NPZ
    runs = Path(REPO, "runs", "not_created")
    cmds = [hvae_results.portable(hvae_results.shown(c))
            for c in gffn_train_longer.sweep_commands(runs)]
    cmds.append(hvae_results.portable(hvae_results.shown(hfm.eval_command(
        runs, "best", 1, 1, 0))))
    text = "\n".join(cmds)
    assert "npz:$FASHION_MNIST_NPZ" in text and "npz:$MNIST_NPZ" in text
    assert MNIST_NPZ not in text and FASHION_MNIST_NPZ not in text
    assert _absolute_paths(text) == []


def _hvae_run(rng) -> dict:
    """What hvae_results.load returns for a small synthetic run (two OOD sets)."""
    hr = hvae_results
    scores = {f"{n}/{k}": rng.normal(-100 - 20 * i, 5, 60 if n == "test" else 30)
              for i, n in enumerate(("test", "digits", "constant")) for k in hr.SCORES}
    sets = {n: {"description": f"the {n} set", "num_examples": 30, "scores": {
        k: hr.ood_metrics(scores[f"test/{k}"], scores[f"{n}/{k}"]) for k in hr.SCORES}}
        for n in ("constant", "digits")}                     # metrics.json sorts the sets
    model = {"config_stochastic": [{"block": "GaussianDense", "latent_features": 4}],
             "config_deterministic": [[{"out_channels": 4, "kernel_size": 3, "stride": 1}]],
             "iwae_samples": 2}
    objective = {"warmup_epochs": 1.0, "free_nats": 2.0, "free_nats_mode": "per_element",
                 "free_nats_constant_epochs": 1, "free_nats_cooldown_epochs": 1}
    return {"info": {"command": "python -m jaxhybrid.main ...", "seconds": 90.0,
                     "load_before": 1.04, "load_after": 2.0, "samples": 4, "max_examples": 30,
                     "machine": "test", "date": "2026-01-01"},
            "eval_dir": Path(REPO, "runs", "h", "eval", "7"), "step": 7, "scores": scores,
            "metrics": {"checkpoint": "best (step 7)", "step": 7, "ood": {
                "in_distribution": {"split": "test", "num_examples": 60}, "sets": sets}},
            "records": [{"kind": "train", "step": 7, "time": 120.0, "examples_per_sec": 321.4,
                         "active_z1": 3.0}, {"kind": "validation", "step": 7, "val_elbo": -99.123}],
            "config": {"model": model, "objective": objective, "num_steps": 0, "num_epochs": 3.0,
                       "batch_size": 8, "optimizer": {"name": "adam", "learning_rate": 1e-3}},
            "final": {"log_likelihood": -101.0, "evaluated_step": 7}, "params": 1234,
            "data": {"npz_path": os.path.join(REPO, "..", "shared", "data", "mnist.npz"),
                     "num_train": 50, "num_validation": 5, "num_test": 60}}


def test_hvae_collect_keeps_what_the_page_prints(tmp_path, monkeypatch):
    """A run's files -> collected.json -> the page: the same page as from the numbers at
    full precision, with no absolute path."""
    monkeypatch.setattr(hvae_results, "latent_sizes", lambda model: [4])
    r = _hvae_run(np.random.default_rng(3))
    table = hvae_results.ood_table(r)
    c = hvae_results.collect(r, table, "python -m jaxhybrid.main --workdir=runs/h")
    hvae_results.write_collected(c, tmp_path / "collected.json")
    c = json.loads((tmp_path / "collected.json").read_text())
    assert list(c["ood"]) == ["digits", "constant"]               # OOD_SETS order
    text = hvae_results.page(c, "hvae")
    for name in ("digits", "constant"):
        m = table[name]["-LLR>1"]
        assert f"| {name} | LLR>1 | {m['auroc']:.3f} | {m['aupr_out']:.3f} | " \
               f"{m['aupr_out_balanced']:.3f} | {m['fpr80_ood']:.3f} |" in text
    test_bpd = hvae_results.bpd(r["scores"]["test/L"])
    assert f"| MNIST test | 60 | {test_bpd:.4f} |" in text
    assert f"Test L = {np.mean(r['scores']['test/L']):.2f} nats with S = 4" in text
    assert "`../shared/data/mnist.npz`" in text and "`runs/h/eval/7/report.md`" in text
    assert "validation ELBO -99.12 nats" in text and "median 321 examples/s" in text
    assert "1.5 min wall clock" in text and "2.0 min of training" in text
    assert _absolute_paths(json.dumps(c)) == [] and _absolute_paths(text) == []
