"""Deep hybrid model (docs/methods/dhm.md): a ResNet-18 classifier and a β-VAE, trained jointly.

The original's network (b-turan/hybrid_robustness with pl_bolts' components):

- **Trunk:** CIFAR-style ResNet-18 (:class:`jaxhybrid.models.resnet.ResNet`: 3×3 stem,
  no max-pool, PyTorch's padding), features [B, 8w] (512 at the default width w = 64).
- **VAE encoder:** a second ResNet-18 -> μ, log σ² [B, L] (latent L = 256).
- **Decoder:** pl_bolts' ``resnet18_decoder`` (:class:`Decoder`); input height and
  width multiples of 8 (32×32 is the original exactly).
- **Head** on concat(trunk features, μ): Dropout 0.5 -> Dense 256 -> Dropout 0.25 ->
  Dense K, as the original (no activation between). The head sees μ, never a sample.
- ``vae_split_layer`` k ∈ {0..4}: k = 0, the VAE encodes and reconstructs pixels; k ≥ 1,
  it starts from the input of the trunk's stage k (stages numbered 1..4; the stem's
  output is stage 1's input) and reconstructs those features. The features are not
  detached, as in the original (its forward hooks keep the autograd graph): the VAE's
  loss also trains the trunk's stages below k, through the encoder's input and through
  the reconstruction target.
  The decoder's output is then the input of its layer 6 − k (a ReLU output).
- ``norm``: ``batch`` (:class:`jaxhybrid.models.layers.BatchNorm`, statistics over the
  valid rows of the global batch; running averages in eval mode, the running variance
  updated with the unbiased batch variance as PyTorch does), ``group`` or ``none``.

Dropout masks and the reparameterisation noise are keyed per example (the caller
passes ``keys`` [B, *key] and ``eps`` [B, S, L]), so they do not depend on the device
count. Inputs: pixel-space ``x`` [B, H, W, C]; the per-channel normalisation happens
inside (attacks work in pixel space).
"""
from __future__ import annotations

from functools import partial
from typing import Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxhybrid.mathops import reparameterise
from jaxhybrid.models.layers import ExampleDropout, Normalize
from jaxhybrid.models.resnet import NORMS, Norm, ResNet, conv3x3

SPLIT_LAYERS = (0, 1, 2, 3, 4)
__all__ = ["DHM", "Decoder", "NORMS", "SPLIT_LAYERS", "upsample_2x"]


class DecoderBlock(nn.Module):
    """pl_bolts' ``DecoderBlock``: conv1 (3×3, keeps the ``inplanes`` channels at the
    input resolution)-norm1-ReLU-[nearest ×scale]-conv2 (3×3 to ``features``)-norm2 +
    shortcut ([nearest ×scale]-up_conv 1×1-up_norm, when the shape changes), ReLU."""
    features: int
    scale: int = 1
    norm: str = "batch"
    axis_name: Optional[str] = None
    unbiased_running_var: bool = False
    dtype: str = "float32"

    def make_norm(self, name: str) -> Norm:
        return Norm(self.norm, axis_name=self.axis_name,
                    unbiased_running_var=self.unbiased_running_var, name=name)

    @nn.compact
    def __call__(self, x, *, train: bool, mask=None):
        bias = self.norm == "none"
        up = upsample_2x if self.scale == 2 else (lambda v: v)
        y = conv3x3(x.shape[-1], use_bias=bias, dtype=self.dtype, name="conv1")(x)
        y = nn.relu(self.make_norm("norm1")(y, train=train, mask=mask))
        y = conv3x3(self.features, use_bias=bias, dtype=self.dtype, name="conv2")(up(y))
        y = self.make_norm("norm2")(y, train=train, mask=mask)
        if self.scale != 1 or x.shape[-1] != self.features:
            x = nn.Conv(self.features, (1, 1), use_bias=bias, dtype=self.dtype,
                        name="up_conv")(up(x))
            x = self.make_norm("up_norm")(x, train=train, mask=mask)
        return nn.relu(y + x)


