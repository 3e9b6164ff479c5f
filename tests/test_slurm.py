"""A real SLURM: jobs submitted with ``sbatch launch/slurm_cpu.sbatch`` to a running cluster,
e.g. the one-node cluster on localhost of ``launch/slurm_local/setup.sh``.

``make test-slurm`` sets that cluster up and runs this file. Elsewhere the tests are
skipped when no SLURM answers (``sinfo``), unless ``JAXHYBRID_REQUIRE_SLURM=1`` (set by
``make test-slurm``), which turns that skip into a failure.

Every job has 2 tasks, started by ``srun``. Each task is one process with 4 CPU devices,
joined through the explicit start-up: ``--coordinator_address`` is the job's first node
(``scontrol show hostnames``), ``--num_processes=$SLURM_NTASKS`` and
``--process_id=$SLURM_PROCID``. The chain:

- ``killed``: SIGKILL to both tasks once checkpoint 12 is saved (``scancel --signal=KILL
  JOB.0``: the job's step; a crash, or the OOM killer). A plain ``scancel`` of the job
  sends SIGTERM first and SIGKILL only KillWait seconds later (see below);
- ``resumed``: the same ``sbatch`` command again. It resumes, finishes and evaluates.
  Beside it, this process trains the same config and seed on its 8 devices;
- ``eval``: ``--mode=eval`` of that run directory, queued with ``--dependency=afterok``.

``test_sigterm_preemption_saves_and_resumes`` cancels a job the way a cluster preempts:
plain ``scancel``, i.e. SIGTERM to every task, then SIGKILL KillWait seconds later. It
asserts the graceful-interruption contract: stop after the current step N, save a
checkpoint M of it, print ``interrupted at step N; last complete checkpoint M; re-run
the same command to resume``, exit with status 143 and no traceback.

Both interrupted jobs pause right after logging the save the test waits for, until a
signal arrives (``JAXHYBRID_TEST_PAUSE_AFTER_SAVE``, tests/save_gate.py, through the
``sitecustomize`` of tests/fixtures/save_gate on the jobs' PYTHONPATH): where the signal
lands does not depend on how fast the test polls the job's output or on the machine's load.
The time limits are safety nets of many minutes, and ``max_train_seconds`` (an hour) never
stops a run here.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import gffn
from jaxhybrid.checkpointing import Checkpointer, run_path
from jaxhybrid.data.loading import digits_arrays
from jaxhybrid.evaluators import suite
from jaxhybrid.train import train_and_evaluate
from tests import save_gate
from tests.helpers import REPO, apply_overrides, evaluation_metrics, restore_params

pytestmark = pytest.mark.slurm

SCRIPT = "launch/slurm_cpu.sbatch"
CONFIG = "configs/gffn.py:smoke"
STEPS = 40              # enough steps after checkpoint 8 for scancel to land mid-run
OVERRIDES = {"model.width": 4, "num_steps": STEPS, "checkpoint_every": 4, "log_every": 2,
             "evals.names": "classification,calibration", "max_train_seconds": 3600.0,
             "data.source": "npz"}
LIMIT_S = 900           # per job, from submission to its end (a safety net: a job takes
                        # well under a minute on an idle machine)
# where launch/slurm_local/setup.sh writes its config
DEFAULT_CONF = os.path.join(os.environ.get("JAXHYBRID_SLURM_DIR", "/var/tmp/jaxhybrid-slurm"),
                            "slurm.conf")
STARTUP_VARS = ("JAXHYBRID_DISTRIBUTED", "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES",
                "JAX_PROCESS_ID", "XLA_FLAGS")
LIVE = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED")
INTERRUPTED = re.compile(r"interrupted at step (\d+); last complete checkpoint (\d+); "
                         r"re-run the same command to resume")


def _slurm_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in STARTUP_VARS}
    if "SLURM_CONF" not in env and os.path.exists(DEFAULT_CONF):
        env["SLURM_CONF"] = DEFAULT_CONF
    return env


def _slurm(*args: str, check: bool = True) -> str:
    r = subprocess.run(args, env=_slurm_env(), capture_output=True, text=True, timeout=120)
    if check and r.returncode:
        raise AssertionError(f"{' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


def _slurm_problem() -> str | None:
    """Why no job can run here, or None when a node is up."""
    if not shutil.which("sbatch") or not shutil.which("sinfo"):
        return "no SLURM client commands (sbatch, sinfo) on PATH"
    conf = _slurm_env().get("SLURM_CONF")
    if conf and not os.path.exists(conf):
        return f"SLURM_CONF={conf} does not exist"
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%T"], env=_slurm_env(), capture_output=True,
                           text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 60 s"
    if r.returncode:
        return f"sinfo failed: {r.stderr.strip()[-300:]}"
    states = r.stdout.split()
    if not set(states) & {"idle", "mixed", "allocated", "completing"}:
        return f"no node is up (sinfo: {' '.join(states) or 'no nodes'})"
    return None


@pytest.fixture(scope="module")
def slurm():
    problem = _slurm_problem()
    if problem is None:
        return
    message = (f"no SLURM cluster: {problem}. Set one up with launch/slurm_local/setup.sh "
               f"(as root), or run make test-slurm")
    if os.environ.get("JAXHYBRID_REQUIRE_SLURM") == "1":
        pytest.fail(f"JAXHYBRID_REQUIRE_SLURM=1 but {message}")
    pytest.skip(message)


class Job:
    """``sbatch SCRIPT CONFIG WORKDIR --config.K=V... EXTRA`` (cwd: the repository);
    ``pause_after_save=N``: the job's processes pause after saving checkpoint N until a
    signal arrives (tests/save_gate.py)."""

    def __init__(self, name: str, tmp, workdir, *extra: str, sbatch_options=(),
                 pause_after_save: int | None = None):
        self.name, self.out = name, tmp / f"{name}.out"
        gate = ({"PYTHONPATH": os.pathsep.join((save_gate.SITE_DIR, REPO)),
                 save_gate.ENV: str(pause_after_save)} if pause_after_save else {})
        env = {**_slurm_env(), "PYTHON": sys.executable, "PYTHONPATH": REPO,
               "JAXHYBRID_DISTRIBUTED_TIMEOUT": "300",
               "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
               "JAX_COMPILATION_CACHE_DIR": os.environ.get("JAX_COMPILATION_CACHE_DIR")
               or str(tmp / "jax_cache"), **gate}      # the gate's PYTHONPATH wins
        overrides = {**OVERRIDES, "data.npz_path": str(tmp / "digits.npz")}
        cmd = ["sbatch", "--parsable", f"--job-name=jaxhybrid-test-{name}",
               f"--output={self.out}", "--time=20", *sbatch_options, SCRIPT, CONFIG,
               str(workdir), *(f"--config.{k}={v}" for k, v in overrides.items()), *extra]
        r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"{' '.join(cmd)}: {r.stderr}"
        self.id = r.stdout.strip().split(";")[0]
        self.start = time.monotonic()

    def output(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else ""

    def state(self) -> tuple[str, str]:
        """(JobState, ExitCode) as ``scontrol show job`` gives them."""
        fields = dict(f.split("=", 1) for f in _slurm("scontrol", "-o", "show", "job",
                                                       self.id).split() if "=" in f)
        return fields["JobState"], fields["ExitCode"]

    def _fail(self, what: str):
        _slurm("scancel", self.id, check=False)
        raise AssertionError(f"job {self.name} ({self.id}): {what}\n--- output:\n"
                             + self.output()[-4000:])

    def wait_for(self, text: str) -> None:
        """Until ``text`` is in the output (read every 0.05 s; the job's state every 0.5 s)."""
        checked = 0.0
        while text not in self.output():
            if time.monotonic() - checked > 0.5:
                checked = time.monotonic()
                if (state := self.state())[0] not in LIVE and text not in self.output():
                    self._fail(f"ended {state} before printing {text!r}")
                if checked - self.start > LIMIT_S:
                    self._fail(f"no {text!r} after {LIMIT_S} s; cancelled")
            time.sleep(0.05)

    def wait(self, expected: str) -> "Job":
        while (state := self.state())[0] in LIVE:
            if time.monotonic() - self.start > LIMIT_S:
                self._fail(f"still {state[0]} after {LIMIT_S} s; cancelled")
            time.sleep(0.25)
        self.seconds = time.monotonic() - self.start
        if state[0] != expected:
            self._fail(f"ended {state}, expected {expected}")
        return self



def _config(tmp):
    return apply_overrides(gffn.get_config("smoke"),
                           {**OVERRIDES, "data.npz_path": str(tmp / "digits.npz")})


def _train_steps_and_losses(workdir) -> tuple[list[int], list[float]]:
    records = [r for r in map(json.loads, (run_path(workdir) / "metrics.jsonl").read_text()
                              .splitlines()) if r["kind"] == "train"]
    return [r["step"] for r in records], [r["loss"] for r in records]


def _checkpoints(workdir) -> list[int]:
    ckpt = Checkpointer(workdir, read_only=True)
    try:
        return list(ckpt.all_steps())
    finally:
        ckpt.close()


@pytest.fixture(scope="module")
def chain(slurm, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("slurm")
    digits = digits_arrays()
    np.savez(tmp / "digits.npz", **{f"{xy}_{split}": digits[split][j]
                                    for split in ("train", "test") for j, xy in enumerate("xy")})
    t0 = time.monotonic()
    jobs: list[Job] = []
    try:
        jobs.append(killed := Job("killed", tmp, tmp / "run", pause_after_save=12))
        killed.wait_for("checkpoint saved at step 12")   # and paused there until killed
        _slurm("scancel", "--signal=KILL", f"{killed.id}.0")   # the step: its 2 tasks
        killed.wait("FAILED")
        resumable = _checkpoints(tmp / "run")
        jobs.append(resumed := Job("resumed", tmp, tmp / "run"))
        # other evaluation settings than the training's end: a new evaluation, computed
        jobs.append(evaluated := Job("eval", tmp, tmp / "run", "--mode=eval",
                                     "--config.evals.seed=1",
                                     sbatch_options=[f"--dependency=afterok:{resumed.id}"]))
        one = train_and_evaluate(_config(tmp), str(tmp / "one_process"))
        resumed.wait("COMPLETED")
        evaluated.wait("COMPLETED")
    finally:
        for job in jobs:
            _slurm("scancel", job.id, check=False)
    print(f"\nSLURM jobs and the 1-process run beside them: {time.monotonic() - t0:.1f} s; "
          + ", ".join(f"{j.name} {j.seconds:.1f} s" for j in jobs))
    return dict(tmp=tmp, killed=killed, resumed=resumed, evaluated=evaluated, one=one,
                resumable=resumable)


def test_sbatch_starts_two_tasks_through_the_explicit_startup(chain):
    for name in ("killed", "resumed", "evaluated"):
        out = chain[name].output()
        for i in (0, 1):
            # the coordinator is the job's node, named by scontrol (not auto-detected)
            assert re.search(rf"starting jax\.distributed \(process {i} of 2, coordinator "
                             rf"localhost:\d+\)", out), name
            assert f"jax.distributed initialised: process {i} of 2, 4 local / 8 global " \
                   f"devices" in out, name
    assert "8 devices × 8 per device (2 host(s))" in chain["resumed"].output()
    assert re.search(r"srun: error: \S+: tasks? [0-9,-]+: Killed", chain["killed"].output())


def test_resubmitted_job_resumes_after_scancel_and_matches_one_process(chain):
    tmp, resumed = chain["tmp"], chain["resumed"]
    # the job paused after checkpoint 12 was saved until the kill (save_gate): 12 is the
    # last checkpoint, complete, and no later one was started
    assert chain["resumable"] and chain["resumable"][-1] == 12, chain["resumable"]
    assert f"resumed from checkpoint step {chain['resumable'][-1]}" in resumed.output()
    steps, losses = _train_steps_and_losses(tmp / "run")
    one_steps, one_losses = _train_steps_and_losses(tmp / "one_process")
    assert steps == one_steps == list(range(2, STEPS + 1, 2))   # contiguous, each step once
    np.testing.assert_allclose(losses, one_losses, rtol=1e-5)
    final = json.loads((tmp / "run" / "final_metrics.json").read_text())
    assert final["step"] == STEPS and final["stopped"] == "completed"
    for key, value in chain["one"].items():
        if isinstance(value, float) and key != "train_seconds":
            assert final[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert final["checkpoint"] == chain["one"]["checkpoint"]


def test_eval_job_writes_the_report(chain):
    tmp = chain["tmp"]
    trained = json.loads((tmp / "run" / "final_metrics.json").read_text())
    step = trained["evaluated_step"]                       # the best checkpoint's
    saved = evaluation_metrics(tmp / "run", step, seed=1)
    report = tmp / "run" / "eval" / str(step) / saved["eval_id"]
    assert re.search(rf"evaluation at step {step} \(.*\) written to {re.escape(str(report))}",
                     chain["evaluated"].output())
    assert saved["step"] == step and saved["checkpoint"].startswith(f"best (step {step},")
    headline = suite.headline(saved)
    for key in ("accuracy", "nll", "ece", "brier"):
        assert headline[key] == pytest.approx(trained[key], rel=1e-6), key
    c = saved["classification"]
    assert (f"| test | 288 | {c['accuracy']:.4f} | {c['nll']:.4f} |"
            in (report / "report.md").read_text())
    # re-evaluating never changes the run's result
    assert json.loads((tmp / "run" / "final_metrics.json").read_text()) == trained


def test_sigterm_preemption_saves_and_resumes(chain):
    """Needs the trainer's graceful SIGTERM handling (stop after the current step, save it,
    exit 128+15 with one line, no traceback); fails until the trainer has it."""
    tmp = chain["tmp"]
    jobs: list[Job] = []
    try:
        jobs.append(preempted := Job("preempted", tmp, tmp / "preempted", pause_after_save=8))
        preempted.wait_for("checkpoint saved at step 8")     # paused there until SIGTERM
        _slurm("scancel", preempted.id)                     # SIGTERM; SIGKILL after KillWait
        preempted.wait("CANCELLED")
        out = preempted.output()
        found = INTERRUPTED.search(out)
        assert found, ("the job's output has no 'interrupted at step N; last complete "
                       "checkpoint M; re-run the same command to resume' line: SIGTERM was "
                       "not handled gracefully\n" + out[-3000:])
        n, m = int(found[1]), int(found[2])
        assert 8 <= m == n < STEPS, (n, m)
        assert "Traceback" not in out, out[-3000:]
        assert re.search(r"srun: error: \S+: tasks? [0-9,-]+: Exited with exit code 143", out)
        assert not re.search(r"tasks? [0-9,-]+: (Killed|Terminated)", out)
        assert _checkpoints(tmp / "preempted")[-1] == m
        jobs.append(again := Job("preempted_again", tmp, tmp / "preempted"))
        again.wait("COMPLETED")
    finally:
        for job in jobs:
            _slurm("scancel", job.id, check=False)
    assert f"resumed from checkpoint step {m}" in again.output()
    steps, losses = _train_steps_and_losses(tmp / "preempted")
    grid = list(range(2, STEPS + 1, 2))                        # each step once, in order;
    assert steps in (grid, sorted({*grid, n})), steps          # the interrupted one may be logged
    straight = dict(zip(*_train_steps_and_losses(tmp / "run")))
    assert {s: l for s, l in zip(steps, losses) if s in straight} == straight
    c = _config(tmp)
    step_a, straight = restore_params(c, str(tmp / "run"))
    step_b, preempted_params = restore_params(c, str(tmp / "preempted"))
    assert step_a == step_b == STEPS
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(preempted_params), strict=True):
        np.testing.assert_array_equal(a, b)
