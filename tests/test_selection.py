"""Checkpoint selection, early stopping, progress logging and the review's defects, each
with a regression test (they failed before the fix)."""
import json
import os

import numpy as np
import pytest

from jaxhybrid.data.pipeline import Preprocess, TrainBatches
from jaxhybrid.data.sources import ArraySource
from jaxhybrid.evaluate import evaluate
from jaxhybrid.parallel import make_mesh
from jaxhybrid.progress import JsonlWriter, NonFiniteLossError, ProgressLog
from jaxhybrid.selection import Selector
from jaxhybrid.train import train_and_evaluate
from tests.helpers import run_cli, tiny_config


def _records(workdir, kind):
    return [r for r in map(json.loads, open(os.path.join(workdir, "metrics.jsonl")))
            if r["kind"] == kind]


# -- units -------------------------------------------------------------------------------
def test_selector_max_min_patience_and_state():
    s = Selector("val_accuracy", "max", patience=2)
    assert [s.update(k, {"val_accuracy": v}) for k, v in ((1, .5), (2, .7), (3, .7), (4, .6))] \
        == [True, True, False, False]
    assert (s.best, s.best_step, s.since_best, s.should_stop) == (.7, 2, 2, True)
    restored = Selector("val_accuracy", "max", patience=2).load(s.state_dict())
    assert restored.state_dict() == s.state_dict() and restored.should_stop
    m = Selector("val_nll", "min")
    assert m.update(1, {"val_nll": 2.0}) and m.update(2, {"val_nll": 1.0})
    assert not m.update(3, {"val_nll": float("nan")}) and not m.should_stop   # patience 0: off
    # a saved state of another metric is ignored
    assert Selector("val_elbo").load(s.state_dict()).best is None
    with pytest.raises(ValueError, match="valid choices: max, min"):
        Selector("val_x", "largest")


def test_jsonl_drops_records_after_the_resumed_step(tmp_path):
    path = str(tmp_path / "metrics.jsonl")
    w = JsonlWriter(path)
    for step in (4, 8, 12, 16):
        w.write({"kind": "train", "step": step})
    w.write({"kind": "validation", "step": 8})
    w.write({"kind": "final", "step": 8})
    JsonlWriter(path, start=8)
    assert [(r["kind"], r["step"]) for r in map(json.loads, open(path))] == \
        [("train", 4), ("train", 8), ("validation", 8)]


def test_progress_log_stops_on_a_non_finite_loss(tmp_path):
    log = ProgressLog(JsonlWriter(str(tmp_path / "m.jsonl")), total=10, steps_per_epoch=5,
                      batch_size=8)
    log.add(1, {"loss": np.float32(1.0)})
    log.add(2, {"loss": np.float32(np.nan), "joint_nll": np.float32(np.nan)})
    with pytest.raises(NonFiniteLossError, match="at step 2.*joint_nll"):
        log.flush()
    log.add(3, {"loss": np.float32(1.0), "params_finite": np.float32(0.0)})
    with pytest.raises(NonFiniteLossError, match="non-finite in the update of step 3"):
        log.flush()


def test_drop_remainder_gives_full_batches_of_changing_examples():
    source = ArraySource(np.zeros((20, 2, 2, 1), np.uint8), np.arange(20) % 2)
    kw = dict(seed=0, mesh=make_mesh(8), preprocess=Preprocess())
    padded = TrainBatches(source, 8, **kw)
    full = TrainBatches(source, 8, drop_remainder=True, **kw)
    assert padded.steps_per_epoch == 3 and full.steps_per_epoch == 2
    assert not padded.host_batch(2)["mask"].all()
    seen = [set(full.global_indices(s)) for s in range(4)]
    assert all(full.host_batch(s)["mask"].all() for s in range(4))
    assert all(len(x) == 8 and min(x) >= 0 for x in seen)
    assert seen[0] | seen[1] != seen[2] | seen[3]       # each epoch drops other examples
    with pytest.raises(ValueError, match="larger than the 20 training examples"):
        TrainBatches(source, 32, drop_remainder=True, **kw)


# -- the trainer and evaluation --------------------------------------------------------
@pytest.mark.slow_smoke
def test_checkpoint_best_through_the_cli(tmp_path):
    """--checkpoint=best resolves to the highest val_accuracy (orbax stores the metrics),
    and the best checkpoint is kept beyond keep_checkpoints."""
    wd = str(tmp_path / "run")
    args = ["--config=configs/gffn.py:smoke", f"--workdir={wd}", "--config.model.width=8",
            "--config.num_steps=20", "--config.checkpoint_every=4", "--config.keep_checkpoints=1",
            "--config.evals.names=classification"]
    r = run_cli(args)
    assert r.returncode == 0, r.stderr[-3000:]
    val = {r["step"]: r["val_accuracy"] for r in _records(wd, "validation")}
    best = min(s for s in val if val[s] == max(val.values()))
    r = run_cli(args + ["--mode=eval", "--checkpoint=best", "--overwrite"])
    assert r.returncode == 0, r.stderr[-3000:]
    final = json.load(open(os.path.join(wd, "final_metrics.json")))
    assert final["eval_dir"].startswith(f"eval/{best}/") and final["best_step"] == best
    m = json.load(open(os.path.join(wd, final["eval_dir"], "metrics.json")))
    assert m["checkpoint"] == f"best (step {best}, val_accuracy={val[best]:.4f})"


