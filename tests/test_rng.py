"""The named random streams of jaxhybrid.rng."""
import jax
import numpy as np
import pytest

from jaxhybrid import rng as rnglib


def test_every_stream_name_has_its_own_id():
    """Every upper-case int constant of rng.py is a stream, listed once in STREAMS, and no
    two share an id (two uses would then draw the same keys)."""
    constants = {k: v for k, v in vars(rnglib).items() if k.isupper() and isinstance(v, int)}
    assert constants == rnglib.STREAMS
    assert len(set(constants.values())) == len(constants)


def test_stream_is_fold_in_of_its_id_and_refuses_an_unnamed_one():
    """stream(key, NAME, i) = fold_in(fold_in(key, id), i): the ids behind the names keep
    the draws of earlier runs; a number that names no stream is an error."""
    key = jax.random.PRNGKey(3)
    want = jax.random.fold_in(jax.random.fold_in(key, 17), 5)
    assert np.array_equal(rnglib.stream(key, rnglib.NOISE, 5), want)
    with pytest.raises(ValueError, match="unknown random stream 5; valid: AUGMENT"):
        rnglib.stream(key, 5)


def test_dropout_keys_differ_from_the_noise_keys():
    """The DHM's per-example dropout keys come from their own stream: example NOISE's
    dropout key is not the noise stream's key (it was, when dropout folded example ids
    straight into the model key)."""
    key = jax.random.PRNGKey(0)
    ids = np.arange(64)
    drop = np.asarray(rnglib.example_keys(rnglib.stream(key, rnglib.DROPOUT), ids))
    noise = np.asarray(rnglib.example_keys(rnglib.stream(key, rnglib.NOISE), ids))
    base = np.asarray(rnglib.stream(key, rnglib.NOISE))
    rows = {tuple(r) for r in np.concatenate([drop, noise])}
    assert len(rows) == 128 and tuple(base) not in rows
