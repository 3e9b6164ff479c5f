"""On-device input transforms, drawn per example from keyed randomness.

Each transform is a data option (``data.train_transforms``, comma-separated) applied
inside the train step to images in the [0, 1] pixel scale, with one key per example
(:mod:`jaxhybrid.rng`), so every draw is replayed exactly on resume and on any device
count:

- ``binarize``: dynamic binarisation, a fresh Bernoulli(x) draw each time an image is
  used (hvae-oodd); evaluation uses ONE fixed, seeded binarisation of every split;
- ``dequantize``: uniform dequantisation (255·x + u)/256, u ~ U[0, 1), for 8-bit data;
  evaluation sees the discrete values;
- ``crop``: random crop back to the input size after zero padding by ``crop_padding``;
- ``flip``: horizontal flip with probability 1/2.

Evaluation is deterministic: only the fixed binarisation is applied there.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxhybrid import rng as rnglib

TRANSFORMS = ("binarize", "dequantize", "crop", "flip")


def parse_transforms(spec: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in str(spec).split(",") if n.strip())
    for n in names:
        if n not in TRANSFORMS:
            raise ValueError(f"Unknown transform {n!r} in data.train_transforms; valid "
                             f"choices: {', '.join(TRANSFORMS)}")
    if "binarize" in names and "dequantize" in names:
        raise ValueError("data.train_transforms: binarize and dequantize exclude each other")
    return names


def binarize(x: jax.Array, key: jax.Array) -> jax.Array:
    """One image [H, W, C] in [0, 1] -> a Bernoulli(x) draw as float {0, 1}."""
    return jax.random.bernoulli(key, jnp.clip(x, 0.0, 1.0)).astype(x.dtype)


def dequantize(x: jax.Array, key: jax.Array) -> jax.Array:
    """(255·x + u)/256, u ~ U[0, 1): 8-bit levels spread uniformly over their bins, in [0, 1)."""
    u = jax.random.uniform(key, x.shape, x.dtype)
    return (jnp.round(x * 255.0) + u) / 256.0


def crop(x: jax.Array, key: jax.Array, padding: int) -> jax.Array:
    """Random [H, W] window of the image zero-padded by ``padding`` on every side."""
    h, w, c = x.shape
    padded = jnp.pad(x, ((padding, padding), (padding, padding), (0, 0)))
    dy, dx = jax.random.randint(key, (2,), 0, 2 * padding + 1)
    return jax.lax.dynamic_slice(padded, (dy, dx, 0), (h, w, c))


def flip(x: jax.Array, key: jax.Array) -> jax.Array:
    """Horizontal flip with probability 1/2."""
    return jnp.where(jax.random.bernoulli(key), x[:, ::-1, :], x)


@dataclasses.dataclass(frozen=True)
class Transforms:
    names: tuple[str, ...] = ()
    crop_padding: int = 4

    @classmethod
    def from_config(cls, data_config) -> "Transforms":
        padding = int(data_config.crop_padding)
        if padding < 0:
            raise ValueError(f"data.crop_padding must be >= 0, got {padding}")
        return cls(parse_transforms(data_config.train_transforms), padding)

    def _one(self, name: str, x, key):
        if name == "binarize":
            return binarize(x, key)
        if name == "dequantize":
            return dequantize(x, key)
        if name == "crop":
            return crop(x, key, self.crop_padding)
        return flip(x, key)

    def train(self, images: jax.Array, keys: jax.Array) -> jax.Array:
        """images [B, H, W, C], keys [B, *key] (per example) -> transformed images."""
        if not self.names:
            return images

        def per_example(x, key):
            for i, name in enumerate(self.names):
                x = self._one(name, x, rnglib.member(key, i))
            return x
        return jax.vmap(per_example)(images, keys)

    def eval(self, images: jax.Array, keys: jax.Array) -> jax.Array:
        """Deterministic evaluation view: a fixed binarisation (keys from the eval seed)."""
        if "binarize" not in self.names:
            return images
        return jax.vmap(binarize)(images, keys)
