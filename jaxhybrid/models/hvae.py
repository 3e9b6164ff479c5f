"""The hierarchical VAE of hvae-oodd (Havtorn et al. 2021, its ``VAE`` model; docs/methods/hvae.md).

L Gaussian stochastic layers z_1 (lowest) … z_L, each behind a stage of residual conv
blocks (:class:`ResBlock`, the original's ``ResBlockConv2d``):

- inference, bottom-up: h_1 = stage_1(x), q(z_1|x) from h_1; h_i = stage_i(z_{i−1} as a
  feature map, skips h_{i−1}), q(z_i|·) from h_i;
- generation, top-down: p(z_L) = N(0, I); d_L = stage_L^T(z_L); p(z_i|d_{i+1}) from
  d_{i+1}; d_i = stage_i^T(z_i as a feature map, skips: the block outputs of stage i+1's
  generative stack, in order) with the stage's blocks mirrored (reversed, strides as
  transposed convolutions); the likelihood's parameters come from ReLU(d_1) by a
  ``likelihood_kernel`` conv.

A Gaussian layer maps ReLU(h) by a conv (``GaussianConv2d``, same padding) or a dense
map of the flattened features (``GaussianDense``) to (μ, s); σ = max(softplus_β(s),
``min_scale``) with softplus_β(s) = log(1 + e^{βs})/β, β = ln 2 (so s = 0 gives σ = 1).
A dense z is projected to its stage's feature-map shape by a dense map (AsFeatureMap);
a conv z is used as it is. (The original also builds an inference projection for z_L,
which nothing reads: 31,360 of its 2.62 M Fashion-MNIST parameters. It is left out.)

Every linear map is weight-normalised with data-dependent initialisation
(:class:`WNLinear`): the statistics come from the GLOBAL first batch (valid rows only,
``psum`` over ``axis_name``), so initialisation does not depend on the device count.
It differs from the original's in two places, both on purpose (docs/methods/hvae.md):
the biased variance for dense layers (the original's unbiased one gives scales about 3 %
smaller at batch 16, 0.4 % at 128), and transposed convs take their statistics AFTER the
same-padding crop (the original's, before it, differ by 3–8 % and carry into the layers
after). Only where training starts changes.

Skip inputs whose shape already equals the block's (conv1 output) shape are DROPPED, as
in the original: its ``y = y + aux_op(act(aux)) if aux_op is not None else y`` parses as
``(y + …) if … else y``, and aux_op is None exactly when no resampling is needed. With
the paper's configurations this removes every inference skip (so q(z_i | z_{i−1}) as
docs/methods/hvae.md writes it) and keeps the generative skips of the upsampling blocks.
``same_shape_skips=True`` adds them (ReLU(aux)) instead.

Which generative skips exist is decided from the shape that actually arrives at each
block. The original sizes each generative skip from the stage's INFERENCE output shape
instead. The two agree in the paper's configurations (checked against the original),
but not in general: with a stride-2 block first in each stage, this module builds two
upsampling skip convs that the original does not have, and log p(x|z) differs from the
original's by 7.7 % in the case measured (docs/methods/hvae.md, "Differences").

Samples travel flattened, sample-major: S samples of B examples are [S·B, ...]. The
first stage's inference (h_1 and q(z_1|x)) depends on x only and runs once on [B].
``skip`` may differ per sample, so the L>k passes of several k run as one batch.
Parameters are float32; convolutions and matrix products run in ``dtype``; Gaussian
parameters and samples are float32.
"""
from __future__ import annotations

import functools
import itertools
import math
from typing import Any, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxhybrid.mathops import reparameterise
from jaxhybrid.models.layers import masked_moments

SCALE_BETA = math.log(2.0)   # softplus(β = ln 2)(0) = 1: N(0, 1) at s = 0 (the original's)
DDI_EPS = 1e-8               # the original's ε in 1/sqrt(Var + ε)
_DN = ("NHWC", "HWIO", "NHWC")
# torch's kaiming_normal_(fan_in, relu), the original's v (a plain, not truncated, normal)
_KAIMING_NORMAL = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


