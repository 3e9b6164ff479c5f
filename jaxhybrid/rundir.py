"""A run directory holds one experiment: the checks made before anything is written.

``workdir/config.json`` is written once, by the first run. Every later command is
compared with it (with the budget changes recorded in ``config_changes.jsonl``
applied) field by field:

- ``FREE_FIELDS`` never change what is trained and may differ freely: the evaluation
  settings (``evals.*``, and the scoring fields ``model.iwae_samples`` and
  ``model.score_chunk``: S of the importance-weighted scores), logging and evaluation cadence, eval batch size, device count
  (results do not depend on it), how many checkpoints are kept, TensorBoard logging and
  where the training split lives (``data.placement``: batches are bit-identical).
- ``BUDGET_FIELDS`` change how long a run trains or where it may stop, not what one
  step does: they may change with ``--allow_config_change`` (recorded in
  ``config_changes.jsonl``, and the run continues from its latest checkpoint).
  ``checkpoint_every`` is one of them: the trained parameters do not depend on it
  (resuming is bit-identical), but validation runs at checkpoint steps, so it decides
  which steps can be selected and when early stopping fires.
- any other field (model, objective, data, optimiser, seed, batch, precision) changes
  training: a run directory with another value is refused.

``--mode=eval`` describes the model by the saved config: the given config may differ
from it in free fields only. ``final_metrics.json`` is written by the end of training
alone and marks the run as complete.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax

from jaxhybrid.config_keys import flatten
from jaxhybrid.checkpointing import (is_remote, load_saved_config, read_json, run_path,
                                     save_config, write_atomic)
from jaxhybrid.progress import read_jsonl

# How a trained model is scored, by the families that sample: S of the importance-weighted
# bounds and how many samples are evaluated at once. No family trains or validates with
# them (validation uses one sample), so one run is scored at S = 1 and S = 250 alike; they
# are part of an evaluation's identity (jaxhybrid.evaluate.eval_settings).
SCORING_FIELDS = ("model.iwae_samples", "model.score_chunk")
FREE_FIELDS = ("evals", "log_every", "eval_every", "eval_batch_size", "num_devices",
               "keep_checkpoints", "tensorboard", "data.placement", *SCORING_FIELDS)
BUDGET_FIELDS = ("num_epochs", "num_steps", "max_train_seconds", "early_stopping_patience",
                 "checkpoint_every")
CONFIG_FILE = "config.json"
CHANGES_FILE = "config_changes.jsonl"
FINAL_FILE = "final_metrics.json"


class ConfigChangeError(ValueError):
    """The given config differs from the run directory's in a field it may not change."""


class WorkdirError(ValueError):
    """The run directory cannot be one (a file is in the way, or it is not writable)."""


def config_dict(config) -> dict:
    """A ConfigDict as the plain JSON tree ``config.json`` holds."""
    return json.loads(config.to_json_best_effort())


def _within(key: str, fields) -> bool:
    return any(key == f or key.startswith(f + ".") for f in fields)


def check_usable(workdir) -> None:
    """A clear error unless ``workdir`` is (or can become) a directory: every existing
    ancestor must be a directory (object stores have no files in the way)."""
    path = run_path(workdir)
    if is_remote(path):
        return
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                what = "is" if p == path else f"has {p} as a parent, which is"
                raise WorkdirError(f"--workdir={workdir}: {path} {what} a file, not a "
                                         f"directory; choose another --workdir")
            if not os.access(p, os.W_OK):
                raise WorkdirError(f"--workdir={workdir}: {p} is not writable")
            return


def moved_to_objective(saved: dict, given: dict) -> dict:
    """A saved flat config written before the families' ``objective`` section existed holds
    its loss fields at the top level (``joint_weight``) or under ``model.*``
    (``model.beta``): read each as the ``objective.*`` field of the same name that the
    given config has, so that a run is compared with its own values, never silently with
    the defaults."""
    if any(k.startswith("objective.") for k in saved):
        return saved
    out = dict(saved)
    for key in given:
        section, _, name = key.partition(".")
        if section != "objective":
            continue
        for old in (name, f"model.{name}"):
            if old in out:
                out[key] = out.pop(old)
    return out


