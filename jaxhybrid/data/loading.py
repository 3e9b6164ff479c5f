"""The train / validation / test sources of a config: sklearn digits, npz files, TFDS.

`load_splits(data_cfg)` builds the train / validation / test sources for a config,
carves the validation set out of *train* (never out of test), removes the
out-of-distribution classes `data.ood_classes` and remaps the remaining labels to
contiguous ids. `load_source_split(cfg, split)` returns one raw split of another
dataset, e.g. the SVHN test set used as an OOD set for a CIFAR-10 model.

Config fields read (missing ones fall back to the defaults in brackets):
  source            "digits" | "npz" | "tfds"                       ["digits"]
  name              TFDS name, "name[/config][:version]"            [None]
  data_dir          TFDS data dir [$TFDS_DATA_DIR or ~/tensorflow_datasets]
  npz_path          npz with x_train, x_test [, y_train, y_test]    [None]
  validation_size   int count or float fraction of train            [0]
  seed              seed of the validation split and train subset   [0]
  ood_classes       class ids removed from train/validation/test    [()]
  train_subset      cap on the number of train examples, 0 = all    [0]
  digits_test_fraction   test fraction of sklearn digits            [0.2]
  label_key         TFDS label feature (e.g. "coarse_label")        ["label"]

An npz file must hold at least one image in each of x_train and x_test, and, when it has
labels, exactly one label per image; otherwise the error names the file and the split.

Splitting rules:
  * Validation: `validation_size` examples are drawn from train, stratified by class
    (per-class counts proportional to the class frequencies, largest-remainder
    rounding), deterministic in `seed`. This holds for every source, TFDS included:
    TFDS labels are cheap to read (see `jaxhybrid.data.tfds_source`).
  * OOD classes are removed first; `validation_size` and `train_subset` then count
    in-distribution examples. Kept classes are remapped in increasing order of their
    original id to 0..K'-1. `heldout_test` holds the test examples of the removed
    classes with their *original* ids.
  * `train_subset` keeps a stratified, seeded subset of what remains of train.
  * Unlabeled datasets (an npz without y_train/y_test, a TFDS dataset without the
    `label_key` feature): the validation split and the train subset are plain seeded
    random splits, `num_classes` is 0, and `ood_classes` is an error.
  * sklearn digits (1,797 images 8x8, values 0..16) become uint8 via
    round(v * 255 / 16), shape [N, 8, 8, 1]. They have no official test split: a
    stratified split with the *fixed* seed 0 and test fraction
    `digits_test_fraction` (default 0.2 -> 1,438 train / 359 test) makes one, so the
    test set is the same for every run `seed`, like a standard benchmark split.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxhybrid.data.arrays import (DEFAULT_DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED,
                                   digits_arrays, npz_arrays)
from jaxhybrid.data.sources import ArraySource, Source, SubsetSource
from jaxhybrid.data.splitting import resolve_count, split_positions
from jaxhybrid.data.tfds_source import TfdsSource, parse_tfds_name

VALID_SOURCES = ("digits", "npz", "tfds")

def _field(cfg: Any, key: str, default: Any = None) -> Any:
    """cfg.key for ConfigDicts / objects, cfg[key] for mappings, else `default`."""
    if isinstance(cfg, Mapping):
        value = cfg.get(key, default)
    else:
        value = getattr(cfg, key, default)
    return default if value is None else value


def _check_source(cfg: Any) -> str:
    source = _field(cfg, "source", "digits")
    if source not in VALID_SOURCES:
        raise ValueError(
            f"unknown data source {source!r}; valid choices: {', '.join(VALID_SOURCES)}"
        )
    return source


# ----------------------------------------------------------------------------------
# Raw splits of each source kind.
# ----------------------------------------------------------------------------------


def _tfds_source(cfg: Any, split: str, name: str | None = None,
                 data_dir: str | None = None) -> TfdsSource:
    """TfdsSource of `split` from the config's name, data_dir and label_key."""
    name = name or _field(cfg, "name")
    if not name:
        raise ValueError("data.source='tfds' needs data.name")
    return TfdsSource(
        name,
        split,
        data_dir or _field(cfg, "data_dir"),
        label_key=_field(cfg, "label_key", "label"),
    )