class Block(NamedTuple):
    """One residual block of a deterministic stage (the original's ResBlockConv2d)."""
    out_channels: int
    kernel_size: int
    stride: int = 1
    gated: bool = False


class Latent(NamedTuple):
    """One stochastic layer: ``conv`` (GaussianConv2d) or ``dense`` (GaussianDense)."""
    kind: str
    features: int
    kernel_size: int = 3


def scale_of(logit, min_scale: float):
    """σ = max(softplus_β(s), floor), softplus_β(s) = log(1 + e^{βs})/β, β = ln 2."""
    return jnp.maximum(jax.nn.softplus(SCALE_BETA * logit) / SCALE_BETA, min_scale)


def transpose_padding(kernel: int, stride: int) -> tuple[int, int]:
    """``lax.conv_transpose``'s "SAME" padding of the input-dilated image (its rule)."""
    total = kernel + stride - 2
    low = kernel - 1 if stride > kernel - 1 else -(-total // 2)
    return low, total - low


def _phase(x, w, axis_pads):
    """One output phase: pad (negative = crop) each spatial axis, then a VALID stride-1 conv."""
    cfg = ((0, 0, 0),) + tuple((lo, hi, 0) for lo, hi in axis_pads) + ((0, 0, 0),)
    x = lax.pad(x, jnp.zeros((), x.dtype), cfg)
    return lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=_DN)


def conv_transpose_same(x, w, stride: int):
    """``lax.conv_transpose(x, w, (s, s), "SAME")`` (NHWC, HWIO), equal values.

    On XLA:CPU it is computed by output phase (sub-pixel): output rows s·q + p are a
    stride-1 convolution of the undilated input with the kernel rows t ≡ (lo − p) mod s,
    and likewise for columns; the s² phases are interleaved. No work on inserted zeros,
    and no input-dilated convolution, whose filter gradient is slow on XLA:CPU
    (benchmarks/hvae_step.py times the step and its convolutions). GPUs and TPUs keep
    the native form.
    """
    if jax.default_backend() != "cpu" or stride == 1:
        return lax.conv_transpose(x, w, (stride, stride), "SAME", dimension_numbers=_DN)
    k, s = w.shape[0], stride
    lo, _ = transpose_padding(k, s)

    def plan(p, size):          # kernel offset t0, (pad low, pad high) of the input axis
        t0 = (lo - p) % s
        n = -(-(k - t0) // s)
        delta = (p + t0 - lo) // s
        return t0, (-delta, n - 1 + delta)
    h, wd = x.shape[1:3]
    rows = []
    for ph in range(s):
        t0h, pad_h = plan(ph, h)
        cols = []
        for pw in range(s):
            t0w, pad_w = plan(pw, wd)
            sub = w[t0h::s, t0w::s]
            cols.append(_phase(x, sub, (pad_h, pad_w)) if sub.size else   # no tap: zeros
                        jnp.zeros(x.shape[:3] + w.shape[-1:], x.dtype))
        rows.append(jnp.stack(cols, axis=3))                    # [B, H, W, s, C]
    y = jnp.stack(rows, axis=2)                                 # [B, H, s, W, s, C]
    b, _, _, _, _, c = y.shape
    return y.reshape((b, h * s, wd * s, c))


class WNLinear(nn.Module):
    """Weight-normalised conv, transposed conv (``transposed``) or dense (``kernel=0``, on
    the flattened input): y = g·(x ⊛ v/‖v‖) + b, ‖v‖ per output feature (Salimans &
    Kingma 2016, eq. 2). Same padding: a stride s conv gives ceil(H/s), a transposed one H·s.

    Data-dependent init (their §3): v ~ N(0, 2/fan_in), then with y₀ = x ⊛ v/‖v‖ on the
    first batch g = 1/sqrt(Var[y₀] + 1e-8), b = −E[y₀]·g per feature, moments over the valid
    rows (``mask``) of the GLOBAL batch and every spatial position. ``mask`` is read only
    while initialising. g and b are initialised whenever they are absent, so
    ``apply({"params": only the v's}, ..., mutable=["params"])`` initialises from given
    directions (:func:`init_from_directions`).
    """
    features: int
    kernel: int = 3
    stride: int = 1
    transposed: bool = False
    axis_name: Optional[str] = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None):
        if self.kernel:
            shape = (self.kernel, self.kernel, x.shape[-1], self.features)
        else:
            x = x.reshape((x.shape[0], -1))
            shape = (x.shape[-1], self.features)
        v = self.param("v", _KAIMING_NORMAL, shape, jnp.float32)
        w = (v * lax.rsqrt(jnp.sum(jnp.square(v), axis=tuple(range(v.ndim - 1))))).astype(
            self.dtype)
        x = x.astype(self.dtype)
        s = (self.stride, self.stride)
        if not self.kernel:
            y = x @ w
        elif self.transposed:
            y = conv_transpose_same(x, w, self.stride)
        else:
            y = lax.conv_general_dilated(x, w, s, "SAME", dimension_numbers=_DN)
        mean = inv = jnp.ones((self.features,), jnp.float32)   # flax checks init shapes
        if not self.has_variable("params", "g"):   # initialising (or g, b not given yet)
            mean, var = masked_moments(lax.stop_gradient(y), mask, self.axis_name)
            inv = lax.rsqrt(var + DDI_EPS)
        g = self.variable("params", "g", lambda: inv).value      # no rng: init from data
        b = self.variable("params", "b", lambda: -mean * inv).value
        return y * g.astype(self.dtype) + b.astype(self.dtype)


