"""The evaluation suite on a trained digits model: device-count invariance, eval mode in
a fresh process, checkpoint errors, report and figures, robustness curve."""
import json
import os

import numpy as np
import pytest

from jaxhybrid.checkpointing import CheckpointNotFoundError
from jaxhybrid.evaluate import evaluate, run_suite
from jaxhybrid.evaluators.adversarial import attack_accuracy
from jaxhybrid.experiment import build_experiment
from jaxhybrid.families.base import variables_of
from jaxhybrid.predictor import Predictor
from jaxhybrid.train import train_and_evaluate
from tests.helpers import restore_params, run_cli, tiny_config

EVALS = "classification,calibration,temperature,ood,adversarial"


def _config(**kw):
    c = tiny_config(num_epochs=8.0, **kw)
    c.model.width = 8
    c.model.hidden = (32,)
    c.optimizer.learning_rate = 3e-3
    c.eval_batch_size = 64            # 288 test images: not a multiple of 64 -> padding + mask
    c.evals.names = EVALS
    c.evals.ood_sets = "heldout,uniform_noise,constant,inverted,digits"
    c.evals.adversarial_max_examples = 0
    return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("evalrun"))
    c = _config()
    final = train_and_evaluate(c, wd)
    return c, wd, final


def _load(path):
    with open(path) as f:
        return json.load(f)


def test_report_and_figures_written(trained):
    c, wd, final = trained
    out = os.path.join(wd, final["eval_dir"])   # the directory final_metrics.json names
    m = _load(os.path.join(out, "metrics.json"))
    assert set(m) >= {"classification", "calibration", "temperature", "ood", "adversarial"}
    report = open(os.path.join(out, "report.md")).read()
    for needle in ("Calibration", "ECE", "AUROC", "FPR@95", "ε", "heldout", "held-out classes",
                   "equal-width bins", "per-bin statistics", "clipped to [0.0, 1.0]"):
        assert needle in report, needle
    # every OOD score and the logits are defined beside their numbers
    defs = m["ood"]["definitions"]
    assert set(defs) == {"max_softmax", "log_px", "max_logit"}
    assert defs["log_px"].startswith("log Z(x) = log Σ_k exp f_k(x)")
    for score, text in defs.items():
        assert f"### {score}\n\n{score} = {text}" in report, score
    assert m["classification"]["definitions"]["logits"] in report
    assert "binarised" not in report and "bits/dim" not in report
    figs = [f for f in os.listdir(out) if f.endswith(".png")]
    assert {"reliability.png", "robustness.png", "ood_roc_max_softmax.png",
            "ood_hist_log_px.png"} <= set(figs)
    for f in figs:
        data = open(os.path.join(out, f), "rb").read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
        assert f"({f})" in report    # embedded in the report
    assert m["classification"]["num_examples"] == 288
    assert m["ood"]["sets"]["heldout"]["num_examples"] == 71
    # per-example scores, saved for analysis: the AUROCs recompute from them (sklearn)
    from sklearn.metrics import roc_auc_score
    scores = np.load(os.path.join(out, m["ood"]["per_example_scores"]))
    assert scores["test/max_softmax"].shape == (288,) and scores["heldout/log_px"].shape == (71,)
    for name in ("max_softmax", "log_px"):
        s_in, s_out = scores[f"test/{name}"], scores[f"heldout/{name}"]
        auroc = roc_auc_score(np.r_[np.ones(len(s_in)), np.zeros(len(s_out))], np.r_[s_in, s_out])
        assert abs(auroc - m["ood"]["sets"]["heldout"]["scores"][name]["auroc"]) < 1e-12


def test_robustness_curve_is_non_increasing(trained):
    _, wd, final = trained
    m = _load(os.path.join(wd, final["eval_dir"], "metrics.json"))
    acc = m["adversarial"]["accuracy"]
    assert m["adversarial"]["epsilons"][0] == 0
    assert acc[0] == pytest.approx(m["classification"]["accuracy"])   # ε = 0 is clean accuracy
    assert acc[0] > 0.8
    assert all(a >= b for a, b in zip(acc, acc[1:])), acc
    assert acc[-1] < acc[0]


def test_eight_devices_equal_one_device(trained):
    c, wd, final = trained
    _, state = restore_params(c, wd)
    results = []
    for n in (1, 8):
        cn = _config(num_devices=n)
        exp = build_experiment(cn)
        results.append(run_suite(exp, variables_of(state), 10_000 + n, wd,
                                 predictor=Predictor(exp)))
    one, eight = results
    keys = [k for k in one if isinstance(one[k], float)]
    assert any(k.startswith("ood/") for k in keys) and any(k.startswith("fgsm") for k in keys)
    for k in keys:
        # Per-device batch shapes differ (64 vs 8 rows), so XLA may sum in another order:
        # logits agree to ~1e-6, which can flip a few near-tied pairs of saturated
        # max-softmax scores (≈1.0) in an AUROC over ~500k pairs.
        tol = 2e-4 if k.startswith("ood/") else 1e-6
        assert one[k] == pytest.approx(eight[k], rel=1e-5, abs=tol), k
    exps = [build_experiment(_config(num_devices=n)) for n in (1, 8)]
    logits = [Predictor(e).outputs(variables_of(state), e.splits.test)["logits"] for e in exps]
    assert logits[0].shape == (288, 8)
    np.testing.assert_allclose(logits[0], logits[1], rtol=1e-5, atol=1e-5)


