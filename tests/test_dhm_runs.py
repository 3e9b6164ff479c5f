"""The DHM through the CLI: a digits run to a quality bar (and its bf16 twin) and the
β sweep of configs/dhm.py with the aggregate; the unit tests are in tests/test_dhm.py."""
import json

import numpy as np
import pytest

from tests.helpers import run_cli


# The digits variant as documented (width 8, 15 epochs of 16 steps): about 40 s on 2 cores.
# 97.9 % float32, 99.0 % bfloat16 (configs/dhm.py). On 288 test examples one run's binomial
# standard error is 0.8 points, so two equally good runs differ by 1 point (3 examples)
# often: the bf16 bound is 1.5 points (4 examples).
DIGITS = ["--config=configs/dhm.py:digits", "--config.log_every=16",
          "--config.evals.ood_sets=heldout,uniform_noise",
          "--config.evals.adversarial_max_examples=64"]


def _digits_run(workdir, *extra):
    r = run_cli(DIGITS + [f"--workdir={workdir}", *extra], devices=1)  # one device: the run, not sharding, is under test
    assert r.returncode == 0, r.stderr[-3000:]
    final = json.load(open(workdir / "final_metrics.json"))
    return final, json.load(open(workdir / final["eval_dir"] / "metrics.json"))


@pytest.fixture(scope="module")
def fp32_digits(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("dhm_digits_fp32")
    return (workdir, *_digits_run(workdir, "--config.evals.names=classification,calibration,"
                                           "ood,adversarial,likelihood"))


@pytest.mark.training_run
def test_digits_reaches_90_percent_improves_the_elbo_and_evaluates_the_best_checkpoint(
        fp32_digits):
    tmp_path, final, m = fp32_digits
    assert final["checkpoint"].startswith("best (step")        # evals.checkpoint = best
    assert m["classification"]["accuracy"] >= 0.90, m["classification"]
    assert 0.0 <= m["calibration"]["equal_width"]["ece"] <= 0.2
    scores = m["ood"]["sets"]["uniform_noise"]["scores"]
    assert {"max_softmax", "log_z", "neg_loss_sampled", "neg_loss_at_mean", "elbo"} <= set(scores)
    assert all(0.0 <= s["auroc"] <= 1.0 for s in scores.values())
    fgsm = m["adversarial"]["accuracy"]
    assert m["adversarial"]["attack"] == "fgsm" and len(fgsm) == 8, m["adversarial"]
    assert np.isfinite(m["likelihood"]["log_likelihood_nats"]) and m["likelihood"]["dims"] == 64
    train = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    elbo = [r["elbo"] for r in train if r["kind"] == "train"]    # nats, one sample per example
    assert len(elbo) == 15 and elbo[-1] > elbo[0] + 5.0, elbo
    assert m["likelihood"]["log_likelihood_nats"] > elbo[0]      # IWAE-8 of the best checkpoint


@pytest.mark.training_run
def test_bf16_digits_run_is_within_sampling_error_of_fp32(tmp_path, fp32_digits):
    """bf16 and fp32 train two different trajectories: on 288 test examples their accuracies
    differ by chance by about sqrt(2·p(1−p)/n), p the pooled accuracy of the two (the
    two-proportion test's standard error; ≈ 1.1 points at p = 0.98). Measured: 1.04 points
    (one seed), 1.74 (after the dropout stream was renamed), both on an Intel Xeon; 2.08
    on an AMD EPYC (XLA:CPU's code, and so the bf16 trajectory, depends on the CPU). A bf16
    defect (e.g. a loss or BatchNorm statistic in bf16) costs far more; the bound is 3 of
    those standard errors, at least 1.5 points. (It used the fp32 accuracy alone for p,
    which understates the error when the two differ: 2.076 points here.)"""
    _, m = _digits_run(tmp_path, "--config.compute_dtype=bfloat16",
                       "--config.evals.names=classification")
    ref = fp32_digits[2]["classification"]["accuracy"]
    n = m["classification"]["num_examples"]
    p = (ref + m["classification"]["accuracy"]) / 2
    bound = max(0.015, 3 * np.sqrt(2 * p * (1 - p) / n))
    assert abs(m["classification"]["accuracy"] - ref) <= bound, (m["classification"], ref, bound)


@pytest.mark.slow_smoke
def test_beta_sweep_runs_and_aggregates_the_original_plots(tmp_path):
    """configs/dhm.py's get_sweep through jaxhybrid.tools.sweep (2 of its βs, tiny, 2 steps
    each) and jaxhybrid.tools.aggregate: one row per β and its plots against β; the runs use
    the original's OOD normalisation and ε space (evals.ood_normalization, evals.epsilon_space)."""
    import subprocess
    import sys

    from jaxhybrid.tools import aggregate
    from tests.helpers import REPO
    root = tmp_path / "beta"
    r = subprocess.run(
        [sys.executable, "-m", "jaxhybrid.tools.sweep", "--config=configs/dhm.py:digits",
         f"--workdir={root}", "--sweep", "objective.beta=0.1,100", "--config.num_steps=2",
         "--config.model.width=2", "--config.model.latent=4", "--config.model.iwae_samples=2",
         "--config.evals.names=classification,calibration,ood,adversarial",
         "--config.evals.ood_sets=heldout", "--config.evals.ood_normalization=own",
         "--config.evals.epsilon_space=normalized",
         "--config.evals.adversarial_max_examples=16", "--config.model.init=pytorch"],
        cwd=REPO, capture_output=True,
        text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = aggregate.aggregate(str(root))
    assert [row["group"] for row in rows] == [{"objective.beta": 0.1}, {"objective.beta": 100.0}]
    for plot in ("accuracy_vs_beta.png", "ece_vs_beta.png", "ood_auroc_vs_beta.png"):
        assert (root / "aggregate" / plot).stat().st_size > 1000, plot
    table = (root / "aggregate" / "aggregate.csv").read_text()
    assert "ood/heldout/elbo/auroc" in table and "ood/heldout/max_softmax/auroc" in table
    # the original's OOD protocol and ε units, as asked and recorded
    m = json.load(open(sorted(root.glob("**/eval/*/*/metrics.json"))[0]))
    heldout = m["ood"]["sets"]["heldout"]
    assert heldout["ood_normalization"] == "own" and len(heldout["own_std"]) == 1
    assert {"neg_loss_sampled", "neg_loss_at_mean"} <= set(heldout["scores"])
    assert m["adversarial"]["epsilon_space"] == "normalized" and m["adversarial"]["clip"] is None
    saved = json.load(open(sorted(root.glob("*/config.json"))[0]))
    assert saved["model"]["init"] == "pytorch"             # PyTorch's initialisation, recorded
