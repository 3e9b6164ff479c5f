"""The one trainer: any model family, any device count, resumable.

``train_and_evaluate(config, workdir) -> dict`` trains ``config.family`` with a
jitted, state-donating, shard_map'd step (see :mod:`jaxhybrid.parallel`), logs the
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
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils

from jaxhybrid import evaluate, logs, parallel, rng as rnglib, selection, tblog
from jaxhybrid.checkpointing import Checkpointer, run_path
from jaxhybrid.data.resident import make_train_batches
from jaxhybrid.experiment import (Experiment, abstract_model, abstract_state, augment,
                                  build_experiment, create_state)
from jaxhybrid.families.base import variables_of
from jaxhybrid.interrupts import Interrupted, StopSignals
from jaxhybrid.optim import make_optimizer, make_schedule, scaled_learning_rate
from jaxhybrid.predictor import Predictor
from jaxhybrid.progress import JsonlWriter, NonFiniteLossError, ProgressLog
from jaxhybrid.rundir import RunDir, check_usable, write_atomic
from jaxhybrid.runlock import RunLock
from jaxhybrid.selection import Selector

log = logging.getLogger("jaxhybrid")

__all__ = ["train_and_evaluate", "make_train_step", "training_plan", "accumulation_steps",
           "NonFiniteLossError"]


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


def accumulation_steps(config) -> int:
    """``config.accumulation_steps``: micro-batches per global batch (1 for a config
    that predates the field)."""
    return int(config.get("accumulation_steps", 1))


def _family_fn(exp: Experiment, fn):
    """Per device: ``fn(variables, batch, model_key, progress, axis_name, *rest)`` on the
    batch with the train transforms of step ``key`` (keys per example id)."""
    def per_device(variables, batch, key, progress, axis_name, *rest):
        batch = augment(exp, batch, key)
        model_key = rnglib.stream(key, rnglib.MODEL)
        return fn(variables, batch, model_key, progress, axis_name, *rest)
    return per_device


def _value_and_grad(loss, params, model_state, batch, *args):
    """(loss, model_state, aux, grads) of a :func:`parallel.shard_loss`'d ``loss``."""
    def objective(p):
        return loss({"params": p, **model_state}, batch, *args)

    (value, (state, aux)), grads = jax.value_and_grad(objective, has_aux=True)(params)
    return value, state, aux, grads


def _one_batch(exp: Experiment):
    """(params, model_state, batch, key, progress) -> (loss, model_state, aux, grads)."""
    loss = parallel.shard_loss(_family_fn(exp, exp.family.loss), exp.mesh)
    return lambda params, model_state, batch, key, progress: _value_and_grad(
        loss, params, model_state, batch, key, progress)


def _keep_if(valid, new, old):
    """``new`` where the micro-batch has a valid row, else ``old`` (pytrees)."""
    return jax.tree.map(lambda n, o: jnp.where(valid, n, o), new, old)


def _global_statistics(exp: Experiment, stats, params, model_state, micro, counts, key,
                       progress):
    """The family's :class:`GlobalStatistics` over the whole global batch: ``collect`` on
    each micro-batch in order (forward only; the model state carried as the gradient
    pass carries it), ``combine``d, held fixed (no gradient)."""
    collect = parallel.shard_loss(_family_fn(exp, stats.collect), exp.mesh)
    sharding = parallel.data_sharded(exp.mesh)

    def one(state, xs):
        batch, count = xs
        batch = jax.lax.with_sharding_constraint(batch, sharding)
        partial, new = collect({"params": params, **state}, batch, key, progress)
        return _keep_if(count > 0, new, state), partial

    _, stacked = jax.lax.scan(one, model_state, (micro, counts))
    return jax.lax.stop_gradient(stats.combine(stacked))


def _accumulated(exp: Experiment, k: int):
    """As :func:`_one_batch`, over ``k`` micro-batches (:func:`parallel.micro_batches`),
    scanned: loss, aux and gradients summed weighted by each micro-batch's share of the
    valid rows (n_j / N; a micro-batch of padding alone adds nothing, not even to the
    state), the model state carried from one to the next."""
    stats = exp.family.global_stats
    fn = exp.family.loss if stats is None else stats.loss
    loss = parallel.shard_loss(_family_fn(exp, fn), exp.mesh, extra=int(stats is not None))
    sharding = parallel.data_sharded(exp.mesh)

    def gradients(params, model_state, batch, key, progress):
        micro = parallel.micro_batches(batch, k, exp.mesh)
        counts = jnp.sum(micro["mask"].astype(jnp.float32), axis=1)
        weights = counts / jnp.maximum(jnp.sum(counts), 1.0)
        extra = () if stats is None else (_global_statistics(
            exp, stats, params, model_state, micro, counts, key, progress),)

        def one(carry, xs):
            state, total = carry
            batch_j, w = xs
            batch_j = jax.lax.with_sharding_constraint(batch_j, sharding)
            value, new, aux, grads = _value_and_grad(loss, params, state, batch_j, key,
                                                     progress, *extra)
            total = jax.tree.map(lambda t, x: t + jnp.where(w > 0, w * x, 0).astype(t.dtype),
                                 total, (value, aux, grads))
            return (_keep_if(w > 0, new, state), total), None

        shapes = jax.eval_shape(lambda b: _value_and_grad(loss, params, model_state, b, key,
                                                          progress, *extra),
                                jax.tree.map(lambda x: x[0], micro))
        zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, jnp.result_type(a.dtype, jnp.float32)),
                             (shapes[0], shapes[2], shapes[3]))
        (state, (value, aux, grads)), _ = jax.lax.scan(one, (model_state, zeros),
                                                       (micro, weights))
        return value, state, aux, grads

    return gradients


def make_train_step(exp: Experiment, optimizer, schedule, steps_per_epoch: int, skip=None):
    """(state, batch) -> (state, metrics); jitted, state donated. ``skip``: a
    :func:`skip_rule`; a skipped step still advances the step counter (the data move on)
    and reports ``skipped`` = 1.

    Gradient accumulation, ``config.accumulation_steps`` = k > 1: the global batch is k
    micro-batches of batch_size / k, each sharded over every device
    (:func:`parallel.micro_batches`), scanned one after the other, so memory is that of
    one micro-batch; loss, aux scalars and gradients are their means weighted by valid
    rows, which for a loss that is a mean over the batch's rows equals one batch's. A
    family with a normaliser over the whole global batch (``Family.global_stats``: the
    GFFN partition) has it computed first, exactly, over all k micro-batches, and held
    fixed in each micro-batch's gradient (its gradient is still exact). Randomness is
    keyed per example id, so the micro-batches draw what one batch of the same examples
    draws. BatchNorm: statistics are per micro-batch (as with PyTorch's gradient
    accumulation), and the running averages are updated once per micro-batch, in order.
    """
    k = accumulation_steps(exp.config)
    if k > 1:
        parallel.check_accumulation(exp.config.batch_size, k, exp.mesh)
        log.info("gradient accumulation: %d micro-batches of %d per step (%s)", k,
                 exp.config.batch_size // k, "global-batch statistics computed first"
                 if exp.family.global_stats else "gradients averaged")
    gradients = _one_batch(exp) if k == 1 else _accumulated(exp, k)

    def step(state, batch):
        key = rnglib.step_key(state["rng"], state["step"])
        progress = progress_of(state["step"], steps_per_epoch)
        value, model_state, aux, grads = gradients(state["params"], state["model_state"],
                                                   batch, key, progress)
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
