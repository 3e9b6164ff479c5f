"""Deep hybrid model (docs/methods/dhm.md): a ResNet-18 classifier and a β-VAE, trained jointly.

- **Trunk:** CIFAR-style ResNet-18 (3×3 stem, no max-pool), features [B, 8w]
  (512 at the default width w = 64).
- **VAE encoder:** a second ResNet-18 -> μ, log σ² [B, L] (latent L = 256).
- **Decoder:** Dense -> 8w × ⌈h/2ⁿ⌉ × ⌈w/2ⁿ⌉ -> a BasicBlock per resolution, nearest ×2
  upsampling between them (widths 8w, 4w, 2w, w) -> 3×3 conv to the target's channels,
  cropped to the target's exact size, so any input shape works (28×28×1, 32×32×3,
  8×8×1, ...).
- **Head** on concat(trunk features, μ): Dropout 0.5 -> Dense 256 -> Dropout 0.25 ->
  Dense K, as the original (no activation between). The head sees μ, never a sample.
- ``vae_split_layer`` k ∈ {0..4}: k = 0, the VAE encodes and reconstructs pixels; k ≥ 1,
  it starts from the input of the trunk's stage k (stages numbered 1..4; the stem's
  output is stage 1's input) and reconstructs those features. The features are not
  detached, as in the original (its forward hooks keep the autograd graph): the VAE's
  loss also trains the trunk's stages below k, through the encoder's input and through
  the reconstruction target.
- ``norm``: ``batch`` (:class:`jaxhybrid.models.layers.BatchNorm`, statistics over the
  valid rows of the global batch; running averages in eval mode), ``group`` or ``none``.

Dropout masks and the reparameterisation noise are keyed per example (the caller
passes ``keys`` [B, *key] and ``eps`` [B, S, L]), so they do not depend on the device
count. Inputs: pixel-space ``x`` [B, H, W, C]; the per-channel normalisation happens
inside (attacks work in pixel space).
"""
from __future__ import annotations

import math
from functools import partial
from typing import Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxhybrid.models.cnn import Normalize
from jaxhybrid.models.layers import BatchNorm, ExampleDropout

NORMS = ("batch", "group", "none")
SPLIT_LAYERS = (0, 1, 2, 3, 4)


class Norm(nn.Module):
    """The configured normalisation; BatchNorm over the global batch with the padding mask."""
    kind: str = "batch"
    groups: int = 8
    axis_name: Optional[str] = None

    @nn.compact
    def __call__(self, x, *, train: bool, mask=None):
        if self.kind == "none":
            return x
        if self.kind == "group":   # statistics in float32 whatever x's dtype (flax)
            return nn.GroupNorm(num_groups=math.gcd(self.groups, x.shape[-1]), dtype=x.dtype)(x)
        if self.kind == "batch":
            return BatchNorm(axis_name=self.axis_name)(x, train=train, mask=mask)
        raise ValueError(f"Unknown norm {self.kind!r}; valid choices: {', '.join(NORMS)}")


class Block(nn.Module):
    """ResNet BasicBlock with the configured normalisation (projection when the shape changes)."""
    features: int
    stride: int = 1
    norm: str = "batch"
    axis_name: Optional[str] = None
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x, *, train: bool, mask=None):
        conv = partial(nn.Conv, use_bias=self.norm == "none", dtype=self.dtype)
        norm = lambda: Norm(self.norm, axis_name=self.axis_name)  # noqa: E731
        s = (self.stride, self.stride)
        y = conv(self.features, (3, 3), s, padding="SAME")(x)
        y = nn.relu(norm()(y, train=train, mask=mask))
        y = conv(self.features, (3, 3), padding="SAME")(y)
        y = norm()(y, train=train, mask=mask)
        if x.shape != y.shape:
            x = conv(self.features, (1, 1), s)(x)
            x = norm()(x, train=train, mask=mask)
        return nn.relu(y + x)


class ResNetStages(nn.Module):
    """Stem (when ``first == 0``) and stages ``first+1 .. 4`` of a CIFAR ResNet-18.

    ``__call__(x, stop)`` runs up to the input of stage ``stop`` (5: the end, pooled
    features [B, 8w]); returns (output, {k: input of stage k}) for the stages it ran.
    """
    width: int = 64
    blocks: Sequence[int] = (2, 2, 2, 2)
    norm: str = "batch"
    axis_name: Optional[str] = None
    first: int = 0
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x, *, train: bool, mask=None):
        inputs = {}
        if self.first == 0:
            x = nn.Conv(self.width, (3, 3), padding="SAME", use_bias=self.norm == "none",
                        dtype=self.dtype)(x)
            x = nn.relu(Norm(self.norm, axis_name=self.axis_name)(x, train=train, mask=mask))
        for stage in range(max(self.first, 1), 5):
            inputs[stage] = x
            w = self.width * 2 ** (stage - 1)
            for b in range(self.blocks[stage - 1]):
                x = Block(w, stride=2 if (b == 0 and stage > 1) else 1, norm=self.norm,
                          axis_name=self.axis_name, dtype=self.dtype)(x, train=train, mask=mask)
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2)), inputs