def test_early_stopping_survives_resume_and_evaluates_the_best(tmp_path):
    """lr 1e-30: validation accuracy never improves after the first validation. Resumed after
    two validations (best + 1 without improvement), patience 3 stops two validations
    later (a restarted counter would train on to step 12); the final evaluation reports
    the best (first) checkpoint; re-running the stopped run trains no further."""
    wd = str(tmp_path)
    kw = dict(checkpoint_every=2, early_stopping_patience=3, log_every=1)
    c = tiny_config(num_steps=4, **kw)
    c.optimizer.learning_rate = 1e-30        # Adam steps of 1e-30: float32 params unchanged
    train_and_evaluate(c, wd)
    c.num_steps = 100
    final = train_and_evaluate(c, wd, allow_config_change=True)
    assert final["step"] == 8 and final["stopped"].startswith("early stopping")
    assert final["evaluated_step"] == 2 and final["checkpoint"].startswith("best (step 2")
    assert final["eval_dir"].startswith("eval/2/") and final["best_step"] == 2
    report = open(os.path.join(wd, final["eval_dir"], "report.md")).read()
    assert "best (step 2" in report
    n_train = len(_records(wd, "train"))
    again = train_and_evaluate(c, wd)
    assert again["step"] == 8 and again["stopped"].startswith("early stopping")
    assert len(_records(wd, "train")) == n_train


def test_nan_stops_before_eval_every_evaluates_it(tmp_path):
    c = tiny_config(num_steps=10, eval_every=1, log_every=100, checkpoint_every=100)
    c.optimizer.learning_rate = 1e30
    c.optimizer.lr_scaling = "none"
    c.evals.names = "classification,ood"
    with pytest.raises(NonFiniteLossError, match="(Loss became nan|Parameters became "
                                                 "non-finite|NaN or infinite).*no "
                                                 "checkpoint was saved"):
        train_and_evaluate(c, str(tmp_path))


def test_binary_label_model_has_one_nll(tmp_path):
    """Validation NLL and the classification evaluator's NLL are the same quantity."""
    c = tiny_config(**{"objective.label_model": "binary"}, num_steps=6, checkpoint_every=6)
    c.evals.split = "validation"
    final = train_and_evaluate(c, str(tmp_path))
    val = _records(str(tmp_path), "validation")[-1]
    assert final["nll"] == pytest.approx(val["val_nll"], rel=1e-6)


def test_evaluation_restores_the_model_of_the_saved_config(tmp_path):
    """Eval mode restores {params, model_state} only, and describes the model by the saved
    config: another optimizer (another optimizer state) is refused, naming the field."""
    c = tiny_config(num_steps=4, checkpoint_every=4)
    final = train_and_evaluate(c, str(tmp_path))
    m = evaluate(c, str(tmp_path), checkpoint="latest")
    assert m["accuracy"] == final["accuracy"] and m["eval_dir"] == final["eval_dir"]
    c.optimizer.name = "momentum"
    with pytest.raises(ValueError, match="optimizer.name: saved 'adam', given 'momentum'"):
        evaluate(c, str(tmp_path), checkpoint="latest")


def test_selection_keeps_the_earliest_of_ties_and_marks_what_orbax_keeps():
    """``checkpoint_metrics``: the validation, and ``selected_at`` (the step if it is the new
    best, else -1), which is all orbax's preservation ranks on."""
    from jaxhybrid.selection import SELECTED_AT, preservation_value
    s = Selector("val_accuracy", "max")
    saved = [s.checkpoint_metrics(k, {"val_accuracy": v} if v is not None else {})
             for k, v in ((2, .5), (4, .8), (6, .8), (8, None), (10, .7))]
    assert [m[SELECTED_AT] for m in saved] == [2, 4, -1, -1, -1]
    assert max(saved, key=preservation_value)[SELECTED_AT] == 4 == s.best_step
    assert saved[3] == {SELECTED_AT: -1.0}                  # no validation: never selected


@pytest.mark.slow_smoke
def test_batching_transform_and_checkpoint_options_through_the_cli(tmp_path):
    """drop_remainder, data.train_transforms/crop_padding, data.digits_test_fraction,
    data.label_key and evals.checkpoint, end to end."""
    wd = str(tmp_path / "run")
    r = run_cli(["--config=configs/gffn.py:smoke", f"--workdir={wd}", "--config.model.width=8",
                 "--config.num_epochs=2", "--config.drop_remainder=True",
                 "--config.data.train_transforms=crop,flip", "--config.data.crop_padding=2",
                 "--config.data.digits_test_fraction=0.3", "--config.data.label_key=label",
                 "--config.evals.names=classification", "--config.evals.checkpoint=latest"])
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.load(open(os.path.join(wd, "data.json")))
    assert data["num_test"] + data["num_heldout_test"] == round(0.3 * 1797)   # not 359
    n_train = data["num_train"]
    final = json.load(open(os.path.join(wd, "final_metrics.json")))
    assert final["step"] == 2 * (n_train // 64) and n_train % 64       # remainder dropped
    assert final["checkpoint"] == f"latest (step {final['step']})"
    assert "remainder dropped" in r.stdout and "train transforms=crop,flip" in r.stdout
    r = run_cli(["--config=configs/gffn.py:smoke", f"--workdir={wd}x",
                 "--config.data.train_transforms=crop,rotate"])
    assert r.returncode == 1 and "error:" in r.stderr and "valid choices" in r.stderr
