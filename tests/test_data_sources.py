"""Tests of jaxhybrid.data: sources (digits, npz, TFDS), splits, preprocessing."""

import json
import os
import subprocess
import sys
import textwrap

import ml_collections
import numpy as np
import pytest

from jaxhybrid.data import loading, preprocess, sources, splitting, tfds_prepare, tfds_source

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST_NPZ = os.path.join(REPO, "..", "shared", "data", "mnist.npz")
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def make_cfg(**overrides):
    cfg = dict(
        source="digits",
        name=None,
        data_dir=None,
        npz_path=None,
        validation_size=0,
        seed=0,
        ood_classes=(),
        train_subset=0,
    )
    cfg.update(overrides)
    return ml_collections.ConfigDict(cfg)


def all_labels_images(source):
    batch = source.get(np.arange(len(source)))
    return batch["image"], batch["label"]


# --------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------


def test_digits_shapes_and_dtypes():
    splits = loading.load_splits(make_cfg(validation_size=100))
    assert splits.name == "digits" and splits.num_classes == 10
    assert splits.image_shape == (8, 8, 1)
    assert splits.class_names == [str(c) for c in range(10)]
    assert splits.heldout_test is None
    # 1797 = 1438 train + 359 test (fraction 0.2); validation comes out of train.
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (1338, 100, 359)
    batch = splits.train.get(np.array([5, 0, 7]))
    assert batch["image"].shape == (3, 8, 8, 1) and batch["image"].dtype == np.uint8
    assert batch["label"].dtype == np.int32 and batch["label"].shape == (3,)
    np.testing.assert_array_equal(batch["label"], splits.train.labels[[5, 0, 7]])
    assert splits.train.labels.dtype == np.int32
    # Pixel mapping round(v * 255 / 16): 0 -> 0, 16 -> 255.
    images, _ = all_labels_images(splits.test)
    assert images.min() == 0 and images.max() == 255
    json.dumps(splits.description)  # serialisable
    for part in (splits.train, splits.validation, splits.test):
        assert isinstance(part, sources.Source)


def test_digits_split_is_seeded_disjoint_and_from_train():
    a = loading.load_splits(make_cfg(validation_size=0.2, seed=1))
    b = loading.load_splits(make_cfg(validation_size=0.2, seed=1))
    c = loading.load_splits(make_cfg(validation_size=0.2, seed=2))
    np.testing.assert_array_equal(a.validation.indices, b.validation.indices)
    np.testing.assert_array_equal(a.train.indices, b.train.indices)
    assert not np.array_equal(a.validation.indices, c.validation.indices)
    # train and validation partition the 1438 train examples; test is untouched.
    assert np.intersect1d(a.train.indices, a.validation.indices).size == 0
    np.testing.assert_array_equal(
        np.union1d(a.train.indices, a.validation.indices), np.arange(1438)
    )
    assert len(a.validation) == round(0.2 * 1438)
    np.testing.assert_array_equal(a.test.indices, c.test.indices)
    np.testing.assert_array_equal(a.test.indices, np.arange(359))
    # The fixed train/test split partitions load_digits() (stratified_split below).
    arrays = loading.digits_arrays()
    assert len(arrays["train"][1]) + len(arrays["test"][1]) == len(arrays["all"][1])


def test_digits_split_is_stratified():
    splits = loading.load_splits(make_cfg(validation_size=300, seed=3))
    train_counts = np.bincount(splits.train.labels, minlength=10)
    val_counts = np.bincount(splits.validation.labels, minlength=10)
    total = train_counts + val_counts
    expected = total * 300 / total.sum()
    assert val_counts.sum() == 300
    assert np.all(np.abs(val_counts - expected) < 1)
    test_counts = np.bincount(splits.test.labels, minlength=10)
    np.testing.assert_allclose(test_counts / 359, total / 1438, atol=1 / 359 + 1e-9)


def test_stratified_split_partitions_and_small_sizes():
    labels = np.repeat(np.arange(10), [3, 50, 7, 7, 7, 7, 7, 7, 7, 1])
    for k in (0, 1, 5, 9, 10, 40, len(labels)):
        first, second = splitting.stratified_split(labels, k, seed=0)
        assert len(second) == k
        np.testing.assert_array_equal(
            np.sort(np.concatenate([first, second])), np.arange(len(labels))
        )