class Decoder(nn.Module):
    """z [N, L] -> [N, *target_shape[:2], out_channels] with ``upsamplings`` ×2 steps."""
    width: int = 64
    upsamplings: int = 3
    norm: str = "batch"
    axis_name: Optional[str] = None
    dtype: str = "float32"

    @nn.compact
    def __call__(self, z, target_hw, out_channels: int, *, train: bool, mask=None):
        n = self.upsamplings
        h0, w0 = (-(-target_hw[0] // 2 ** n), -(-target_hw[1] // 2 ** n))
        c0 = self.width * 8
        block = partial(Block, norm=self.norm, axis_name=self.axis_name, dtype=self.dtype)
        x = nn.Dense(h0 * w0 * c0, dtype=self.dtype)(z).reshape((z.shape[0], h0, w0, c0))
        x = block(c0)(x, train=train, mask=mask)
        for i in range(n):
            x = upsample_2x(x)
            x = block(self.width * 2 ** (2 - i))(x, train=train, mask=mask)
        x = x[:, :target_hw[0], :target_hw[1]]
        return nn.Conv(out_channels, (3, 3), padding="SAME", dtype=self.dtype)(x)


def upsample_2x(x):
    """Nearest-neighbour ×2 upsampling [B, H, W, C] -> [B, 2H, 2W, C] as broadcast + reshape
    (equal to ``jax.image.resize(..., "nearest")``, whose gather lowers to a scatter-add in
    the backward pass; this one's backward is a sum of 2×2 blocks)."""
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
    return x.reshape((b, 2 * h, 2 * w, c))


def _upsamplings(split_layer: int) -> int:
    """Resolution of stage k's input relative to the first stage: k ≤ 2 full, 3 half, 4 quarter."""
    return 3 - max(split_layer - 2, 0)


class DHM(nn.Module):
    """Returns a dict: ``logits`` [B, K], ``mu``/``log_var`` [B, L], ``decoded``
    [S, B, h, w, C'] (the decoder output at z = μ + σ·eps, or at z = μ if ``eps`` is None,
    then S = 1), ``target`` [B, h, w, c] (normalised pixels for k = 0, else the trunk's
    stage-k input; C' = ``out_channels`` or c when 0)."""
    num_classes: int
    width: int = 64
    blocks: Sequence[int] = (2, 2, 2, 2)
    latent: int = 256
    head_hidden: int = 256
    norm: str = "batch"
    vae_split_layer: int = 0
    out_channels: int = 0          # decoder channels (0: the target's channels)
    axis_name: Optional[str] = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    dtype: str = "float32"         # compute dtype (jaxhybrid/precision.py); outputs float32

    @nn.compact
    def __call__(self, x, *, train: bool, mask=None, keys=None, eps=None,
                 decode: bool = True):
        k = self.vae_split_layer
        common = dict(width=self.width, blocks=tuple(self.blocks), norm=self.norm,
                      axis_name=self.axis_name, dtype=self.dtype)
        dense = partial(nn.Dense, dtype=self.dtype)
        x = Normalize(self.mean, self.std)(x.astype(jnp.float32))
        if mask is not None:   # padding rows: zeros, so any pad value stays finite everywhere
            x = jnp.where(mask.reshape((-1,) + (1,) * (x.ndim - 1)), x, 0.0)
        features, inputs = ResNetStages(**common, name="trunk")(x.astype(self.dtype),
                                                                train=train, mask=mask)
        target = x if k == 0 else inputs[k]
        enc, _ = ResNetStages(**common, first=k, name="encoder")(target.astype(self.dtype),
                                                                 train=train, mask=mask)
        mu = dense(self.latent, name="mu")(enc).astype(jnp.float32)
        log_var = dense(self.latent, name="log_var")(enc).astype(jnp.float32)

        drop = keys if train else None
        h = jnp.concatenate([features, mu], axis=-1)
        h = ExampleDropout(0.5)(h, drop)
        h = dense(self.head_hidden)(h)
        h = ExampleDropout(0.25)(h, drop)
        logits = dense(self.num_classes, name="head")(h).astype(jnp.float32)
        out = {"logits": logits, "mu": mu, "log_var": log_var,
               "target": target.astype(jnp.float32)}
        if not decode and not self.is_initializing():
            return out

        z = mu[:, None] if eps is None else mu[:, None] + jnp.exp(0.5 * log_var)[:, None] * eps
        b, s = z.shape[:2]
        rows = None if mask is None else jnp.repeat(mask, s)
        decoded = Decoder(self.width, _upsamplings(k), self.norm, self.axis_name, self.dtype,
                          name="decoder")(z.reshape((b * s, -1)), target.shape[1:3],
                                          self.out_channels or target.shape[-1],
                                          train=train, mask=rows)
        decoded = decoded.astype(jnp.float32)
        out["decoded"] = jnp.moveaxis(decoded.reshape((b, s) + decoded.shape[1:]), 1, 0)
        return out
