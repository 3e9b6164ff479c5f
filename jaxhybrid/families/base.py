"""What the trainer and the evaluators know about a model family: nothing else.

A family is (1) a Flax module, (2) an objective
``loss_fn(params, batch, rng, axis_name) -> (loss, aux)`` whose ``aux`` scalars are
already reduced over ``axis_name``, and (3) a score function
``scores(params, images) -> {name: [B, ...]}`` of per-example outputs. Optional:
``logits_fn`` (classifiers; used by calibration and attacks) and
``ood_scores(outputs) -> {name: [B]}`` (higher = more in-distribution).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    module: Any
    init: Callable            # (rng, images [B,H,W,C]) -> params
    loss_fn: Callable         # (params, batch, rng, axis_name) -> (loss, aux dict of scalars)
    scores: Callable          # (params, images) -> dict of per-example arrays
    logits_fn: Callable | None = None   # (params, images) -> logits [B, K]
    ood_scores: Callable | None = None  # (outputs dict) -> {score name: [B]}, higher = in-dist
    describe: dict = dataclasses.field(default_factory=dict)
