"""The CIFAR-style ResNet-18 of every family: 3×3 stem, no max-pool, four stages of
BasicBlocks (He et al. 2016), PyTorch's padding.

- :class:`ResNet`: the backbone, shared by the classifier family (:class:`ResNet18`) and
  the DHM (trunk and VAE encoder, :mod:`jaxhybrid.models.dhm`). Returns the pooled
  features [B, widths[-1]] and each stage's input.
- :class:`Norm`: ``batch`` (:class:`jaxhybrid.models.layers.BatchNorm`, global batch
  statistics over the valid rows), ``group`` (GroupNorm) or ``none``. Convolutions
  followed by a norm have no bias (torchvision's and pl_bolts' ResNets); with ``none``
  they have one.
- Every 3×3 convolution pads (1, 1) on each side, stride 2 included, as PyTorch's
  ``conv3x3`` (``padding=1``). XLA's "SAME" pads (0, 1) at stride 2, which would put the
  3×3 branch one pixel off the stride-2 1×1 shortcut.

:class:`ResNet18` (``model.name = resnet18`` of the classifier family): norm ``none`` by
default (the logits a deterministic function of the input, as GFFN requires) or
``group`` (also deterministic). Batch norm is not offered there: its batch statistics
would couple examples. x: [B, H, W, C] pixel-space -> logits [B, K] (or features
[B, widths[-1]] with ``num_classes=0``).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxhybrid.models.layers import BatchNorm, Normalize
from jaxhybrid.schema import Field, choice, count, ints

NORMS = ("batch", "group", "none")
RESNET18_NORMS = ("none", "group")   # deterministic logits: no batch statistics

# The options of ``model.name = resnet18`` (the classifier family's model table).
RESNET18_FIELDS = {
    "widths": Field((64, 128, 256, 512), ints(4, 1), "resnet18: channels of the four stages"),
    "blocks_per_stage": Field((2, 2, 2, 2), ints(4, 1), "resnet18: BasicBlocks per stage"),
    "norm": choice("none", RESNET18_NORMS, "resnet18: none | group (batch statistics would "
                   "couple examples)"),
    "groups": count(8, "resnet18: GroupNorm groups (at most the channels; gcd taken)"),
}
PAD_1 = ((1, 1), (1, 1))          # PyTorch padding=1 of a 3×3 conv, any stride


def conv3x3(features: int, stride: int = 1, **kwargs) -> nn.Conv:
    """3×3 convolution with PyTorch's padding 1 (``kwargs``: use_bias, dtype, name)."""
    return nn.Conv(features, (3, 3), (stride, stride), padding=PAD_1, **kwargs)


class Norm(nn.Module):
    """The configured normalisation of [B, H, W, C] (or [B, C]); ``mask`` [B] for batch."""
    kind: str = "batch"
    groups: int = 8
    axis_name: Optional[str] = None
    unbiased_running_var: bool = False   # BatchNorm only: PyTorch's running-variance rule

    @nn.compact
    def __call__(self, x, *, train: bool, mask=None):
        if self.kind == "none":
            return x
        if self.kind == "group":   # statistics in float32 whatever x's dtype (flax)
            return nn.GroupNorm(num_groups=math.gcd(self.groups, x.shape[-1]), dtype=x.dtype)(x)
        if self.kind == "batch":
            return BatchNorm(axis_name=self.axis_name,
                             unbiased_running_var=self.unbiased_running_var)(
                x, train=train, mask=mask)
        raise ValueError(f"Unknown norm {self.kind!r}; valid choices: {', '.join(NORMS)}")


class BasicBlock(nn.Module):
    """conv1 (3×3, stride)-norm1-ReLU-conv2 (3×3)-norm2 + shortcut (down_conv 1×1 of the
    stride, down_norm, when the shape changes), ReLU: [B, H, W, C] -> [B, H/s, W/s, F]."""
    features: int
    stride: int = 1
    norm: str = "none"
    groups: int = 8
    axis_name: Optional[str] = None
    unbiased_running_var: bool = False
    dtype: str = "float32"

    def make_norm(self, name: str) -> Norm:
        return Norm(self.norm, self.groups, self.axis_name, self.unbiased_running_var,
                    name=name)

    @nn.compact
    def __call__(self, x, *, train: bool, mask=None):
        bias = self.norm == "none"
        y = conv3x3(self.features, self.stride, use_bias=bias, dtype=self.dtype, name="conv1")(x)
        y = nn.relu(self.make_norm("norm1")(y, train=train, mask=mask))
        y = conv3x3(self.features, use_bias=bias, dtype=self.dtype, name="conv2")(y)
        y = self.make_norm("norm2")(y, train=train, mask=mask)
        if x.shape != y.shape:
            x = nn.Conv(self.features, (1, 1), (self.stride, self.stride), use_bias=bias,
                        dtype=self.dtype, name="down_conv")(x)
            x = self.make_norm("down_norm")(x, train=train, mask=mask)
        return nn.relu(y + x)


class ResNet(nn.Module):
    """Stem (``conv1``, ``norm1``; when ``first == 0``) and stages ``max(first, 1) .. 4``
    (blocks ``layer{s}_{b}``); stage s has ``blocks[s-1]`` blocks of width
    ``widths[s-1]``, the first of stages 2..4 of stride 2.

    x: [B, H, W, C] (already normalised) -> (features [B, widths[-1]] float32,
    {s: input of stage s [B, h, w, c]} for the stages it ran).
    """
    widths: Sequence[int] = (64, 128, 256, 512)
    blocks: Sequence[int] = (2, 2, 2, 2)
    norm: str = "none"
    groups: int = 8
    axis_name: Optional[str] = None
    unbiased_running_var: bool = False
    first: int = 0
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x, *, train: bool, mask=None):
        common = dict(norm=self.norm, groups=self.groups, axis_name=self.axis_name,
                      unbiased_running_var=self.unbiased_running_var)
        inputs = {}
        if self.first == 0:
            x = conv3x3(self.widths[0], use_bias=self.norm == "none", dtype=self.dtype,
                        name="conv1")(x)
            x = nn.relu(Norm(self.norm, self.groups, self.axis_name, self.unbiased_running_var,
                             name="norm1")(x, train=train, mask=mask))
        for stage in range(max(self.first, 1), 5):
            inputs[stage] = x
            for b in range(self.blocks[stage - 1]):
                x = BasicBlock(self.widths[stage - 1], 2 if (b == 0 and stage > 1) else 1,
                               **common, dtype=self.dtype, name=f"layer{stage}_{b}")(
                    x, train=train, mask=mask)
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2)), inputs


class ResNet18(nn.Module):
    """The classifier family's ResNet-18: Normalize -> :class:`ResNet` -> Dense K."""
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
        if self.norm not in RESNET18_NORMS:
            raise ValueError(f"Unknown norm {self.norm!r} for model 'resnet18'; valid choices: "
                             f"{', '.join(RESNET18_NORMS)} (batch statistics would couple "
                             f"examples)")
        x = Normalize(self.mean, self.std)(x.astype(jnp.float32)).astype(self.dtype)
        x, _ = ResNet(tuple(self.widths), tuple(self.blocks_per_stage), self.norm, self.groups,
                      dtype=self.dtype)(x, train=train)
        if self.num_classes == 0:
            return x
        return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)
