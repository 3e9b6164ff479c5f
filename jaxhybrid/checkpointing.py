"""orbax checkpoints: save, resume, restore-for-eval, with clear mismatch errors.

Layout: ``workdir/checkpoints/<step>/`` (orbax CheckpointManager, StandardSave of
the plain-pytree state ``{params, opt_state, step, rng}``), plus
``workdir/config.json``. Preservation keeps the latest ``keep`` checkpoints and
the best by validation accuracy (orbax ``AnyPreservationPolicy`` of ``LatestN``
and ``BestN``). Restoring takes an abstract target from ``jax.eval_shape`` with
shardings, so the arrays come back sharded over the mesh.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from jaxhybrid.parallel import tree_shapes

BEST_METRIC = "val_accuracy"


class CheckpointNotFoundError(FileNotFoundError):
    pass


class CheckpointMismatchError(ValueError):
    pass


def _best_metric(metrics) -> float:
    return float(metrics[BEST_METRIC])


class Checkpointer:
    def __init__(self, workdir: str, *, keep: int = 3, read_only: bool = False):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        policy = pp.AnyPreservationPolicy([
            pp.LatestN(n=max(int(keep), 1)),
            pp.BestN(get_metric_fn=_best_metric, n=1, keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy, create=not read_only, read_only=read_only,
            enable_async_checkpointing=not read_only)
        if read_only and not os.path.isdir(self.directory):
            raise CheckpointNotFoundError(
                f"No checkpoint directory {self.directory}: train first "
                f"(python -m jaxhybrid.main --mode=train --workdir={workdir} --config=...)")
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_handlers=ocp.StandardCheckpointHandler())

    # -- queries -----------------------------------------------------------------------
    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        best, best_val = None, None
        for s in self.all_steps():
            m = self.manager.metrics(s)
            if m and BEST_METRIC in m and (best_val is None or m[BEST_METRIC] > best_val):
                best, best_val = s, m[BEST_METRIC]
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
                    f"No checkpoint in {self.directory} has a {BEST_METRIC} metric; "
                    f"available steps: {steps}")
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
    def save(self, step: int, state: Any, metrics: dict | None = None) -> None:
        self.manager.save(step, args=ocp.args.StandardSave(state), force=True,
                          metrics={k: float(v) for k, v in (metrics or {}).items()} or None)

    def restore(self, step: int, abstract_state: Any) -> Any:
        """Restore ``step`` into ``abstract_state`` (ShapeDtypeStructs with shardings)."""
        self._check_matches(step, abstract_state)
        return self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

    def _check_matches(self, step: int, abstract_state: Any) -> None:
        try:
            saved = self.manager.item_metadata(step)
        except Exception as e:  # noqa: BLE001 -- unreadable metadata: orbax will say why
            logging.warning("could not read checkpoint metadata of step %d: %s", step, e)
            return
        if saved is None:
            raise CheckpointNotFoundError(
                f"Checkpoint {self.directory}/{step} has no readable metadata "
                f"(incomplete or not written by jaxhybrid)")
        saved_shapes = tree_shapes(saved)
        want_shapes = tree_shapes(abstract_state)
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


def save_config(config, workdir: str) -> str:
    path = os.path.join(workdir, "config.json")
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(path, "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    return path


def load_saved_config(workdir: str) -> dict | None:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)
