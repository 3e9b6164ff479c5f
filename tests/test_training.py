"""The trainer end to end on digits: accuracy, resume after a crash, NaN stop, CLI errors."""
import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxhybrid.checkpointing import Checkpointer, CheckpointMismatchError
from jaxhybrid.train import NonFiniteLossError, train_and_evaluate
from tests import save_gate
from tests.helpers import REPO, restore_params, run_cli, run_python, tiny_config


@pytest.mark.training_run
@pytest.mark.parametrize("joint_weight", [0.0, 1.0])
def test_digits_reaches_90_percent(tmp_path, joint_weight):
    c = tiny_config(**{"objective.joint_weight": joint_weight}, num_epochs=12.0)
    c.optimizer.learning_rate = 3e-3
    c.model.width = 16
    c.model.hidden = (64,)
    m = train_and_evaluate(c, str(tmp_path))
    assert m["accuracy"] >= 0.90, m
    assert m["step"] == 12 * -(-982 // 64)
    lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
    train = [l for l in lines if l["kind"] == "train"]
    for key in ("loss", "conditional_nll", "joint_nll", "accuracy", "learning_rate",
                "examples_per_sec", "eta_sec"):
        assert key in train[-1]
    # λ=0 optimises the conditional part, λ=1 the joint part; both are logged
    key = "conditional_nll" if joint_weight == 0 else "joint_nll"
    assert train[-1]["loss"] == pytest.approx(train[-1][key])
    assert os.path.exists(tmp_path / "config.json")
    assert any(l["kind"] == "validation" for l in lines)


def _train_until_killed(config_overrides: dict, workdir: str, pause_after_save: int) -> str:
    """Train in a fresh process and SIGKILL it once its log shows "checkpoint saved at
    step ``pause_after_save``". The process pauses right after that line
    (tests/save_gate.py), so the kill lands there however loaded the machine is: no later
    checkpoint is saved, and the run cannot finish before the kill."""
    kill_at = f"checkpoint saved at step {pause_after_save}"
    code = f"""
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout)
from tests import save_gate
save_gate.install()
from tests.helpers import tiny_config
from jaxhybrid.train import train_and_evaluate
train_and_evaluate(tiny_config(**{config_overrides!r}), {workdir!r})
"""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu", PYTHONPATH=REPO, **{save_gate.ENV: str(pause_after_save)})
    proc = subprocess.Popen([sys.executable, "-u", "-c", code], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if kill_at in line:
                proc.send_signal(signal.SIGKILL)   # no cleanup, no final checkpoint
                break
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-30:])
    return "".join(seen)


