"""GFFN joint objective: logits read as an unnormalised log joint log p(x, y).

docs/methods/gffn.md (Klinger 2021, "Generatively Learned Feed Forward Networks"):

    p(x, y; θ) = exp<y, f(x; θ)> / Z(θ),     Z(x; θ) = Σ_y exp<y, f(x; θ)>

The partition function Z(θ) is approximated over the mini-batch T = {(x_l, y_l)}:

    L_joint = −(1/B) Σ_l <y_l, f(x_l)> + logsumexp_l log Z(x_l) − log B

whose gradient is the thesis' eq. 4.15. B is the GLOBAL batch: with ``axis_name``
set (inside a ``jax.shard_map``'d step) the batch-wide terms are reduced across
every device with ``lax.pmax``/``lax.psum``.

With gradient accumulation (k micro-batches per global batch) the partition is still
the global batch's, computed exactly in two passes: :func:`partition_statistics` of
each micro-batch (forward only), :func:`combine_partition_statistics` into
A = logsumexp_l log Z(x_l) and B, then per micro-batch :func:`joint_nll_given_partition`,
whose gradient uses the GLOBAL softmax weights p'_l = exp(log Z(x_l) − A) held fixed:
∂A/∂θ = Σ_l p'_l ∂log Z(x_l)/∂θ, split exactly over the micro-batches.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxhybrid.mathops import (global_count, global_logsumexp, global_mean,
                               masked_sum_and_count)

LABEL_MODELS = ("softmax", "binary")


def _check_label_model(label_model: str) -> None:
    if label_model not in LABEL_MODELS:
        raise ValueError(
            f"Unknown label_model {label_model!r}; valid choices: {', '.join(LABEL_MODELS)}")


def log_partition(logits: jax.Array, label_model: str = "softmax") -> jax.Array:
    """log Z(x) = log Σ_y exp<y, f(x)> per example; equals log p(x) + const.

    logits: [B, K] -> [B].
    softmax label model (y one-hot): logsumexp_k f_k(x).
    binary label model (y in {0,1}^K, thesis eq. 2.15–2.18): Σ_k softplus(f_k(x)).
    """
    _check_label_model(label_model)
    logits = jnp.asarray(logits, jnp.float32)
    if label_model == "softmax":
        return jax.nn.logsumexp(logits, axis=-1)
    return jnp.sum(jax.nn.softplus(logits), axis=-1)


def label_score(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """<y_l, f(x_l)> with y_l the one-hot of labels[l]. logits [B, K], labels [B] -> [B]."""
    return jnp.take_along_axis(logits, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]


def joint_nll(logits: jax.Array, labels: jax.Array, *, label_model: str = "softmax",
              axis_name: str | None = None, mask: jax.Array | None = None) -> jax.Array:
    """GFFN batch joint negative log-likelihood over the GLOBAL batch.

    L = −(1/B) Σ_l <y_l, f(x_l)> + logsumexp_l log Z(x_l) − log B   (docs/methods/gffn.md)

    logits: [B_local, K] float; labels: [B_local] int class ids; mask: optional
    [B_local] bool (padding entries are excluded from every sum and from B).
    axis_name: mesh axis to reduce over inside shard_map (None: the local batch is
    the whole batch). Returns a scalar, identical on every device.

    For the binary label model <y, f> is replaced by log p(y|x) + log Z(x)
    (= Σ_k [y_k f_k]), so that the loss is again −log p(x, y) up to the batch
    partition estimate.
    """
    _check_label_model(label_model)
    logits = jnp.asarray(logits, jnp.float32)
    if mask is None:
        mask = jnp.ones(logits.shape[0], dtype=bool)
    mask = mask.astype(bool)
    # Padding rows may hold anything (even inf/NaN logits): replace them by 0 so that
    # no term below can send a NaN into their (zero) gradient.
    logits = jnp.where(mask[:, None], logits, 0.0)
    fit = label_score(logits, labels)  # <y_l, f(x_l)>, same for both label models
    fit_sum, count = masked_sum_and_count(fit, mask, axis_name)
    log_z = log_partition(logits, label_model)
    log_batch_partition = global_logsumexp(log_z, mask, axis_name)
    return -fit_sum / count + log_batch_partition - jnp.log(count)


def partition_statistics(logits: jax.Array, *, label_model: str = "softmax",
                         axis_name: str | None = None,
                         mask: jax.Array | None = None) -> dict:
    """One micro-batch's share of the global partition (no gradient):
    ``{"log_sum": log Σ_l Z(x_l), "count": n}`` over its valid rows on every device
    (log_sum = −inf when it has none). logits [B_local, K], mask [B_local] -> scalars."""
    logits = lax.stop_gradient(jnp.asarray(logits, jnp.float32))
    mask = jnp.ones(logits.shape[0], bool) if mask is None else mask.astype(bool)
    log_z = log_partition(jnp.where(mask[:, None], logits, 0.0), label_model)
    return {"log_sum": global_logsumexp(log_z, mask, axis_name),
            "count": global_count(mask, axis_name)}


def combine_partition_statistics(stacked: dict) -> dict:
    """k micro-batches' :func:`partition_statistics`, stacked ([k] each) -> the global
    batch's: log_sum = logsumexp_j log_sum_j (A), count = Σ_j count_j (B)."""
    return {"log_sum": jax.nn.logsumexp(stacked["log_sum"]),
            "count": jnp.sum(stacked["count"])}


def joint_nll_given_partition(logits: jax.Array, labels: jax.Array, partition: dict, *,
                              label_model: str = "softmax", axis_name: str | None = None,
                              mask: jax.Array | None = None) -> jax.Array:
    """One micro-batch's share of :func:`joint_nll` of the global batch, whose partition
    A and size B (``partition``, :func:`combine_partition_statistics`) are given:

        L_j = (1/n_j) Σ_{l∈j} [−<y_l, f(x_l)> + B·p'_l·(log Z(x_l) − sg log Z(x_l))] + A − log B

    with p'_l = exp(sg log Z(x_l) − A), sg = stop_gradient. The middle term is 0 in value;
    its gradient is B·p'_l ∂log Z(x_l). So Σ_j (n_j/B)·L_j is the global joint NLL and its
    gradient exactly eq. 4.15's (−(1/B) Σ_l ∂<y_l, f> + Σ_l p'_l ∂log Z(x_l)). Scalar,
    the same on every device; a micro-batch with no valid row gives A − log B.
    """
    _check_label_model(label_model)
    logits = jnp.asarray(logits, jnp.float32)
    mask = jnp.ones(logits.shape[0], bool) if mask is None else mask.astype(bool)
    logits = jnp.where(mask[:, None], logits, 0.0)   # padding rows: no NaN in any gradient
    log_b, count = partition["log_sum"], partition["count"]
    log_z = log_partition(logits, label_model)
    weight = jnp.exp(lax.stop_gradient(log_z) - log_b)            # p'_l, the global softmax
    surrogate = count * weight * (log_z - lax.stop_gradient(log_z))
    share = global_mean(surrogate - label_score(logits, labels), mask, axis_name)
    return share + log_b - jnp.log(count)
