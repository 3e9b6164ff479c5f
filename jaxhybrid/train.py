"""The one trainer: any model family, any device count, resumable.

``train_and_evaluate(config, workdir) -> dict`` trains ``config.family`` with a
jitted, state-donating, shard_map'd step (see :mod:`jaxhybrid.parallel`), logs the
loss, the family's aux scalars, learning rate, examples/s and ETA to the log and to
``workdir/metrics.jsonl`` (:mod:`jaxhybrid.progress`), validates on the family's
selection metric and checkpoints with orbax (resuming automatically from the latest
checkpoint in ``workdir``; :mod:`jaxhybrid.selection` keeps the best and stops
early), stops on a non-finite loss keeping the last good checkpoint, and finally runs
the evaluators of ``config.evals`` on the selected checkpoint (``evals.checkpoint``).

The state is the plain pytree ``{params, model_state, opt_state, step, rng}``; the
step's randomness is ``fold_in(rng, step)`` split per purpose and keyed per example
(:mod:`jaxhybrid.rng`), so it is replayed exactly on resume and on any device count.
"""
from __future__ import annotations

import json
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils

from jaxhybrid import evaluate, parallel, rng as rnglib, tblog
from jaxhybrid.checkpointing import Checkpointer, run_path, save_config
from jaxhybrid.data.resident import make_train_batches
from jaxhybrid.experiment import (Experiment, abstract_model, abstract_state, augment,
                                  build_experiment, create_state)
from jaxhybrid.families.base import variables_of
from jaxhybrid.optim import make_optimizer, make_schedule, scaled_learning_rate
from jaxhybrid.progress import JsonlWriter, NonFiniteLossError, ProgressLog
from jaxhybrid.selection import Selector

log = logging.getLogger("jaxhybrid")

__all__ = ["train_and_evaluate", "make_train_step", "training_plan", "NonFiniteLossError"]


def progress_of(step, steps_per_epoch: int) -> dict:
    """{"step": int32, "epoch": float32 fractional epoch} of the step about to be taken."""
    step = jnp.asarray(step, jnp.int32)
    return {"step": step, "epoch": step.astype(jnp.float32) / float(steps_per_epoch)}


def skip_rule(opt_cfg):
    """(loss, grad_norm) -> bool, whether to skip the update (keep params, optimiser and model
    state), from ``optimizer.skip_nonfinite`` / ``skip_grad_norm``; None when both are off."""
    nonfinite = bool(opt_cfg.get("skip_nonfinite", False))
    threshold = float(opt_cfg.get("skip_grad_norm", 0.0))
    if not nonfinite and threshold <= 0:
        return None

    def skip(loss, grad_norm):
        out = jnp.asarray(False)
        if nonfinite:
            out = ~(jnp.isfinite(loss) & jnp.isfinite(grad_norm))
        if threshold > 0:   # a NaN norm compares False: skipped only with skip_nonfinite
            out = out | (grad_norm > threshold)
        return out
    return skip


def make_train_step(exp: Experiment, optimizer, schedule, steps_per_epoch: int, skip=None):
    """(state, batch) -> (state, metrics); jitted, state donated. ``skip``: a
    :func:`skip_rule`; a skipped step still advances the step counter (the data move on)
    and reports ``skipped`` = 1."""
    def per_device(variables, batch, key, progress, axis_name):
        batch = augment(exp, batch, key)
        model_key = rnglib.purpose_key(key, rnglib.MODEL)
        return exp.family.loss(variables, batch, model_key, progress, axis_name)

    loss = parallel.shard_loss(per_device, exp.mesh)

    def step(state, batch):
        key = rnglib.step_key(state["rng"], state["step"])
        progress = progress_of(state["step"], steps_per_epoch)

        def objective(params):
            return loss({"params": params, **state["model_state"]}, batch, key, progress)

        (value, (model_state, aux)), grads = jax.value_and_grad(objective, has_aux=True)(
            state["params"])
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        new = {"params": optax.apply_updates(state["params"], updates),
               "model_state": model_state, "opt_state": opt_state}
        metrics = {"loss": value, **aux, "grad_norm": grad_norm,
                   "learning_rate": schedule(state["step"])}
        if skip is not None:
            skipped = skip(value, grad_norm)
            new = jax.tree.map(lambda n, o: jnp.where(skipped, o, n), new,
                               {k: state[k] for k in new})
            metrics["skipped"] = skipped.astype(jnp.float32)
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(p))
                                    for p in jax.tree.leaves(new["params"])]))
        metrics["params_finite"] = finite.astype(jnp.float32)
        return {**new, "step": state["step"] + 1, "rng": state["rng"]}, metrics

    return jax.jit(step, donate_argnums=0)


