"""benchmarks/device_suite.py: the smoke runs every stage on CPU; MFU, peaks, flags, commands.

One smoke run (module fixture, ≈ 50 s on 2 idle cores: the HVAE train + eval subprocesses
beside the six compiled steps) backs the first three tests. Nothing asserted depends on the
clock: the smoke's HVAE trains a step budget (4 steps, no max_train_seconds), and the
subprocess timeouts are safety nets of many minutes (a loaded 2-core machine runs the smoke
several times slower than an idle one).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys

import pytest

from benchmarks import device_suite as ds

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "device_suite.py")


def run_script(args, timeout=1500):
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("device_suite")
    out = tmp / "report" / "suite.md"
    proc = run_script(["--smoke", "--workdir", str(tmp / "work"), "--out", str(out)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"md": out.read_text(), "json": json.loads(out.with_suffix(".json").read_text()),
            "stdout": proc.stdout, "workdir": tmp / "work"}


@pytest.mark.slow_smoke
def test_smoke_table_has_a_row_per_family_and_dtype(smoke):
    rows = ds.parse_step_table(smoke["md"])
    assert sorted((r["family"], r["dtype"]) for r in rows) == sorted(
        (f, d) for f in ds.FAMILIES for d in ds.DTYPES)
    for r in rows:
        median, low, high = map(float, r["step ms median (min–max)"].replace("(", " ")
                                .replace("–", " ").replace(")", " ").split())
        assert 0 < low <= median <= high, r
        assert int(r["batch"]) == 8 and float(r["examples/s"]) > 0 and float(r["GFLOP/step"]) > 0
        assert r["device"] == "cpu" and r["MFU"] == "n/a", r     # no peak for a CPU
    for row in smoke["json"]["steps"]:
        assert row["gflop_per_step"] > 0 and len(row["step_s_all"]) == 2
        assert math.isclose(row["examples_per_s"], 8 / row["step_s"]["median"])


@pytest.mark.slow_smoke
def test_smoke_trained_and_evaluated_the_hvae(smoke):
    hvae = smoke["json"]["hvae"]
    assert hvae["train"]["rc"] == 0 and hvae["eval"]["rc"] == 0
    assert hvae["trained"]["step"] == 4 and hvae["trained"]["stopped"] == "completed"
    assert "--config.num_steps=4" in hvae["train"]["command"]
    assert "max_train_seconds" not in hvae["train"]["command"] + hvae["eval"]["command"]
    assert "--mode=eval --checkpoint=latest" in hvae["eval"]["command"]
    assert "--config.evals.names=likelihood,ood" in hvae["eval"]["command"]
    result = hvae["result"]
    assert os.path.isfile(result["report"]) and result["report"].startswith(str(smoke["workdir"]))
    assert result["in_distribution_examples"] == 64
    assert math.isfinite(result["log_likelihood_nats"]) and result["bits_per_dim"] > 0
    assert result["ood_auroc"], "no OOD set was scored"
    for scores in result["ood_auroc"].values():
        assert all(0 <= scores[s] <= 1 for s in ds.OOD_SCORES), scores
    assert "## HVAE training and evaluation" in smoke["md"] and "AUROC -LLR>1" in smoke["md"]


@pytest.mark.slow_smoke
def test_smoke_recorded_the_device(smoke):
    import jax
    record = smoke["json"]["device"]
    assert record["jax"]["jax"] == jax.__version__ and record["jax"]["jaxlib"]
    assert record["jax"]["device_kind"] == "cpu" and record["jax"]["devices"]
    assert record["jax"]["peak_tflops"] == {"float32": None, "bfloat16": None}
    assert record["host"]["cpu_model"] and "load average" in record["host"]["uptime_start"]
    assert "## Device" in smoke["md"] and "# Device suite (smoke): cpu" in smoke["md"]


def test_mfu_arithmetic():
    assert ds.mfu(2e12, 0.01, 400e12) == pytest.approx(0.5)
    assert ds.mfu(1e9, 0.001, None) is None
    assert ds.mfu(float("nan"), 0.001, 1e12) is None
    assert ds.mfu(1e9, 0.0, 1e12) is None
    assert ds.fmt_mfu(0.1234) == "12.3%" and ds.fmt_mfu(None) == "n/a"


def test_peaks_match_device_kinds():
    assert ds.peak_flops("NVIDIA H200", "bfloat16") == pytest.approx(989.4e12)
    assert ds.peak_flops("NVIDIA H100 80GB HBM3", "float32") == pytest.approx(494.7e12)
    assert ds.peak_flops("NVIDIA H100 PCIe", "bfloat16") == pytest.approx(756e12)
    assert ds.peak_flops("NVIDIA H200 NVL", "bfloat16") == pytest.approx(835.5e12)
    assert ds.peak_flops("NVIDIA A100-SXM4-80GB", "float32") == pytest.approx(156e12)
    assert ds.peak_flops("TPU v4", "float32") == pytest.approx(275e12)
    assert ds.peak_flops("TPU v5 lite", "bfloat16") == pytest.approx(197e12)
    assert ds.peak_flops("cpu", "bfloat16") is None
    with pytest.raises(ValueError, match="float16.*valid choices: float32, bfloat16"):
        ds.peak_flops("NVIDIA H200", "float16")


def test_bad_argument_is_an_error_line():
    proc = run_script(["--families", "gffn,resnet"], timeout=600)
    assert proc.returncode == 2
    assert "device_suite.py: error: --families 'gffn,resnet': unknown resnet; valid choices: " \
           "gffn,dhm,hvae" in proc.stderr


@pytest.mark.parametrize("argv, message", [
    (["--smoke", "--install"], "--install with --smoke"),
    (["--smoke", "--dtypes", "float16"], "--dtypes 'float16': unknown float16; valid choices: "
                                         "float32,bfloat16"),
    (["--smoke", "--repeats", "0"], "--repeats 0: must be > 0"),
    (["--smoke", "--eval-max-examples", "-1"], "--eval-max-examples -1: must be >= 0"),
    (["--smoke", "--train-seconds", "30"], "--train-seconds 30 with --smoke: the smoke trains "
                                           "a fixed number of steps"),
    (["--smoke", "--train-steps", "0"], "--train-steps 0 with --smoke"),
    (["--skip-hvae", "--train-steps", "-1"], "--train-steps -1: must be >= 0"),
    (["--skip-hvae", "--train-seconds", "0"], "--train-seconds 0 and --train-steps 0"),
])
def test_bad_flags(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        ds.parse_flags(argv)
    assert e.value.code == 2 and f"error: {message}" in capsys.readouterr().err


def test_nothing_is_installed_unless_asked(tmp_path):
    flags = ds.parse_flags(["--skip-hvae", "--workdir", str(tmp_path)])
    assert not flags.install and flags.repeats == 5 and flags.steps == 10
    assert ds.install_commands(gpu=False) == [
        [sys.executable, "-m", "pip", "install", "-e", f"{REPO}[test]"]]
    jax_cuda = ds.install_commands(gpu=True)[1][-1]
    assert jax_cuda.startswith("jax[cuda12]>=") and "<" in jax_cuda


def test_smoke_budget_is_steps_and_paper_budget_is_seconds(tmp_path):
    """The smoke trains a fixed number of steps and no wall-clock budget (its step count
    is deterministic); the paper's run keeps --train-seconds, with --train-steps optional."""
    smoke = ds.parse_flags(["--smoke", "--workdir", str(tmp_path)])
    assert (smoke.train_steps, smoke.train_seconds) == (4, 0)
    train, evaluate = ds.hvae_commands(smoke, "/tmp/run")
    assert "--config.num_steps=4" in train and "--config.num_steps=4" in evaluate
    assert not any("max_train_seconds" in a for a in train + evaluate)
    steps = ds.parse_flags(["--smoke", "--train-steps", "6", "--workdir", str(tmp_path)])
    assert "--config.num_steps=6" in ds.hvae_commands(steps, "/tmp/run")[0]
    paper = ds.parse_flags(["--skip-hvae", "--workdir", str(tmp_path)])
    assert (paper.train_steps, paper.train_seconds) == (0, 120.0)
    assert ds.budget_overrides(paper) == ["--config.max_train_seconds=120"]
    both = ds.parse_flags(["--skip-hvae", "--train-steps", "50", "--workdir", str(tmp_path)])
    assert ds.budget_overrides(both) == ["--config.max_train_seconds=120", "--config.num_steps=50"]


