"""The one trainer: any model family, any device count, resumable.

``train_and_evaluate(config, workdir) -> dict`` trains ``config.family`` with the
jitted, state-donating, shard_map'd step of :mod:`jaxhybrid.train_step`, logs the
loss, the family's aux scalars, learning rate, examples/s and ETA to the log and to
``workdir/metrics.jsonl`` (:mod:`jaxhybrid.progress`), validates on the family's
selection metric and checkpoints with orbax (resuming automatically from the latest
checkpoint in ``workdir``; :mod:`jaxhybrid.selection` keeps the best and stops
early), stops on a non-finite loss keeping the last good checkpoint, and finally runs
the evaluators of ``config.evals`` on the selected checkpoint (``evals.checkpoint``)
and writes ``final_metrics.json``, naming that evaluation.

The run directory holds one experiment (:mod:`jaxhybrid.rundir`): a config that
differs from the saved one in a training field is refused, and every check (config,
workdir, checkpoint shapes) passes before anything is written. A complete run re-run
with the same config changes nothing. SIGINT/SIGTERM stop it cleanly after the current
step with a committed checkpoint (:mod:`jaxhybrid.interrupts`).

The state is the plain pytree ``{params, model_state, opt_state, step, rng}``; the
step's randomness is the step's key split into named streams and keyed per example
(:mod:`jaxhybrid.rng`), so it is replayed exactly on resume and on any device count.
"""
from __future__ import annotations

import json
import logging
import math

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxhybrid import evaluate, logs, selection, tblog
from jaxhybrid.checkpointing import Checkpointer, run_path
from jaxhybrid.data.resident import make_train_batches
from jaxhybrid.experiment import (Experiment, abstract_model, abstract_state,
                                  build_experiment, create_state)
from jaxhybrid.families.base import variables_of
from jaxhybrid.interrupts import Interrupted, StopSignals
from jaxhybrid.optim import make_optimizer, make_schedule, scaled_learning_rate
from jaxhybrid.predictor import Predictor
from jaxhybrid.progress import JsonlWriter, NonFiniteLossError, ProgressLog
from jaxhybrid.rundir import RunDir, check_usable, write_atomic
from jaxhybrid.runlock import RunLock
from jaxhybrid.selection import Selector
# the step itself: jaxhybrid.train_step (re-exported, as callers import it from here)
from jaxhybrid.train_step import accumulation_steps, make_train_step, skip_rule

log = logging.getLogger("jaxhybrid")

__all__ = ["train_and_evaluate", "make_train_step", "training_plan", "accumulation_steps",
           "NonFiniteLossError"]


def training_plan(config, steps_per_epoch: int) -> dict:
    if config.num_steps > 0:
        total = int(config.num_steps)
    else:
        total = int(math.ceil(config.num_epochs * steps_per_epoch))
    return {"steps_per_epoch": steps_per_epoch, "total_steps": max(total, 1),
            "checkpoint_every": int(config.checkpoint_every or steps_per_epoch)}


def _log_setup(exp: Experiment, plan: dict, workdir: str) -> None:
    config, mesh = exp.config, exp.mesh
    data_json = run_path(workdir) / "data.json"
    if jax.process_index() == 0 and not data_json.exists():   # provenance of the data
        write_atomic(data_json, json.dumps(exp.splits.description, indent=2,
                                           sort_keys=True, default=str))
    n_dev = mesh.devices.size
    log.info("family=%s %s | data=%s train/val/test=%d/%d/%d classes=%d input=%s "
             "train transforms=%s", exp.family.name, exp.family.describe, exp.splits.name,
             len(exp.splits.train), len(exp.splits.validation), len(exp.splits.test),
             exp.splits.num_classes, exp.input_shape, ",".join(exp.transforms.names) or "none")
    log.info("global batch %d = %d devices × %d per device (%d host(s)); %d steps "
             "(%d per epoch%s); peak lr %.3g (%s scaling from batch %d)",
             config.batch_size, n_dev, config.batch_size // n_dev, jax.process_count(),
             plan["total_steps"], plan["steps_per_epoch"],
             ", remainder dropped" if config.drop_remainder else "",
             scaled_learning_rate(config.optimizer, config.batch_size),
             config.optimizer.lr_scaling, config.optimizer.base_batch_size)


def _start(exp: Experiment, ckpt: Checkpointer, optimizer, batches, selector: Selector):
    """The state to train from: the latest checkpoint's (its shapes checked against the
    config), or a fresh one from batch 0. Writes nothing."""
    latest = ckpt.latest_step()
    if latest is not None:
        state, meta = ckpt.restore(latest, abstract_state(exp, optimizer, exp.config.seed))
        selector.load(meta.get("selector", {}))
        log.info("resumed from checkpoint step %d in %s", latest, ckpt.directory)
    else:
        state = create_state(exp, optimizer, exp.config.seed, batches.batch(0))
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state["params"]))
    log.info("parameters: %s", f"{n_params:,}")
    return state


