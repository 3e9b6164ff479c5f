"""A damaged run directory (issue 22, section 4): each case damages a copy of one finished
tiny run, runs a real command on it, and expects one ``error: ...`` line naming the thing
and what to do, with nothing written, or, where the damage can be worked around, a run that
goes on and says what it ignored.

The cases share one Python process that imported the library once and forks a child per
case (the driver of tests/test_cli_errors.py). The full-disk case mounts a small tmpfs
(root only; skipped, saying why, where mounting is not allowed).
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess

import pytest

from tests.helpers import run_cli
from tests.test_cli_errors import run_driver
from tests.test_rundir import _snapshot

ARGS = ["--config=configs/gffn.py:smoke", "--config.model.width=4",
        "--config.model.hidden=(16,)", "--config.evals.names=classification",
        "--config.num_steps=6", "--config.checkpoint_every=3", "--config.log_every=3"]
MORE = ["--config.num_steps=9", "--allow_config_change"]       # a budget change: resumes


def _stray(wd):
    os.makedirs(os.path.join(wd, "checkpoints", "999", "garbage"))


def _half_deleted(wd):
    """What a kill -9 while orbax deletes the old step 3 leaves: some of its entries."""
    step = os.path.join(wd, "checkpoints", "3")
    os.remove(os.path.join(step, "_CHECKPOINT_METADATA"))
    shutil.rmtree(os.path.join(step, "train"))
    for f in glob.glob(os.path.join(step, "model", "*"))[:2]:
        shutil.rmtree(f) if os.path.isdir(f) else os.remove(f)


def _corrupt_latest(wd):
    for f in glob.glob(os.path.join(wd, "checkpoints", "6", "model", "**"), recursive=True):
        if os.path.isfile(f):
            open(f, "wb").write(b"garbage" * 3)


def _truncate(name, keep=-7):
    def damage(wd):
        text = open(os.path.join(wd, name)).read()
        open(os.path.join(wd, name), "w").write(text[:keep])
    return damage


def _break_line(wd):
    lines = open(os.path.join(wd, "metrics.jsonl")).read().splitlines(True)
    lines[1] = "{not json\n"
    open(os.path.join(wd, "metrics.jsonl"), "w").write("".join(lines))


# (id, damage, extra args, exit code, substrings of the output: stderr when refused, the
# whole output when it goes on)
CASES = [
    ("stray_dir_eval", _stray, ["--mode=eval", "--checkpoint=latest"], 0,
     ["ignoring {wd}/checkpoints/999: not a checkpoint"]),
    ("stray_dir_train", _stray, MORE, 1,
     ["error: CheckpointStrayError: {wd}/checkpoints/999: not a checkpoint",
      "Move it out of {wd}/checkpoints"]),
    ("half_deleted_eval", _half_deleted, ["--mode=eval", "--checkpoint=latest"], 0,
     ["ignoring {wd}/checkpoints/3: an older checkpoint whose deletion was cut short"]),
    ("half_deleted_train", _half_deleted, MORE, 0,
     ["removing {wd}/checkpoints/3: an older checkpoint whose deletion was cut short"]),
    ("corrupt_checkpoint_eval", _corrupt_latest, ["--mode=eval", "--checkpoint=latest"], 1,
     ["error: CheckpointCorruptError: checkpoint {wd}/checkpoints/6 cannot be read",
      "evaluate another step (--checkpoint=STEP; steps here: [3])"]),
    ("corrupt_checkpoint_train", _corrupt_latest, MORE, 1,
     ["checkpoint {wd}/checkpoints/6 cannot be read", "move {wd}/checkpoints/6 out of"]),
    ("corrupt_config_json", _truncate("config.json"), ["--mode=eval"], 1,
     ["error: CorruptFileError: {wd}/config.json is not valid JSON"]),
    ("corrupt_final_metrics", _truncate("final_metrics.json"), [], 1,
     ["error: CorruptFileError: {wd}/final_metrics.json is not valid JSON", "remove it"]),
    ("broken_metrics_line", _break_line, MORE, 1,
     ["error: ValueError: {wd}/metrics.jsonl line 2 is not valid JSON"]),
    ("truncated_metrics_last_line", _truncate("metrics.jsonl", keep=-5), MORE, 0,
     ["{wd}/metrics.jsonl: its last line is truncated"]),
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("damage") / "run")
    r = run_cli([*ARGS, f"--workdir={wd}"])
    assert r.returncode == 0, r.stderr
    return wd


@pytest.fixture(scope="module")
def results(trained, tmp_path_factory):
    """{case: (exit code, stdout, stderr, snapshot before, snapshot after, workdir)}."""
    root = str(tmp_path_factory.mktemp("damage_cases"))
    spec, snaps = [], {}
    for cid, damage, extra, _, _ in CASES:
        wd = os.path.join(root, cid)
        shutil.copytree(trained, wd)
        damage(wd)
        snaps[cid] = (_snapshot(wd), wd)
        spec.append({"id": cid, "argv": [*ARGS, *extra, f"--workdir={wd}"],
                     "stdout": os.path.join(root, cid + ".out"),
                     "stderr": os.path.join(root, cid + ".err")})
    codes = run_driver(spec, root)
    return {s["id"]: (codes[s["id"]], open(s["stdout"]).read(), open(s["stderr"]).read(),
                      snaps[s["id"]][0], _snapshot(snaps[s["id"]][1]), snaps[s["id"]][1])
            for s in spec}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_damaged_run_directory(results, case):
    cid, _, _, code, needles = case
    got, out, err, before, after, wd = results[cid]
    assert got == code, (out, err)
    assert "Traceback" not in err, err
    text = err if code else out + err
    for n in needles:
        assert n.format(wd=wd) in text, (n.format(wd=wd), text)
    if code:              # refused: one line, and the run directory is as it was
        assert err.count("\n") == 1 and err.startswith("error: "), err
        assert after == before


def test_a_half_deleted_checkpoint_is_removed_and_the_run_goes_on(results):
    *_, wd = results["half_deleted_train"]
    assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["6", "9"]
    *_, wd = results["half_deleted_eval"]                    # reading leaves it as it was
    assert "3" in os.listdir(os.path.join(wd, "checkpoints"))


def test_a_full_disk_is_one_error_and_leaves_no_partial_checkpoint(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip()}): needs root")
    try:
        st = os.statvfs(mnt)
        with open(mnt / "filler", "wb") as f:          # leave ~40 KiB: no room for a checkpoint
            f.write(b"x" * (st.f_bavail * st.f_frsize - 40 * 1024))
        wd = mnt / "run"
        r = run_cli([*ARGS, f"--workdir={wd}"])
        assert r.returncode == 1, r.stdout + r.stderr
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.startswith(f"error: CheckpointWriteError: checkpoint step 3 could not "
                                   f"be written to {wd}/checkpoints: "), r.stderr
        assert "No space left on device" in r.stderr or "RESOURCE_EXHAUSTED" in r.stderr
        assert "the last complete checkpoint is none" in r.stderr
        assert os.listdir(wd / "checkpoints") == []                # nothing partial left
        assert not os.path.exists(wd / ".lock")
        os.remove(mnt / "filler")
        r = run_cli([*ARGS, f"--workdir={wd}"])                    # the same command resumes
        assert r.returncode == 0, r.stderr
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_a_run_that_diverges_before_its_first_checkpoint_says_there_is_none(tmp_path):
    """The toy family's loss is NaN at its third step; with the first checkpoint due at step
    5 there is no last good checkpoint, and the error says so (not "step None")."""
    from jaxhybrid.train import NonFiniteLossError, train_and_evaluate
    from tests.test_training import _skip_config
    c = _skip_config()
    c.checkpoint_every, c.optimizer.skip_nonfinite = 5, False
    with pytest.raises(NonFiniteLossError, match="no checkpoint was saved") as e:
        train_and_evaluate(c, str(tmp_path))
    assert "None" not in str(e.value)