def _shortcut(x, shape, stride: int):
    """The residual path to ``shape``: channels zero-padded or cut, then a 3×3 average
    pool of stride s (zeros counted) when the block downsamples."""
    c, tc = x.shape[-1], shape[-1]
    x = x[..., :tc] if c >= tc else jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, tc - c)])
    if x.shape[1] > shape[1]:
        x = nn.avg_pool(x, (3, 3), (stride, stride), "SAME")
    return x


class ResBlock(nn.Module):
    """y = conv2(ReLU(conv1(ReLU(x)) + aux_op(ReLU(aux)))) [+ shortcut(x)].

    conv1: stride 1; conv2: stride ``stride`` (transposed when ``transposed``: upsampling),
    doubled and gated (a·σ(b)) when ``gated``. ``residual=False`` (a stage's first block
    where the original has no input residual): no input ReLU and no shortcut. An
    upsampling block has no shortcut (the original's). aux_op resamples the skip input
    to conv1's output: strided conv (larger), transposed conv (smaller), 1×1 conv (other
    channels), else none (see the module docstring for ``same_shape_skips``).
    """
    features: int
    kernel: int
    stride: int = 1
    transposed: bool = False
    residual: bool = True
    gated: bool = False
    same_shape_skips: bool = False
    axis_name: Optional[str] = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, aux=None, mask=None):
        conv = functools.partial(WNLinear, axis_name=self.axis_name, dtype=self.dtype)
        y = conv(self.features, self.kernel, name="conv1")(
            nn.relu(x) if self.residual else x, mask)
        if aux is not None:
            a, (h, c), (th, tc) = nn.relu(aux), aux.shape[1::2], y.shape[1::2]
            if h != th:
                ratio = max(h, th) // min(h, th)
                y = y + conv(tc, self.kernel, ratio, h < th, name="aux")(a, mask)
            elif c != tc:
                y = y + conv(tc, 1, name="aux")(a, mask)
            elif self.same_shape_skips:
                y = y + a.astype(y.dtype)
        out = self.features * (2 if self.gated else 1)
        y = conv(out, self.kernel, self.stride, self.transposed, name="conv2")(nn.relu(y), mask)
        if self.gated:
            y, gate = jnp.split(y, 2, axis=-1)
            y = y * nn.sigmoid(gate)
        if not self.residual or y.shape[1] > x.shape[1]:
            return y
        return y + _shortcut(x, y.shape, self.stride).astype(y.dtype)


