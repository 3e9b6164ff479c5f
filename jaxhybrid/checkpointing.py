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

import contextlib
import json
import logging
import os
import time
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


class CheckpointStrayError(ValueError):
    """A directory named like a step in ``checkpoints/`` that holds no checkpoint."""


class CheckpointCorruptError(ValueError):
    """A checkpoint whose files cannot be read back."""


class CheckpointWriteError(ValueError):
    """A checkpoint could not be written (a full disk, no permission)."""


STEP_METADATA = "_CHECKPOINT_METADATA"     # orbax writes it into every finished step
# what orbax writes into a step directory: this run's items and its own files
ORBAX_ENTRIES = {"model", "train", "meta", "metrics", "descriptor", STEP_METADATA,
                 "commit_success.txt"}


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
        self._strays = self._check_strays(read_only)
        self._failed: CheckpointWriteError | None = None    # a save that failed, reported

    # -- queries -----------------------------------------------------------------------
    def _is_checkpoint(self, step: int) -> bool:
        d = self.directory / str(step)
        return (d / STEP_METADATA).exists() and (d / "model").is_dir()

    def _check_strays(self, read_only: bool) -> set[int]:
        """Step-named directories that hold no checkpoint. A deletion orbax began and a
        ``kill -9`` cut short leaves one behind (older than the latest checkpoint, holding
        only orbax's own entries): training finishes deleting it, reading ignores it. Any
        other (e.g. ``checkpoints/999/garbage``) is ignored with a warning when reading and
        refused when training, since orbax would take it for a step (and keep it, deleting
        real ones)."""
        if not self.directory.is_dir():
            return set()
        steps = set(self.manager.all_steps())
        strays = {s for s in steps if not self._is_checkpoint(s)}
        if not strays:
            return strays
        half_deleted = {s for s in strays if self._half_deleted(s, steps - strays)}
        for s in sorted(half_deleted):
            d = self.directory / str(s)
            if read_only:
                log.warning("ignoring %s: an older checkpoint whose deletion was cut short",
                            d)
            elif jax.process_index() == 0:        # the others leave it to process 0
                log.warning("removing %s: an older checkpoint whose deletion was cut short "
                            "(the process stopped while orbax deleted it)", d)
                d.rmtree()
        if half_deleted and not read_only and jax.process_index() == 0:
            self.manager.reload()                 # orbax forgets the steps removed
            strays -= half_deleted
        others = strays - half_deleted
        if not others:
            return strays
        names = ", ".join(str(self.directory / str(s)) for s in sorted(others))
        if not read_only:
            raise CheckpointStrayError(
                f"{names}: not a checkpoint (no {STEP_METADATA} and model/ inside), but named "
                f"like one; orbax would take it for a step. Move it out of {self.directory} "
                f"and run again")
        log.warning("ignoring %s: not a checkpoint (no %s and model/ inside)", names,
                    STEP_METADATA)
        return strays

    def _half_deleted(self, step: int, complete: set[int]) -> bool:
        """What orbax's deletion of an old step leaves when the process is killed midway:
        a step older than a complete one, holding nothing but orbax's own entries."""
        if not (complete and step < max(complete)):
            return False
        try:
            entries = {p.name for p in (self.directory / str(step)).iterdir()}
        except FileNotFoundError:      # process 0 of a multi-process run removed it already
            return True
        return entries <= ORBAX_ENTRIES

    def all_steps(self) -> list[int]:
        return sorted(set(self.manager.all_steps()) - self._strays)

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def latest_meta(self) -> dict:
        """The ``meta`` item of the latest checkpoint ({} if there is none)."""
        step = self.latest_step()
        if step is None:
            return {}
        out = self._restore(step, meta=ocp.args.JsonRestore())
        return dict(out["meta"] or {})

    def _restore(self, step: int, **items) -> dict:
        """orbax's restore of ``items``; unreadable files are one CheckpointCorruptError
        naming the checkpoint and the other steps there are."""
        try:
            return self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # noqa: BLE001 -- orbax/tensorstore raise many kinds
            others = [s for s in self.all_steps() if s != step]
            hint = (f"evaluate another step (--checkpoint=STEP; steps here: {others}), or "
                    f"move {self.directory / str(step)} out of {self.directory} to resume "
                    f"from the step before it" if others else
                    f"it is the only checkpoint: remove {self.directory / str(step)} to "
                    f"train again from the start")
            raise CheckpointCorruptError(
                f"checkpoint {self.directory / str(step)} cannot be read ({type(e).__name__}: "
                f"{_first_line(e)}); {hint}") from None

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
        self._pending = step
        with self._writing():
            self.manager.save(step, args=ocp.args.Composite(
                model=ocp.args.StandardSave({k: state[k] for k in MODEL_KEYS}),
                train=ocp.args.StandardSave({k: state[k] for k in TRAIN_KEYS}),
                meta=ocp.args.JsonSave(meta or {})),
                force=True, metrics={k: float(v) for k, v in metrics.items()})

    @contextlib.contextmanager
    def _writing(self):
        """A failed save (a full disk, no permission) is one CheckpointWriteError naming the
        step and the last complete checkpoint, with the save's temporary files removed."""
        try:
            yield
        except Exception as e:  # noqa: BLE001 -- orbax raises many kinds; all are a failed save
            if self._failed is not None:     # the failure already reported, raised again
                raise self._failed from None
            step, self._pending = self._pending, None
            self._stop_and_clean()
            last = self.latest_step()
            self._failed = CheckpointWriteError(
                f"checkpoint step {step} could not be written to {self.directory}: "
                f"{_first_line(e)}. Its partial files were removed; the last complete "
                f"checkpoint is " + (f"step {last}" if last is not None else "none") +
                ". Free space (or fix the permissions) and run the same command to resume")
            raise self._failed from None

    def _stop_and_clean(self) -> None:
        """After a failed save: let orbax's threads end, then remove the partial step."""
        try:
            self.manager.close()
        except Exception:  # noqa: BLE001 -- it re-raises the failure being reported
            pass
        for _ in range(100):   # a thread of the failed save may still be writing into it
            left = list(self.directory.glob("*.orbax-checkpoint-tmp*"))
            if not left:
                return
            for tmp in left:
                try:
                    tmp.rmtree()
                except OSError:
                    pass
            time.sleep(0.1)
        log.warning("could not remove the partial checkpoint(s) %s", left)

    def poll(self) -> None:
        """Log the pending save once orbax has committed it (never blocks)."""
        if self._pending is not None and not self.manager.is_saving_in_progress():
            self._committed()

    def _committed(self) -> None:
        with self._writing():       # raises what the background save raised
            self.manager.wait_until_finished()
        log.info("checkpoint saved at step %d", self._pending)
        self._pending = None

    def restore(self, step: int, abstract_state: Any) -> tuple[dict, dict]:
        """Restore the whole state of ``step`` (to resume) -> (state, meta)."""
        model = {k: abstract_state[k] for k in MODEL_KEYS}
        train = {k: abstract_state[k] for k in TRAIN_KEYS}
        self.check_matches(step, {"model": model, "train": train})
        out = self._restore(step, model=ocp.args.StandardRestore(model),
                            train=ocp.args.StandardRestore(train), meta=ocp.args.JsonRestore())
        return {**out["model"], **out["train"]}, dict(out["meta"] or {})

    def restore_model(self, step: int, abstract_model: Any) -> dict:
        """Restore only {params, model_state} of ``step`` (evaluation: no optimizer state)."""
        self.check_matches(step, {"model": abstract_model})
        out = self._restore(step, model=ocp.args.StandardRestore(abstract_model))
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
        """Block until the save in flight (if any) is committed, and log it (after a failed
        save, which was reported, there is nothing to wait for)."""
        if self._failed is not None:
            return
        with self._writing():
            self.manager.wait_until_finished()
        if self._pending is not None:
            self._committed()

    def close(self) -> None:
        self.wait()
        if self._failed is None:
            self.manager.close()


def _first_line(error: BaseException) -> str:
    """The first line of an error's message, shortened (orbax's run to pages)."""
    text = str(error).strip().splitlines()
    return (text[0][:300] if text else type(error).__name__)


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
