"""The precision policy: ``config.compute_dtype`` (``float32`` | ``bfloat16``).

How TPU users run: parameters and optimiser state stay float32 (flax ``param_dtype``
is float32 everywhere); the matrix multiplies and convolutions run in the compute
dtype (flax ``dtype``); every loss, likelihood, log-sum-exp, KL and normalisation
statistic is accumulated in float32 (modules return float32 outputs and the
objectives cast their inputs with :func:`f32`). Gradients reach the float32
parameters through the casts, so the optimiser sees float32 gradients.

Every family reads the policy through :func:`compute_dtype` and passes it to its
modules as ``dtype``; nothing in the trainer depends on it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def check_compute_dtype(name) -> str:
    if not isinstance(name, str) or name not in COMPUTE_DTYPES:
        raise ValueError(f"config field compute_dtype = {name!r}: must be one of "
                         f"{', '.join(COMPUTE_DTYPES)}")
    return name


def compute_dtype(config):
    """The jnp dtype of ``config.compute_dtype`` (float32 when the field is absent)."""
    return COMPUTE_DTYPES[check_compute_dtype(config.get("compute_dtype", "float32"))]


def f32(tree):
    """Every floating leaf of ``tree`` as float32 (integers and bools untouched)."""
    def cast(a):
        a = jnp.asarray(a)
        return a.astype(jnp.float32) if jnp.issubdtype(a.dtype, jnp.floating) else a
    return jax.tree_util.tree_map(cast, tree)
