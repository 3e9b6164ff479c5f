"""orbax checkpoints: save, resume, restore-for-eval, with clear mismatch errors.

Layout: ``workdir/checkpoints/<step>/`` (orbax CheckpointManager) with three items:
``model`` ({params, model_state}: all that evaluation restores), ``train``
({opt_state, step, rng}: what resuming adds) and ``meta`` (JSON: the checkpoint
selector's state, so early stopping and the best value survive a resume), plus the
validation metrics that orbax keeps beside each step; and ``workdir/config.json``.
Preservation keeps the latest ``keep`` checkpoints and the best by the family's
selection metric (orbax ``AnyPreservationPolicy`` of ``LatestN`` and ``BestN``).
Restoring takes an abstract target from ``jax.eval_shape`` with shardings, so the
arrays come back sharded over the mesh.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from jaxhybrid.parallel import tree_shapes

MODEL_KEYS = ("params", "model_state")
TRAIN_KEYS = ("opt_state", "step", "rng")


class CheckpointNotFoundError(FileNotFoundError):
    pass


def is_remote(path) -> bool:
    """Whether ``path`` names an object store (gs://, s3://, ...) rather than a local path."""
    return "://" in os.fspath(path)


def run_path(workdir) -> epath.Path:
    """The run directory ``workdir`` (a str or any path-like) as an ``epath.Path``.

    gs://, s3:// ... URIs are kept as they are (``os.path.abspath`` would turn
    ``gs://b/run`` into a local ``./gs:/b/run``); a local path gets ``~`` expanded and is
    made absolute. Every file of a run is read and written through it, so a run directory
    can live on a bucket that every host sees.
    """
    if is_remote(workdir):
        return epath.Path(workdir)
    return epath.Path(os.path.abspath(os.path.expanduser(os.fspath(workdir))))


class CheckpointMismatchError(ValueError):
    pass


class Checkpointer:
    """``select``: (metric key in the saved metrics, e.g. 'val_accuracy', 'max'|'min')."""

    def __init__(self, workdir, *, keep: int = 3, read_only: bool = False,
                 select: tuple[str, str] = ("val_accuracy", "max")):
        self.directory = run_path(workdir) / "checkpoints"
        self.metric, self.mode = select
        metric_fn = self._metric_value
        policy = pp.AnyPreservationPolicy([
            pp.LatestN(n=max(int(keep), 1)),
            pp.BestN(get_metric_fn=metric_fn, reverse=self.mode == "min", n=1,
                     keep_checkpoints_without_metrics=False),
        ])
        # best_fn makes orbax write (and read back) the metrics of every step; the
        # preservation policy above decides what is kept.
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy, best_fn=metric_fn, best_mode=self.mode,
            create=not read_only, read_only=read_only,
            enable_async_checkpointing=not read_only)
        if read_only and not self.directory.is_dir():
            raise CheckpointNotFoundError(
                f"No checkpoint directory {self.directory}: train first "
                f"(python -m jaxhybrid.main --mode=train --workdir={workdir} --config=...)")
        handlers = {"model": ocp.StandardCheckpointHandler(),
                    "train": ocp.StandardCheckpointHandler(),
                    "meta": ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_handlers=handlers)

    def _metric_value(self, metrics) -> float:
        """The ranking value of a checkpoint. Only checkpoints that improved on every
        earlier one (``improved`` saved by the trainer's selector) compete, so a later tie
        never displaces the earlier best."""
        worst = float("-inf") if self.mode == "max" else float("inf")
        if self.metric not in metrics or not metrics.get("improved", 1.0):
            return worst
        return float(metrics[self.metric])

    # -- queries -----------------------------------------------------------------------
    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        """The kept step with the best selection metric (the earliest among ties)."""
        best, best_val = None, None
        for s in self.all_steps():
            m = self.manager.metrics(s)
            if not m or self.metric not in m:
                continue
            v = self._metric_value(m)
            if best_val is None or (v > best_val if self.mode == "max" else v < best_val):
                best, best_val = s, v
        return best

    def resolve(self, which: str | int) -> int:
        """'latest' | 'best' | a step number -> an existing step, or a clear error."""
        steps = self.all_steps()
        if not steps:
            raise CheckpointNotFoundError(f"No checkpoint in {self.directory}")
        if which == "latest":
            return steps[-1]
        if which == "best":
            best = self.best_step()
            if best is None:
                raise CheckpointNotFoundError(
                    f"No checkpoint in {self.directory} has a {self.metric} metric (no "
                    f"validation split?); available steps: {steps}; use --checkpoint=latest")
            return best
        try:
            step = int(which)
        except (TypeError, ValueError):
            raise ValueError(f"--checkpoint must be 'latest', 'best' or a step number, "
                             f"got {which!r}") from None
        if step not in steps:
            raise CheckpointNotFoundError(
                f"No checkpoint for step {step} in {self.directory}; available steps: {steps}")
        return step

    # -- save / restore ----------------------------------------------------------------
    def save(self, step: int, state: Any, metrics: dict | None = None,
             meta: dict | None = None) -> None:
        """Save the train state (split into its model and train items) and ``meta``."""
        self.manager.save(step, args=ocp.args.Composite(
            model=ocp.args.StandardSave({k: state[k] for k in MODEL_KEYS}),
            train=ocp.args.StandardSave({k: state[k] for k in TRAIN_KEYS}),
            meta=ocp.args.JsonSave(meta or {})),
            force=True, metrics={k: float(v) for k, v in (metrics or {}).items()} or None)

    def restore(self, step: int, abstract_state: Any) -> tuple[dict, dict]:
        """Restore the whole state of ``step`` (to resume) -> (state, meta)."""
        model = {k: abstract_state[k] for k in MODEL_KEYS}
        train = {k: abstract_state[k] for k in TRAIN_KEYS}
        self._check_matches(step, {"model": model, "train": train})
        out = self.manager.restore(step, args=ocp.args.Composite(
            model=ocp.args.StandardRestore(model), train=ocp.args.StandardRestore(train),
            meta=ocp.args.JsonRestore()))
        return {**out["model"], **out["train"]}, dict(out["meta"] or {})

    def restore_model(self, step: int, abstract_model: Any) -> dict:
        """Restore only {params, model_state} of ``step`` (evaluation: no optimizer state)."""
        self._check_matches(step, {"model": abstract_model})
        out = self.manager.restore(step, args=ocp.args.Composite(
            model=ocp.args.StandardRestore(abstract_model)))
        return out["model"]

    def _check_matches(self, step: int, abstract: dict) -> None:
        try:
            meta = self.manager.item_metadata(step)
            saved = {k: meta[k] for k in abstract}
        except Exception as e:  # noqa: BLE001 -- unreadable metadata: orbax will say why
            logging.warning("could not read checkpoint metadata of step %d: %s", step, e)
            return
        if any(v is None for v in saved.values()):
            raise CheckpointNotFoundError(
                f"Checkpoint {self.directory}/{step} has no readable metadata "
                f"(incomplete or not written by jaxhybrid)")
        saved_shapes = tree_shapes(saved)
        want_shapes = tree_shapes(abstract)
        if saved_shapes == want_shapes:
            return
        missing = sorted(set(want_shapes) - set(saved_shapes))
        extra = sorted(set(saved_shapes) - set(want_shapes))
        differ = sorted(k for k in set(want_shapes) & set(saved_shapes)
                        if want_shapes[k] != saved_shapes[k])
        lines = [f"Checkpoint {self.directory}/{step} does not match the model built from "
                 f"the config:"]
        for k in differ[:10]:
            lines.append(f"  {k}: checkpoint has shape {saved_shapes[k]}, "
                         f"config gives {want_shapes[k]}")
        if missing:
            lines.append(f"  in the config but not the checkpoint: {missing[:10]}")
        if extra:
            lines.append(f"  in the checkpoint but not the config: {extra[:10]}")
        lines.append("Use the config the checkpoint was trained with (saved beside it as "
                     "config.json), or a fresh --workdir.")
        raise CheckpointMismatchError("\n".join(lines))

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def save_config(config, workdir) -> epath.Path:
    """``workdir/config.json``, written by process 0 only."""
    path = run_path(workdir) / "config.json"
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(config.to_json_best_effort(indent=2, sort_keys=True))
    return path


def load_saved_config(workdir) -> dict | None:
    path = run_path(workdir) / "config.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())