def load_source_split(data_cfg_like: Any, split: str) -> Source:
    """One raw split of a dataset (no OOD removal, no remapping), e.g. an OOD set.

    digits: split in {'train', 'test', 'all'}; npz: {'train', 'test'};
    tfds: any TFDS split spec ('test', 'train[:10%]', 'all', ...).
    """
    source = _check_source(data_cfg_like)
    if source == "tfds":
        return _tfds_source(data_cfg_like, split)
    if source == "digits":
        arrays = digits_arrays(
            _field(data_cfg_like, "digits_test_fraction", DEFAULT_DIGITS_TEST_FRACTION)
        )
    else:
        arrays = npz_arrays(_field(data_cfg_like, "npz_path"))
    if split not in arrays:
        raise ValueError(
            f"split {split!r} not available for source {source!r}; valid: {', '.join(arrays)}"
        )
    return ArraySource(*arrays[split])


# ----------------------------------------------------------------------------------
# Train / validation / test with OOD classes held out.
# ----------------------------------------------------------------------------------


@dataclasses.dataclass
class DataSplits:
    """The splits of one dataset, as used for training and evaluation."""

    train: Source
    validation: Source
    test: Source
    num_classes: int  # K' after removing the OOD classes; 0 for an unlabeled dataset
    image_shape: tuple  # (H, W, C) stored
    name: str  # "digits", "npz:mnist", "tfds:mnist"
    heldout_test: Source | None  # test images of ood_classes, original label ids
    class_names: list[str] | None
    description: dict  # sizes and provenance, json-serialisable

    @property
    def has_labels(self) -> bool:
        return bool(self.train.has_labels)


@dataclasses.dataclass
class _FullSplits:
    """The whole train and test splits of a dataset, before any carving."""

    train: Source
    test: Source
    num_classes: int  # classes of the dataset (0: unlabeled)
    class_names: list[str] | None
    name: str
    provenance: dict


def _tfds_full(data_cfg: Any) -> _FullSplits:
    name = _field(data_cfg, "name")
    train = _tfds_source(data_cfg, "train")
    # Same on-disk version as train, even if another one appears meanwhile.
    pinned = f"{parse_tfds_name(name)[0]}:{train.version}"
    test = _tfds_source(data_cfg, "test", pinned, train.data_dir)
    provenance = {"builder_dir": train.builder_dir, "version": train.version}
    return _FullSplits(train, test, train.num_classes, train.class_names,
                       f"tfds:{name}", provenance)


def _arrays_full(data_cfg: Any, source: str) -> _FullSplits:
    if source == "digits":
        test_fraction = float(
            _field(data_cfg, "digits_test_fraction", DEFAULT_DIGITS_TEST_FRACTION)
        )
        arrays = digits_arrays(test_fraction)
        name = "digits"
        provenance = {
            "origin": "sklearn.datasets.load_digits, pixels round(v*255/16)",
            "test_split": f"stratified, fraction {test_fraction}, fixed seed {DIGITS_SPLIT_SEED}",
        }
    else:
        path = _field(data_cfg, "npz_path")
        arrays = npz_arrays(path)
        name = f"npz:{os.path.splitext(os.path.basename(path))[0]}"
        provenance = {"npz_path": os.path.abspath(path)}
    train, test = ArraySource(*arrays["train"]), ArraySource(*arrays["test"])
    num_classes = 0
    if train.has_labels:
        num_classes = int(max(train.labels.max(initial=-1), test.labels.max(initial=-1))) + 1
    class_names = [str(c) for c in range(num_classes)] if source == "digits" else None
    return _FullSplits(train, test, num_classes, class_names, name, provenance)


def _label_map(ood_classes: tuple[int, ...], num_classes: int, name: str) -> np.ndarray:
    """Original ids -> kept ids 0..K'-1, -1 for `ood_classes`: int32 [num_classes]."""
    if ood_classes and num_classes == 0:
        raise ValueError(
            f"data.ood_classes={list(ood_classes)} needs class labels, but dataset "
            f"{name!r} is unlabeled; set data.ood_classes=()"
        )
    bad = [c for c in ood_classes if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"ood_classes {bad} outside the dataset's classes 0..{num_classes - 1}")
    kept = np.setdiff1d(np.arange(num_classes), np.asarray(ood_classes, int))
    if num_classes and kept.size < 2:
        raise ValueError(f"ood_classes {ood_classes} leave fewer than 2 classes")
    label_map = np.full((num_classes,), -1, np.int32)
    label_map[kept] = np.arange(kept.size, dtype=np.int32)
    return label_map


