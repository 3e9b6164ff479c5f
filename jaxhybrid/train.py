"""The one trainer: any model family, any device count, resumable.

``train_and_evaluate(config, workdir) -> dict`` trains ``config.family`` with a
jitted, state-donating, shard_map'd step (see :mod:`jaxhybrid.parallel`), logs
loss parts, accuracy, learning rate, examples/s and ETA to the log and to
``workdir/metrics.jsonl``, checkpoints with orbax (resuming automatically from the
latest checkpoint in ``workdir``), stops on a non-finite loss keeping the last
good checkpoint, and finally runs the evaluators of ``config.evals``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time

import jax
import numpy as np
import optax

from jaxhybrid import evaluate, parallel
from jaxhybrid.checkpointing import Checkpointer, save_config
from jaxhybrid.data.pipeline import TrainBatches
from jaxhybrid.experiment import Experiment, abstract_state, build_experiment, create_state
from jaxhybrid.optim import make_optimizer, make_schedule, scaled_learning_rate

log = logging.getLogger("jaxhybrid")


class NonFiniteLossError(FloatingPointError):
    pass


def make_train_step(exp: Experiment, optimizer, schedule):
    """(state, batch) -> (state, metrics); jitted, state donated."""
    loss = parallel.shard_loss(exp.family.loss_fn, exp.mesh)

    def step(state, batch):
        rng, step_rng = jax.random.split(state["rng"])
        (value, aux), grads = jax.value_and_grad(loss, has_aux=True)(
            state["params"], batch, step_rng)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {"loss": value, **aux, "grad_norm": optax.tree.norm(grads),
                   "learning_rate": schedule(state["step"])}
        return {"params": params, "opt_state": opt_state, "step": state["step"] + 1,
                "rng": rng}, metrics

    return jax.jit(step, donate_argnums=0)


def training_plan(config, num_train: int) -> dict:
    steps_per_epoch = -(-num_train // config.batch_size)
    if config.num_steps > 0:
        total = int(config.num_steps)
    else:
        total = int(math.ceil(config.num_epochs * steps_per_epoch))
    return {"steps_per_epoch": steps_per_epoch, "total_steps": max(total, 1),
            "checkpoint_every": int(config.checkpoint_every or steps_per_epoch)}


class _JsonlWriter:
    def __init__(self, path: str):
        self.path = path if jax.process_index() == 0 else None

    def write(self, record: dict) -> None:
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def train_and_evaluate(config, workdir: str, *, _crash_after_step: int | None = None) -> dict:
    """Train (or resume) in ``workdir``; returns the final metrics dict.

    ``_crash_after_step`` simulates a crash (for tests): after that step the process
    exits abruptly (``os._exit(17)``: no final checkpoint, no cleanup), once the
    checkpoints already handed to orbax have been committed.
    """
    os.makedirs(workdir, exist_ok=True)
    exp = build_experiment(config)
    mesh = exp.mesh
    plan = training_plan(config, len(exp.splits.train))
    total = plan["total_steps"]
    schedule = make_schedule(config.optimizer, config.batch_size, total, plan["steps_per_epoch"])
    optimizer = make_optimizer(config.optimizer, schedule)
    batches = TrainBatches(exp.splits.train, config.batch_size, seed=config.seed, mesh=mesh,
                           preprocess=exp.preprocess)
    save_config(config, workdir)
    if jax.process_index() == 0:  # provenance of the data: source, sizes, class counts
        with open(os.path.join(workdir, "data.json"), "w") as f:
            json.dump(exp.splits.description, f, indent=2, sort_keys=True, default=str)

    n_dev, n_proc = mesh.devices.size, jax.process_count()
    log.info("family=%s %s | data=%s train/val/test=%d/%d/%d classes=%d input=%s",
             exp.family.name, exp.family.describe, exp.splits.name, len(exp.splits.train),
             len(exp.splits.validation), len(exp.splits.test), exp.splits.num_classes,
             exp.input_shape)
    log.info("global batch %d = %d devices × %d per device (%d host(s)); %d steps "
             "(%d per epoch); peak lr %.3g (%s scaling from batch %d)",
             config.batch_size, n_dev, config.batch_size // n_dev, n_proc, total,
             plan["steps_per_epoch"], scaled_learning_rate(config.optimizer, config.batch_size),
             config.optimizer.lr_scaling, config.optimizer.base_batch_size)

    ckpt = Checkpointer(workdir, keep=config.keep_checkpoints)
    latest = ckpt.latest_step()
    if latest is not None:
        state = ckpt.restore(latest, abstract_state(exp, optimizer, config.seed))
        log.info("resumed from checkpoint step %d in %s", latest, ckpt.directory)
    else:
        state = create_state(exp, optimizer, config.seed)
    start = int(jax.device_get(state["step"]))
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state["params"]))
    log.info("parameters: %s", f"{n_params:,}")

    train_step = make_train_step(exp, optimizer, schedule)
    predictor = evaluate.Predictor(exp)
    jsonl = _JsonlWriter(os.path.join(workdir, "metrics.jsonl"))
    pending: list[tuple[int, dict]] = []
    last_good = latest
    t_window, steps_window, t_start, first_timed = time.time(), 0, time.time(), None

    def flush(step_done: int) -> dict:
        """Fetch pending step metrics; stop on a non-finite loss; log the last."""
        nonlocal t_window, steps_window, first_timed
        fetched = jax.device_get([m for _, m in pending])
        steps = [s for s, _ in pending]
        pending.clear()
        for s, m in zip(steps, fetched):
            if not np.isfinite(m["loss"]):
                ckpt.wait()
                raise NonFiniteLossError(
                    f"Loss became {m['loss']} at step {s + 1} (parts: "
                    f"{ {k: float(v) for k, v in m.items()} }). Stopping; the last good "
                    f"checkpoint is step {last_good} in {ckpt.directory} "
                    f"(nothing after it was saved). Lower the learning rate or enable "
                    f"--config.optimizer.grad_clip_norm.")
        now = time.time()
        m = {k: float(v) for k, v in fetched[-1].items()}
        rate = steps_window * config.batch_size / max(now - t_window, 1e-9)
        if first_timed is None:
            first_timed = (step_done, now)
            eta = float("nan")
        else:
            per_step = (now - first_timed[1]) / max(step_done - first_timed[0], 1)
            eta = per_step * (total - step_done)
        record = {"step": step_done, "epoch": step_done / plan["steps_per_epoch"], **m,
                  "examples_per_sec": rate, "eta_sec": eta, "time": now - t_start}
        jsonl.write({"kind": "train", **record})
        log.info("step %d/%d epoch %.2f | loss %.4f (cond %.4f, joint %.4f) acc %.3f | "
                 "lr %.3g | %.0f ex/s | ETA %s", step_done, total, record["epoch"], m["loss"],
                 m.get("conditional_nll", float("nan")), m.get("joint_nll", float("nan")),
                 m.get("accuracy", float("nan")), m["learning_rate"], rate,
                 "?" if math.isnan(eta) else time.strftime("%H:%M:%S", time.gmtime(eta)))
        t_window, steps_window = now, 0
        return record

    best_val, since_best = -1.0, 0

    def validate_and_save(step_done: int) -> None:
        nonlocal last_good, best_val, since_best
        metrics = {}
        if len(exp.splits.validation):
            val = predictor.classification(state["params"], exp.splits.validation)
            metrics = {f"val_{k}": v for k, v in val.items()}
            jsonl.write({"kind": "validation", "step": step_done, **metrics})
            log.info("step %d validation: %s", step_done,
                     ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
            if metrics["val_accuracy"] > best_val:
                best_val, since_best = metrics["val_accuracy"], 0
            else:
                since_best += 1
        ckpt.save(step_done, state, metrics=metrics)
        last_good = step_done

    step_done = start
    stopped_reason = "completed"
    patience = int(config.early_stopping_patience)
    if patience and not len(exp.splits.validation):
        raise ValueError("early_stopping_patience needs a validation split "
                         "(data.validation_size > 0)")
    try:
        for step, batch in batches.iterate(start, total):
            state, metrics = train_step(state, batch)
            pending.append((step, metrics))
            steps_window += 1
            step_done = step + 1
            if _crash_after_step is not None and 0 <= _crash_after_step <= step_done:
                ckpt.wait()
                os._exit(17)
            if step_done % config.log_every == 0 or step_done == total:
                flush(step_done)
            out_of_time = (config.max_train_seconds > 0
                           and time.time() - t_start > config.max_train_seconds)
            if step_done % plan["checkpoint_every"] == 0 or step_done == total or out_of_time:
                if pending:
                    flush(step_done)
                validate_and_save(step_done)
                if patience and since_best >= patience:
                    stopped_reason = (f"early stopping: validation accuracy has not improved "
                                      f"for {patience} validations (best {best_val:.4f})")
                elif out_of_time:
                    stopped_reason = f"wall-clock budget of {config.max_train_seconds:.0f} s"
                if stopped_reason != "completed":
                    log.info("stopping at step %d: %s", step_done, stopped_reason)
                    break
            if config.eval_every and step_done % config.eval_every == 0 and step_done < total:
                evaluate.run_suite(exp, state["params"], step_done, workdir, predictor=predictor)
        if start == total and latest is not None:
            log.info("run already complete at step %d; evaluating", total)
    finally:
        ckpt.wait()

    final = evaluate.run_suite(exp, state["params"], step_done, workdir, predictor=predictor)
    ckpt.close()
    final["step"] = step_done
    final["stopped"] = stopped_reason
    final["train_seconds"] = time.time() - t_start
    final["workdir"] = os.path.abspath(workdir)
    jsonl.write({"kind": "final", **{k: v for k, v in final.items()
                                     if isinstance(v, (int, float, str))}})
    if jax.process_index() == 0:  # marks the run as finished (sweeps skip finished points)
        with open(os.path.join(workdir, "final_metrics.json"), "w") as f:
            json.dump(final, f, indent=2, sort_keys=True)
    return final
