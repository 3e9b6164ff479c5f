"""Evaluation: restore a checkpoint in a fresh process and run the evaluator plug-ins.

``evaluate(config, workdir, checkpoint="best") -> dict`` restores the model part
({params, model_state}; never the optimizer state) of a checkpoint into sharded
arrays, runs the evaluators named in ``config.evals.names`` and writes
``workdir/eval/<step>/metrics.json``, ``report.md`` and the figures beside them.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable

import jax
import numpy as np

from jaxhybrid import parallel, rng as rnglib
from jaxhybrid.checkpointing import (Checkpointer, CheckpointNotFoundError, load_saved_config,
                                     run_path)
from jaxhybrid.data.pipeline import eval_batches
from jaxhybrid.data.sources import SubsetSource
from jaxhybrid.experiment import Experiment, abstract_model, build_experiment
from jaxhybrid.families.base import variables_of
from jaxhybrid.progress import NonFiniteLossError

log = logging.getLogger("jaxhybrid")


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
        self.key = rnglib.eval_key(int(exp.config.evals.seed))
        self._fns: dict[tuple, Callable] = {}

    def eval_view(self, batch: dict) -> dict:
        """Per device: the evaluation transforms of a batch (keyed by example id)."""
        keys = rnglib.example_keys(rnglib.purpose_key(self.key, rnglib.AUGMENT), batch["id"])
        return {**batch, "image": self.exp.transforms.eval(batch["image"], keys)}

    def model_key(self) -> jax.Array:
        return rnglib.purpose_key(self.key, rnglib.MODEL)

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
        return out


def run_suite(exp: Experiment, variables, step: int, workdir, *,
              predictor: Predictor | None = None, checkpoint_label: str | None = None) -> dict:
    """Run ``config.evals.names`` and write metrics.json + report.md into eval/<step>/
    (process 0 only; every process computes, since the outputs are gathered)."""
    from jaxhybrid.evaluators import run_evaluators
    from jaxhybrid.evaluators.report import write_report
    out_dir = run_path(workdir) / "eval" / str(step)
    if jax.process_index() == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
    predictor = predictor or Predictor(exp)
    results = run_evaluators(exp, variables, predictor, os.fspath(out_dir))
    metrics = {"step": step, "checkpoint": checkpoint_label or f"step {step}",
               **results.metrics}
    if jax.process_index() == 0:
        (out_dir / "metrics.json").write_text(
            json.dumps(_jsonable(metrics), indent=2, sort_keys=True))
        write_report(exp, metrics, results, out_dir, step=step)
    log.info("evaluation at step %d written to %s", step, out_dir)
    for k in sorted(results.headline):
        log.info("  %s = %s", k, results.headline[k])
    flat = dict(results.headline)
    flat["eval_dir"] = os.fspath(out_dir)
    return flat


def _jsonable(x: Any):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, float) and not np.isfinite(x):
        return None if np.isnan(x) else (1e308 if x > 0 else -1e308)
    return x


def evaluate(config, workdir: str, checkpoint: str | int = "") -> dict:
    """Restore ``checkpoint`` ('best', 'latest' or a step; '' = ``evals.checkpoint``) of
    ``workdir`` and evaluate it. 'best' falls back to the latest checkpoint, with a
    warning, when no checkpoint has a validation metric (no validation split)."""
    saved = load_saved_config(workdir)
    exp = build_experiment(config)
    select = (exp.family.select_key, exp.family.select[1])
    ckpt = Checkpointer(workdir, read_only=True, select=select)
    which = checkpoint or config.evals.checkpoint
    try:
        step = ckpt.resolve(which)
    except CheckpointNotFoundError:
        if which != "best" or not ckpt.all_steps():
            raise
        log.warning("no checkpoint in %s has %s; evaluating the latest", workdir, select[0])
        which, step = "latest", ckpt.resolve("latest")
    if saved is not None and saved.get("model") != json.loads(config.model.to_json()):
        log.warning("model config differs from the one saved in %s/config.json: saved %s, "
                    "given %s", workdir, saved.get("model"), config.model.to_json())
    model = ckpt.restore_model(step, abstract_model(exp))
    ckpt.close()
    label = f"{which} (step {step})" if not isinstance(which, int) else f"step {step}"
    return run_suite(exp, variables_of(model), step, workdir, checkpoint_label=label)