def training_plan(config, steps_per_epoch: int) -> dict:
    if config.num_steps > 0:
        total = int(config.num_steps)
    else:
        total = int(math.ceil(config.num_epochs * steps_per_epoch))
    return {"steps_per_epoch": steps_per_epoch, "total_steps": max(total, 1),
            "checkpoint_every": int(config.checkpoint_every or steps_per_epoch)}


def _log_setup(exp: Experiment, plan: dict, workdir: str) -> None:
    config, mesh = exp.config, exp.mesh
    save_config(config, workdir)
    if jax.process_index() == 0:  # provenance of the data: source, sizes, class counts
        (run_path(workdir) / "data.json").write_text(
            json.dumps(exp.splits.description, indent=2, sort_keys=True, default=str))
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
    """The state to train from: the latest checkpoint's, or a fresh one from batch 0."""
    latest = ckpt.latest_step()
    if latest is not None:
        state, meta = ckpt.restore(latest, abstract_state(exp, optimizer, exp.config.seed))
        selector.load(meta.get("selector", {}))
        log.info("resumed from checkpoint step %d in %s", latest, ckpt.directory)
    else:
        state = create_state(exp, optimizer, exp.config.seed, batches.batch(0))
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state["params"]))
    log.info("parameters: %s", f"{n_params:,}")
    return state, latest


def validate(exp: Experiment, predictor, variables) -> dict:
    """The family's validation metrics on the validation split, as ``val_<name>``."""
    if not len(exp.splits.validation):
        return {}
    out = predictor.outputs(variables, exp.splits.validation, exp.family.validation_outputs)
    return {f"val_{k}": float(v) for k, v in exp.family.validate(out).items()}