class RunDir:
    """The checks and records of one run directory (every file through ``epath``)."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.path = run_path(workdir)

    # -- the saved config ----------------------------------------------------------------
    def saved_config(self) -> dict | None:
        """config.json with the recorded budget changes applied (flat), or None."""
        saved = load_saved_config(self.workdir)
        if saved is None:
            return None
        flat = flatten(saved)
        for record in read_jsonl(self.path / CHANGES_FILE):
            flat.update({k: new for k, (_, new) in record["changes"].items()})
        return flat

    def differences(self, config) -> list[tuple[str, Any, Any]]:
        """(key, saved, given) for each non-free field where ``config`` differs from the
        saved config (keys only one side has, e.g. a field added since, are ignored; a
        loss field saved before ``config.objective`` existed is read as moved there)."""
        saved = self.saved_config()
        if saved is None:
            return []
        given = flatten(config_dict(config))
        saved = moved_to_objective(saved, given)
        return [(k, saved[k], given[k]) for k in sorted(set(saved) & set(given))
                if saved[k] != given[k] and not _within(k, FREE_FIELDS)]

    def _refuse(self, diffs, advice: str) -> None:
        lines = [f"{self.path} holds a run with another config ({CONFIG_FILE}); differing "
                 f"field(s):"]
        lines += [f"  {k}: saved {s!r}, given {g!r}" for k, s, g in diffs]
        raise ConfigChangeError("\n".join([*lines, advice]))

    def check_train(self, config, allow_config_change: bool = False) -> dict:
        """The budget changes to record ({key: [saved, given]}); an error for any other
        difference, or for a budget change without ``allow_config_change``."""
        diffs = self.differences(config)
        training = [d for d in diffs if not _within(d[0], BUDGET_FIELDS)]
        budget_note = (f"Budget fields ({', '.join(BUDGET_FIELDS)}) may change with "
                       f"--allow_config_change.")
        if training:
            self._refuse(diffs, f"These change training: use a new --workdir for this "
                                f"config, or give the saved values. {budget_note}")
        if diffs and not allow_config_change:
            self._refuse(diffs, f"To continue this run with the new budget, re-run with "
                                f"--allow_config_change; or use a new --workdir. {budget_note}")
        return {k: [s, g] for k, s, g in diffs}

    def check_eval(self, config) -> None:
        """An error unless ``config`` describes the saved run (evals.* etc. may differ)."""
        diffs = self.differences(config)
        if diffs:
            self._refuse(diffs, f"--mode=eval evaluates the model the run trained: give its "
                                f"saved values (only {', '.join(FREE_FIELDS)} may differ).")

    # -- records -------------------------------------------------------------------------
    def record_start(self, config, changes: dict, step: int) -> None:
        """Process 0: config.json (first run only) and the budget changes allowed now."""
        if jax.process_index() != 0:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "checkpoints").mkdir(exist_ok=True)
        if not (self.path / CONFIG_FILE).exists():
            save_config(config, self.workdir)
        if changes:
            path, old = self.path / CHANGES_FILE, ""
            if path.exists():
                old = path.read_text()
            write_atomic(path, old + json.dumps({"step": step, "changes": changes}) + "\n")

    def final(self) -> dict | None:
        path = self.path / FINAL_FILE
        if not path.exists():
            return None
        return read_json(path, f"it marks the run as complete; remove it and run the same "
                               f"train command again to redo the final evaluation (the "
                               f"checkpoints are kept)")

    def write_final(self, final: dict) -> None:
        if jax.process_index() == 0:
            write_atomic(self.path / FINAL_FILE, json.dumps(final, indent=2, sort_keys=True))


