"""Checkpoint selection and early stopping on the family's validation metric.

The selector's state is saved in every checkpoint (its ``meta`` item), so a resumed
run continues with the same best value and patience counter, and re-running a run
that stopped early stops again instead of training past the stop.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional


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
