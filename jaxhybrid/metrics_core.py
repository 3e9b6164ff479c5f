"""The softmax NLL of class scores on the host, below both training and evaluation.

The classifier family's validation NLL (which may select the checkpoint) and the
evaluators' NLL and temperature scaling (:mod:`jaxhybrid.evaluators.temperature`) are the
same number, computed here once. Host-side numpy in float64; no jax import.
"""
from __future__ import annotations

import numpy as np


def check_scores_and_labels(scores, labels, what: str = "probs"):
    """Validate per-class scores [N, K] and integer labels [N] in [0, K); return both as
    numpy arrays. Shared by the NLL, calibration and temperature-scaling metrics."""
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if scores.ndim != 2:
        raise ValueError(f"{what} must be [N, K], got shape {scores.shape}")
    if labels.shape != (scores.shape[0],):
        raise ValueError(
            f"labels must be [N] with N={scores.shape[0]} to match {what}, "
            f"got shape {labels.shape}"
        )
    if scores.shape[0] == 0:
        raise ValueError("need at least one example, got N=0")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= scores.shape[1]:
        raise ValueError(
            f"labels must lie in [0, {scores.shape[1] - 1}], "
            f"got range [{labels.min()}, {labels.max()}]"
        )
    return scores, labels


def check_logits(logits, labels):
    """:func:`check_scores_and_labels` for finite logits, returned as float64."""
    logits, labels = check_scores_and_labels(logits, labels, "logits")
    logits = logits.astype(np.float64)
    if not np.all(np.isfinite(logits)):
        raise ValueError("logits contain non-finite values")
    return logits, labels


def log_softmax(z):
    """z: [N, K] -> log softmax over K, stable (max subtracted)."""
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.sum(np.exp(z), axis=1, keepdims=True))


def nll(logits, labels) -> float:
    """Mean negative log-likelihood -1/N sum_i log softmax(logits_i)[y_i], in nats.

    logits: [N, K] (numpy or jax), labels: [N] ints -> float.
    """
    logits, labels = check_logits(logits, labels)
    logp = log_softmax(logits)
    return float(-np.mean(logp[np.arange(logits.shape[0]), labels]))