def test_paper_hvae_eval_describes_the_trained_run():
    """The eval command differs from the training's config in free fields only, so the
    run directory accepts it (jaxhybrid.rundir); both are the paper variant with S."""
    from configs.hvae import get_config
    from jaxhybrid.rundir import FREE_FIELDS, _within, config_dict, flatten
    from jaxhybrid.tools.overrides import apply_overrides
    flags = argparse.Namespace(smoke=False, train_seconds=120.0, train_steps=0, eval_samples=16,
                               eval_max_examples=2000)
    configs = []
    for cmd in ds.hvae_commands(flags, "/tmp/run"):
        assert f"--config={ds.PAPER_HVAE}" in cmd and "--config.model.iwae_samples=16" in cmd
        overrides = dict(a[len("--config."):].split("=", 1) for a in cmd
                         if a.startswith("--config."))
        c = apply_overrides(get_config("fashion_mnist_paper_npz"), overrides)
        configs.append(flatten(config_dict(c)))
    train, evaluate = configs
    assert train["max_train_seconds"] == 120.0 and train["evals.names"] == ""
    assert train["num_steps"] == 0          # the paper's run: a wall-clock budget only
    assert evaluate["evals.names"] == "likelihood,ood" and evaluate["evals.max_examples"] == 2000
    changed = [k for k in train if train[k] != evaluate[k]]
    assert changed and all(_within(k, FREE_FIELDS) for k in changed), changed
