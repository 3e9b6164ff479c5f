"""Layers whose statistics and randomness are those of the GLOBAL batch, and the input
normalisation.

- :class:`Normalize`: (x − mean) / std per channel inside a model, so that attacks and
  OOD transforms work in pixel space.
- :class:`BatchNorm`: batch statistics over every valid row of every device
  (``psum`` of masked sums and counts over ``axis_name``), padding rows excluded.
  flax's ``nn.BatchNorm`` with a mask takes the ``pmean`` of per-device masked means,
  which is wrong when devices hold different numbers of valid rows (and NaN on a
  device holding only padding).
- :class:`ExampleDropout`: dropout whose mask for example i is drawn from example i's
  own key (:func:`jaxhybrid.rng.example_keys` of the ``DROPOUT`` stream), then the
  layer's member of it, so it does not depend on which device holds the example.
- :func:`torch_default_init`: PyTorch's default initialisation of every convolution and
  dense layer of a parameter tree (the DHM's ``model.init = pytorch``).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
from jax import lax

from jaxhybrid import rng as rnglib
from jaxhybrid.mathops import masked_sum_and_count


class Normalize(nn.Module):
    """(x − mean) / std per channel; identity when mean/std are None. x: [..., C]."""
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None

    @nn.compact
    def __call__(self, x):
        if self.mean is None and self.std is None:
            return x
        mean = jnp.asarray(self.mean if self.mean is not None else 0.0, x.dtype)
        std = jnp.asarray(self.std if self.std is not None else 1.0, x.dtype)
        return (x - mean) / std


def masked_moments(x: jax.Array, mask: Optional[jax.Array], axis_name: Optional[str]):
    """Mean and (biased) variance over all axes but the last, valid rows only, global.

    x: [B, ..., F]; mask: [B] bool or None. Two passes (mean, then centred squares) for
    accuracy; both sums and the count are psum'd over ``axis_name``.
    """
    mean, var, _ = masked_moments_and_count(x, mask, axis_name)
    return mean, var


def masked_moments_and_count(x: jax.Array, mask: Optional[jax.Array],
                             axis_name: Optional[str]):
    """:func:`masked_moments` and n, the global number of valid values per feature."""
    x = x.astype(jnp.float32)
    total, rows = masked_sum_and_count(x, mask, axis_name, keep_last=True)
    count = jnp.maximum(rows * float(x[0, ..., 0].size), 1.0)
    mean = total / count
    sq, _ = masked_sum_and_count(jnp.square(x - mean), mask, axis_name, keep_last=True)
    return mean, sq / count, count


class BatchNorm(nn.Module):
    """BatchNorm over the global batch (train) or its running averages (eval).

    Variables: params ``scale``, ``bias``; ``batch_stats`` ``mean``, ``var``.
    Running averages: ra ← momentum·ra + (1 − momentum)·batch statistic (flax's rule;
    PyTorch's momentum 0.1 is this momentum 0.9). The batch variance used to normalise in
    training is the biased one on both conventions; the running variance is updated with
    the biased one (flax) or, with ``unbiased_running_var``, with n/(n − 1) times it
    (PyTorch's ``BatchNorm2d``), n the global count of valid values per feature.
    """
    momentum: float = 0.9
    epsilon: float = 1e-5
    axis_name: Optional[str] = None
    unbiased_running_var: bool = False

    @nn.compact
    def __call__(self, x, *, train: bool, mask: Optional[jax.Array] = None):
        features = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        if train:
            mean, var, n = masked_moments_and_count(x, mask, self.axis_name)
            if not self.is_initializing():
                m = self.momentum
                running = var * (n / jnp.maximum(n - 1.0, 1.0)) if self.unbiased_running_var \
                    else var
                ra_mean.value = m * ra_mean.value + (1.0 - m) * mean
                ra_var.value = m * ra_var.value + (1.0 - m) * running
        else:
            mean, var = ra_mean.value, ra_var.value
        y = (x - mean) * lax.rsqrt(var + self.epsilon) * scale + bias
        return y.astype(x.dtype)


class ExampleDropout(nn.Module):
    """Dropout with a mask drawn per example from ``keys`` [B, *key]; identity if None."""
    rate: float

    @nn.compact
    def __call__(self, x, keys: Optional[jax.Array]):
        if keys is None or self.rate == 0.0:
            return x
        layer = "/".join(self.path)   # one member per layer of the example's key
        keep = 1.0 - self.rate

        def one(xi, key):
            m = jax.random.bernoulli(rnglib.member(key, layer), keep, xi.shape)
            return jnp.where(m, xi / keep, 0.0)
        return jax.vmap(one)(x, keys)


def torch_default_init(params, key: jax.Array):
    """``params`` with every layer that has a ``kernel`` redrawn as PyTorch initialises
    ``nn.Conv2d`` and ``nn.Linear``: the weight by ``kaiming_uniform_(a=√5)``, which is
    U(±1/√fan_in), and the bias by U(±1/√fan_in), fan_in = the kernel's size without its
    output axis (kh·kw·C_in, or C_in). Everything else (norm scales 1 and offsets 0, as in
    PyTorch) is kept. Each array is drawn from its own member of ``key``, named by its
    path, so the result depends only on the key and the tree."""
    flat = traverse_util.flatten_dict(params)
    out = {}
    for path, value in flat.items():
        kernel = flat.get((*path[:-1], "kernel"))
        if path[-1] in ("kernel", "bias") and kernel is not None:
            bound = 1.0 / math.sqrt(math.prod(kernel.shape[:-1]))
            value = jax.random.uniform(rnglib.member(key, "/".join(path)), value.shape,
                                       value.dtype, -bound, bound)
        out[path] = value
    return traverse_util.unflatten_dict(out)