def test_eval_mode_in_fresh_process_reproduces_training_accuracy(trained):
    """The final evaluation after training reports on the selected (best) checkpoint; the
    CLI's eval mode restores the same one by default, in a fresh process on 2 devices."""
    c, wd, final = trained
    assert final["checkpoint"].startswith(("best", "latest"))
    assert final["evaluated_step"] <= final["step"]
    r = run_cli(["--config=configs/gffn.py:smoke", f"--workdir={wd}", "--mode=eval",
                 "--config.num_epochs=8", "--config.model.width=8",
                 "--config.model.hidden=(32,)", "--config.optimizer.learning_rate=3e-3",
                 "--config.eval_batch_size=64", "--config.evals.names=classification"],
                devices=2)
    assert r.returncode == 0, r.stderr[-3000:]
    report = [l.split(": ", 1)[1] for l in r.stdout.splitlines() if l.startswith("evaluated ")]
    out = os.path.dirname(report[0])
    assert out.startswith(os.path.join(wd, "eval", str(final["evaluated_step"]), ""))
    assert out != os.path.join(wd, final["eval_dir"])               # other settings: own dir
    m = _load(os.path.join(out, "metrics.json"))
    assert m["classification"]["accuracy"] == final["accuracy"]      # exactly
    assert m["checkpoint"] == final["checkpoint"] and m["checkpoint"].startswith("best")


def test_missing_and_mismatched_checkpoints(trained, tmp_path):
    c, wd, final = trained
    with pytest.raises(CheckpointNotFoundError, match="No checkpoint directory"):
        evaluate(c, str(tmp_path / "empty"))
    with pytest.raises(CheckpointNotFoundError, match=r"step 999999 .* available steps"):
        evaluate(c, wd, checkpoint=999999)
    r = run_cli(["--config=configs/gffn.py:smoke", f"--workdir={wd}", "--mode=eval",
                 "--config.model.width=16", "--config.model.hidden=(32,)"], devices=1)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "model.width: saved 8, given 16" in r.stderr     # the saved config describes it


def test_pgd_random_starts_do_not_depend_on_the_device_count(trained):
    """PGD's random starts are keyed per example (evaluation key × example id), not per
    device: accuracies under PGD with a random start agree on 1 and 8 devices."""
    c, wd, final = trained
    _, state = restore_params(c, wd)
    accs = []   # 128 examples: one flip would change an accuracy by 1/128
    for n in (1, 8):
        cn = _config(num_devices=n)
        cn.evals.names = "adversarial"
        cn.evals.attack, cn.evals.pgd_steps, cn.evals.pgd_random_start = "pgd", 3, True
        cn.evals.epsilons = "0,0.03,0.1"
        cn.evals.adversarial_max_examples = 128
        exp = build_experiment(cn)
        m = run_suite(exp, variables_of(state), 20_000 + n, wd, predictor=Predictor(exp))
        accs.append([m[attack_accuracy("pgd", e)] for e in (0.0, 0.03, 0.1)])
    assert accs[0][2] < accs[0][0]
    np.testing.assert_array_equal(accs[0], accs[1])


def test_conventions_and_closing_describe_only_the_evaluators_that_ran():
    """No calibration bins, ε or per-bin statistics for evaluators that were skipped or
    not asked for; the attack's units and clipping as its section recorded them."""
    from jaxhybrid.evaluators import Results, Section
    from jaxhybrid.evaluators.report import closing, conventions
    config = tiny_config()
    sections = [Section("calibration", {"skipped": "needs logits"}),
                Section("likelihood", {"bits_per_dim": 0.5})]
    results = Results(sections, {s.name: s.metrics for s in sections}, {})
    lines = conventions(config, results)
    assert len(lines) == 1 and lines[0].startswith("bits/dim = −log p(x) bound / (D·ln 2)")
    assert closing(results) == "All numbers are in `metrics.json` beside this file."
    adv = {"attack": "fgsm", "epsilon_units": "normalised input units", "clip": None}
    sections = [Section("classification", {}), Section("calibration", {}),
                Section("adversarial", adv), Section("ood", {})]
    results = Results(sections, {s.name: s.metrics for s in sections}, {})
    text = "; ".join(conventions(config, results))
    assert "15 equal-width bins (lo, hi], confidence 1.0 in the last bin" in text
    assert "FGSM ε in normalised input units, no clipping" in text
    assert "FPR@95 with in-distribution positive, FPR@80 with OOD positive" in text
    assert "temperature" not in text and "bits/dim" not in text
    assert "per-bin statistics" in closing(results) and "ood_scores.npz" in closing(results)
