"""orbax checkpoints: save, resume, restore-for-eval, with clear mismatch errors.

Layout: ``workdir/checkpoints/<step>/`` (orbax CheckpointManager) with three items:
``model`` ({params, model_state}: all that evaluation restores), ``train``
({opt_state, step, rng}: what resuming adds) and ``meta`` (JSON: the checkpoint
selector's state: the persisted best step, see :mod:`jaxhybrid.selection`), plus the
validation metrics that orbax keeps beside each step; and ``workdir/config.json``.
Preservation keeps the latest ``keep`` checkpoints and the selected (best) one (orbax
``AnyPreservationPolicy`` of ``LatestN`` and ``BestN``).
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
from jaxhybrid.selection import preservation_value

log = logging.getLogger("jaxhybrid")

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
    """The run's orbax checkpoints. Which one is best is :mod:`jaxhybrid.selection`'s
    rule; orbax only keeps the newest selected one (``selection.preservation_value``)
    beside the latest ``keep``. Nothing is created until the first save (the trainer
    makes the directory once every check has passed)."""

    def __init__(self, workdir, *, keep: int = 3, read_only: bool = False):
        self.directory = run_path(workdir) / "checkpoints"
        policy = pp.AnyPreservationPolicy([
            pp.LatestN(n=max(int(keep), 1)),
            pp.BestN(get_metric_fn=preservation_value, reverse=False, n=1,
                     keep_checkpoints_without_metrics=False),
        ])
        # best_fn makes orbax write (and read back) the metrics of every step; the
        # preservation policy above decides what is kept. An abandoned save's temporary
        # directory is removed when the run is resumed.
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy, best_fn=preservation_value, best_mode="max",
            create=False, read_only=read_only, enable_async_checkpointing=not read_only,
            cleanup_tmp_directories=not read_only,
            save_interval_steps=0 if read_only else 1)
        if read_only and not self.directory.is_dir():
            raise CheckpointNotFoundError(
                f"No checkpoint directory {self.directory}: train first "
                f"(python -m jaxhybrid.main --mode=train --workdir={workdir} --config=...)")
        handlers = {"model": ocp.StandardCheckpointHandler(),
                    "train": ocp.StandardCheckpointHandler(),
                    "meta": ocp.JsonCheckpointHandler()}
        absl_log = logging.getLogger("absl")
        level = absl_log.level
        if read_only:     # orbax warns "Given directory is read only" at every evaluation
            absl_log.setLevel(logging.ERROR)
        try:
            self.manager = ocp.CheckpointManager(self.directory, options=options,
                                                 item_handlers=handlers)
        finally:
            absl_log.setLevel(level)
        self._pending: int | None = None      # a save started but not yet seen committed

    # -- queries -----------------------------------------------------------------------
    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def latest_meta(self) -> dict:
        """The ``meta`` item of the latest checkpoint ({} if there is none)."""
        step = self.latest_step()
        if step is None:
            return {}
        out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(out["meta"] or {})

    def resolve(self, which: str | int) -> int:
        """'latest' | a step number -> an existing step, or a clear error ('best' is
        :func:`jaxhybrid.selection.resolve`'s)."""
        steps = self.all_steps()
        if not steps:
            raise CheckpointNotFoundError(f"No checkpoint in {self.directory}")
        if which == "latest":
            return steps[-1]
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
    def save(self, step: int, state: Any, metrics: dict, meta: dict) -> None:
        """Start saving the train state (split into its model and train items), ``meta``
        and ``metrics`` (asynchronously: "checkpoint saved" is logged once committed)."""
        self.wait()                       # orbax would wait for the previous save anyway
        self.manager.save(step, args=ocp.args.Composite(
            model=ocp.args.StandardSave({k: state[k] for k in MODEL_KEYS}),
            train=ocp.args.StandardSave({k: state[k] for k in TRAIN_KEYS}),
            meta=ocp.args.JsonSave(meta or {})),
            force=True, metrics={k: float(v) for k, v in metrics.items()})
        self._pending = step

    def poll(self) -> None:
        """Log the pending save once orbax has committed it (never blocks)."""
        if self._pending is not None and not self.manager.is_saving_in_progress():
            self._committed()

    def _committed(self) -> None:
        self.manager.check_for_errors()
        log.info("checkpoint saved at step %d", self._pending)
        self._pending = None

    def restore(self, step: int, abstract_state: Any) -> tuple[dict, dict]:
        """Restore the whole state of ``step`` (to resume) -> (state, meta)."""
        model = {k: abstract_state[k] for k in MODEL_KEYS}
        train = {k: abstract_state[k] for k in TRAIN_KEYS}
        self.check_matches(step, {"model": model, "train": train})
        out = self.manager.restore(step, args=ocp.args.Composite(
            model=ocp.args.StandardRestore(model), train=ocp.args.StandardRestore(train),
            meta=ocp.args.JsonRestore()))
        return {**out["model"], **out["train"]}, dict(out["meta"] or {})

    def restore_model(self, step: int, abstract_model: Any) -> dict:
        """Restore only {params, model_state} of ``step`` (evaluation: no optimizer state)."""
        self.check_matches(step, {"model": abstract_model})
        out = self.manager.restore(step, args=ocp.args.Composite(
            model=ocp.args.StandardRestore(abstract_model)))
        return out["model"]

    def check_matches(self, step: int, abstract: dict) -> None:
        """A clear error unless checkpoint ``step`` holds the arrays of ``abstract``."""
        try:
            meta = self.manager.item_metadata(step)
            saved = {k: meta[k] for k in abstract}
        except Exception as e:  # noqa: BLE001 -- unreadable metadata: orbax will say why
            log.warning("could not read checkpoint metadata of step %d: %s", step, e)
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
        """Block until the save in flight (if any) is committed, and log it."""
        self.manager.wait_until_finished()
        if self._pending is not None:
            self._committed()

    def close(self) -> None:
        self.wait()
        self.manager.close()


def write_atomic(path: epath.Path, text: str) -> None:
    """Write ``text`` to a temporary sibling and rename it over ``path``: a reader sees
    the old file or the new one, never half of one."""
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_text(text)
    tmp.replace(path)


def save_config(config, workdir) -> epath.Path:
    """``workdir/config.json``, written by process 0 only (:mod:`jaxhybrid.rundir` calls
    it once, for the first run of a directory)."""
    path = run_path(workdir) / "config.json"
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, config.to_json_best_effort(indent=2, sort_keys=True))
    return path


def read_json(path: epath.Path, advice: str):
    """The JSON of ``path``; a file that is not valid JSON is an error naming it, with
    ``advice`` on what to do."""
    text = path.read_text()
    try:
        return json.loads(text)
    except ValueError as e:
        raise CorruptFileError(f"{path} is not valid JSON ({e}; {len(text)} bytes): "
                               f"{advice}") from None


class CorruptFileError(ValueError):
    """A file of the run directory that cannot be read."""


def load_saved_config(workdir) -> dict | None:
    path = run_path(workdir) / "config.json"
    if not path.exists():
        return None
    return read_json(path, "it records what this run trained; restore it (e.g. from a "
                           "copy of the run), or use a new --workdir")
