"""OOD sets: deterministic per-example transforms, shape adaptation, clear errors."""
import numpy as np
import pytest
import ml_collections

from jaxhybrid.data.loading import load_source_split
from jaxhybrid.data.sources import ArraySource
from jaxhybrid.evaluators.ood_sets import AdaptedSource, TransformedSource, build_ood_sets


def _base(n=20, shape=(6, 5, 1)):
    r = np.random.default_rng(0)
    return ArraySource(r.integers(0, 256, size=(n, *shape), dtype=np.uint8),
                       r.integers(0, 3, size=n))


@pytest.mark.parametrize("kind", ["uniform_noise", "gaussian_noise", "constant", "inverted"])
def test_transforms_are_per_example_and_batch_independent(kind):
    src = TransformedSource(_base(), kind, seed=3)
    a = src.get(np.array([3, 7, 11]))["image"]
    b = src.get(np.array([11, 3]))["image"]
    np.testing.assert_array_equal(a[0], b[1])
    np.testing.assert_array_equal(a[2], b[0])
    np.testing.assert_array_equal(src.get(np.array([7]))["image"][0], a[1])
    assert a.dtype == np.uint8 and a.shape == (3, 6, 5, 1)
    if kind != "inverted":   # different examples get different draws
        assert not np.array_equal(a[0], a[1])


def test_transform_statistics():
    base = _base(n=400, shape=(8, 8, 3))
    idx = np.arange(400)
    u = TransformedSource(base, "uniform_noise").get(idx)["image"] / 255.0
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.std() - np.sqrt(1 / 12)) < 0.01
    g = TransformedSource(base, "gaussian_noise").get(idx)["image"] / 255.0
    assert abs(g.mean() - 0.5) < 0.01 and abs(g.std() - 0.25) < 0.02
    c = TransformedSource(base, "constant").get(idx)["image"]
    assert np.all(c == c[:, :1, :1, :])          # constant per image and channel
    inv = TransformedSource(base, "inverted").get(idx[:5])["image"]
    np.testing.assert_array_equal(inv, 255 - base.get(idx[:5])["image"])


def test_digits_adapted_to_mnist_frame():
    digits = load_source_split(ml_collections.ConfigDict({"source": "digits"}), "all")
    src = AdaptedSource(digits, (28, 28, 3))
    x = src.get(np.arange(4))["image"]
    assert x.shape == (4, 28, 28, 3) and len(src) == 1797
    assert "28x28x3" in src.rule
    assert np.all(x[:, :10] == 0)                 # 8x8 digits zero-padded, centred
    np.testing.assert_array_equal(x[..., 0], x[..., 2])
    resized = AdaptedSource(digits, (28, 28, 1), "resize")        # OOD set digits_resized
    y = resized.get(np.arange(4))["image"]
    assert y.shape == (4, 28, 28, 1) and "bilinear resize to 28x28" in resized.rule
    assert y[:, 4:24, 4:24].max() > 0 and y.mean() > x.mean()  # fills the frame


def test_unknown_ood_set_lists_choices():
    class Exp:
        pass
    exp = Exp()
    exp.config = ml_collections.ConfigDict({"evals": {"split": "test"}, "seed": 0,
                                            "data": {"data_dir": "", "ood_classes": ()}})
    exp.splits = type("S", (), {"test": _base(), "validation": _base(), "heldout_test": None,
                                "image_shape": (6, 5, 1)})()
    with pytest.raises(ValueError, match="uniform_noise.*tfds:NAME"):
        build_ood_sets(exp, "nonsense")
    with pytest.raises(ValueError, match="data.ood_classes"):
        build_ood_sets(exp, "heldout")


def test_derived_sources_of_unlabeled_images_have_no_labels():
    plain = ArraySource(_base().get(np.arange(20))["image"])
    for src in (TransformedSource(plain, "inverted"), AdaptedSource(plain, (8, 8, 3))):
        assert not src.has_labels
        assert set(src.get(np.array([2, 0]))) == {"image"}
        with pytest.raises(ValueError, match="no labels"):
            src.labels  # pylint: disable=pointless-statement
    labelled = TransformedSource(_base(), "inverted")
    assert labelled.has_labels
    np.testing.assert_array_equal(labelled.get(np.array([2, 0]))["label"],
                                  _base().labels[[2, 0]])
