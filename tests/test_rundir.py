"""A run directory holds one experiment and loses nothing: the config guard, evaluations
with their own identity, final_metrics.json, interrupts (SIGINT/SIGTERM through the CLI)
and multi-process logging.

One tiny digits run (``configs/gffn.py:smoke``, width 8) is trained once per module and
shared; the CLI cases on it run as children of one Python process that imported the
library once (the driver of tests/test_cli_errors.py).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from jaxhybrid import logs, selection
from jaxhybrid.checkpointing import Checkpointer, CheckpointMismatchError
from jaxhybrid.evaluate import eval_id, evaluate
from jaxhybrid.evaluators import suite
from jaxhybrid.experiment import build_experiment
from jaxhybrid.interrupts import Interrupted
from jaxhybrid.rundir import ConfigChangeError, WorkdirError
from jaxhybrid.train import train_and_evaluate
from tests.helpers import REPO, tiny_config
from tests.test_cli_errors import run_driver

ARGS = ["--config=configs/gffn.py:smoke", "--config.model.width=8",
        "--config.model.hidden=(32,)", "--config.evals.names=classification"]


def _snapshot(root) -> dict:
    """{relative path: (size, mtime_ns, sha256)} of every file under ``root``."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            st = os.stat(p)
            out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns,
                                             hashlib.sha256(open(p, "rb").read()).hexdigest())
    return out


