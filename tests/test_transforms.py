"""On-device train transforms: what each draws, and that every draw is a pure function
of (run key, step, example id), the same on 1 or 8 devices."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxhybrid import parallel, rng as rnglib
from jaxhybrid.data.transforms import Transforms, parse_transforms
from jaxhybrid.experiment import augment


def _keys(n, seed=0):
    return rnglib.example_keys(jax.random.PRNGKey(seed), jnp.arange(n))


def test_binarize_keeps_the_mean_and_changes_with_the_key():
    x = jnp.full((8, 64, 64, 1), 0.3)
    t = Transforms(("binarize",))
    a, b = np.asarray(t.train(x, _keys(8, 0))), np.asarray(t.train(x, _keys(8, 1)))
    assert set(np.unique(a)) == {0.0, 1.0}
    assert abs(a.mean() - 0.3) < 0.01                 # 32768 draws: std of the mean 0.0025
    assert (a != b).mean() > 0.3                      # another step: another draw
    np.testing.assert_array_equal(a, t.train(x, _keys(8, 0)))   # replayed exactly
    e1, e2 = t.eval(x, _keys(8, 7)), t.eval(x, _keys(8, 7))
    np.testing.assert_array_equal(e1, e2)             # evaluation: one fixed binarisation


def test_dequantize_stays_in_the_bin_of_its_level():
    levels = jnp.arange(256, dtype=jnp.float32).reshape(1, 16, 16, 1)
    x = jnp.repeat(levels / 255.0, 4, axis=0)
    y = np.asarray(Transforms(("dequantize",)).train(x, _keys(4)))
    assert y.min() >= 0.0 and y.max() < 1.0
    np.testing.assert_array_equal(np.floor(y * 256), np.broadcast_to(np.asarray(levels), y.shape))
    assert np.std(y[0] - y[1]) > 0                     # independent u per example
    # evaluation sees the discrete values
    np.testing.assert_array_equal(Transforms(("dequantize",)).eval(x, _keys(4)), x)


def test_crop_and_flip_preserve_content():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(16, 8, 8, 3)).astype(np.float32)
    cropped = np.asarray(Transforms(("crop",), crop_padding=2).train(jnp.asarray(x), _keys(16)))
    shifts = set()
    for xi, ci in zip(x, cropped):
        padded = np.pad(xi, ((2, 2), (2, 2), (0, 0)))
        match = [(dy, dx) for dy in range(5) for dx in range(5)
                 if np.array_equal(padded[dy:dy + 8, dx:dx + 8], ci)]
        assert match, "a crop is a window of the zero-padded image"
        shifts.add(match[0])
    assert len(shifts) > 3
    flipped = np.asarray(Transforms(("flip",)).train(jnp.asarray(x), _keys(16)))
    same = [np.array_equal(f, xi) for f, xi in zip(flipped, x)]
    mirrored = [np.array_equal(f, xi[:, ::-1]) for f, xi in zip(flipped, x)]
    assert all(s or m for s, m in zip(same, mirrored)) and 0 < sum(mirrored) < 16


def test_unknown_or_conflicting_transforms_are_refused():
    with pytest.raises(ValueError, match="valid choices: binarize, dequantize, crop, flip"):
        parse_transforms("binarise")
    with pytest.raises(ValueError, match="exclude each other"):
        parse_transforms("binarize,dequantize")


class _Exp:
    transforms = Transforms(("dequantize", "crop", "flip"), crop_padding=2)


@pytest.mark.parametrize("n_devices", [1, 8])
def test_augmentation_is_keyed_by_step_and_example_not_device(n_devices):
    """The train step's augmentation (shard_map'd, per device) on 1 or 8 devices equals
    the single-device draw; another step draws differently."""
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 256, (16, 6, 6, 1)).astype(np.float32) / 255,
             "id": rng.permutation(100)[:16].astype(np.int32), "mask": np.ones(16, bool)}
    mesh = parallel.make_mesh(n_devices)
    fn = jax.jit(jax.shard_map(lambda b, k: augment(_Exp, b, k)["image"], mesh=mesh,
                               in_specs=(parallel.P(parallel.AXIS), parallel.P()),
                               out_specs=parallel.P(parallel.AXIS)))
    run = jax.random.PRNGKey(3)
    got = np.asarray(fn(batch, rnglib.step_key(run, 5)))
    ref = np.asarray(augment(_Exp, {k: jnp.asarray(v) for k, v in batch.items()},
                             rnglib.step_key(run, 5))["image"])
    np.testing.assert_array_equal(got, ref)
    assert not np.array_equal(got, np.asarray(fn(batch, rnglib.step_key(run, 6))))


def test_transform_options_from_the_config():
    cfg = ml_collections.ConfigDict({"train_transforms": "crop, flip", "crop_padding": 4})
    assert Transforms.from_config(cfg) == Transforms(("crop", "flip"), 4)
    cfg.crop_padding = -1
    with pytest.raises(ValueError, match="crop_padding"):
        Transforms.from_config(cfg)
