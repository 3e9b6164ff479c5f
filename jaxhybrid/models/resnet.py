"""CIFAR-style ResNet-18: 3×3 stem, no max-pool, four stages of BasicBlocks.

Normalisation is ``none`` by default (outputs a deterministic function of the
input, as GFFN requires) or ``group`` (GroupNorm; also deterministic). Batch norm
is deliberately not offered: its batch statistics would couple examples.
x: [B, H, W, C] pixel-space -> logits [B, K] (or features [B, 8w] with
``num_classes=0``).
"""
from __future__ import annotations

from functools import partial
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxhybrid.models.cnn import Normalize

NORMS = ("none", "group")


def _norm(kind: str, groups: int, dtype):
    if kind == "none":
        return lambda x: x
    if kind == "group":   # statistics in float32 whatever the dtype (flax's reductions)
        return nn.GroupNorm(num_groups=groups, dtype=dtype)
    raise ValueError(f"Unknown norm {kind!r}; valid choices: {', '.join(NORMS)}")


class BasicBlock(nn.Module):
    features: int
    stride: int = 1
    norm: str = "none"
    groups: int = 8
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x):
        residual = x
        conv = partial(nn.Conv, use_bias=self.norm == "none", dtype=self.dtype)
        norm = partial(_norm, self.norm, self.groups, self.dtype)
        y = conv(self.features, (3, 3), (self.stride, self.stride), padding="SAME")(x)
        y = nn.relu(norm()(y))
        y = conv(self.features, (3, 3), padding="SAME")(y)
        y = norm()(y)
        if residual.shape != y.shape:
            residual = conv(self.features, (1, 1), (self.stride, self.stride))(residual)
            residual = norm()(residual)
        return nn.relu(y + residual)


class ResNet18(nn.Module):
    num_classes: int
    widths: Sequence[int] = (64, 128, 256, 512)
    blocks_per_stage: Sequence[int] = (2, 2, 2, 2)
    norm: str = "none"
    groups: int = 8
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    dtype: str = "float32"        # compute dtype; params float32, outputs float32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        del train
        x = Normalize(self.mean, self.std)(x.astype(jnp.float32)).astype(self.dtype)
        x = nn.Conv(self.widths[0], (3, 3), padding="SAME", use_bias=self.norm == "none",
                    dtype=self.dtype)(x)
        x = nn.relu(_norm(self.norm, self.groups, self.dtype)(x))
        for i, (w, n) in enumerate(zip(self.widths, self.blocks_per_stage)):
            for b in range(n):
                x = BasicBlock(w, stride=2 if (b == 0 and i > 0) else 1,
                               norm=self.norm, groups=self.groups, dtype=self.dtype)(x)
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        if self.num_classes == 0:
            return x
        return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)
