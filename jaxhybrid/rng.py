"""Randomness that does not depend on the device count.

Every random draw of a training step (augmentation, dropout, VAE samples,
binarisation) is keyed by the example, not by the device that happens to hold it:

    step key     = fold_in(run key, step)                     (replayed exactly on resume)
    purpose key  = fold_in(step key, PURPOSE)                 (one stream per use)
    example key  = fold_in(purpose key, global example id)    (the batch's ``id`` field)

so a run draws the same masks and samples on 1 or 8 devices, and a resumed run draws
what the uninterrupted run drew. Padding rows (id −1) get a key too; their draws are
masked out like the rows themselves.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

# purposes: separate streams so that adding a transform never shifts the model's draws
AUGMENT = 1
MODEL = 2
EVAL = 3


def step_key(run_key: jax.Array, step) -> jax.Array:
    """The key of training step ``step`` (an int or a traced int32 scalar)."""
    return jax.random.fold_in(run_key, step)


def purpose_key(key: jax.Array, purpose: int) -> jax.Array:
    return jax.random.fold_in(key, purpose)


def example_keys(key: jax.Array, ids: jax.Array) -> jax.Array:
    """Per-example keys from a shared key and global example ids. ids: [B] -> [B, *key]."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(ids, jnp.int32))


def eval_key(seed: int) -> jax.Array:
    """The fixed key of evaluation-time randomness (binarisation, IWAE samples, PGD starts)."""
    return purpose_key(jax.random.PRNGKey(seed), EVAL)
