"""The sharded eval-mode engine: a family's named outputs over a whole split.

Used by validation during training, by the evaluators and by the attacks; it sits
below both :mod:`jaxhybrid.train` and :mod:`jaxhybrid.evaluate`.
"""
from __future__ import annotations

import time
from typing import Callable

import jax
import numpy as np

from jaxhybrid import parallel, rng as rnglib
from jaxhybrid.data.pipeline import eval_batches
from jaxhybrid.data.sources import SubsetSource
from jaxhybrid.experiment import Experiment
from jaxhybrid.progress import NonFiniteLossError

__all__ = ["Predictor", "NonFiniteOutputError", "check_finite"]


class NonFiniteOutputError(NonFiniteLossError):
    """A model output is NaN or infinite: the parameters diverged."""


def check_finite(outputs: dict, what: str) -> None:
    for name, v in outputs.items():
        if np.issubdtype(v.dtype, np.floating) and not np.all(np.isfinite(v)):
            bad = int(np.sum(~np.isfinite(v).reshape(len(v), -1).any(axis=1)))
            raise NonFiniteOutputError(
                f"output {name!r} is NaN or infinite for {bad} of {len(v)} examples of "
                f"{what}: the parameters diverged (or the output overflowed)")


class Predictor:
    """Jitted, sharded named outputs of a family over a whole split, in eval mode.

    Batches are padded and masked (:func:`eval_batches`), so every example counts
    exactly once on any number of devices; the result is concatenated on the host
    with the padding removed. Inputs get the deterministic evaluation transforms
    (a fixed seeded binarisation where training binarises) and the family receives
    the fixed evaluation key (``evals.seed``), so outputs that need randomness
    (IWAE samples) are reproducible. Only the outputs asked for are computed.
    """

    def __init__(self, exp: Experiment):
        self.exp = exp
        self.progress = None          # an EvalProgress while an evaluation suite runs
        self.key = rnglib.eval_key(int(exp.config.evals.seed))
        self._fns: dict[tuple, Callable] = {}

    def eval_view(self, batch: dict) -> dict:
        """Per device: the evaluation transforms of a batch (keyed by example id)."""
        keys = rnglib.example_keys(rnglib.stream(self.key, rnglib.AUGMENT), batch["id"])
        return {**batch, "image": self.exp.transforms.eval(batch["image"], keys)}

    def model_key(self) -> jax.Array:
        return rnglib.stream(self.key, rnglib.MODEL)

    def _predict_fn(self, names: tuple) -> Callable:
        unknown = set(names) - set(self.exp.family.outputs)
        if unknown:
            raise ValueError(f"family {self.exp.family.name!r} has no output(s) "
                             f"{sorted(unknown)}; valid choices: {', '.join(self.exp.family.outputs)}")
        if names not in self._fns:
            def per_device(variables, batch):
                out = self.exp.family.predict(variables, self.eval_view(batch),
                                              self.model_key(), names)
                return {k: out[k] for k in names}
            self._fns[names] = jax.jit(parallel.shard_outputs(per_device, self.exp.mesh))
        return self._fns[names]

    def outputs(self, variables, source, names=("logits",), *, max_examples: int = 0,
                fn: Callable | None = None) -> dict[str, np.ndarray]:
        """{name: [N, ...]} numpy outputs ``names`` (or of ``fn(variables, batch)``) over the
        first ``max_examples`` (0: all) of ``source``, plus ``label`` [N] if it has labels."""
        t0, what = time.time(), ", ".join(names) if fn is None else "attacked outputs"
        if max_examples and len(source) > max_examples:
            source = SubsetSource(source, np.arange(max_examples))
        fn = fn or self._predict_fn(tuple(names))
        chunks: list[dict] = []
        for batch in eval_batches(source, self.exp.config.eval_batch_size, mesh=self.exp.mesh,
                                  preprocess=self.exp.preprocess):
            out = fn(variables, batch)   # dispatched asynchronously; fetched once at the end
            extra = {k: batch[k] for k in ("label", "mask") if k in batch}
            chunks.append({**out, **extra})
        chunks = jax.tree.map(parallel.to_host, chunks)
        if not chunks:
            return {}
        cat = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
        mask = cat.pop("mask").astype(bool)
        out = {k: v[mask] for k, v in cat.items()}
        check_finite(out, f"{len(source)} examples")
        if self.progress is not None:
            self.progress.split(what, len(source), time.time() - t0)
        return out
