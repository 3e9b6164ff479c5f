"""The ``classification`` evaluator: accuracy, NLL and Brier score of the family's logits
over the whole evaluated split.

Headline names (:data:`ACCURACY`, :data:`NLL`, :data:`BRIER`): the metrics.json section's
``accuracy``, ``nll``, ``brier``.
"""
from __future__ import annotations

import numpy as np

from jaxhybrid.evaluators import EvalContext, Evaluator, Section, definition, md_table, probs
from jaxhybrid.metrics_core import nll

ACCURACY = "accuracy"
NLL = "nll"
BRIER = "brier"


def headline(section: dict) -> dict:
    """{accuracy, nll, brier} of the section (those it holds)."""
    return {name: section[name] for name in (ACCURACY, NLL, BRIER) if name in section}


def evaluate(ctx: EvalContext) -> Section:
    """accuracy = mean 1[argmax_k p_k = y], NLL = mean −log p(y|x) (nats), Brier =
    mean Σ_k (p_k − y_k)² with y one-hot; p = softmax(logits) in float64."""
    out = ctx.outputs()
    logits, labels = out["logits"], out["label"]
    p = probs(logits)
    onehot = np.eye(p.shape[1])[labels]
    m = {"accuracy": float(np.mean(p.argmax(-1) == labels)),
         "nll": nll(logits, labels),
         "brier": float(np.mean(np.sum((p - onehot) ** 2, -1))),
         "num_examples": int(len(labels)), "split": ctx.config.evals.split}
    m["definitions"] = {"logits": definition(ctx.family, "logits")}
    md = (f"Predictions from logits = {m['definitions']['logits']}. NLL = mean −log p(y|x) "
          f"(nats); Brier = mean Σ_k (p_k − y_k)².\n\n"
          + md_table([[m["split"], m["num_examples"], m["accuracy"], m["nll"], m["brier"]]],
                     ["split", "examples", "accuracy", "NLL (nats)", "Brier"]))
    return Section("classification", m, headline(m), md)


EVALUATOR = Evaluator("classification", evaluate, frozenset({"logits", "labels"}), headline)
