"""``config.data``: one row per field (default, check, meaning), read by the data loader
(:mod:`jaxhybrid.data.loading`), the input pipeline and the transforms.

The fields that need the loaded data (``frame`` against the image size, ``mean``/``std``
one entry per channel, ``ood_classes`` within the labels, ``validation_size`` against the
training examples) are checked again once the data are loaded
(:func:`jaxhybrid.config_check.check_against_data`, :mod:`jaxhybrid.data.loading`).
"""
from __future__ import annotations

from jaxhybrid.data.loading import VALID_SOURCES
from jaxhybrid.data.resident import PLACEMENTS
from jaxhybrid.data.transforms import parse_transforms
from jaxhybrid.schema import (Check, Field, Schema, choice, count, is_int, is_number, num,
                              parsed_by, reads, text)


def _feature_name(v) -> str | None:
    if isinstance(v, str) and v:
        return None
    return "must name a TFDS feature, e.g. 'label' or 'coarse_label'"


def _validation_size(v) -> str | None:
    whole = is_int(v) or (is_number(v) and v >= 1 and float(v).is_integer())
    if (whole and v >= 0) or (is_number(v) and 0 <= v < 1):
        return None
    return "must be a fraction in [0, 1) or a count >= 0 of the training examples"


def _class_ids(v) -> str | None:
    ok = isinstance(v, (tuple, list)) and all(is_int(c) and c >= 0 for c in v)
    if not ok:
        return "must be a tuple of class ids (ints >= 0), e.g. (8, 9), or () for none"
    if len(set(v)) != len(v):
        return "must not repeat a class"
    return None


def _numbers(positive: bool) -> Check:
    def check(v):
        ok = isinstance(v, (tuple, list)) and all(is_number(x) and (x > 0 or not positive)
                                                  for x in v)
        return None if ok else ("must be a tuple of numbers" + (" > 0" if positive else "")
                                + ", one per channel, or () for none")
    return check


@reads("source", "name", "npz_path")
def _named_source(values: dict) -> list[tuple[str, str]]:
    """A tfds source names its dataset; an npz source its file."""
    if values["source"] == "tfds" and not values["name"]:
        return [("name", "must name a TFDS dataset when data.source='tfds'")]
    if values["source"] == "npz" and not values["npz_path"]:
        return [("npz_path", "must name an .npz file when data.source='npz'")]
    return []


DATA = Schema("data", {
    "source": choice("digits", VALID_SOURCES, "digits (sklearn, offline) | npz (a file of "
                     "uint8 images) | tfds (a prepared TFDS dataset)"),
    "name": Field("", text, "TFDS name (tfds), e.g. mnist, cifar10, svhn_cropped"),
    "data_dir": Field("", text, "TFDS data_dir ('' = $TFDS_DATA_DIR or ~/tensorflow_datasets)"),
    "npz_path": Field("", text, "npz with x_train, x_test and optionally y_train, y_test"),
    "label_key": Field("label", _feature_name, "TFDS label feature (e.g. coarse_label for "
                       "cifar100)"),
    "digits_test_fraction": num(0.2, "digits: the stratified test fraction (0.2: 1,438 "
                                "train / 359 test)", 0, 1, low_open=True, high_open=True),
    "validation_size": Field(0.1, _validation_size, "int count or fraction of TRAIN (never "
                             "test) held out for validation"),
    "seed": count(0, "split seed (fixed across training seeds)", low=0),
    "ood_classes": Field((), _class_ids, "classes removed from training; their test images "
                         "are the near-OOD set 'heldout'"),
    "train_subset": count(0, "cap on training examples (0 = all)", low=0),
    "frame": count(0, "zero-pad images to frame×frame (0 = keep the size); the GFFN thesis: "
                   "32", low=0),
    "mean": Field((), _numbers(positive=False), "per-channel normalisation inside the model "
                  "(pixels in [0, 1]; () = none)"),
    "std": Field((), _numbers(positive=True), "per-channel standard deviation (() = none)"),
    "train_transforms": Field("", parsed_by(parse_transforms), "on-device train-time "
                              "transforms, comma-separated: binarize (dynamic Bernoulli; "
                              "evaluation: one fixed seeded binarisation), dequantize "
                              "((255x+u)/256), crop, flip",
                              valid_doc="comma-separated: binarize, dequantize, crop, flip"),
    "crop_padding": count(4, "zero padding of the random crop", low=0),
    "placement": choice("auto", PLACEMENTS, "where the training split lives: auto (device "
                        "when it fits the device memory budget, else host) | host (batches "
                        "read on the host, sent each step) | device (uint8 on the devices "
                        "once, batches gathered there; data/resident.py)"),
}, rules=[_named_source])


def data_config(**overrides):
    """``config.data`` at its defaults, then ``overrides``."""
    return DATA.defaults(**overrides)