def test_killed_run_resumes_bit_identically(tmp_path):
    """A run SIGKILLed mid-way (after a checkpoint, with later steps done and logged),
    resumed in a new process, ends with the same parameters as an uninterrupted run,
    and its metrics.jsonl holds each step's record once."""
    overrides = dict(num_steps=200, checkpoint_every=8, log_every=4)
    c = tiny_config(**overrides)
    train_and_evaluate(c, str(tmp_path / "straight"))
    _, straight = restore_params(c, str(tmp_path / "straight"))

    crashed = str(tmp_path / "crashed")
    _train_until_killed(overrides, crashed, pause_after_save=16)
    first = Checkpointer(crashed, read_only=True).latest_step()
    assert first == 16               # paused after saving it until killed: no later save
    r = run_python(f"""
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout)
from tests.helpers import tiny_config
from jaxhybrid.train import train_and_evaluate
train_and_evaluate(tiny_config(**{overrides!r}), {crashed!r})
""", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from checkpoint step" in r.stdout + r.stderr
    step, resumed = restore_params(c, crashed)
    assert step == 200 and int(resumed["step"]) == 200
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(a, b)
    records = [json.loads(l) for l in open(os.path.join(crashed, "metrics.jsonl"))]
    train_steps = [r["step"] for r in records if r["kind"] == "train"]
    assert train_steps == list(range(4, 201, 4))          # no step logged twice
    straight_records = [json.loads(l) for l in open(tmp_path / "straight" / "metrics.jsonl")]
    assert [r["loss"] for r in records if r["kind"] == "train"] == \
        [r["loss"] for r in straight_records if r["kind"] == "train"]


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    """The toy family's loss is NaN at its third step (toy_families.NAN_STEPS): the run stops
    there, naming step 2 as the last good checkpoint, and nothing after it is saved."""
    c, wd = _skip_config(), str(tmp_path)
    c.optimizer.skip_nonfinite = False
    with pytest.raises(NonFiniteLossError, match=r"Loss became nan at step 3.*last good "
                                                 r"checkpoint is step 2"):
        train_and_evaluate(c, wd)
    assert Checkpointer(wd, read_only=True).all_steps() == [1, 2]
    step, after = restore_params(c, wd)
    assert step == 2 and all(np.isfinite(x).all() for x in jax.tree.leaves(after))
    assert not os.path.exists(os.path.join(wd, "final_metrics.json"))


def test_mismatched_checkpoint_names_the_difference(tmp_path):
    c = tiny_config(num_steps=2, checkpoint_every=2)
    train_and_evaluate(c, str(tmp_path))
    c.model.width = 4
    with pytest.raises(CheckpointMismatchError, match=r"Conv_0.*kernel.*checkpoint has shape"):
        restore_params(c, str(tmp_path))


def test_cli_end_to_end_and_clear_errors(tmp_path):
    wd = str(tmp_path / "run")
    r = run_cli(["--config=configs/gffn.py:smoke", f"--workdir={wd}", "--config.num_steps=4",
                 "--config.model.width=8", "--config.evals.names=classification,calibration"])
    assert r.returncode == 0, r.stderr[-3000:]
    final = json.load(open(os.path.join(wd, "final_metrics.json")))
    out = os.path.join(wd, final["eval_dir"])
    assert final["eval_dir"].startswith("eval/4/")
    assert os.path.exists(os.path.join(out, "metrics.json"))
    # the console's summary: the run, the evaluated checkpoint and its report, headlines
    assert f"run {wd}: step 4 (completed)" in r.stdout
    assert f"{out}/report.md" in r.stdout and "accuracy " in r.stdout and "ece " in r.stdout

    r = run_cli(["--config=configs/gffn.py:smoke", f"--workdir={wd}x", "--config.batchsize=64"])
    assert r.returncode != 0
    assert "batchsize" in r.stderr and "batch_size" in r.stderr   # names the valid key

    r = run_cli(["--config=configs/gffn.py:smoke", f"--workdir={wd}y", "--config.batch_size=60"])
    assert r.returncode != 0
    assert "batch_size = 60" in r.stderr and "not divisible by the 8 devices" in r.stderr
    assert not os.path.exists(os.path.join(f"{wd}y", "checkpoints"))  # refused before training
    r = run_cli(["--config=configs/gffn.py:smoke", f"--workdir={wd}y",
                 "--config.eval_batch_size=100"])
    assert r.returncode == 1 and "config field eval_batch_size = 100" in r.stderr

    r = run_cli(["--config=configs/gffn.py:nosuch", f"--workdir={wd}z"])
    assert r.returncode != 0 and "valid choices" in r.stderr


def _skip_config(**overrides):
    c = tiny_config(num_steps=6, checkpoint_every=1, keep_checkpoints=10, log_every=1,
                    family="tests.toy_families:make_nan_bn_classifier", **overrides)
    c.model = ml_collections.ConfigDict({"name": "bn_mlp", "hidden": 8})
    c.optimizer.skip_nonfinite = True
    return c


def test_skipped_updates_keep_the_state_and_consecutive_skips_stop_the_run(tmp_path):
    """The toy family's loss and gradients are NaN at steps 2 and 3 (toy_families.NAN_STEPS):
    with optimizer.skip_nonfinite those two updates are skipped (params, BatchNorm statistics
    and Adam state kept), logged and counted; the run goes on. Two in a row with
    max_consecutive_skips = 2 stop it as a NaN does, keeping the last good checkpoint."""
    c, wd = _skip_config(), str(tmp_path / "skip")
    train_and_evaluate(c, wd)
    state = {s: restore_params(c, wd, step=s)[1] for s in (2, 3, 4, 5)}
    for a, b, d in zip(jax.tree.leaves(state[2]), jax.tree.leaves(state[3]),
                       jax.tree.leaves(state[4])):
        if a.shape == () and a.dtype.kind in "iu":
            continue                                      # the step counter moves on
        np.testing.assert_array_equal(a, b)              # step 2 skipped
        np.testing.assert_array_equal(b, d)              # step 3 skipped
    changed = [not np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(state[4]["params"]), jax.tree.leaves(state[5]["params"]))]
    assert all(changed)                                   # step 4 applied
    train = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
    train = [r for r in train if r["kind"] == "train"]
    assert [r["skipped"] for r in train] == [0, 0, 1, 1, 0, 0]
    assert train[-1]["skipped_total"] == 2 and all(np.isfinite(r["grad_norm"]) or r["skipped"]
                                                  for r in train)
    c2 = _skip_config()
    c2.optimizer.max_consecutive_skips = 2
    with pytest.raises(NonFiniteLossError, match=r"2 consecutive updates skipped \(steps 3\.\.4"
                                                 r".*last good checkpoint is step 3"):
        train_and_evaluate(c2, str(tmp_path / "stop"))


def test_grad_norm_threshold_skips_large_updates():
    from jaxhybrid.train import skip_rule
    rule = skip_rule(ml_collections.ConfigDict({"skip_nonfinite": False, "skip_grad_norm": 5.0}))
    assert [bool(rule(jnp.float32(1.0), jnp.float32(g))) for g in (4.0, 6.0, np.nan)] == \
        [False, True, False]                          # NaN alone: only with skip_nonfinite
    both = skip_rule(ml_collections.ConfigDict({"skip_nonfinite": True, "skip_grad_norm": 5.0}))
    assert [bool(both(jnp.float32(l), jnp.float32(g)))
            for l, g in ((1.0, 4.0), (np.inf, 1.0), (1.0, np.nan), (1.0, 6.0))] == \
        [False, True, True, True]
    assert skip_rule(ml_collections.ConfigDict({"skip_nonfinite": False,
                                                "skip_grad_norm": 0.0})) is None