def _carve_train(data_cfg: Any, train_labels: np.ndarray | None, in_train: np.ndarray,
                 seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """-> (train indices, validation indices, train_subset) into the full train split.

    Stratified by `train_labels: int [N]` when given, plain random when None.
    """
    def labels_at(idx):
        return None if train_labels is None else train_labels[idx]

    num_val = resolve_count(
        _field(data_cfg, "validation_size", 0), in_train.size, "validation_size"
    )
    train_pos, val_pos = split_positions(in_train.size, num_val, seed, labels_at(in_train))
    train_idx, val_idx = in_train[train_pos], in_train[val_pos]
    subset = int(_field(data_cfg, "train_subset", 0))
    if 0 < subset < train_idx.size:
        keep, _ = split_positions(
            train_idx.size, train_idx.size - subset, seed + 1, labels_at(train_idx)
        )
        train_idx = train_idx[keep]
    return train_idx, val_idx, subset


def _class_counts(labels: np.ndarray, num_classes: int) -> list[int]:
    return np.bincount(labels, minlength=num_classes).astype(int).tolist()


def _describe(full: _FullSplits, splits: dict, label_map: np.ndarray, seed: int,
              subset: int, ood_classes: tuple[int, ...]) -> dict:
    """Sizes and provenance of `splits` ({'train', 'validation', 'test', 'heldout_test'})."""
    train, validation, test = splits["train"], splits["validation"], splits["test"]
    heldout, labelled = splits["heldout_test"], full.train.has_labels
    kept = np.flatnonzero(label_map >= 0).astype(int).tolist()
    description = {
        "name": full.name,
        **full.provenance,
        "image_shape": list(full.train.image_shape),
        "has_labels": labelled,
        "num_classes": len(kept),
        "ood_classes": list(ood_classes),
        **({"kept_classes_original_ids": kept} if labelled else {}),
        "num_train": train.num_examples,
        "num_validation": validation.num_examples,
        "num_test": test.num_examples,
        "num_heldout_test": 0 if heldout is None else heldout.num_examples,
        "validation": f"{validation.num_examples} examples carved from train, "
        + (f"stratified by class, seed {seed}" if labelled else f"at random, seed {seed}"),
        "train_subset": subset or None,
    }
    if labelled:  # class counts only where there are classes
        description["train_class_counts"] = _class_counts(train.labels, len(kept))
        description["test_class_counts"] = _class_counts(test.labels, len(kept))
    return description


def load_splits(data_cfg: Any) -> DataSplits:
    """Builds train / validation / test (and heldout_test) for `data_cfg`.

    See the module docstring for the fields read and the splitting rules.
    """
    source = _check_source(data_cfg)
    seed = int(_field(data_cfg, "seed", 0))
    ood_classes = tuple(int(c) for c in _field(data_cfg, "ood_classes", ()))
    full = _tfds_full(data_cfg) if source == "tfds" else _arrays_full(data_cfg, source)
    full.provenance = {"source": source, **full.provenance}
    label_map = _label_map(ood_classes, full.num_classes, full.name)

    # In-distribution parts of train and test; heldout test of the OOD classes.
    train_labels = full.train.labels if full.train.has_labels else None
    in_train = np.arange(len(full.train))
    in_test = np.arange(len(full.test))
    heldout_test = None
    if ood_classes:
        in_train = np.flatnonzero(label_map[train_labels] >= 0)
        test_labels = full.test.labels
        in_test = np.flatnonzero(label_map[test_labels] >= 0)
        heldout_test = SubsetSource(full.test, np.flatnonzero(label_map[test_labels] < 0))

    train_idx, val_idx, subset = _carve_train(data_cfg, train_labels, in_train, seed)
    remap = None if not ood_classes else label_map
    splits = {
        "train": SubsetSource(full.train, train_idx, remap),
        "validation": SubsetSource(full.train, val_idx, remap),
        "test": SubsetSource(full.test, in_test, remap),
        "heldout_test": heldout_test,
    }
    kept = np.flatnonzero(label_map >= 0)
    names = full.class_names
    return DataSplits(
        **splits,
        num_classes=int(kept.size),
        image_shape=tuple(full.train.image_shape),
        name=full.name,
        class_names=[names[c] for c in kept] if names is not None else None,
        description=_describe(full, splits, label_map, seed, subset, ood_classes),
    )