class Decoder(nn.Module):
    """pl_bolts' ``resnet18_decoder`` (``first_conv=False, maxpool1=False``).

    z [N, L] -> ``linear`` -> (8w, H/8, W/8) channel-major (PyTorch's ``view``), as NHWC ->
    ``layer1..layer4`` (``blocks[i]`` DecoderBlocks each; widths 4w, 2w, w, w; ×2 in the
    first block of layers 1-3) -> ``conv1`` 3×3 without bias to ``out_channels``:
    [N, H, W, out_channels]. At 32×32 the start is pl_bolts' 4×4; other sizes must be
    multiples of 8.

    ``read_at`` = 6 − k for ``vae_split_layer`` k ≥ 1: the output is the input of layer
    ``read_at`` (5: of ``conv1``), a ReLU output, as the original's forward hook reads it;
    the later layers are not built. With ``head_channels`` > 0 a 3×3 conv (bias) maps it
    to that many channels (the parameters of a likelihood at feature level; not in the
    original).
    """
    width: int = 64
    blocks: Sequence[int] = (2, 2, 2, 2)
    norm: str = "batch"
    axis_name: Optional[str] = None
    unbiased_running_var: bool = False
    read_at: int = 0
    head_channels: int = 0
    dtype: str = "float32"

    @nn.compact
    def __call__(self, z, image_hw, out_channels: int, *, train: bool, mask=None):
        h, w = image_hw
        if h % 8 or w % 8:
            raise ValueError(f"the DHM decoder (pl_bolts' resnet18_decoder) needs an input "
                             f"height and width divisible by 8; got {h}×{w} (pad the images, "
                             f"e.g. config field data.frame = {-(-max(h, w) // 8) * 8})")
        c0 = self.width * 8
        x = nn.Dense(c0 * (h // 8) * (w // 8), dtype=self.dtype, name="linear")(z)
        x = jnp.transpose(x.reshape((z.shape[0], c0, h // 8, w // 8)), (0, 2, 3, 1))
        widths = (4 * self.width, 2 * self.width, self.width, self.width)
        for layer in range(1, 5):
            if layer == self.read_at:
                return self.head(x)
            for b in range(self.blocks[layer - 1]):
                x = DecoderBlock(widths[layer - 1], 2 if (b == 0 and layer < 4) else 1,
                                 self.norm, self.axis_name, self.unbiased_running_var,
                                 self.dtype, name=f"layer{layer}_{b}")(x, train=train, mask=mask)
        if self.read_at == 5:
            return self.head(x)
        return conv3x3(out_channels, use_bias=False, dtype=self.dtype, name="conv1")(x)

    def head(self, x):
        if not self.head_channels:
            return x
        return conv3x3(self.head_channels, dtype=self.dtype, name="head")(x)


def upsample_2x(x):
    """Nearest-neighbour ×2 upsampling [B, H, W, C] -> [B, 2H, 2W, C] as broadcast + reshape
    (equal to ``jax.image.resize(..., "nearest")``, whose gather lowers to a scatter-add in
    the backward pass; this one's backward is a sum of 2×2 blocks)."""
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
    return x.reshape((b, 2 * h, 2 * w, c))


class DHM(nn.Module):
    """Returns a dict: ``logits`` [B, K], ``mu``/``log_var`` [B, L], ``decoded``
    [S, B, h, w, C'] (the decoder output at ``z`` [S, B, L] = μ + σ·eps, or z = μ if ``eps``
    is None, then S = 1), ``target`` [B, h, w, c] (normalised pixels for k = 0, else the trunk's
    stage-k input; C' = ``out_channels`` or c when 0)."""
    num_classes: int
    width: int = 64
    blocks: Sequence[int] = (2, 2, 2, 2)
    latent: int = 256
    head_hidden: int = 256
    norm: str = "batch"
    unbiased_running_var: bool = True   # PyTorch's BatchNorm2d rule, as the original
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
        common = dict(norm=self.norm, axis_name=self.axis_name,
                      unbiased_running_var=self.unbiased_running_var, dtype=self.dtype)
        widths = tuple(self.width * 2 ** i for i in range(4))
        dense = partial(nn.Dense, dtype=self.dtype)
        x = Normalize(self.mean, self.std)(x.astype(jnp.float32))
        if mask is not None:   # padding rows: zeros, so any pad value stays finite everywhere
            x = jnp.where(mask.reshape((-1,) + (1,) * (x.ndim - 1)), x, 0.0)
        features, inputs = ResNet(widths, tuple(self.blocks), **common, name="trunk")(
            x.astype(self.dtype), train=train, mask=mask)
        target = x if k == 0 else inputs[k]
        enc, _ = ResNet(widths, tuple(self.blocks), **common, first=k, name="encoder")(
            target.astype(self.dtype), train=train, mask=mask)
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

        z = mu[:, None] if eps is None else reparameterise(
            mu[:, None], jnp.exp(0.5 * log_var)[:, None], eps)               # [B, S, L]
        b, s = z.shape[:2]
        rows = None if mask is None else jnp.repeat(mask, s)
        head = self.out_channels if k > 0 and self.out_channels else 0
        decoded = Decoder(self.width, tuple(self.blocks), read_at=6 - k if k else 0,
                          head_channels=head, **common, name="decoder")(
            z.reshape((b * s, -1)), x.shape[1:3], self.out_channels or x.shape[-1],
            train=train, mask=rows)
        decoded = decoded.astype(jnp.float32)
        out["decoded"] = jnp.moveaxis(decoded.reshape((b, s) + decoded.shape[1:]), 1, 0)
        out["z"] = jnp.moveaxis(z, 1, 0)
        return out