def validate(exp: Experiment, predictor, variables) -> dict:
    """The family's validation metrics on the validation split, as ``val_<name>``."""
    if not len(exp.splits.validation):
        return {}
    out = predictor.outputs(variables, exp.splits.validation, exp.family.validation_outputs)
    return {f"val_{k}": float(v) for k, v in exp.family.validate(out).items()}


class _Run:
    """One training run's moving parts (state, checkpoints, logs); ``train`` loops.
    Everything is checked before the first write (config.json, data.json, metrics.jsonl,
    checkpoints/)."""

    def __init__(self, config, workdir: str, signals: StopSignals, changes: dict):
        self.config, self.workdir, self.signals = config, workdir, signals
        exp = self.exp = build_experiment(config)
        if config.early_stopping_patience and not len(exp.splits.validation):
            raise ValueError("early_stopping_patience needs a validation split "
                             "(data.validation_size > 0)")
        batches = make_train_batches(exp, config)
        self.batches, self.plan = batches, training_plan(config, batches.steps_per_epoch)
        self.total = self.plan["total_steps"]
        schedule = make_schedule(config.optimizer, config.batch_size, self.total,
                                 self.plan["steps_per_epoch"])
        optimizer = make_optimizer(config.optimizer, schedule)
        self.selector = Selector(exp.family.select_key, exp.family.select[1],
                                 int(config.early_stopping_patience))
        self.ckpt = Checkpointer(workdir, keep=config.keep_checkpoints)
        self.state = _start(exp, self.ckpt, optimizer, batches, self.selector)
        self.start = int(jax.device_get(self.state["step"]))
        self.jsonl = JsonlWriter(run_path(workdir) / "metrics.jsonl", self.start)
        # every check has passed: from here on the run directory is written
        RunDir(workdir).record_start(config, changes, self.start)
        logs.attach_workdir(run_path(workdir))
        _log_setup(exp, self.plan, workdir)
        self.train_step = make_train_step(exp, optimizer, schedule, self.plan["steps_per_epoch"],
                                          skip=skip_rule(config.optimizer))
        self.predictor = Predictor(exp)
        self.jsonl.sink = tblog.open_sink(config, run_path(workdir))
        self.progress = ProgressLog(
            self.jsonl, total=self.total, batch_size=config.batch_size,
            steps_per_epoch=self.plan["steps_per_epoch"],
            max_consecutive_skips=int(config.optimizer.get("max_consecutive_skips", 10)))

    def save(self, step_done: int, validation: dict) -> None:
        """Checkpoint the state with the selector's verdict on ``validation`` (may be {})."""
        metrics = self.selector.checkpoint_metrics(step_done, validation)
        self.ckpt.save(step_done, self.state, metrics=metrics,
                       meta={"selector": self.selector.state_dict()})
        if validation:
            selected = metrics[selection.SELECTED_AT] == step_done
            log.info("step %d validation: %s%s", step_done,
                     ", ".join(f"{k}={v:.4f}" for k, v in validation.items()),
                     " (selected: best so far)" if selected else "")

    def validate_and_save(self, step_done: int) -> None:
        metrics = validate(self.exp, self.predictor, variables_of(self.state))
        if metrics:
            self.jsonl.write({"kind": "validation", "step": step_done, **metrics})
        self.save(step_done, metrics)

    def stop_for_signal(self, step_done: int, signum: int):
        """Let the save in flight commit, save ``step_done`` unless it is saved (or nothing
        was trained) and the state is finite; then raise Interrupted."""
        self.progress.flush()                # a non-finite state raises: it is not saved
        self.ckpt.wait()
        if step_done > self.start and self.ckpt.latest_step() != step_done:
            self.save(step_done, {})
            self.ckpt.wait()
        raise Interrupted(signum, f"interrupted at step {step_done}; last complete checkpoint "
                                  f"{self.ckpt.latest_step()}; re-run the same command to "
                                  f"resume")

    def _out_of_time(self, step_done: int) -> bool:
        """Whether the wall-clock budget (``max_train_seconds``) is spent. Checked at log
        and checkpoint steps only, which every host reaches together; process 0's clock
        decides and the decision is broadcast, so all hosts validate, checkpoint and stop
        at the same step (hosts deciding on their own clocks would part ways inside the
        collectives and hang)."""
        budget = self.config.max_train_seconds
        if not budget > 0 or (step_done % self.config.log_every
                              and step_done % self.plan["checkpoint_every"]):
            return False
        spent = budget < self.progress.elapsed()
        if jax.process_count() > 1:
            spent = bool(multihost_utils.broadcast_one_to_all(np.int32(spent)))
        return spent

    def _stop_reason(self, out_of_time: bool) -> str | None:
        if self.selector.should_stop:
            return self.selector.stop_reason()
        if out_of_time:
            return f"wall-clock budget of {self.config.max_train_seconds:.0f} s"
        return None

    def _evaluate_now(self, step_done: int) -> None:
        """``eval_every``: the suite on the current state; a signal stops the run."""
        try:
            with self.signals.raising():
                evaluate.run_suite(self.exp, variables_of(self.state), step_done,
                                   self.workdir, predictor=self.predictor)
        except Interrupted as e:
            self.stop_for_signal(step_done, e.signum)

    def train(self) -> tuple[int, str]:
        """Train from ``start``; returns (last step done, why it stopped)."""
        config, step_done = self.config, self.start
        if self.selector.should_stop and self.start:   # a run that already stopped early
            return step_done, self.selector.stop_reason()
        signum = self.signals.requested(at_sync_point=True)
        if signum:                                     # received while setting up
            self.stop_for_signal(step_done, signum)
        for step, batch in self.batches.iterate(self.start, self.total):
            self.state, metrics = self.train_step(self.state, batch)
            step_done = step + 1
            self.progress.add(step_done, metrics)
            eval_now = bool(config.eval_every) and step_done % config.eval_every == 0 \
                and step_done < self.total
            out_of_time = self._out_of_time(step_done)
            save_now = (step_done % self.plan["checkpoint_every"] == 0
                        or step_done == self.total or out_of_time)
            sync = step_done % config.log_every == 0 or step_done == self.total or save_now \
                or eval_now
            if sync:
                self.progress.flush()          # the NaN check precedes any use of the state
                self.ckpt.poll()
            if save_now:
                self.validate_and_save(step_done)
                reason = self._stop_reason(out_of_time)
                if reason:
                    log.info("stopping at step %d: %s", step_done, reason)
                    return step_done, reason
            signum = self.signals.requested(at_sync_point=sync)
            if signum:
                self.stop_for_signal(step_done, signum)
            if eval_now:
                self._evaluate_now(step_done)
        if self.start == self.total:
            log.info("run already trained to step %d; evaluating", self.total)
        return step_done, "completed"

    def run(self) -> tuple[int, str]:
        try:
            return self.train()
        except NonFiniteLossError as e:
            self.ckpt.wait()
            last = self.ckpt.latest_step()
            kept = (f"the last good checkpoint is step {last} in {self.ckpt.directory} "
                    f"(nothing after it was saved)" if last is not None else
                    "no checkpoint was saved (it diverged before the first)")
            raise NonFiniteLossError(
                f"{e} Stopping; {kept}. Lower the learning "
                f"rate, enable --config.optimizer.grad_clip_norm, or skip such updates "
                f"(--config.optimizer.skip_nonfinite=True, skip_grad_norm).") from None
        finally:
            self.ckpt.wait()

    def final_evaluation(self, step_done: int, stopped: str) -> dict:
        """The suite on the ``evals.checkpoint`` (best|latest) step, as
        :func:`jaxhybrid.selection.resolve` reads it from the committed checkpoints."""
        step, label = selection.resolve(self.ckpt, self.config.evals.checkpoint)
        best_step = selection.saved_state(self.ckpt).get("best_step")
        if step == step_done:
            variables = variables_of(self.state)
        else:
            variables = variables_of(self.ckpt.restore_model(step, abstract_model(self.exp)))
        self.ckpt.close()
        out = evaluate.run_suite(self.exp, variables, step, self.workdir,
                                 predictor=self.predictor, checkpoint_label=label)
        final = {**out, "step": step_done, "evaluated_step": step, "checkpoint": label,
                 "best_step": best_step, "stopped": stopped,
                 "train_seconds": self.progress.elapsed(),
                 "workdir": str(run_path(self.workdir))}
        self.jsonl.write({"kind": "final", "step": step_done, **{
            k: v for k, v in final.items() if isinstance(v, (int, float, str))}})
        return final


