"""Evaluation: restore a checkpoint in a fresh process and run the evaluator plug-ins.

``evaluate(config, workdir, checkpoint="latest") -> dict`` restores the
checkpoint into sharded arrays (abstract target from ``jax.eval_shape``), runs the
evaluators named in ``config.evals.names`` and writes
``workdir/eval/<step>/metrics.json``, ``report.md`` and the figures beside them.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable

import jax
import numpy as np

from jaxhybrid import parallel
from jaxhybrid.checkpointing import Checkpointer, load_saved_config
from jaxhybrid.data.pipeline import eval_batches
from jaxhybrid.data.sources import SubsetSource
from jaxhybrid.experiment import Experiment, abstract_state, build_experiment
from jaxhybrid.objectives.conditional import conditional_nll_per_example

log = logging.getLogger("jaxhybrid")


class Predictor:
    """Jitted, sharded per-example outputs of a family over a whole split.

    Batches are padded and masked (:func:`eval_batches`), so every example counts
    exactly once on any number of devices; the result is concatenated on the host
    with the padding removed.
    """

    def __init__(self, exp: Experiment):
        self.exp = exp
        self._scores = jax.jit(parallel.shard_outputs(
            lambda p, b: exp.family.scores(p, b["image"]), exp.mesh))

    def outputs(self, params, source, *, max_examples: int = 0,
                fn: Callable | None = None) -> dict[str, np.ndarray]:
        """{name: [N, ...]} numpy outputs of ``fn(params, batch)`` (default: the family's
        scores) over the first ``max_examples`` (0: all) of ``source``, plus ``label`` [N]."""
        if max_examples and len(source) > max_examples:
            source = SubsetSource(source, np.arange(max_examples))
        fn = fn or self._scores
        chunks: list[dict] = []
        for batch in eval_batches(source, self.exp.config.eval_batch_size, mesh=self.exp.mesh,
                                  preprocess=self.exp.preprocess):
            out = fn(params, batch)   # dispatched asynchronously; fetched once at the end
            chunks.append({**out, "label": batch["label"], "mask": batch["mask"]})
        chunks = jax.tree.map(parallel.to_host, chunks)
        if not chunks:
            return {}
        cat = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
        mask = cat.pop("mask").astype(bool)
        return {k: v[mask] for k, v in cat.items()}

    def classification(self, params, source) -> dict[str, float]:
        """accuracy and mean NLL over a whole split (for validation during training)."""
        out = self.outputs(params, source)
        logits, labels = out["logits"], out["label"]
        nll = np.asarray(conditional_nll_per_example(
            logits, labels, self.exp.config.label_model))
        return {"accuracy": float(np.mean(np.argmax(logits, -1) == labels)),
                "nll": float(np.mean(nll))}


def run_suite(exp: Experiment, params, step: int, workdir: str, *,
              predictor: Predictor | None = None, checkpoint_label: str | None = None) -> dict:
    """Run ``config.evals.names`` and write metrics.json + report.md into eval/<step>/."""
    from jaxhybrid.evaluators import run_evaluators
    from jaxhybrid.evaluators.report import write_report
    out_dir = os.path.join(workdir, "eval", str(step))
    os.makedirs(out_dir, exist_ok=True)
    predictor = predictor or Predictor(exp)
    results = run_evaluators(exp, params, predictor, out_dir)
    metrics = {"step": step, "checkpoint": checkpoint_label or f"step {step}",
               **results.metrics}
    if jax.process_index() == 0:
        with open(os.path.join(out_dir, "metrics.json"), "w") as f:
            json.dump(_jsonable(metrics), f, indent=2, sort_keys=True)
        write_report(exp, metrics, results, out_dir, step=step)
    log.info("evaluation at step %d written to %s", step, out_dir)
    for k in sorted(results.headline):
        log.info("  %s = %s", k, results.headline[k])
    flat = dict(results.headline)
    flat["eval_dir"] = os.path.abspath(out_dir)
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


def evaluate(config, workdir: str, checkpoint: str | int = "latest") -> dict:
    """Restore ``checkpoint`` ('latest', 'best' or a step) of ``workdir`` and evaluate."""
    saved = load_saved_config(workdir)
    ckpt = Checkpointer(workdir, read_only=True)
    step = ckpt.resolve(checkpoint)
    exp = build_experiment(config)
    if saved is not None and saved.get("model") != json.loads(config.model.to_json()):
        log.warning("model config differs from the one saved in %s/config.json: saved %s, "
                    "given %s", workdir, saved.get("model"), config.model.to_json())
    from jaxhybrid.optim import make_optimizer, make_schedule
    optimizer = make_optimizer(config.optimizer, make_schedule(config.optimizer,
                                                               config.batch_size, 1, 1))
    state = ckpt.restore(step, abstract_state(exp, optimizer, config.seed))
    ckpt.close()
    label = f"{checkpoint} (step {step})" if not isinstance(checkpoint, int) else f"step {step}"
    return run_suite(exp, state["params"], step, workdir, checkpoint_label=label)
