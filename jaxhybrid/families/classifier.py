"""Classifier family: FFN (cross-entropy) and GFFN (joint likelihood), mixed by λ.

loss = (1 − λ)·conditional_nll + λ·joint_nll, λ = ``config.objective.joint_weight``
(λ = 0: the FFN baseline; λ = 1: the thesis GFFN), the objective of
:mod:`jaxhybrid.objectives.classifier`. :data:`Classifier.OBJECTIVE` lists the
objective's fields, :data:`Classifier.MODEL` the model's: ``model.name``, one of the
networks of :data:`jaxhybrid.models.MODELS` (cnn, resnet18), and each network's options
(:data:`jaxhybrid.models.MODEL_FIELDS`; the named one's are used). Both parts are always
computed and logged; the joint part's extra cost is one softmax over the global
batch. Outputs: ``logits`` [B, K]; OOD scores max_softmax, log_px (= log Z(x)) and
max_logit; the best checkpoint is the one with the highest validation accuracy.

With gradient accumulation (``config.accumulation_steps`` = k > 1) and λ > 0 the joint
part's partition stays the GLOBAL batch's, exactly: the family exposes it as
``global_stats`` (a forward pass over the k micro-batches for log Z(x), then each
micro-batch's gradient with the global softmax weights held fixed;
:func:`jaxhybrid.objectives.joint.joint_nll_given_partition`). With λ = 0 the joint part
is only logged, so it is not exposed: the logged ``joint_nll`` is then the mean of the
micro-batches' own (per micro-batch partition) values.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxhybrid.families.base import Family, FamilyBase, GlobalStatistics, split_variables
from jaxhybrid.metrics_core import nll as softmax_nll
from jaxhybrid.models import MODEL_FIELDS, MODELS, build_model, network_config
from jaxhybrid.objectives.classifier import classifier_objective
from jaxhybrid.objectives.conditional import class_probabilities
from jaxhybrid.objectives.joint import (LABEL_MODELS, combine_partition_statistics,
                                        log_partition, partition_statistics)
from jaxhybrid.schema import Schema, choice, num


def validate_classifier(outputs) -> dict:
    """Validation accuracy and NLL, the NLL being the evaluators' (softmax over classes)."""
    logits, labels = outputs["logits"], outputs["label"]
    return {"accuracy": float(np.mean(np.argmax(logits, -1) == labels)),
            "nll": softmax_nll(logits, labels)}


def definitions(label_model: str) -> dict:
    """{output or OOD score: one-line definition}, as reports print them."""
    log_z = ("log Σ_k exp f_k(x)" if label_model == "softmax" else
             "Σ_k softplus(f_k(x))")
    return {
        "logits": "f(x) [K], the network's class scores; p(k|x) = softmax_k f(x)",
        "max_softmax": "max_k p(k|x), the top-label probability (softmax of the logits)",
        "log_px": f"log Z(x) = {log_z} ({label_model} label model): log p(x) up to a "
                  f"constant under the GFFN reading of the logits as log p(x, y) (nats)",
        "max_logit": "max_k f_k(x), the largest class score",
    }


class Classifier(FamilyBase):
    """FFN/GFFN: a network of the model registry and the λ-mixed objective."""
    name = "classifier"
    # model.name and every network's options; the named network is built with its own
    MODEL = Schema("model", {
        "name": choice("cnn", MODELS, "the network: cnn (the thesis CNN, models/cnn.py) | "
                       "resnet18 (CIFAR-style ResNet-18, models/resnet.py); the other "
                       "network's options are ignored"),
        **{k: f for fields in MODEL_FIELDS.values() for k, f in fields.items()},
    })
    OBJECTIVE = Schema("objective", {
        "joint_weight": num(1.0, "λ: loss = (1 − λ)·CE + λ·joint NLL (0 = FFN, 1 = GFFN)", 0, 1),
        "label_model": choice("softmax", LABEL_MODELS, "softmax | binary (thesis eq. "
                              "2.15–2.20): how the logits give p(y|x) and log Z(x)"),
    })

    def __init__(self, config, num_classes: int, mean=None, std=None):
        super().__init__(config, num_classes, mean, std)
        self.needs_classes()
        self.module = build_model(network_config(self.opts.model), num_classes, mean=mean,
                                  std=std, dtype=self.dtype)
        o = self.opts.objective
        self.joint_weight, self.label_model = o["joint_weight"], o["label_model"]

    def init(self, rng, batch, axis_name=None):
        del axis_name  # no data-dependent initialisation
        return dict(self.module.init(rng, batch["image"]))

    def forward(self, variables, batch):
        """Train-mode logits [B, K] and the updated non-trainable collections."""
        _, state = split_variables(variables)
        if state:   # non-trainable collections (e.g. batch_stats) are updated
            logits, state = self.module.apply(variables, batch["image"], train=True,
                                              mutable=list(state))
        else:
            logits = self.module.apply(variables, batch["image"], train=True)
        return logits, dict(state)

    def loss(self, variables, batch, rng, progress, axis_name=None, partition=None):
        """The λ-mixed loss; ``partition``: the global batch's (micro-batch training)."""
        del rng, progress  # a deterministic network, no schedules
        logits, state = self.forward(variables, batch)
        value, aux = classifier_objective(logits, batch["label"], batch["mask"],
                                          joint_weight=self.joint_weight,
                                          label_model=self.label_model, axis_name=axis_name,
                                          partition=partition)
        return value, (state, aux)

    def partition_share(self, variables, batch, rng, progress, axis_name=None):
        """A micro-batch's partition statistics (the ``global_stats`` pass)."""
        del rng, progress
        logits, state = self.forward(variables, batch)
        return partition_statistics(logits, label_model=self.label_model,
                                    axis_name=axis_name, mask=batch["mask"]), state

    def global_stats(self) -> GlobalStatistics | None:
        """The joint part's global-batch partition, when it has a gradient (λ > 0)."""
        if self.joint_weight == 0.0:
            return None
        return GlobalStatistics(collect=self.partition_share,
                                combine=combine_partition_statistics, loss=self.loss)

    def predict(self, variables, batch, rng, outputs=("logits",)):
        del rng, outputs  # the one output
        return {"logits": self.module.apply(variables, batch["image"], train=False)}

    def ood_scores(self, outputs):
        logits = jnp.asarray(outputs["logits"], jnp.float32)
        return {
            "max_softmax": jnp.max(class_probabilities(logits, self.label_model), axis=-1),
            "log_px": log_partition(logits, self.label_model),  # log Z(x) = log p(x) + const
            "max_logit": jnp.max(logits, axis=-1),
        }

    def family(self) -> Family:
        return Family(name="classifier", init=self.init, loss=self.loss, predict=self.predict,
                      outputs=("logits",), supervised=True, validation_outputs=("logits",),
                      validate=validate_classifier, select=("accuracy", "max"),
                      ood_outputs=("logits",), ood_score_fn=self.ood_scores,
                      label=f"classifier λ={self.joint_weight:g}",
                      definitions=definitions(self.label_model),
                      describe={"joint_weight": self.joint_weight,
                                "label_model": self.label_model,
                                "model": self.config.model.name},
                      global_stats=self.global_stats())
