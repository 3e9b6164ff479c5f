"""Which checkpoint is best: the one rule, written here only.

A checkpoint is selected when its validation value of the family's metric
(``Family.select``: e.g. ``val_accuracy``, max) is finite and strictly better than
every earlier one; among ties the earliest stays selected. The selector's state
({metric, mode, best, best_step, since_best}) is saved in every checkpoint's ``meta``
item and committed with it, so the best step is persisted once and read back from
there by everything else (the end-of-training evaluation, ``--mode=eval``,
``--checkpoint=best``); a resumed run continues with the same best value and patience
counter, and re-running a run that stopped early stops again. Beside each checkpoint's
validation metrics orbax keeps ``selected_at`` (its step if it was selected when saved,
else -1), which is all its preservation policy ranks on: the newest selected
checkpoint is the best one, so it is never deleted.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Optional

log = logging.getLogger("jaxhybrid")

SELECTED_AT = "selected_at"


@dataclasses.dataclass
class Selector:
    metric: str                    # e.g. "val_accuracy" (a key of the validation metrics)
    mode: str = "max"              # max | min
    patience: int = 0              # validations without improvement before stopping (0: off)
    best: Optional[float] = None
    best_step: Optional[int] = None
    since_best: int = 0

    def __post_init__(self):
        if self.mode not in ("max", "min"):
            raise ValueError(f"selection mode {self.mode!r}; valid choices: max, min")
        if self.patience < 0:
            raise ValueError(f"early_stopping_patience must be >= 0, got {self.patience}")

    def update(self, step: int, metrics: dict) -> bool:
        """Record one validation; returns whether it is the new best."""
        if self.metric not in metrics:
            raise KeyError(f"validation metrics {sorted(metrics)} lack the selection metric "
                           f"{self.metric!r}")
        value = float(metrics[self.metric])
        better = math.isfinite(value) and (
            self.best is None or (value > self.best if self.mode == "max" else value < self.best))
        if better:
            self.best, self.best_step, self.since_best = value, step, 0
        else:
            self.since_best += 1
        return better

    @property
    def should_stop(self) -> bool:
        return bool(self.patience) and self.since_best >= self.patience

    def stop_reason(self) -> str:
        return (f"early stopping: {self.metric} has not improved for {self.patience} "
                f"validations (best {self.best:.4f} at step {self.best_step})")

    def state_dict(self) -> dict:
        return {"metric": self.metric, "mode": self.mode, "best": self.best,
                "best_step": self.best_step, "since_best": self.since_best}

    def load(self, state: dict) -> "Selector":
        """Continue from a saved state (ignored if it tracked another metric)."""
        if state.get("metric") == self.metric and state.get("mode") == self.mode:
            self.best, self.best_step = state.get("best"), state.get("best_step")
            self.since_best = int(state.get("since_best", 0))
        return self

    def checkpoint_metrics(self, step: int, validation: dict) -> dict:
        """What orbax keeps beside checkpoint ``step``: the validation metrics (possibly
        none) and ``selected_at``. Records the validation first, if there is one."""
        selected = bool(validation) and self.update(step, validation)
        return {**validation, SELECTED_AT: float(step if selected else -1)}


def preservation_value(metrics) -> float:
    """Orbax's ranking of a kept checkpoint (higher is kept): ``selected_at``."""
    return float((metrics or {}).get(SELECTED_AT, -1.0))


def best_label(state: dict) -> str:
    """'best (step 208, val_accuracy=0.9871)' from a selector state."""
    return f"best (step {state['best_step']}, {state['metric']}={state['best']:.4f})"


def saved_state(ckpt) -> dict:
    """The selector state committed with the latest checkpoint of ``ckpt`` ({} if none)."""
    return dict(ckpt.latest_meta().get("selector") or {})


def resolve(ckpt, which) -> tuple[int, str]:
    """'best' | 'latest' | a step number -> (an existing step of ``ckpt``, its label).

    'best' is the step the selector saved with the latest checkpoint; where none was ever
    selected (no validation split) it is the latest checkpoint, with a warning."""
    if which != "best":
        step = ckpt.resolve(which)
        return step, (f"latest (step {step})" if which == "latest" else f"step {step}")
    state = saved_state(ckpt)
    if state.get("best_step") is None:
        step = ckpt.resolve("latest")
        log.warning("no checkpoint in %s was selected on a validation metric (no validation "
                    "split?); evaluating the latest, step %d", ckpt.directory, step)
        return step, f"latest (step {step}; none selected)"
    return ckpt.resolve(int(state["best_step"])), best_label(state)
