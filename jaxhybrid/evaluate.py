"""Evaluation: run the evaluator plug-ins on a checkpoint, each evaluation in its own dir.

``evaluate(config, workdir, checkpoint="best") -> dict`` restores the model part
({params, model_state}; never the optimizer state) of a checkpoint of ``workdir`` into
sharded arrays (the model as the run's saved config describes it:
:meth:`jaxhybrid.rundir.RunDir.check_eval`) and runs the evaluators of
``config.evals``.

Each evaluation has an identity: ``eval_id``, the first 8 hex digits of the SHA-256 of
the canonical JSON (sorted keys) of ``config.evals`` without its ``checkpoint`` field.
It is written to ``workdir/eval/<step>/<eval_id>/`` (metrics.json, evals.json,
report.md, figures, npz files), first into a temporary sibling that is renamed into
place at the end: a directory never holds files of two evaluations, and an evaluation
that fails or is interrupted leaves nothing behind. An existing directory of the same
settings is not recomputed (its metrics are returned); ``overwrite=True`` replaces it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from typing import Any

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from jaxhybrid import logs, selection
from jaxhybrid.checkpointing import Checkpointer, is_remote, run_path
from jaxhybrid.evaluators.report import write_report
from jaxhybrid.evaluators.suite import headline, run_evaluators
from jaxhybrid.experiment import Experiment, abstract_model, build_experiment
from jaxhybrid.families.base import variables_of
from jaxhybrid.interrupts import Interrupted, StopSignals
from jaxhybrid.predictor import Predictor
from jaxhybrid.rundir import SCORING_FIELDS, RunDir, check_usable, config_dict
from jaxhybrid.runlock import RunLock

log = logging.getLogger("jaxhybrid")

__all__ = ["evaluate", "run_suite", "eval_id", "eval_settings"]


def eval_settings(config) -> dict:
    """The settings that make an evaluation: ``config.evals`` less ``checkpoint``, plus the
    scoring fields the model has (rundir.SCORING_FIELDS, e.g. ``model.iwae_samples``), so
    that S = 1 and S = 250 evaluations of one checkpoint never share a directory."""
    tree = config_dict(config)
    evals = tree["evals"]
    evals.pop("checkpoint", None)
    for key in SCORING_FIELDS:
        section, name = key.split(".")
        if name in tree.get(section, {}):
            evals[key] = tree[section][name]
    return evals


def eval_id(config) -> str:
    """First 8 hex digits of sha256 of the canonical JSON of :func:`eval_settings`."""
    text = json.dumps(eval_settings(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _exists_everywhere(path: epath.Path) -> bool:
    """Whether ``path`` exists, as process 0 sees it (one decision for every process)."""
    exists = path.exists()
    if jax.process_count() > 1:
        exists = bool(multihost_utils.broadcast_one_to_all(np.int32(exists)))
    return exists


def _existing(out: epath.Path, rel: str) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    log.info("evaluation %s of step %s already in %s (same settings): not recomputed; "
             "--overwrite replaces it", metrics.get("eval_id"), metrics.get("step"), out)
    return {**headline(metrics), "eval_dir": rel, "eval_id": metrics.get("eval_id")}


def _remove(path: epath.Path) -> None:
    if path.exists():
        path.rmtree()


def _move_into_place(tmp: epath.Path, out: epath.Path) -> None:
    """Rename ``tmp`` to ``out`` (object stores, which cannot rename a directory:
    copy each file, then remove ``tmp``)."""
    _remove(out)
    if not is_remote(out):
        tmp.rename(out)
        return
    for f in tmp.rglob("*"):
        if f.is_file():
            target = out / f.relative_to(tmp)
            target.parent.mkdir(parents=True, exist_ok=True)
            f.copy(target)
    tmp.rmtree()


def _write(exp: Experiment, out_dir: epath.Path, step: int, label: str, eid: str,
           results) -> None:
    metrics = {"step": step, "checkpoint": label, "eval_id": eid,
               "evals": eval_settings(exp.config), "family": exp.family.name,
               "definitions": dict(exp.family.definitions), **results.metrics}
    (out_dir / "metrics.json").write_text(json.dumps(_jsonable(metrics), indent=2,
                                                     sort_keys=True))
    (out_dir / "evals.json").write_text(json.dumps(metrics["evals"], indent=2, sort_keys=True))
    write_report(exp, metrics, results, out_dir, step=step)


def run_suite(exp: Experiment, variables, step: int, workdir, *,
              predictor: Predictor | None = None, checkpoint_label: str | None = None,
              overwrite: bool = False) -> dict:
    """Run the evaluators of ``config.evals`` into ``eval/<step>/<eval_id>/`` (written by
    process 0; every process computes, since the outputs are gathered). Returns the
    headline metrics with ``eval_dir`` (relative to the run directory) and ``eval_id``."""
    eid = eval_id(exp.config)
    rel = f"eval/{step}/{eid}"
    out = run_path(workdir) / rel
    if _exists_everywhere(out) and not overwrite:
        return _existing(out, rel)
    label = checkpoint_label or f"step {step}"
    main = jax.process_index() == 0
    # process 0 writes into a temporary sibling; any other process into a scratch dir
    tmp = out.parent / f".tmp-{eid}" if main else epath.Path(tempfile.mkdtemp())
    try:
        if main:
            _remove(tmp)                          # left by a killed evaluation
            tmp.mkdir(parents=True)
        results = run_evaluators(exp, variables, predictor or Predictor(exp), os.fspath(tmp))
        if main:
            _write(exp, tmp, step, label, eid, results)
            _move_into_place(tmp, out)
    finally:
        _remove(tmp)                              # after a failure or an interrupt
    log.info("evaluation at step %d (%s) written to %s", step, label, out)
    return {**results.headline, "eval_dir": rel, "eval_id": eid}


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


def evaluate(config, workdir: str, checkpoint: str | int = "", *,
             overwrite: bool = False) -> dict:
    """Restore ``checkpoint`` ('best', 'latest' or a step; '' = ``evals.checkpoint``) of
    ``workdir`` and evaluate it (:func:`run_suite`). 'best' is the step selected during
    training (:func:`jaxhybrid.selection.resolve`). Never changes final_metrics.json.
    SIGINT/SIGTERM stop it at once, leaving no evaluation directory behind."""
    check_usable(workdir)
    with RunLock(workdir):
        return _evaluate(config, workdir, checkpoint, overwrite)


def _evaluate(config, workdir: str, checkpoint: str | int, overwrite: bool) -> dict:
    RunDir(workdir).check_eval(config)
    exp = build_experiment(config)
    ckpt = Checkpointer(workdir, read_only=True)
    step, label = selection.resolve(ckpt, checkpoint or config.evals.checkpoint)
    model = ckpt.restore_model(step, abstract_model(exp))
    ckpt.close()
    logs.attach_workdir(run_path(workdir))
    signals = StopSignals()
    try:
        with signals.installed(), signals.raising():
            out = run_suite(exp, variables_of(model), step, workdir, checkpoint_label=label,
                            overwrite=overwrite)
    except Interrupted as e:
        raise Interrupted(e.signum, f"interrupted while evaluating step {step}; no evaluation "
                                    f"directory was written; re-run the same command to "
                                    f"evaluate") from None
    return {**out, "step": step, "checkpoint": label, "workdir": os.fspath(run_path(workdir))}