class Gaussian(nn.Module):
    """(μ, σ) [N, *z] float32 of a Gaussian layer from ReLU(h)."""
    latent: Latent
    min_scale: float = 1e-6
    axis_name: Optional[str] = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h, mask=None):
        kernel = self.latent.kernel_size if self.latent.kind == "conv" else 0
        out = WNLinear(2 * self.latent.features, kernel, axis_name=self.axis_name,
                       dtype=self.dtype, name="linear")(nn.relu(h), mask)
        mean, logit = jnp.split(out.astype(jnp.float32), 2, axis=-1)
        return mean, scale_of(logit, self.min_scale)


class HVAE(nn.Module):
    """The hierarchical VAE (see the module docstring). ``stages[i]``: the blocks of stage
    i+1 (a tuple of :class:`Block`); ``latents[i]``: z_{i+1} (:class:`Latent`);
    ``out_channels``: the likelihood's parameter channels."""
    stages: tuple
    latents: tuple
    out_channels: int
    likelihood_kernel: int = 3
    min_scale: float = 1e-6
    same_shape_skips: bool = False
    axis_name: Optional[str] = None
    dtype: Any = jnp.float32

    def _stack(self, prefix, blocks, x, skips, mask, generative, first_residual):
        """Run a stage's blocks; block j gets skips[j] (when there is one). -> (out, outs)."""
        outs = []
        for j, b in enumerate(blocks):
            skip = skips[j] if skips is not None and j < len(skips) else None
            x = ResBlock(b.out_channels, b.kernel_size, b.stride, transposed=generative,
                         residual=j > 0 or first_residual,
                         gated=b.gated, same_shape_skips=self.same_shape_skips,
                         axis_name=self.axis_name, dtype=self.dtype,
                         name=f"{prefix}{j + 1}")(x, skip, mask)
            outs.append(x)
        return x, outs

    def _as_feature_map(self, name, z, h, mask):
        """A dense z -> h's feature-map shape by a dense map; a conv z unchanged."""
        if z.ndim >= h.ndim:
            return z
        return WNLinear(math.prod(h.shape[1:]), 0, axis_name=self.axis_name, dtype=self.dtype,
                        name=name)(z, mask).reshape(h.shape)

    def _gaussian(self, name, latent, h, mask):
        return Gaussian(latent, self.min_scale, self.axis_name, self.dtype, name=name)(h, mask)

    def latent_shapes(self, image_shape) -> tuple:
        """The shape of each z_i (without batch axes) for images of (H, W, C)."""
        (h, w), out = image_shape[:2], []
        for blocks, latent in zip(self.stages, self.latents):
            for b in blocks:                              # same padding: ceil(H / stride)
                h, w = -(-h // b.stride), -(-w // b.stride)
            out.append((h, w, latent.features) if latent.kind == "conv" else (latent.features,))
        return tuple(out)

    @nn.compact
    def __call__(self, x, eps=None, *, skip=0, mask=None):
        """x [B, H, W, C]; eps: per layer N(0, I) noise [S, B, *z_i] (:meth:`latent_shapes`;
        None: S = 1, every latent at its mean) -> {"decoded": [S, B, H, W, out_channels],
        "layers": one dict per layer, lowest first: z, q_mean, q_scale, p_mean, p_scale
        [S, B, *z]}; z = μ + σ·ε (reparameterised).

        ``skip = k`` (the L>k pass, docs/methods/hvae.md): z_1..z_k take the posterior mean in
        inference and the conditional prior's mean in generation. An int, or one per
        sample ([S] ints), so several L>k passes run as one batch. ``mask`` [B]: the valid
        rows, for the data-dependent initialisation only.
        """
        s = 1 if eps is None else eps[0].shape[0]
        mask_sb = None if mask is None else jnp.tile(mask, s)
        tile = lambda a: jnp.tile(a, (s,) + (1,) * (a.ndim - 1))  # noqa: E731  [B] -> [S·B]
        n_latents = len(self.latents)
        skip_rows = jnp.repeat(jnp.broadcast_to(jnp.asarray(skip, jnp.int32), (s,)), x.shape[0])

        def use_mode(i, a):     # [S·B] -> broadcastable against a [S·B, *z]
            return (i < skip_rows).reshape((-1,) + (1,) * (a.ndim - 1))

        q, hs = [], []
        inp, skips = x, None
        for i, (blocks, latent) in enumerate(zip(self.stages, self.latents)):
            m = mask if i == 0 else mask_sb
            h, _ = self._stack(f"q{i + 1}_", blocks, inp, skips, m, generative=False,
                               first_residual=i > 0)
            mean, scale = self._gaussian(f"q{i + 1}", latent, h, m)
            if i == 0:
                h, mean, scale = tile(h), tile(mean), tile(scale)
            z = mean
            if eps is not None:
                noise = eps[i].reshape(mean.shape).astype(jnp.float32)
                z = jnp.where(use_mode(i, mean), mean, reparameterise(mean, scale, noise))
            q.append((z, mean, scale))
            hs.append(h)
            if i + 1 < n_latents:
                inp = self._as_feature_map(f"q{i + 1}_proj", z, h, mask_sb)
                skips = [h] * len(self.stages[i + 1])
        layers, d, skips = [None] * n_latents, None, None
        for i in reversed(range(n_latents)):
            z, q_mean, q_scale = q[i]
            if i == n_latents - 1:
                p_mean, p_scale = jnp.zeros_like(q_mean), jnp.ones_like(q_scale)
            else:
                p_mean, p_scale = self._gaussian(f"p{i + 1}", self.latents[i], d, mask_sb)
            z = jnp.where(use_mode(i, z), p_mean, z)
            layers[i] = {"z": z, "q_mean": q_mean, "q_scale": q_scale, "p_mean": p_mean,
                         "p_scale": p_scale}
            zf = self._as_feature_map(f"p{i + 1}_proj", z, hs[i], mask_sb)
            d, skips = self._stack(f"p{i + 1}_", self.stages[i][::-1], zf, skips, mask_sb,
                                   generative=True, first_residual=False)
        if d.shape[1:3] != x.shape[1:3]:
            raise ValueError(f"the generative path ends at {d.shape[1:3]} for inputs of "
                             f"{x.shape[1:3]}: the strides of model.config_deterministic must "
                             f"divide the image size at every stage")
        decoded = WNLinear(self.out_channels, self.likelihood_kernel, axis_name=self.axis_name,
                           dtype=self.dtype, name="likelihood")(nn.relu(d), mask_sb)
        unflat = lambda a: a.reshape((s, -1) + a.shape[1:])  # noqa: E731
        return {"decoded": unflat(decoded.astype(jnp.float32)),
                "layers": tuple({k: unflat(v) for k, v in l.items()} for l in layers)}


def init_from_directions(module: nn.Module, rng, *args, **kwargs) -> dict:
    """``module.init(rng, *args, **kwargs)`` with every weight-norm direction v drawn at
    once: one N(0, 2/fan_in) draw for all of them (instead of one random-number program per
    layer, which dominates XLA:CPU compile time), then g and b from the data as
    :class:`WNLinear` describes. Any ``axis_name`` of the module is used for the data
    statistics only; the shapes come from ``jax.eval_shape`` of a copy without it."""
    shapes = jax.eval_shape(module.clone(axis_name=None).init, rng, *args, **kwargs)["params"]
    leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    sizes = [math.prod(a.shape) for _, a in leaves]
    normal = jax.random.normal(rng, (sum(sizes),), jnp.float32)
    parts = jnp.split(normal, list(itertools.accumulate(sizes))[:-1])
    directions = {}
    for (path, a), part in zip(leaves, parts):
        if path[-1].key != "v":
            continue
        node = directions
        for p in path[:-1]:
            node = node.setdefault(p.key, {})
        node["v"] = part.reshape(a.shape) * math.sqrt(2.0 / math.prod(a.shape[:-1]))
    _, variables = module.apply({"params": directions}, *args, mutable=["params"], **kwargs)
    return dict(variables)