class _Run:
    """One training run's moving parts (state, checkpoints, logs); ``train`` loops."""

    def __init__(self, config, workdir: str):
        self.config, self.workdir = config, workdir
        exp = self.exp = build_experiment(config)
        batches = make_train_batches(exp, config)
        self.batches, self.plan = batches, training_plan(config, batches.steps_per_epoch)
        self.total = self.plan["total_steps"]
        schedule = make_schedule(config.optimizer, config.batch_size, self.total,
                                 self.plan["steps_per_epoch"])
        optimizer = make_optimizer(config.optimizer, schedule)
        if jax.process_index() == 0:
            run_path(workdir).mkdir(parents=True, exist_ok=True)
        _log_setup(exp, self.plan, workdir)
        if config.early_stopping_patience and not len(exp.splits.validation):
            raise ValueError("early_stopping_patience needs a validation split "
                             "(data.validation_size > 0)")
        self.selector = Selector(exp.family.select_key, exp.family.select[1],
                                 int(config.early_stopping_patience))
        self.ckpt = Checkpointer(workdir, keep=config.keep_checkpoints,
                                 select=(self.selector.metric, self.selector.mode))
        self.state, self.last_good = _start(exp, self.ckpt, optimizer, batches, self.selector)
        self.start = int(jax.device_get(self.state["step"]))
        self.train_step = make_train_step(exp, optimizer, schedule, self.plan["steps_per_epoch"],
                                          skip=skip_rule(config.optimizer))
        self.predictor = evaluate.Predictor(exp)
        self.jsonl = JsonlWriter(run_path(workdir) / "metrics.jsonl", self.start)
        self.jsonl.sink = tblog.open_sink(config, run_path(workdir))
        self.progress = ProgressLog(
            self.jsonl, total=self.total, batch_size=config.batch_size,
            steps_per_epoch=self.plan["steps_per_epoch"],
            max_consecutive_skips=int(config.optimizer.get("max_consecutive_skips", 10)))

    def validate_and_save(self, step_done: int) -> None:
        metrics = validate(self.exp, self.predictor, variables_of(self.state))
        saved = {}
        if metrics:
            self.jsonl.write({"kind": "validation", "step": step_done, **metrics})
            log.info("step %d validation: %s", step_done,
                     ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
            saved = {**metrics, "improved": float(self.selector.update(step_done, metrics))}
        self.ckpt.save(step_done, self.state, metrics=saved,
                       meta={"selector": self.selector.state_dict()})
        self.last_good = step_done
        log.info("checkpoint saved at step %d", step_done)

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

    def train(self) -> tuple[int, str]:
        """Train from ``start``; returns (last step done, why it stopped)."""
        config, step_done = self.config, self.start
        if self.selector.should_stop and self.start:   # a run that already stopped early
            return step_done, self.selector.stop_reason()
        for step, batch in self.batches.iterate(self.start, self.total):
            self.state, metrics = self.train_step(self.state, batch)
            step_done = step + 1
            self.progress.add(step_done, metrics)
            eval_now = bool(config.eval_every) and step_done % config.eval_every == 0 \
                and step_done < self.total
            out_of_time = self._out_of_time(step_done)
            save_now = (step_done % self.plan["checkpoint_every"] == 0
                        or step_done == self.total or out_of_time)
            if step_done % config.log_every == 0 or step_done == self.total or save_now \
                    or eval_now:
                self.progress.flush()          # the NaN check precedes any use of the state
            if save_now:
                self.validate_and_save(step_done)
                reason = self._stop_reason(out_of_time)
                if reason:
                    log.info("stopping at step %d: %s", step_done, reason)
                    return step_done, reason
            if eval_now:
                evaluate.run_suite(self.exp, variables_of(self.state), step_done,
                                   self.workdir, predictor=self.predictor)
        if self.start == self.total:
            log.info("run already complete at step %d; evaluating", self.total)
        return step_done, "completed"

    def run(self) -> tuple[int, str]:
        try:
            return self.train()
        except NonFiniteLossError as e:
            self.ckpt.wait()
            raise NonFiniteLossError(
                f"{e} Stopping; the last good checkpoint is step {self.last_good} in "
                f"{self.ckpt.directory} (nothing after it was saved). Lower the learning "
                f"rate, enable --config.optimizer.grad_clip_norm, or skip such updates "
                f"(--config.optimizer.skip_nonfinite=True, skip_grad_norm).") from None
        finally:
            self.ckpt.wait()

    def evaluated_variables(self, step_done: int) -> tuple[dict, int, str]:
        """The checkpoint the final evaluation reports on: ``evals.checkpoint`` (best|latest)."""
        which = self.config.evals.checkpoint
        best = self.ckpt.best_step() if which == "best" else None
        if best is None or best == step_done:
            label = f"{which} (step {step_done})" if best is not None else f"latest (step {step_done})"
            return variables_of(self.state), step_done, label
        model = self.ckpt.restore_model(best, abstract_model(self.exp))
        label = f"best (step {best}, {self.selector.metric}={self.selector.best:.4f})"
        return variables_of(model), best, label


def train_and_evaluate(config, workdir: str) -> dict:
    """Train (or resume) in ``workdir``; returns the final metrics dict."""
    run = _Run(config, workdir)
    step_done, stopped = run.run()
    variables, eval_step, label = run.evaluated_variables(step_done)
    run.ckpt.close()
    final = evaluate.run_suite(run.exp, variables, eval_step, workdir,
                               predictor=run.predictor, checkpoint_label=label)
    final.update(step=step_done, evaluated_step=eval_step, checkpoint=label, stopped=stopped,
                 train_seconds=run.progress.elapsed(), workdir=str(run_path(workdir)))
    run.jsonl.write({"kind": "final", "step": step_done,
                     **{k: v for k, v in final.items() if isinstance(v, (int, float, str))}})
    if jax.process_index() == 0:  # marks the run as finished (sweeps skip finished points)
        (run_path(workdir) / "final_metrics.json").write_text(
            json.dumps(final, indent=2, sort_keys=True))
    return final
