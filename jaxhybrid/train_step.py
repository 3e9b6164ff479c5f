"""The train step: (state, batch) -> (state, metrics), jitted, sharded, state donated.

:func:`make_train_step` builds it for any family (``Family.loss`` inside
:func:`jaxhybrid.parallel.shard_loss`), with the optional skipping of bad updates
(:func:`skip_rule`) and gradient accumulation over micro-batches
(``config.accumulation_steps``; the GFFN's partition stays exact over the whole global
batch through ``Family.global_stats``). :mod:`jaxhybrid.train` runs it; the lowering
tool (:mod:`jaxhybrid.tools.lower`) exports the same step for other platforms.
"""
from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import optax

from jaxhybrid import parallel, rng as rnglib
from jaxhybrid.experiment import Experiment, augment

log = logging.getLogger("jaxhybrid")

__all__ = ["make_train_step", "skip_rule", "progress_of", "accumulation_steps"]


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