def test_validation_zero_and_train_subset():
    splits = loading.load_splits(make_cfg(validation_size=0, train_subset=200, seed=4))
    assert len(splits.validation) == 0
    assert splits.validation.get(np.zeros((0,), np.int64))["image"].shape == (0, 8, 8, 1)
    assert len(splits.train) == 200
    assert np.all(np.bincount(splits.train.labels, minlength=10) >= 19)


# --------------------------------------------------------------------------------
# npz
# --------------------------------------------------------------------------------


@pytest.fixture
def synthetic_npz(tmp_path):
    rng = np.random.default_rng(0)
    y_train = np.repeat(np.arange(5), 40).astype(np.uint8)
    y_test = np.repeat(np.arange(5), 10).astype(np.uint8)
    x_train = rng.integers(0, 256, (200, 12, 10), dtype=np.uint8)
    x_test = rng.integers(0, 256, (50, 12, 10), dtype=np.uint8)
    path = tmp_path / "toy.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return str(path), (x_train, y_train, x_test, y_test)


def test_npz_shapes_and_split(synthetic_npz):
    path, (x_train, y_train, x_test, y_test) = synthetic_npz
    splits = loading.load_splits(make_cfg(source="npz", npz_path=path, validation_size=50, seed=0))
    assert splits.name == "npz:toy" and splits.num_classes == 5
    assert splits.image_shape == (12, 10, 1) and splits.class_names is None
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (150, 50, 50)
    np.testing.assert_array_equal(np.bincount(splits.validation.labels), [10] * 5)
    images, labels = all_labels_images(splits.validation)
    np.testing.assert_array_equal(images[..., 0], x_train[splits.validation.indices])
    np.testing.assert_array_equal(labels, y_train[splits.validation.indices])
    images, labels = all_labels_images(splits.test)
    np.testing.assert_array_equal(images[..., 0], x_test)
    np.testing.assert_array_equal(labels, y_test)
    assert splits.description["num_train"] == 150


def test_npz_ood_classes_removed_and_remapped(synthetic_npz):
    path, (x_train, y_train, x_test, y_test) = synthetic_npz
    splits = loading.load_splits(
        make_cfg(source="npz", npz_path=path, validation_size=0.25, ood_classes=(1, 3))
    )
    assert splits.num_classes == 3
    kept = np.array([0, 2, 4])  # remapped to 0, 1, 2
    for part, x_orig, y_orig in (
        (splits.train, x_train, y_train),
        (splits.validation, x_train, y_train),
        (splits.test, x_test, y_test),
    ):
        images, labels = all_labels_images(part)
        assert set(np.unique(labels)) <= {0, 1, 2}
        np.testing.assert_array_equal(kept[labels], y_orig[part.indices])
        np.testing.assert_array_equal(images[..., 0], x_orig[part.indices])
        np.testing.assert_array_equal(labels, part.labels)
    assert len(splits.train) + len(splits.validation) == 120
    assert len(splits.test) == 30
    held_images, held_labels = all_labels_images(splits.heldout_test)
    ood = np.isin(y_test, [1, 3])
    np.testing.assert_array_equal(held_labels, y_test[ood])  # original ids
    np.testing.assert_array_equal(held_images[..., 0], x_test[ood])
    assert splits.description["num_heldout_test"] == 20


def test_subset_of_subset_composes_label_maps():
    base = sources.ArraySource(np.zeros((6, 2, 2, 1), np.uint8), np.array([0, 1, 2, 3, 1, 0]))
    inner = sources.SubsetSource(base, [0, 2, 3, 5], label_map=[1, -1, 0, 2])
    outer = sources.SubsetSource(inner, [3, 1], label_map=[2, 1, 0])
    np.testing.assert_array_equal(outer.labels, [1, 2])  # base labels 0, 2
    np.testing.assert_array_equal(outer.get(np.array([1, 0]))["label"], [2, 1])
    with pytest.raises(IndexError):
        outer.get(np.array([2]))


@pytest.mark.skipif(not os.path.exists(MNIST_NPZ), reason="mnist.npz not present")
def test_mnist_npz_label_counts():
    splits = loading.load_splits(
        make_cfg(source="npz", npz_path=MNIST_NPZ, validation_size=5000, seed=0)
    )
    assert splits.name == "npz:mnist" and splits.image_shape == (28, 28, 1)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (55000, 5000, 10000)
    np.testing.assert_array_equal(np.bincount(splits.test.labels), MNIST_TEST_COUNTS)
    assert splits.description["test_class_counts"] == MNIST_TEST_COUNTS


