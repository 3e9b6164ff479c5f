"""The ``predictions`` evaluator: numbers recomputed from predictions.npz equal the
report's (accuracy, ECE, FGSM accuracy at each ε, OOD scores, likelihoods), and an
unsupervised family's file holds its likelihood and OOD arrays and no logits."""
from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest

from jaxhybrid.evaluators.calibration import calibration_metrics
from jaxhybrid.train import train_and_evaluate
from tests.helpers import REPO, run_cli, tiny_config
from tests.test_tensorboard import assert_tb_matches_jsonl


def _load(eval_dir):
    m = json.load(open(os.path.join(eval_dir, "metrics.json")))
    with np.load(os.path.join(eval_dir, "predictions.npz")) as f:
        arrays = {k: f[k] for k in f.files}
    return m, arrays


def _ece_loop(probs, labels, num_bins):
    """Equal-width top-label ECE, bins (lo, hi] with confidence 1.0 in the last: a plain loop."""
    conf, pred = probs.max(1), probs.argmax(1)
    total = 0.0
    for b in range(num_bins):
        lo, hi = b / num_bins, (b + 1) / num_bins
        inside = (conf > lo) & (conf <= hi) if b else (conf >= 0) & (conf <= hi)
        if inside.any():
            total += inside.sum() / len(conf) * abs(np.mean(pred[inside] == labels[inside])
                                                     - np.mean(conf[inside]))
    return total


def test_classifier_predictions_reproduce_the_report(tmp_path):
    """PGD with per-example random starts here (the same keys as the adversarial
    evaluator's); FGSM in the CLI test."""
    c = tiny_config(num_steps=4, checkpoint_every=4)
    c.evals.names = "classification,calibration,ood,adversarial,predictions"
    c.evals.ood_sets = "heldout,constant"
    c.evals.adversarial_max_examples = 40
    c.evals.attack, c.evals.pgd_steps, c.evals.pgd_random_start = "pgd", 2, True
    final = train_and_evaluate(c, str(tmp_path))
    m, a = _load(os.path.join(tmp_path, final["eval_dir"]))
    assert list(a["sources"]) == ["test", "heldout", "constant"]
    assert set(m["predictions"]["arrays"]) == set(a)              # the schema lists each array
    for k, v in a.items():
        assert m["predictions"]["arrays"][k]["shape"] == list(v.shape)

    probs, labels = a["test/probabilities"], a["test/label"]
    assert probs.dtype == np.float64 and a["test/logits"].dtype == np.float32
    assert np.array_equal(probs.argmax(1), a["test/logits"].argmax(1))
    assert float(np.mean(probs.argmax(1) == labels)) == m["classification"]["accuracy"]
    cal = calibration_metrics(probs, labels, num_bins=c.evals.num_bins)
    assert cal["ece"] == m["calibration"]["equal_width"]["ece"]
    assert abs(_ece_loop(probs, labels, c.evals.num_bins) - cal["ece"]) < 1e-12

    preds, eps = a["test/pgd/prediction"], a["test/pgd/epsilon"]
    assert preds.shape == (40, len(eps)) and list(eps) == m["adversarial"]["epsilons"]
    acc = [float(np.mean(preds[:, i] == labels[:40])) for i in range(len(eps))]
    assert acc == m["adversarial"]["accuracy"]
    assert np.array_equal(preds[:, 0], probs[:40].argmax(1))     # ε = 0: the clean prediction
    assert acc[-1] < acc[0]                                      # the attack does something

    with np.load(os.path.join(tmp_path, final["eval_dir"], "ood_scores.npz")) as ood:
        for source in ("test", "heldout", "constant"):
            for score in ("max_softmax", "log_px", "max_logit"):
                assert np.array_equal(a[f"{source}/ood/{score}"], ood[f"{source}/{score}"])
    assert set(a["heldout/label"]) == {8, 9} and "heldout/pgd/prediction" not in a
    report = open(os.path.join(tmp_path, final["eval_dir"], "report.md")).read()
    assert "## Predictions" in report and "| `test/pgd/prediction` | [40, 6] | int32 |" in report


def _toy_vae_config():
    spec = importlib.util.spec_from_file_location(
        "toy_vae_cfg", os.path.join(REPO, "tests", "configs", "toy_vae.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    c.num_steps, c.checkpoint_every, c.tensorboard = 3, 3, False
    c.model.iwae_samples = 4
    c.evals.names = "likelihood,ood,predictions"
    c.evals.ood_sets = "uniform_noise"
    return c


def test_unsupervised_family_writes_likelihoods_and_ood_scores_and_no_logits(tmp_path):
    final = train_and_evaluate(_toy_vae_config(), str(tmp_path))
    m, a = _load(os.path.join(tmp_path, final["eval_dir"]))
    assert sorted(a) == ["sources", "test/label", "test/log_likelihood", "test/ood/elbo",
                         "uniform_noise/label", "uniform_noise/log_likelihood",
                         "uniform_noise/ood/elbo"]
    ll = a["test/log_likelihood"]
    assert float(np.mean(ll.astype(np.float64))) == m["likelihood"]["log_likelihood_nats"]
    with np.load(os.path.join(tmp_path, final["eval_dir"], "ood_scores.npz")) as ood:
        assert np.array_equal(a["uniform_noise/ood/elbo"], ood["uniform_noise/elbo"])
    assert "Attacked" not in open(os.path.join(tmp_path, final["eval_dir"], "report.md")).read()


@pytest.mark.slow_smoke
def test_cli_predictions_and_tensorboard(tmp_path):
    """One CLI run sets both options: predictions.npz beside metrics.json, and TensorBoard
    event files equal to metrics.jsonl."""
    wd = str(tmp_path / "cli")
    r = run_cli(["--config=configs/gffn.py:smoke", f"--workdir={wd}", "--config.num_steps=3",
                 "--config.model.width=4", "--config.model.hidden=(16,)",
                 "--config.evals.names=classification,adversarial,predictions",
                 "--config.evals.ood_sets=constant", "--config.evals.adversarial_max_examples=8",
                 "--config.tensorboard=True"])
    assert r.returncode == 0, r.stderr[-3000:]
    final = json.load(open(os.path.join(wd, "final_metrics.json")))
    m, a = _load(os.path.join(wd, final["eval_dir"]))
    assert float(np.mean(a["test/probabilities"].argmax(1) == a["test/label"])) == \
        m["classification"]["accuracy"]
    preds, labels = a["test/fgsm/prediction"], a["test/label"]
    assert preds.shape == (8, 6) and "constant/logits" in a
    assert [float(np.mean(preds[:, i] == labels[:8])) for i in range(6)] == \
        m["adversarial"]["accuracy"]
    assert len([f for f in os.listdir(wd) if "tfevents" in f]) == 1
    got = assert_tb_matches_jsonl(wd)
    assert {"train/loss", "validation/val_accuracy", "final/accuracy"} <= set(got)
