"""GFFN joint objective: logits read as an unnormalised log joint log p(x, y).

docs/methods/gffn.md (Klinger 2021, "Generatively Learned Feed Forward Networks"):

    p(x, y; θ) = exp<y, f(x; θ)> / Z(θ),     Z(x; θ) = Σ_y exp<y, f(x; θ)>

The partition function Z(θ) is approximated over the mini-batch T = {(x_l, y_l)}:

    L_joint = −(1/B) Σ_l <y_l, f(x_l)> + logsumexp_l log Z(x_l) − log B

whose gradient is the thesis' eq. 4.15. B is the GLOBAL batch: with ``axis_name``
set (inside a ``jax.shard_map``'d step) the batch-wide terms are reduced across
every device with ``lax.pmax``/``lax.psum``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxhybrid.mathops import global_logsumexp, masked_sum_and_count

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
