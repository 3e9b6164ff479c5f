"""The TFDS path end to end: prepare a tiny dataset offline in the TFDS format, train
one epoch from it with configs/gffn.py:mnist, then evaluate it in a fresh process."""
import json
import logging
import math
import os

import numpy as np

from configs import gffn
from jaxhybrid.checkpointing import Checkpointer
from jaxhybrid.data import loading, preprocess
from jaxhybrid.data.tfds_prepare import prepare_from_arrays
from jaxhybrid.train import train_and_evaluate
from tests.helpers import apply_overrides, run_cli

NUM_TRAIN, NUM_TEST, BATCH = 160, 64, 32
VALIDATION = 0.1  # a fraction: an int count would arrive as a float (see the report)

# The same overrides in the config and on the command line of the eval process.
OVERRIDES = {
    "data.validation_size": VALIDATION,
    "model.width": 4,
    "model.hidden": (16,),
    "batch_size": BATCH,
    "num_epochs": 1.0,
    "data.frame": 32,
    "evals.names": "classification,calibration",
    "evals.ood_sets": "uniform_noise",
}


def _mnist_like_digits(n: int, split: str):
    """sklearn digits 8x8 resized (bilinear) to uint8 28x28x1, first n of `split`."""
    images, labels = loading.digits_arrays()[split]
    x = preprocess.resize_images(preprocess.to_float(images[:n]), (28, 28))
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8), labels[:n]


def _config(data_dir: str):
    c = gffn.get_config("mnist")
    c.data.data_dir = data_dir
    return apply_overrides(c, OVERRIDES)


def test_prepare_tfds_train_one_epoch_and_eval_in_fresh_process(tmp_path, caplog):
    data_dir = str(tmp_path / "tfds")
    version_dir = prepare_from_arrays(
        "mnist", data_dir,
        {"train": _mnist_like_digits(NUM_TRAIN, "train"),
         "test": _mnist_like_digits(NUM_TEST, "test")}, num_classes=10)
    assert os.path.isdir(version_dir) and version_dir.startswith(data_dir)

    workdir = str(tmp_path / "run")
    config = _config(data_dir)
    with caplog.at_level(logging.INFO, logger="jaxhybrid"):
        m = train_and_evaluate(config, workdir)

    num_train = NUM_TRAIN - round(VALIDATION * NUM_TRAIN)
    steps = math.ceil(num_train / BATCH)
    assert m["step"] == steps == 5, m
    for key in ("accuracy", "nll", "brier", "ece", "mce", "rms_ce"):
        assert np.isfinite(m[key]), (key, m)
    assert Checkpointer(workdir, read_only=True).latest_step() == steps

    # the run says where its data came from: the TFDS source, in the log and the report
    assert "data=tfds:mnist" in caplog.text
    assert f"train/val/test={num_train}/{NUM_TRAIN - num_train}/{NUM_TEST}" in caplog.text
    final = json.load(open(os.path.join(workdir, "final_metrics.json")))
    metrics_path = os.path.join(workdir, final["eval_dir"], "metrics.json")
    report = open(os.path.join(os.path.dirname(metrics_path), "report.md")).read()
    assert f"**Data:** tfds:mnist: train {num_train}" in report
    assert json.load(open(os.path.join(workdir, "config.json")))["data"]["source"] == "tfds"
    train_time = json.load(open(metrics_path))
    assert train_time["classification"]["accuracy"] == m["accuracy"]
    assert train_time["classification"]["num_examples"] == NUM_TEST

    # --mode=eval in a fresh process restores the checkpoint and reproduces it exactly
    # (--overwrite: the same settings would otherwise be found evaluated, not recomputed)
    flags = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
    r = run_cli(["--config=configs/gffn.py:mnist", f"--workdir={workdir}", "--mode=eval",
                 "--overwrite", f"--config.data.data_dir={data_dir}", *flags])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    evaluated = json.load(open(metrics_path))
    assert evaluated["checkpoint"].startswith(f"best (step {steps}")  # the default: evals.checkpoint
    assert evaluated["classification"]["accuracy"] == m["accuracy"]
    assert evaluated["classification"]["nll"] == train_time["classification"]["nll"]
    assert evaluated["calibration"] == train_time["calibration"]
