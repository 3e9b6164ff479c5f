"""``load_run(...).predict(...)`` (jaxhybrid.run_api) gives the evaluators' numbers, and the
examples in examples/ run on tiny runs of each family.

One tiny run per family is trained through the CLI on one device with the ``predictions``
evaluator; the run is then loaded here on 8 devices (a notebook with another device count
than the job), and ``predict`` on the test split must equal the arrays of predictions.npz
and the accuracy of metrics.json, for uint8 and float pixels alike.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxhybrid import load_run
from tests.helpers import REPO, run_cli
from tests.test_hvae import TINY

EVALS = ["--config.evals.ood_sets=uniform_noise", "--config.num_steps=4",
         "--config.checkpoint_every=2", "--config.log_every=2"]
FAMILIES = {
    "classifier": ["--config=configs/gffn.py:smoke", "--config.model.width=4",
                   "--config.model.hidden=(16,)",
                   "--config.evals.names=classification,predictions"],
    "dhm": ["--config=configs/dhm.py:digits", "--config.model.width=2",
            "--config.model.latent=4", "--config.model.iwae_samples=2",
            "--config.evals.names=classification,ood,predictions"],
    "hvae": ["--config=configs/hvae.py:digits",
             "--config.model.config_deterministic="
             + str(tuple((dict(b, out_channels=4),) for (b,) in TINY["config_deterministic"])),
             f"--config.model.config_stochastic={TINY['config_stochastic']}",
             "--config.model.iwae_samples=2", "--config.model.score_chunk=2",
             "--config.evals.names=likelihood,ood,predictions"],
}
EXAMPLES = {"classifier": "classifier_scores.py", "dhm": "dhm_scores.py",
            "hvae": "hvae_ood.py"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for family, args in FAMILIES.items():
        wd = tmp_path_factory.mktemp(family) / "run"
        r = run_cli([*args, *EVALS, f"--workdir={wd}"], devices=1)
        assert r.returncode == 0, r.stderr[-3000:]
        out[family] = str(wd)
    return out


def _evaluation(wd):
    final = json.load(open(os.path.join(wd, "final_metrics.json")))
    d = os.path.join(wd, final["eval_dir"])
    with np.load(os.path.join(d, "predictions.npz")) as f:
        arrays = {k: f[k] for k in f.files}
    return final, json.load(open(os.path.join(d, "metrics.json"))), arrays


@pytest.mark.parametrize("family", list(FAMILIES))
def test_predict_equals_the_evaluators(runs, family):
    wd = runs[family]
    final, metrics, saved = _evaluation(wd)
    run = load_run(wd)                         # best, as the final evaluation
    assert (run.family, run.step) == (family, final["evaluated_step"])
    assert run.config.family == family and run.checkpoint.startswith("best")
    test = run.experiment.splits.test
    images = test.get(np.arange(len(test)))["image"]
    out = run.predict(images)
    names = [k[len("test/"):] for k in saved if k.startswith("test/") and k != "test/label"
             and not k.endswith(("/prediction", "/epsilon"))]     # the attacks: not predict's
    assert names
    scores = {n[len("ood/"):] for n in names if n.startswith("ood/")}
    for name in names:
        head, _, tail = name.partition("/")
        short = name if head == "bound" and tail in scores else name.split("/", 1)[-1]
        np.testing.assert_allclose(out[short], saved[f"test/{name}"], rtol=2e-5, atol=2e-5,
                                   err_msg=name)
    if "logits" in out:
        assert np.array_equal(out["probs"], out["probabilities"])
        acc = float(np.mean(out["probs"].argmax(1) == test.labels))
        assert acc == pytest.approx(metrics["classification"]["accuracy"], abs=1e-12)
    else:
        assert "L>1" in out and out["L>1"].shape == (len(test),)
    as_float = run.predict(images.astype(np.float64) / 255.0)     # float pixels in [0, 1]
    for name in out:
        np.testing.assert_allclose(as_float[name], out[name], rtol=1e-4, atol=1e-4)


def test_predict_any_n_and_bad_input(runs):
    run = load_run(runs["classifier"], checkpoint="latest")
    test = run.experiment.splits.test
    images = test.get(np.arange(len(test)))["image"]
    full = run.predict(images)
    for n in (1, 7, 513):                       # fewer than the devices; more than a batch
        part = run.predict(images[:n])
        np.testing.assert_allclose(part["logits"], full["logits"][:n], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(run.predict(images[:5, ..., 0])["logits"],      # [N, H, W]
                               full["logits"][:5], rtol=1e-6, atol=1e-6)
    fewer = load_run(runs["classifier"], checkpoint="latest", num_devices=4,
                     eval_batch_size=20)                 # a machine with other devices
    assert fewer.experiment.mesh.devices.size == 4 and fewer.config.eval_batch_size == 20
    np.testing.assert_allclose(fewer.predict(images[:45])["logits"], full["logits"][:45],
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"images must be \[N, 8, 8, 1\]"):
        run.predict(np.zeros((3, 28, 28, 1), np.uint8))
    with pytest.raises(ValueError, match=r"float pixels must lie in \[0, 1\]"):
        run.predict(images[:3] * 1.0)
    with pytest.raises(FileNotFoundError, match="No checkpoint for step 12345"):
        load_run(runs["classifier"], checkpoint=12345)


@pytest.mark.slow_smoke
@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_examples_run(runs, family, tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", MPLBACKEND="Agg",
               XLA_FLAGS="--xla_force_host_platform_device_count=8")
    r = subprocess.run([sys.executable, os.path.join(REPO, "examples", EXAMPLES[family]),
                        f"--workdir={runs[family]}", f"--out={tmp_path}"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "AUROC test vs uniform noise" in r.stdout, r.stdout
    assert [f for f in os.listdir(tmp_path) if f.endswith(".png")], r.stdout
