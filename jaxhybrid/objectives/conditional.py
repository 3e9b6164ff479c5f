"""Conditional (discriminative) objectives: the FFN baseline.

softmax label model: mean cross-entropy −log softmax(f(x))_y.
binary label model (thesis eq. 2.20): −log p(y|x) = −Σ_k [y_k f_k − softplus(f_k)].
Both are −<y, f(x)> + log Z(x), with log Z from :func:`joint.log_partition`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxhybrid.mathops import global_mean
from jaxhybrid.objectives.joint import label_score, log_partition


def conditional_nll_per_example(logits: jax.Array, labels: jax.Array,
                                label_model: str = "softmax") -> jax.Array:
    """−log p(y|x) = log Z(x) − <y, f(x)>. logits [B, K], labels [B] -> [B]."""
    logits = jnp.asarray(logits, jnp.float32)
    return log_partition(logits, label_model) - label_score(logits, labels)


def conditional_nll(logits: jax.Array, labels: jax.Array, *, label_model: str = "softmax",
                    axis_name: str | None = None, mask: jax.Array | None = None) -> jax.Array:
    """Mean −log p(y|x) over the global batch (psum over ``axis_name``). Scalar."""
    if mask is None:
        mask = jnp.ones(logits.shape[0], dtype=bool)
    # padding rows may hold anything (inf, NaN): zero them so that their (zero)
    # gradient cannot become 0·NaN
    logits = jnp.where(mask[:, None], logits, 0.0)
    return global_mean(conditional_nll_per_example(logits, labels, label_model), mask,
                       axis_name)


def class_probabilities(logits: jax.Array, label_model: str = "softmax") -> jax.Array:
    """p(k|x) used for prediction, calibration and attacks. [B, K] -> [B, K].

    softmax: softmax(f). binary: each component's sigmoid renormalised over the K
    one-hot labels, i.e. again softmax(f) (for one-hot y, p(y=e_k|x) ∝ exp f_k).
    """
    del label_model  # the one-hot restriction of both label models is softmax(f)
    return jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1)
