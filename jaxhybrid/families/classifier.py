"""Classifier family: FFN (cross-entropy) and GFFN (joint likelihood), mixed by λ.

loss = (1 − λ)·conditional_nll + λ·joint_nll, λ = ``config.joint_weight``
(λ = 0: the FFN baseline; λ = 1: the thesis GFFN). Both parts are always
computed and logged; the joint part's extra cost is one softmax over the global
batch.
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from jaxhybrid.families.base import Family
from jaxhybrid.models import build_model
from jaxhybrid.objectives.conditional import class_probabilities, conditional_nll
from jaxhybrid.objectives.joint import joint_nll, log_partition


def classifier_objective(logits, labels, mask, *, joint_weight: float, label_model: str,
                         axis_name=None):
    """(1 − λ)·conditional + λ·joint over the global batch; returns (loss, aux)."""
    cond = conditional_nll(logits, labels, label_model=label_model, axis_name=axis_name,
                           mask=mask)
    joint = joint_nll(logits, labels, label_model=label_model, axis_name=axis_name, mask=mask)
    if joint_weight == 0.0:  # FFN: joint only logged, no gradient through it
        loss = cond
        joint = lax.stop_gradient(joint)
    elif joint_weight == 1.0:
        loss = joint
        cond = lax.stop_gradient(cond)
    else:
        loss = (1.0 - joint_weight) * cond + joint_weight * joint
    correct = jnp.sum(jnp.where(mask, jnp.argmax(logits, -1) == labels, False).astype(jnp.float32))
    count = jnp.sum(mask.astype(jnp.float32))
    if axis_name is not None:
        correct, count = lax.psum((correct, count), axis_name)
    aux = {"conditional_nll": cond, "joint_nll": joint,
           "accuracy": lax.stop_gradient(correct / count)}
    return loss, aux


def make_classifier(config, num_classes: int, mean=None, std=None) -> Family:
    module = build_model(config.model, num_classes, mean=mean, std=std)
    joint_weight = float(config.joint_weight)
    if not 0.0 <= joint_weight <= 1.0:
        raise ValueError(f"joint_weight must be in [0, 1], got {joint_weight}")
    label_model = config.label_model

    def init(rng, images):
        return module.init(rng, images)["params"]

    def logits_fn(params, images):
        return module.apply({"params": params}, images)

    def loss_fn(params, batch, rng, axis_name=None):
        del rng  # deterministic network
        logits = logits_fn(params, batch["image"])
        return classifier_objective(logits, batch["label"], batch["mask"],
                                    joint_weight=joint_weight, label_model=label_model,
                                    axis_name=axis_name)

    def scores(params, images):
        return {"logits": logits_fn(params, images)}

    def ood_scores(outputs):
        logits = jnp.asarray(outputs["logits"], jnp.float32)
        return {
            "max_softmax": jnp.max(class_probabilities(logits, label_model), axis=-1),
            "log_px": log_partition(logits, label_model),  # log Z(x) = log p(x) + const
            "max_logit": jnp.max(logits, axis=-1),
        }

    return Family(name="classifier", module=module, init=init, loss_fn=loss_fn, scores=scores,
                  logits_fn=logits_fn, ood_scores=ood_scores,
                  describe={"joint_weight": joint_weight, "label_model": label_model,
                            "model": config.model.name})
