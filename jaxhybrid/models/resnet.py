"""CIFAR-style ResNet-18: 3×3 stem, no max-pool, four stages of BasicBlocks.

Normalisation is ``none`` by default (outputs a deterministic function of the
input, as GFFN requires) or ``group`` (GroupNorm; also deterministic). Batch norm
is deliberately not offered: its batch statistics would couple examples.
x: [B, H, W, C] pixel-space -> logits [B, K] (or features [B, 8w] with
``num_classes=0``).
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxhybrid.models.cnn import Normalize

NORMS = ("none", "group")


def _norm(kind: str, groups: int):
    if kind == "none":
        return lambda x: x
    if kind == "group":
        return nn.GroupNorm(num_groups=groups)
    raise ValueError(f"Unknown norm {kind!r}; valid choices: {', '.join(NORMS)}")


class BasicBlock(nn.Module):
    features: int
    stride: int = 1
    norm: str = "none"
    groups: int = 8

    @nn.compact
    def __call__(self, x):
        residual = x
        y = nn.Conv(self.features, (3, 3), (self.stride, self.stride), padding="SAME",
                    use_bias=self.norm == "none")(x)
        y = nn.relu(_norm(self.norm, self.groups)(y))
        y = nn.Conv(self.features, (3, 3), padding="SAME", use_bias=self.norm == "none")(y)
        y = _norm(self.norm, self.groups)(y)
        if residual.shape != y.shape:
            residual = nn.Conv(self.features, (1, 1), (self.stride, self.stride),
                               use_bias=self.norm == "none")(residual)
            residual = _norm(self.norm, self.groups)(residual)
        return nn.relu(y + residual)


class ResNet18(nn.Module):
    num_classes: int
    widths: Sequence[int] = (64, 128, 256, 512)
    blocks_per_stage: Sequence[int] = (2, 2, 2, 2)
    norm: str = "none"
    groups: int = 8
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        del train
        x = Normalize(self.mean, self.std)(x.astype(jnp.float32))
        x = nn.Conv(self.widths[0], (3, 3), padding="SAME", use_bias=self.norm == "none")(x)
        x = nn.relu(_norm(self.norm, self.groups)(x))
        for i, (w, n) in enumerate(zip(self.widths, self.blocks_per_stage)):
            for b in range(n):
                x = BasicBlock(w, stride=2 if (b == 0 and i > 0) else 1,
                               norm=self.norm, groups=self.groups)(x)
        x = jnp.mean(x, axis=(1, 2))
        if self.num_classes == 0:
            return x
        return nn.Dense(self.num_classes)(x)
