"""Randomness that does not depend on the device count, in named streams.

Every random draw of a training step (augmentation, dropout, VAE samples,
binarisation) is keyed by the example, not by the device that happens to hold it:

    step key     = member(run key, step)                      (replayed exactly on resume)
    stream key   = stream(step key, AUGMENT | MODEL)          (one stream per use)
    example key  = member(stream key, global example id)      (the batch's ``id`` field)

so a run draws the same masks and samples on 1 or 8 devices, and a resumed run draws
what the uninterrupted run drew. Padding rows (id −1) get a key too; their draws are
masked out like the rows themselves.

The tree of keys (each key's children are either named streams or numbered members,
never both, so no two uses can draw the same key):

    run key ── step ── AUGMENT ── example id ── transform's position
                    └─ MODEL ──── NOISE ──────── example id
                                ├ LAYER_NOISE ── example id ── sample number
                                └ DROPOUT ────── example id ── layer path
    init key ── TORCH_INIT ── parameter path                  (the DHM's model.init=pytorch)
    seed key ── EVAL ── AUGMENT ── example id                 (fixed binarisation)
                     ├─ MODEL ──── (as in training)
                     └─ PGD_START ── attack's ε index ── example id

Every key is derived by :func:`stream` (a named child) or :func:`member` (a numbered or
named member), the only places that call ``jax.random.fold_in``.
"""
from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp

# The named streams, one id each (distinct: tests/test_rng.py). The ids are those the
# streams had before they were named, so that the draws of earlier runs are kept.
AUGMENT = 1        # data augmentation (the train transforms, the eval binarisation)
MODEL = 2          # everything the family draws (its ``rng``)
EVAL = 3           # evaluation-time randomness, under the seed key of evals.seed
DROPOUT = 4        # dropout masks, per example, then per layer
NOISE = 17         # a single-latent VAE's reparameterisation noise ε (the DHM's)
LAYER_NOISE = 19   # a hierarchical VAE's per-layer posterior noise (the HVAE's)
TORCH_INIT = 6     # PyTorch-style redraw of the initial weights, per parameter path
PGD_START = 1000   # PGD's random starts, per ε of the grid, then per example

STREAMS = {"AUGMENT": AUGMENT, "MODEL": MODEL, "EVAL": EVAL, "DROPOUT": DROPOUT,
           "NOISE": NOISE, "LAYER_NOISE": LAYER_NOISE, "TORCH_INIT": TORCH_INIT,
           "PGD_START": PGD_START}


def member(key: jax.Array, index) -> jax.Array:
    """The key of member ``index`` of a stream: an int (a step, an example id, a sample
    or transform's position; traced int32 scalars too) or a str (a layer's path, hashed
    with CRC-32 to a non-negative int32)."""
    if isinstance(index, str):
        index = zlib.crc32(index.encode()) & 0x7FFFFFFF
    return jax.random.fold_in(key, index)


def stream(key: jax.Array, name: int, *index) -> jax.Array:
    """The key of the named stream ``name`` (one of :data:`STREAMS`) under ``key``, then
    of each ``index`` in turn within it (:func:`member`)."""
    if name not in STREAMS.values():
        raise ValueError(f"unknown random stream {name!r}; valid: "
                         + ", ".join(f"{k} ({v})" for k, v in STREAMS.items()))
    key = jax.random.fold_in(key, name)
    for i in index:
        key = member(key, i)
    return key


def step_key(run_key: jax.Array, step) -> jax.Array:
    """The key of training step ``step`` (an int or a traced int32 scalar)."""
    return member(run_key, step)


def example_keys(key: jax.Array, ids: jax.Array) -> jax.Array:
    """Per-example keys from a stream's key and global example ids. ids: [B] -> [B, *key]."""
    return jax.vmap(lambda i: member(key, i))(jnp.asarray(ids, jnp.int32))


def eval_key(seed: int) -> jax.Array:
    """The fixed key of evaluation-time randomness (binarisation, IWAE samples, PGD starts)."""
    return stream(jax.random.PRNGKey(seed), EVAL)