# --------------------------------------------------------------------------------
# TFDS, for real: prepare offline, read back without TensorFlow
# --------------------------------------------------------------------------------


def tiny_arrays(seed=0, n_train=64, n_test=32):
    """28x28x1 images: digits padded to 28x28 plus noise; 10 classes."""
    rng = np.random.default_rng(seed)
    images, labels = loading.digits_arrays()["all"]
    images = preprocess.pad_to_frame(images, 28)
    noise = rng.integers(0, 40, images.shape, dtype=np.uint8)
    images = np.maximum(images, noise)
    pick = rng.permutation(len(labels))[: n_train + n_test]
    x, y = images[pick], labels[pick]
    return {"train": (x[:n_train], y[:n_train]), "test": (x[n_train:], y[n_train:])}


@pytest.fixture(scope="module")
def tiny_tfds(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    arrays = tiny_arrays()
    # "mnist" clashes with TFDS' registered builder: written at its version 3.0.1.
    path = tfds_prepare.prepare_from_arrays("mnist", data_dir, arrays, 10)
    # An unregistered name gets version 1.0.0.
    path2 = tfds_prepare.prepare_from_arrays("tiny_digits", data_dir, arrays, 10)
    return data_dir, arrays, path, path2


def test_prepare_layout(tiny_tfds):
    data_dir, _, path, path2 = tiny_tfds
    assert path == os.path.join(data_dir, "mnist", "3.0.1")
    assert path2 == os.path.join(data_dir, "tiny_digits", "1.0.0")
    files = os.listdir(path)
    assert "dataset_info.json" in files and "features.json" in files
    assert any(f.startswith("mnist-train.array_record") for f in files)
    assert not os.path.exists(os.path.join(data_dir, "downloads"))
    with pytest.raises(FileExistsError):
        tfds_prepare.prepare_from_arrays("tiny_digits", data_dir, tiny_arrays(), 10)


@pytest.mark.parametrize("name", ["mnist", "tiny_digits"])
def test_tfds_load_splits_reads_back_identical(tiny_tfds, name):
    data_dir, arrays, _, _ = tiny_tfds
    splits = loading.load_splits(
        make_cfg(source="tfds", name=name, data_dir=data_dir, validation_size=0)
    )
    assert splits.name == f"tfds:{name}" and splits.num_classes == 10
    assert splits.image_shape == (28, 28, 1)
    for part, split in ((splits.train, "train"), (splits.test, "test")):
        images, labels = all_labels_images(part)
        assert images.dtype == np.uint8 and labels.dtype == np.int32
        assert images.tobytes() == arrays[split][0].tobytes()
        np.testing.assert_array_equal(labels, arrays[split][1])
        np.testing.assert_array_equal(part.labels, arrays[split][1])
    # Random order, with validation and OOD classes.
    splits = loading.load_splits(
        make_cfg(
            source="tfds",
            name=name,
            data_dir=data_dir,
            validation_size=16,
            ood_classes=(0,),
            seed=5,
        )
    )
    x, y = arrays["train"]
    idx = splits.validation.indices[::-1]
    batch = splits.train._base.get(idx)  # the full train split, original ids
    np.testing.assert_array_equal(batch["image"], x[idx])
    held_images, held_labels = all_labels_images(splits.heldout_test)
    np.testing.assert_array_equal(held_labels, arrays["test"][1][arrays["test"][1] == 0])
    np.testing.assert_array_equal(held_images, arrays["test"][0][arrays["test"][1] == 0])


def test_tfds_rgb_registered_name_with_other_features(tmp_path):
    """cifar10's registered builder has an extra 'id' feature: written at 1.0.0."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    y = np.arange(12) % 10
    arrays = {"train": (x[:8], y[:8]), "test": (x[8:], y[8:])}
    path = tfds_prepare.prepare_from_arrays("cifar10", tmp_path, arrays, 10)
    assert path == os.path.join(str(tmp_path), "cifar10", "1.0.0")
    # Replaced in place with overwrite=True.
    arrays["test"] = (x[8:][::-1].copy(), y[8:][::-1].copy())
    tfds_prepare.prepare_from_arrays("cifar10", tmp_path, arrays, 10, overwrite=True)
    splits = loading.load_splits(make_cfg(source="tfds", name="cifar10", data_dir=str(tmp_path)))
    assert splits.image_shape == (32, 32, 3)
    for part, split in ((splits.train, "train"), (splits.test, "test")):
        images, labels = all_labels_images(part)
        np.testing.assert_array_equal(images, arrays[split][0])
        np.testing.assert_array_equal(labels, arrays[split][1])
    own = tfds.data_source("cifar10:1.0.0", split="test", data_dir=str(tmp_path), download=False)
    np.testing.assert_array_equal(own[0]["image"], arrays["test"][0][0])


def test_tfds_labels_match_tfds_own_decoding(tiny_tfds):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    data_dir, arrays, _, _ = tiny_tfds
    own = tfds.data_source("tiny_digits", split="test", data_dir=data_dir, download=False)
    examples = own.__getitems__(list(range(len(own))))
    source = tfds_source.TfdsSource("tiny_digits", "test", data_dir)
    np.testing.assert_array_equal(source.labels, [e["label"] for e in examples])
    np.testing.assert_array_equal(
        source.get(np.arange(len(source)))["image"], np.stack([e["image"] for e in examples])
    )


def test_load_source_split(tiny_tfds, synthetic_npz):
    data_dir, arrays, _, _ = tiny_tfds
    test = loading.load_source_split(
        make_cfg(source="tfds", name="tiny_digits", data_dir=data_dir), "test"
    )
    np.testing.assert_array_equal(test.labels, arrays["test"][1])
    assert len(loading.load_source_split(make_cfg(), "all")) == 1797
    npz = loading.load_source_split(make_cfg(source="npz", npz_path=synthetic_npz[0]), "test")
    assert len(npz) == 50 and npz.image_shape == (12, 10, 1)
    with pytest.raises(ValueError, match="valid"):
        loading.load_source_split(make_cfg(), "validation")


def test_tfds_reads_in_fresh_process_without_tensorflow(tiny_tfds, tmp_path):
    """A fresh interpreter reads the prepared data and never imports TensorFlow.

    (Not blocked with sys.modules['tensorflow'] = None: TFDS takes a key in
    sys.modules for "TensorFlow already loaded" and then breaks.)
    """
    data_dir, arrays, _, _ = tiny_tfds
    expected = tmp_path / "expected.npz"
    np.savez(expected, x=arrays["train"][0], y=arrays["train"][1])
    script = textwrap.dedent(f"""
      import importlib.util, sys
      import numpy as np
      import tensorflow_datasets as tfds
      from jaxhybrid.data import tfds_source

      data_dir = {data_dir!r}
      want = np.load({str(expected)!r})
      # Plain TFDS: the prepared "mnist" sits where TFDS' own mnist code looks.
      ds = tfds.data_source("mnist", split="train", data_dir=data_dir)
      got = ds.__getitems__(list(range(len(ds))))
      assert np.array_equal(np.stack([e["image"] for e in got]), want["x"])
      assert [e["label"] for e in got] == want["y"].tolist()
      ds = tfds.data_source("tiny_digits", split="train", data_dir=data_dir)
      assert len(ds) == len(want["y"])
      # jaxhybrid's reader.
      source = tfds_source.TfdsSource("mnist", "train", data_dir)
      batch = source.get(np.arange(len(source)))
      assert batch["image"].tobytes() == want["x"].tobytes()
      assert np.array_equal(batch["label"], want["y"])
      assert np.array_equal(source.labels, want["y"])
      assert "tensorflow" not in sys.modules, "reading imported tensorflow"
      if importlib.util.find_spec("tensorflow") is None:
        try:
          import tensorflow
          raise SystemExit("import tensorflow succeeded")
        except ImportError:
          print("tensorflow is not importable")
      print("OK")
  """)
    env = dict(os.environ, PYTHONPATH=REPO)
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("OK")


def test_tfds_unprepared_raises_with_instructions(tmp_path):
    cfg = make_cfg(source="tfds", name="fashion_mnist", data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        loading.load_splits(cfg)
    message = str(err.value)
    assert "tfds_prepare" in message and str(tmp_path) in message
    assert "tfds build fashion_mnist" in message


def test_tfds_default_data_dir_respects_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        loading.load_splits(make_cfg(source="tfds", name="kmnist"))


def test_unknown_source_lists_valid_choices():
    with pytest.raises(ValueError, match="digits, npz, tfds"):
        loading.load_splits(make_cfg(source="imagenet"))
    with pytest.raises(ValueError, match="digits, npz, tfds"):
        loading.load_source_split(make_cfg(source="csv"), "test")


# --------------------------------------------------------------------------------
# unlabeled data: sources, npz, splits, TFDS
# --------------------------------------------------------------------------------


def test_array_source_without_labels():
    images = np.arange(5 * 4, dtype=np.uint8).reshape(5, 2, 2, 1)
    source = sources.ArraySource(images)
    assert not source.has_labels and isinstance(source, sources.Source)
    batch = source.get(np.array([4, 1]))
    assert set(batch) == {"image"}
    np.testing.assert_array_equal(batch["image"], images[[4, 1]])
    with pytest.raises(ValueError, match=r"ArraySource\(.*unlabeled.*has no labels"):
        source.labels  # pylint: disable=pointless-statement
    labelled = sources.ArraySource(images, np.arange(5))
    assert labelled.has_labels and set(labelled.get(np.array([0]))) == {"image", "label"}


def test_subset_source_delegates_has_labels():
    images = np.zeros((6, 2, 2, 1), np.uint8)
    unlabeled = sources.SubsetSource(sources.ArraySource(images), [5, 0, 3])
    assert not unlabeled.has_labels
    assert set(unlabeled.get(np.array([0, 2]))) == {"image"}
    nested = sources.SubsetSource(unlabeled, [2])
    assert not nested.has_labels and nested.indices.tolist() == [3]
    with pytest.raises(ValueError, match="SubsetSource.*has no labels"):
        nested.labels  # pylint: disable=pointless-statement
    with pytest.raises(ValueError, match="label_map.*no labels"):
        sources.SubsetSource(sources.ArraySource(images), [0], label_map=[0])
    labelled = sources.SubsetSource(sources.ArraySource(images, np.zeros(6, int)), [1])
    assert labelled.has_labels


def test_random_split_partitions_and_is_seeded():
    for k in (0, 1, 17, 50):
        first, second = splitting.random_split(50, k, seed=3)
        assert len(second) == k and np.all(np.diff(second) > 0) and np.all(np.diff(first) > 0)
        np.testing.assert_array_equal(np.union1d(first, second), np.arange(50))
    a = splitting.random_split(50, 10, seed=3)[1]
    np.testing.assert_array_equal(a, splitting.random_split(50, 10, seed=3)[1])
    assert not np.array_equal(a, splitting.random_split(50, 10, seed=4)[1])
    with pytest.raises(ValueError, match="cannot take 51 of 50"):
        splitting.random_split(50, 51, seed=0)


def test_split_positions_stratifies_only_with_labels():
    labels = np.repeat([0, 1], [45, 5])
    strat = splitting.split_positions(50, 10, 7, labels)
    for got, want in zip(strat, splitting.stratified_split(labels, 10, 7)):
        np.testing.assert_array_equal(got, want)
    assert np.bincount(labels[strat[1]]).tolist() == [9, 1]
    plain = splitting.split_positions(50, 10, 7)
    for got, want in zip(plain, splitting.random_split(50, 10, 7)):
        np.testing.assert_array_equal(got, want)


@pytest.fixture
def unlabeled_npz(tmp_path):
    rng = np.random.default_rng(1)
    x_train = rng.integers(0, 256, (120, 6, 5), dtype=np.uint8)
    x_test = rng.integers(0, 256, (30, 6, 5), dtype=np.uint8)
    path = tmp_path / "plain.npz"
    np.savez(path, x_train=x_train, x_test=x_test)
    return str(path), (x_train, x_test)


def test_npz_without_labels_loads_unlabeled(unlabeled_npz):
    path, (x_train, x_test) = unlabeled_npz
    arrays = loading.npz_arrays(path)
    assert arrays["train"][1] is None and arrays["test"][1] is None
    cfg = make_cfg(source="npz", npz_path=path, validation_size=20, train_subset=60, seed=2)
    splits = loading.load_splits(cfg)
    assert not splits.has_labels and splits.num_classes == 0 and splits.class_names is None
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (60, 20, 30)
    assert np.intersect1d(splits.train.indices, splits.validation.indices).size == 0
    for part, x in ((splits.train, x_train), (splits.validation, x_train), (splits.test, x_test)):
        assert not part.has_labels
        batch = part.get(np.arange(len(part)))
        assert set(batch) == {"image"}
        np.testing.assert_array_equal(batch["image"][..., 0], x[part.indices])
    description = splits.description
    json.dumps(description)
    assert description["has_labels"] is False and description["num_classes"] == 0
    assert "at random" in description["validation"]
    for key in ("train_class_counts", "test_class_counts", "kept_classes_original_ids"):
        assert key not in description
    again = loading.load_splits(cfg)
    np.testing.assert_array_equal(again.validation.indices, splits.validation.indices)
    other = loading.load_splits(make_cfg(source="npz", npz_path=path, validation_size=20, seed=3))
    assert not np.array_equal(other.validation.indices, splits.validation.indices)
    test = loading.load_source_split(make_cfg(source="npz", npz_path=path), "test")
    assert not test.has_labels and len(test) == 30


def test_labelled_splits_describe_labels(synthetic_npz):
    splits = loading.load_splits(make_cfg(source="npz", npz_path=synthetic_npz[0]))
    assert splits.has_labels and splits.description["has_labels"] is True
    assert splits.description["train_class_counts"] == [40] * 5


def test_ood_classes_on_unlabeled_data_is_an_error(unlabeled_npz):
    cfg = make_cfg(source="npz", npz_path=unlabeled_npz[0], ood_classes=(1,))
    with pytest.raises(ValueError, match=r"data\.ood_classes=\[1\].*unlabeled"):
        loading.load_splits(cfg)


def test_npz_with_half_the_labels_is_an_error(tmp_path):
    path = tmp_path / "half.npz"
    x = np.zeros((4, 3, 3), np.uint8)
    np.savez(path, x_train=x, y_train=np.zeros(4, int), x_test=x)
    with pytest.raises(ValueError, match="y_train but not its pair"):
        loading.npz_arrays(str(path))


@pytest.fixture(scope="module")
def unlabeled_tfds(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds_unlabeled"))
    arrays = {s: (x, None) for s, (x, _) in tiny_arrays(n_train=24, n_test=8).items()}
    path = tfds_prepare.prepare_from_arrays("tiny_plain", data_dir, arrays, 0)
    return data_dir, arrays, path


def test_tfds_without_label_feature_is_unlabeled(unlabeled_tfds, tiny_tfds):
    data_dir, arrays, path = unlabeled_tfds
    assert path == os.path.join(data_dir, "tiny_plain", "1.0.0")
    source = tfds_source.TfdsSource("tiny_plain", "train", data_dir)
    assert not source.has_labels and source.num_classes == 0 and source.class_names is None
    batch = source.get(np.arange(len(source)))
    assert set(batch) == {"image"}
    np.testing.assert_array_equal(batch["image"], arrays["train"][0])
    with pytest.raises(ValueError, match="TfdsSource.*no feature 'label'"):
        source.labels  # pylint: disable=pointless-statement
    splits = loading.load_splits(
        make_cfg(source="tfds", name="tiny_plain", data_dir=data_dir, validation_size=4)
    )
    assert not splits.has_labels and splits.num_classes == 0
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (20, 4, 8)
    assert tfds_source.TfdsSource("tiny_digits", "test", tiny_tfds[0]).has_labels


def test_prepare_rejects_labels_in_some_splits_only(tmp_path):
    x = np.zeros((2, 4, 4, 1), np.uint8)
    with pytest.raises(ValueError, match=r"splits \['test'\] have no labels"):
        tfds_prepare.prepare_from_arrays(
            "mixed", str(tmp_path), {"train": (x, np.zeros(2, int)), "test": (x, None)}, 1
        )


def test_prepare_cli_writes_unlabeled_npz(unlabeled_npz, tmp_path, capsys):
    path, (x_train, _) = unlabeled_npz
    data_dir = str(tmp_path / "tfds")
    tfds_prepare.main(["--npz", path, "--name", "plain", "--data_dir", data_dir])
    assert "0 classes" in capsys.readouterr().out
    source = tfds_source.TfdsSource("plain", "train", data_dir)
    assert not source.has_labels
    np.testing.assert_array_equal(source.get(np.array([3]))["image"][0, ..., 0], x_train[3])


# --------------------------------------------------------------------------------
# npz files that are not what they should be
# --------------------------------------------------------------------------------


def _npz_error(path, error=ValueError):
    with pytest.raises(error) as err:
        loading.load_splits(make_cfg(source="npz", npz_path=str(path)))
    message = str(err.value)
    assert str(path) in message and "pickle" not in message.lower()
    return message


def test_npz_path_to_a_text_file(tmp_path):
    path = tmp_path / "notes.npz"
    path.write_text("not an array file\n")
    with pytest.raises(ValueError) as err:
        loading.npz_arrays(str(path))
    assert err.value.__suppress_context__  # numpy's unpickling hint is not chained
    message = _npz_error(path)
    assert "not a valid .npz" in message and "x_train, x_test" in message
    assert "optionally y_train, y_test" in message


def test_npz_path_to_a_npy_or_object_arrays(tmp_path):
    npy = tmp_path / "single.npy"
    np.save(npy, np.zeros((2, 3, 3), np.uint8))
    assert "not a valid .npz" in _npz_error(npy)
    objects = tmp_path / "objects.npz"
    np.savez(objects, x_train=np.array([{"a": 1}], dtype=object), x_test=np.zeros(1))
    assert "object arrays" in _npz_error(objects)


def test_npz_missing_file(tmp_path):
    message = _npz_error(tmp_path / "absent.npz", FileNotFoundError)
    assert "not found" in message


def test_npz_missing_images_names_the_keys_found(tmp_path):
    path = tmp_path / "wrong_keys.npz"
    np.savez(path, images=np.zeros((2, 3, 3), np.uint8), x_test=np.zeros((2, 3, 3), np.uint8))
    message = _npz_error(path)
    assert "no arrays ['x_train']" in message and "keys found: ['images', 'x_test']" in message


def _save_npz(path, n_train=12, n_test=6, y_train=None, channels=(), values=(0, 255)):
    rng = np.random.default_rng(0)
    img = lambda n: rng.choice(np.asarray(values, np.uint8), (n, 4, 4, *channels))  # noqa: E731
    np.savez(path, x_train=img(n_train), x_test=img(n_test),
             y_train=np.arange(n_train) % 3 if y_train is None else y_train,
             y_test=np.arange(n_test) % 3)
    return path


def test_npz_labels_that_do_not_match_the_images_name_the_file_and_split(tmp_path):
    path = _save_npz(tmp_path / "mismatch.npz", y_train=np.arange(9) % 3)
    message = _npz_error(path)
    assert "the train split has 12 images (x_train) but 9 labels (y_train)" in message


@pytest.mark.parametrize("split", ["train", "test"])
def test_npz_split_without_examples_names_the_file_and_split(tmp_path, split):
    sizes = {"train": 4, "test": 4, split: 0}
    path = tmp_path / "empty.npz"
    np.savez(path, **{f"x_{s}": np.zeros((n, 4, 4), np.uint8) for s, n in sizes.items()},
             **{f"y_{s}": np.arange(n) % 2 for s, n in sizes.items()})
    message = _npz_error(path)
    assert f"the {split} split has no examples (x_{split} has shape (0, 4, 4, 1))" in message


def _splits(tmp_path, **kw):
    return loading.load_splits(make_cfg(source="npz", npz_path=str(_save_npz(
        tmp_path / "d.npz", **kw))))


def test_normalisation_needs_one_entry_per_channel(tmp_path):
    """data.mean/std: one entry per channel or () (no broadcasting of one entry)."""
    from jaxhybrid import config_check
    rgb = _splits(tmp_path, channels=(3,))
    cfg = ml_collections.ConfigDict({"data": {"frame": 0, "mean": (0.5,), "std": (0.2,) * 3}})
    with pytest.raises(ValueError) as err:
        config_check.check_against_data(cfg, rgb)
    assert str(err.value) == ("config field data.mean = (0.5,): 1 entry for the 3-channel "
                              "images of npz:d; must have one entry per channel (3), or be () "
                              "for no normalisation")
    cfg.data.mean = (0.5,) * 3
    config_check.check_against_data(cfg, rgb)                     # one per channel
    cfg.data.mean, cfg.data.std = (), ()
    config_check.check_against_data(cfg, rgb)                     # none


def test_bernoulli_likelihood_needs_binary_pixels(tmp_path):
    """check_family_data: a family with a binary-support likelihood is refused on grey
    pixels unless training binarises them, and accepted on data that are binary."""
    from configs import hvae
    from jaxhybrid import config_check
    from jaxhybrid.families.hvae import HVAEFamily
    config = hvae.get_config("digits")
    family = HVAEFamily.build(config, 0)
    assert family.likelihood == "bernoulli"
    (tmp_path / "binary").mkdir()
    binary = _splits(tmp_path / "binary")                      # every pixel 0 or 255
    grey = _splits(tmp_path, values=(0, 37, 255))
    for transforms in ("binarize", "binarize,flip"):
        config.data.train_transforms = transforms
        config_check.check_family_data(family, config, grey)
    config.data.train_transforms = ""
    config_check.check_family_data(family, config, binary)        # binary already: 0/255
    with pytest.raises(ValueError, match=r"the train images of npz:d are not binary "
                                         r"\(train image \d+ has the pixel value 37/255\)"):
        config_check.check_family_data(family, config, grey)
    config.data.train_transforms = "dequantize"
    with pytest.raises(ValueError, match="dequantize makes the pixels continuous"):
        config_check.check_family_data(family, config, binary)
    config.model.likelihood = "discretized_logistic"                  # a mass over 256 levels
    config_check.check_family_data(HVAEFamily.build(config, 0), config, grey)


# --------------------------------------------------------------------------------
# preprocess
# --------------------------------------------------------------------------------


def test_to_float_range():
    x = np.array([0, 128, 255], np.uint8).reshape(1, 1, 3, 1)
    y = preprocess.to_float(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.ravel(), [0, 128 / 255, 1])
    with pytest.raises(TypeError):
        preprocess.to_float(y)


def test_pad_to_frame_centres():
    x = np.ones((2, 28, 28, 1), np.uint8)
    y = preprocess.pad_to_frame(x, 32)
    assert y.shape == (2, 32, 32, 1) and y.dtype == np.uint8
    assert y[:, 2:30, 2:30].min() == 1 and y.sum() == x.sum()
    odd = preprocess.pad_to_frame(np.ones((3, 3, 1), np.float32), (6, 4))
    assert odd.shape == (6, 4, 1)
    np.testing.assert_array_equal(odd[..., 0].sum(axis=1), [0, 3, 3, 3, 0, 0])
    with pytest.raises(ValueError, match="larger"):
        preprocess.pad_to_frame(np.ones((1, 33, 32, 1)), 32)


def test_adapt_channels():
    grey = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)[..., :1]
    rgb = preprocess.adapt_channels(grey, 3)
    assert rgb.shape == (1, 2, 2, 3)
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
    pixel = np.array([[[[100, 50, 200]]]], np.uint8)
    np.testing.assert_array_equal(
        preprocess.adapt_channels(pixel, 1), [[[[round(0.299 * 100 + 0.587 * 50 + 0.114 * 200)]]]]
    )
    assert preprocess.adapt_channels(rgb, 3) is rgb
    with pytest.raises(ValueError):
        preprocess.adapt_channels(np.zeros((1, 2, 2, 2)), 3)


def test_resize_matches_jax_image_resize():
    import jax  # pylint: disable=g-import-not-at-top

    x = np.random.default_rng(0).random((3, 32, 24, 3), dtype=np.float32)
    for size in ((28, 28), (40, 50), (32, 24)):
        y = preprocess.resize_images(x, size)
        assert y.shape == (3, *size, 3) and y.dtype == np.float32
        ref = jax.image.resize(x, (3, *size, 3), method="linear")
        np.testing.assert_allclose(y, np.asarray(ref), atol=1e-5)


def test_adapt_to_rules():
    mnist_like = np.ones((2, 28, 28, 1), np.float32)
    out, rule = preprocess.adapt_to(mnist_like, (32, 32, 3))
    assert out.shape == (2, 32, 32, 3) and "pad" in rule and "28x28x1" in rule
    svhn_like = np.ones((2, 32, 32, 3), np.float32)
    out, rule = preprocess.adapt_to(svhn_like, (28, 28, 1))
    assert out.shape == (2, 28, 28, 1) and "resize" in rule and "luminance" in rule
    np.testing.assert_allclose(out, 1.0, atol=1e-5)
    out, rule = preprocess.adapt_to(mnist_like, (28, 28, 1))
    assert out.shape == mnist_like.shape and rule.endswith("unchanged")
    with pytest.raises(ValueError, match="pad_or_resize"):
        preprocess.adapt_to(mnist_like, (32, 32, 1), mode="crop")