def _load(path):
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(config, workdir, final metrics) of one finished tiny run."""
    wd = str(tmp_path_factory.mktemp("rundir") / "run")
    c = tiny_config()
    final = train_and_evaluate(c, wd)
    return c, wd, final


@pytest.fixture(scope="module")
def cli_cases(run, tmp_path_factory):
    """Every CLI case on the finished run, in order, in one driver process: (snapshot
    before, snapshot after, {case: (exit code, stdout, stderr)})."""
    c, wd, final = run
    root = str(tmp_path_factory.mktemp("rundir_cli"))
    blocker = os.path.join(root, "a_file")
    open(blocker, "w").write("not a directory\n")
    cases = [
        ("same_config", ARGS),
        ("other_objective", ARGS + ["--config.objective.joint_weight=0"]),
        ("more_epochs", ARGS + ["--config.num_epochs=3"]),
        ("other_family", ["--config=configs/dhm.py:digits"]),
        ("eval_other_settings", ARGS + ["--mode=eval",
                                        "--config.evals.names=classification,calibration"]),
        ("eval_same_settings", ARGS + ["--mode=eval",
                                       "--config.evals.names=classification,calibration"]),
        ("eval_overwrite", ARGS + ["--mode=eval", "--overwrite",
                                   "--config.evals.names=classification,calibration"]),
        ("eval_other_objective", ARGS + ["--mode=eval", "--config.objective.joint_weight=0"]),
    ]
    spec = [{"id": cid, "argv": [*argv, f"--workdir={wd}"],
             "stdout": os.path.join(root, cid + ".out"),
             "stderr": os.path.join(root, cid + ".err")} for cid, argv in cases]
    spec.append({"id": "parent_is_a_file", "argv": [*ARGS, f"--workdir={blocker}/run"],
                 "stdout": os.path.join(root, "file.out"),
                 "stderr": os.path.join(root, "file.err")})
    before = _snapshot(wd)
    codes = run_driver(spec, root)
    out = {s["id"]: (codes[s["id"]], open(s["stdout"]).read(), open(s["stderr"]).read())
           for s in spec}
    return before, _snapshot(wd), out, blocker


def _refused(out, case, *needles):
    code, stdout, stderr = out[case]
    assert code == 1 and "Traceback" not in stderr, stderr
    assert stderr.startswith("error: "), stderr
    for n in needles:
        assert n in stderr, (n, stderr)


def test_cli_refuses_another_config_and_writes_nothing(run, cli_cases):
    """Re-running with another objective, budget or family, or evaluating with another
    objective, is refused with every differing key and both values; a complete run re-run
    with its config changes nothing; a workdir below a file is an error naming it. The only
    files the nine commands added are those of the one new evaluation."""
    c, wd, final = run
    before, after, out, blocker = cli_cases
    _refused(out, "other_objective", "joint_weight: saved 1.0, given 0.0", "new --workdir")
    _refused(out, "more_epochs", "num_epochs: saved 2.0, given 3.0", "--allow_config_change")
    _refused(out, "other_family", "family: saved 'classifier', given 'dhm'", "new --workdir")
    _refused(out, "eval_other_objective", "joint_weight: saved 1.0, given 0.0", "--mode=eval")
    _refused(out, "parent_is_a_file", f"{blocker} as a parent", "a file, not a directory")
    code, stdout, stderr = out["same_config"]
    assert code == 0, stderr
    assert "is complete (step 32, completed): nothing to do" in stdout
    assert f"evaluated {final['checkpoint']}: {wd}/{final['eval_dir']}/report.md" in stdout
    assert "FINAL METRICS" not in stdout              # a short summary, not a JSON dump
    # the run's own log (jaxhybrid.log) records each command that evaluated; nothing else
    # changed, and the only other new files are those of the one new evaluation
    log = open(os.path.join(wd, "jaxhybrid.log")).read()
    assert log.count("===== ") == 3 and "--overwrite" in log
    after.pop("jaxhybrid.log")
    new = sorted(set(after) - set(before))
    assert {k: v for k, v in after.items() if k in before} == before     # nothing changed
    c2 = tiny_config(**{"evals.names": "classification,calibration"})
    eid = eval_id(c2)
    assert eid != final["eval_id"]
    assert {os.path.dirname(p) for p in new} == {f"eval/{final['evaluated_step']}/{eid}"}
    assert open(blocker).read() == "not a directory\n"


def test_each_evaluation_has_its_own_directory(run, cli_cases):
    """--mode=eval with other settings writes eval/<step>/<eval_id>/ beside the training's
    evaluation (never into it); the same settings again are not recomputed; --overwrite
    replaces the directory whole; final_metrics.json never changes."""
    c, wd, final = run
    before, after, out, _ = cli_cases
    step = final["evaluated_step"]
    c2 = tiny_config(**{"evals.names": "classification,calibration"})
    new = os.path.join(wd, "eval", str(step), eval_id(c2))
    assert sorted(os.listdir(os.path.join(wd, "eval", str(step)))) == sorted(
        [final["eval_id"], eval_id(c2)])                  # no temporary directory left
    assert "reliability.png" in os.listdir(new)
    assert "reliability.png" not in os.listdir(os.path.join(wd, final["eval_dir"]))
    assert "evaluator calibration (2/2)" in out["eval_other_settings"][1]
    assert "ETA" in out["eval_other_settings"][1]     # evaluation progress
    assert "already in" in out["eval_same_settings"][1]
    assert "evaluator" not in out["eval_same_settings"][1]
    assert "already in" not in out["eval_overwrite"][1]
    assert "written to" in out["eval_overwrite"][1]
    m = _load(os.path.join(new, "metrics.json"))
    assert m["eval_id"] == eval_id(c2) and m["step"] == step and m["family"] == "classifier"
    assert m["checkpoint"] == final["checkpoint"]          # --checkpoint default: best
    assert m["definitions"] == build_experiment(c2).family.definitions
    settings = {k: v for k, v in json.loads(c2.evals.to_json()).items() if k != "checkpoint"}
    assert m["evals"] == settings == _load(os.path.join(new, "evals.json"))
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    assert eval_id(c2) == digest[:8]
    assert before["final_metrics.json"] == after["final_metrics.json"]


def test_final_metrics_names_its_evaluation(run):
    c, wd, final = run
    saved = _load(os.path.join(wd, "final_metrics.json"))
    assert saved == json.loads(json.dumps(final))
    assert saved["eval_dir"] == f"eval/{saved['evaluated_step']}/{eval_id(c)}"
    val = [r for r in map(json.loads, open(os.path.join(wd, "metrics.jsonl")))
           if r["kind"] == "validation"]
    best = min(r["step"] for r in val if r["val_accuracy"] == max(v["val_accuracy"] for v in val))
    assert saved["best_step"] == saved["evaluated_step"] == best
    assert saved["checkpoint"].startswith(f"best (step {best}, val_accuracy=")
    m = _load(os.path.join(wd, saved["eval_dir"], "metrics.json"))
    assert m["classification"]["accuracy"] == saved["accuracy"]
    ckpt = Checkpointer(wd, read_only=True)                # the one persisted best step
    assert selection.resolve(ckpt, "best") == (best, saved["checkpoint"])
    ckpt.close()


def test_budget_change_needs_the_flag_and_is_recorded(run, tmp_path):
    c, wd, final = run
    copy = str(tmp_path / "run")
    shutil.copytree(wd, copy)
    longer = tiny_config(num_steps=40)
    with pytest.raises(ConfigChangeError, match="num_steps: saved 0, given 40"):
        train_and_evaluate(longer, copy)
    more = train_and_evaluate(longer, copy, allow_config_change=True)
    assert more["step"] == 40
    changes = [json.loads(l) for l in open(os.path.join(copy, "config_changes.jsonl"))]
    assert changes == [{"step": 32, "changes": {"num_steps": [0, 40]}}]
    assert _load(os.path.join(copy, "config.json"))["num_steps"] == 0     # written once
    assert _load(os.path.join(copy, "final_metrics.json"))["step"] == 40
    again = train_and_evaluate(longer, copy)               # the recorded budget: complete
    assert again == json.loads(json.dumps(more))


def test_checks_pass_before_anything_is_written(run, tmp_path):
    """A checkpoint of another shape (its config.json gone) and a workdir below a file
    are refused before config.json, data.json, metrics.jsonl or eval/ exist."""
    c, wd, final = run
    orphan = tmp_path / "orphan"
    shutil.copytree(os.path.join(wd, "checkpoints"), orphan / "checkpoints")
    wider = tiny_config(**{"model.width": 4})
    with pytest.raises(CheckpointMismatchError, match="checkpoint has shape"):
        train_and_evaluate(wider, str(orphan))
    assert sorted(os.listdir(orphan)) == ["checkpoints"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(WorkdirError, match=f"{tmp_path / 'file'} as a parent"):
        evaluate(c, str(tmp_path / "file" / "run"))


def test_interrupted_evaluation_leaves_no_directory(run, monkeypatch):
    """SIGINT while an evaluation runs (after calibration drew its figure into the
    temporary directory): Interrupted, with nothing left under eval/<step>/."""
    c, wd, final = run
    step_dir = os.path.join(wd, "eval", str(final["evaluated_step"]))
    listed = sorted(os.listdir(step_dir))
    handler = signal.getsignal(signal.SIGINT)
    original = suite.EVALUATORS["calibration"].fn

    def calibration_then_signal(ctx):
        section = original(ctx)
        assert "reliability.png" in os.listdir(ctx.out_dir)
        signal.raise_signal(signal.SIGINT)
        raise AssertionError("the signal did not interrupt the evaluation")
    monkeypatch.setitem(suite.EVALUATORS, "calibration", dataclasses.replace(
        suite.EVALUATORS["calibration"], fn=calibration_then_signal))
    c2 = tiny_config(**{"evals.names": "classification,calibration,temperature"})
    with pytest.raises(Interrupted, match="no evaluation directory was written") as e:
        evaluate(c2, wd)
    assert e.value.exit_status == 130
    assert sorted(os.listdir(step_dir)) == listed
    assert signal.getsignal(signal.SIGINT) is handler     # the handlers are restored


def test_checkpoint_saved_is_logged_once_committed(run, tmp_path, caplog):
    c, wd, final = run
    from tests.helpers import restore_params
    _, state = restore_params(c, wd)
    ckpt = Checkpointer(str(tmp_path / "ck"))
    with caplog.at_level(logging.INFO, logger="jaxhybrid"):
        ckpt.save(5, state, metrics={}, meta={})
        assert "checkpoint saved" not in caplog.text    # started, not committed
        ckpt.wait()
        assert "checkpoint saved at step 5" in caplog.text
    assert os.listdir(tmp_path / "ck" / "checkpoints") == ["5"]
    ckpt.close()


def test_multi_process_logs_come_from_process_0(monkeypatch, capsys):
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)   # restored after
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    try:
        logs.setup(None)
        log = logging.getLogger("jaxhybrid")
        log.info("an info line")
        log.warning("a warning")
    finally:
        logging.basicConfig(level=logging.WARNING, force=True)
    out = capsys.readouterr().out
    assert "an info line" not in out and "[process 1] a warning" in out


# -- SIGINT and SIGTERM through the CLI --------------------------------------------------
SIGNAL_ARGS = ["--config=configs/gffn.py:smoke", "--config.model.width=4",
               "--config.model.hidden=(16,)", "--config.num_steps=400", "--config.log_every=2",
               "--config.checkpoint_every=100", "--config.evals.names=classification"]


def _interrupt_cli(workdir: str, signum: int, log_file: str) -> subprocess.CompletedProcess:
    """Start training; send ``signum`` once metrics.jsonl shows progress."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO,
               XLA_FLAGS="--xla_force_host_platform_device_count=8")
    cmd = [sys.executable, "-m", "jaxhybrid.main", *SIGNAL_ARGS, f"--workdir={workdir}",
           f"--log_file={log_file}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    jsonl, deadline = os.path.join(workdir, "metrics.jsonl"), time.time() + 900
    try:
        while proc.poll() is None:
            if os.path.exists(jsonl) and '"kind": "train"' in open(jsonl).read():
                proc.send_signal(signum)
                break
            if time.time() > deadline:     # a safety net against a hang, not a timing
                pytest.fail("no train record in metrics.jsonl within 900 s")
            time.sleep(0.02)
        stdout, stderr = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def _resume(wd: str, caplog, through_cli: bool) -> str:
    """Re-run the interrupted command (or, in process, its config); its log."""
    if not through_cli:
        config = tiny_config(**{"model.width": 4, "model.hidden": "(16,)", "num_steps": 400,
                                "log_every": 2, "checkpoint_every": 100})
        with caplog.at_level(logging.INFO, logger="jaxhybrid"):
            train_and_evaluate(config, wd)
        return caplog.text
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO,
               XLA_FLAGS="--xla_force_host_platform_device_count=8")
    again = subprocess.run([sys.executable, "-m", "jaxhybrid.main", *SIGNAL_ARGS,
                            f"--workdir={wd}"], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    return again.stdout


@pytest.mark.parametrize("signum,rerun_cli", [pytest.param(signal.SIGINT, True, marks=pytest.mark.slow_smoke),
                                             (signal.SIGTERM, False)],
                         ids=["SIGINT", "SIGTERM"])
def test_signal_stops_cleanly_and_the_same_command_resumes(tmp_path, caplog, signum,
                                                             rerun_cli):
    wd, log_file = str(tmp_path / "run"), str(tmp_path / "train.log")
    r = _interrupt_cli(wd, signum, log_file)
    assert r.returncode == 128 + signum, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    line = [l for l in r.stderr.splitlines() if l.startswith("interrupted at step")]
    assert line, r.stderr
    step = int(line[0].split()[3].rstrip(";"))
    assert 0 < step < 400
    assert line[0] == (f"interrupted at step {step}; last complete checkpoint {step}; "
                       f"re-run the same command to resume")
    kept = os.listdir(os.path.join(wd, "checkpoints"))
    assert str(step) in kept and not [k for k in kept if "tmp" in k], kept   # committed
    assert not os.path.exists(os.path.join(wd, "final_metrics.json"))
    assert "received: stopping after the current step" in open(log_file).read()
    assert r.stdout == ""                                 # --log_file: the log is there
    if signum == signal.SIGTERM:     # the unfinished run, re-run with another objective
        before = _snapshot(wd)
        other = tiny_config(**{"model.width": 4, "model.hidden": "(16,)", "num_steps": 400,
                               "log_every": 2, "checkpoint_every": 100,
                               "objective.joint_weight": 0.0})
        with pytest.raises(ConfigChangeError, match="joint_weight: saved 1.0, given 0.0"):
            train_and_evaluate(other, wd)
        assert _snapshot(wd) == before
    assert f"resumed from checkpoint step {step}" in _resume(wd, caplog, rerun_cli)
    final = _load(os.path.join(wd, "final_metrics.json"))
    assert final["step"] == 400 and final["stopped"] == "completed"
    train = [r["step"] for r in map(json.loads, open(os.path.join(wd, "metrics.jsonl")))
             if r["kind"] == "train"]
    assert train == sorted(set(train)) and train[-1] == 400   # each step once


def _tiny_hvae(**overrides):
    from configs import hvae
    from jaxhybrid.tools.overrides import apply_overrides
    c = hvae.get_config("digits")
    c.num_steps, c.log_every, c.checkpoint_every = 2, 1, 2
    c.evals.names = "ood"
    c.evals.ood_sets = "uniform_noise"
    c.model.update(iwae_samples=1, score_chunk=1)
    return apply_overrides(c, overrides) if overrides else c


@pytest.mark.slow_smoke
def test_scoring_fields_may_differ_in_eval_and_get_their_own_directory(tmp_path):
    """One trained HVAE scored at S = 1 and S = 3 (model.iwae_samples, a scoring field):
    eval mode accepts it, each S gets its own eval/<step>/<eval_id>/ and its own numbers;
    a training field (the KL warm-up) is still refused. Through the CLI, the evaluated split
    is capped by evals.max_examples and an OOD set is named by LABEL=SET."""
    wd = str(tmp_path / "run")
    c1 = _tiny_hvae()
    final = train_and_evaluate(c1, wd)
    c3 = _tiny_hvae(**{"model.iwae_samples": 3, "model.score_chunk": 3})
    assert eval_id(c3) != eval_id(c1)
    evaluate(c3, wd, "latest")
    step = final["evaluated_step"]
    dirs = sorted(os.listdir(os.path.join(wd, "eval", str(step))))
    assert dirs == sorted([eval_id(c1), eval_id(c3)])
    s1, s3 = (_load(os.path.join(wd, "eval", str(step), eval_id(c), "metrics.json"))
              for c in (c1, c3))
    assert s3["evals"]["model.iwae_samples"] == 3 and s1["evals"]["model.iwae_samples"] == 1
    auroc = lambda m: m["ood"]["sets"]["uniform_noise"]["scores"]["L"]["auroc"]  # noqa: E731
    l1 = np.load(os.path.join(wd, "eval", str(step), eval_id(c1), "ood_scores.npz"))["test/L"]
    l3 = np.load(os.path.join(wd, "eval", str(step), eval_id(c3), "ood_scores.npz"))["test/L"]
    assert not np.allclose(l1, l3) and 0 <= auroc(s3) <= 1
    with pytest.raises(ConfigChangeError, match="objective.warmup_epochs"):
        evaluate(_tiny_hvae(**{"objective.warmup_epochs": 3.0}), wd, "latest")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO,
               XLA_FLAGS="--xla_force_host_platform_device_count=8")
    proc = subprocess.run(
        [sys.executable, "-m", "jaxhybrid.main", "--config=configs/hvae.py:digits",
         f"--workdir={wd}", "--mode=eval", "--checkpoint=latest", "--config.num_steps=2",
         "--config.log_every=1", "--config.checkpoint_every=2",
         "--config.model.iwae_samples=1", "--config.model.score_chunk=1",
         "--config.evals.names=ood", "--config.evals.ood_sets=noise=uniform_noise",
         "--config.evals.max_examples=16", "--config.evals.ood_max_examples=8"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    eval_dir = proc.stdout.strip().splitlines()[-1].split(": ")[-1].rsplit("/", 1)[0]
    m = _load(os.path.join(eval_dir, "metrics.json"))
    assert m["ood"]["in_distribution"]["num_examples"] == 16
    assert list(m["ood"]["sets"]) == ["noise"] and m["ood"]["sets"]["noise"]["num_examples"] == 8


def test_a_run_saved_before_the_objective_section_keeps_its_loss_values(tmp_path):
    """config.json written when λ was top-level and the DHM's β lived under model.*: the
    loss fields are read as objective.*, so a config with other values is refused (not
    compared with the defaults) and one with the run's values is accepted."""
    from configs import dhm, gffn
    from jaxhybrid.rundir import RunDir
    cases = [(gffn.get_config("smoke"), "joint_weight", 0.0),
             (dhm.get_config("digits"), "beta", 100.0)]
    for i, (config, field, value) in enumerate(cases):
        old = json.loads(config.to_json_best_effort())
        old.pop("objective")
        if field == "joint_weight":
            old["joint_weight"], old["label_model"] = value, "softmax"
        else:
            old["model"].update(beta=value, alpha=1.0, kl_coef=0.1)
        workdir = tmp_path / str(i)
        workdir.mkdir()
        (workdir / "config.json").write_text(json.dumps(old))
        run = RunDir(str(workdir))
        with pytest.raises(ConfigChangeError,
                           match=rf"objective.{field}: saved {value!r}, given 1.0"):
            run.check_eval(config)
        config.objective[field] = value
        run.check_eval(config)                       # the run's own values: accepted
        assert run.check_train(config) == {}
