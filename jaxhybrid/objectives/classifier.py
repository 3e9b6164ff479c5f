"""The classifier family's objective: the FFN and GFFN losses mixed by λ.

    loss = (1 − λ)·conditional_nll + λ·joint_nll        λ = ``joint_weight`` ∈ [0, 1]

conditional_nll: mean −log p(y|x) (:mod:`jaxhybrid.objectives.conditional`, the FFN
baseline, λ = 0); joint_nll: the GFFN batch joint NLL with the global batch's partition
(:mod:`jaxhybrid.objectives.joint`, λ = 1). Both are computed and logged; at λ = 0 (λ = 1)
the unused part is only logged, with no gradient through it.
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from jaxhybrid.mathops import global_mean
from jaxhybrid.objectives.conditional import conditional_nll
from jaxhybrid.objectives.joint import joint_nll, joint_nll_given_partition


def classifier_objective(logits, labels, mask, *, joint_weight: float, label_model: str,
                         axis_name=None, partition=None):
    """(1 − λ)·conditional + λ·joint over the global batch; returns (loss, aux).
    ``partition``: the global batch's partition statistics when this batch is one
    micro-batch of it (:func:`joint_nll_given_partition`); None: this batch is the whole.
    aux: conditional_nll, joint_nll, accuracy (mean of argmax f(x) = y) over the valid
    rows."""
    cond = conditional_nll(logits, labels, label_model=label_model, axis_name=axis_name,
                           mask=mask)
    if partition is None:
        joint = joint_nll(logits, labels, label_model=label_model, axis_name=axis_name,
                          mask=mask)
    else:
        joint = joint_nll_given_partition(logits, labels, partition, label_model=label_model,
                                          axis_name=axis_name, mask=mask)
    if joint_weight == 0.0:  # FFN: joint only logged, no gradient through it
        loss = cond
        joint = lax.stop_gradient(joint)
    elif joint_weight == 1.0:
        loss = joint
        cond = lax.stop_gradient(cond)
    else:
        loss = (1.0 - joint_weight) * cond + joint_weight * joint
    accuracy = global_mean(jnp.argmax(logits, -1) == labels, mask, axis_name)
    aux = {"conditional_nll": cond, "joint_nll": joint,
           "accuracy": lax.stop_gradient(accuracy)}
    return loss, aux