def _complete(run_dir: RunDir, final: dict) -> dict:
    log.info("run in %s is complete (step %s, %s): nothing to do. Its result: %s, evaluation "
             "%s (report.md). To evaluate it otherwise: --mode=eval", run_dir.path,
             final.get("step"), final.get("stopped"), run_dir.path / "final_metrics.json",
             run_dir.path / str(final.get("eval_dir")))
    return final


def train_and_evaluate(config, workdir: str, *, allow_config_change: bool = False) -> dict:
    """Train (or resume) in ``workdir``; returns the final metrics dict (that of
    final_metrics.json). ``allow_config_change``: let budget fields differ from the saved
    config (:data:`jaxhybrid.rundir.BUDGET_FIELDS`)."""
    check_usable(workdir)
    with RunLock(workdir):
        return _train_and_evaluate(config, workdir, allow_config_change)


def _train_and_evaluate(config, workdir: str, allow_config_change: bool) -> dict:
    run_dir = RunDir(workdir)
    changes = run_dir.check_train(config, allow_config_change)
    final = run_dir.final()
    if final is not None and not changes:
        return _complete(run_dir, final)
    signals = StopSignals()
    with signals.installed():
        run = _Run(config, workdir, signals, changes)
        step_done, stopped = run.run()
        try:
            with signals.raising():
                final = run.final_evaluation(step_done, stopped)
        except Interrupted as e:
            raise Interrupted(e.signum, f"interrupted at step {step_done} during the final "
                                        f"evaluation (not written); last complete checkpoint "
                                        f"{step_done}; re-run the same command to evaluate "
                                        f"it") from None
        run_dir.write_final(final)   # marks the run as finished (sweeps skip finished points)
    return final
