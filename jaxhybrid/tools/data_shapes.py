"""A config's data as shapes only: the image shape, the classes and the training-set size
of the datasets the configs use (:data:`KNOWN_DATASETS`, or an npz file's array headers),
as empty splits that :func:`jaxhybrid.experiment.build_experiment` accepts in place of the
data. :mod:`jaxhybrid.tools.lower` and the roofline build paper-size experiments from them
without reading or allocating anything at that size."""
from __future__ import annotations

import math
import os
import zipfile

import numpy as np

from jaxhybrid import experiment
from jaxhybrid.data.loading import DataSplits
from jaxhybrid.data.sources import ArraySource
from jaxhybrid.data.splitting import resolve_count
from jaxhybrid.data.tfds_source import parse_tfds_name

# name -> ((H, W, C) stored, classes, training-set size) of the datasets the configs use
KNOWN_DATASETS = {
    "digits": ((8, 8, 1), 10, 1438),          # sklearn digits, the 0.8 train split
    "mnist": ((28, 28, 1), 10, 60000),
    "fashion_mnist": ((28, 28, 1), 10, 60000),
    "cifar10": ((32, 32, 3), 10, 50000),
    "cifar100": ((32, 32, 3), 100, 50000),   # label_key=coarse_label: 20 classes
    "svhn_cropped": ((32, 32, 3), 10, 73257),
}

def _npz_header(path: str) -> tuple[tuple, int, int]:
    """((H, W, C), classes, train size) of an npz file from its arrays' headers (the
    images are not read; the labels, small, are)."""
    with zipfile.ZipFile(path) as z:
        with z.open("x_train.npy") as f:
            fmt = np.lib.format
            read = fmt.read_array_header_1_0 if fmt.read_magic(f) == (1, 0) else \
                fmt.read_array_header_2_0
            shape = read(f)[0]
    with np.load(path) as d:
        labels = [d[k] for k in ("y_train", "y_test") if k in d.files]
    classes = int(max(int(y.max(initial=-1)) for y in labels)) + 1 if labels else 0
    return (tuple(shape[1:]) + (1,))[:3], classes, int(shape[0])


def dataset_shape(data_cfg) -> tuple[str, tuple, int, int]:
    """(name, (H, W, C), classes, training-set size) of ``config.data``, without its data:
    :data:`KNOWN_DATASETS`, else (npz) the file's headers; an error names the known ones."""
    source = data_cfg.source
    if source == "digits":
        name = "digits"
    elif source == "tfds":
        name = parse_tfds_name(data_cfg.name)[0].split("/")[0]
    else:
        name = os.path.splitext(os.path.basename(str(data_cfg.npz_path)))[0]
    if name in KNOWN_DATASETS:
        shape, classes, n = KNOWN_DATASETS[name]
        if name == "cifar100" and data_cfg.label_key == "coarse_label":
            classes = 20
        return name, shape, classes, n
    if source == "npz" and os.path.exists(str(data_cfg.npz_path)):
        return (name, *_npz_header(str(data_cfg.npz_path)))
    raise ValueError(f"data {source}:{name or data_cfg.npz_path!r}: its image shape is not "
                     f"known without the data; known datasets: {', '.join(KNOWN_DATASETS)} "
                     f"(or an existing npz file)")


def shape_splits(data_cfg) -> DataSplits:
    """Empty train/validation/test splits with the dataset's image shape and classes (less
    ``data.ood_classes``): what :func:`build_experiment` needs of the data, nothing read."""
    name, shape, classes, _ = dataset_shape(data_cfg)
    ood = tuple(data_cfg.ood_classes)
    bad = [c for c in ood if not 0 <= c < classes]
    if bad or (ood and classes - len(ood) < 2):
        raise ValueError(f"config field data.ood_classes = {ood!r}: {name} has classes "
                         f"0..{classes - 1}; at least 2 must remain")
    empty = ArraySource(np.zeros((0, *shape), np.uint8),
                        np.zeros((0,), np.int32) if classes else None)
    kept = classes - len(ood) if classes else 0
    return DataSplits(empty, empty, empty, kept, tuple(shape), f"{name} (shapes only)",
                      None, None, {"shapes_only": True})


def steps_per_epoch(config) -> int:
    """Training steps per epoch from the table's training-set size, less validation, OOD
    classes and ``train_subset`` (approximate: it only sets the schedule's constants)."""
    _, _, classes, n = dataset_shape(config.data)
    if classes and config.data.ood_classes:
        n = n * (classes - len(config.data.ood_classes)) // classes
    n -= resolve_count(config.data.validation_size, n, "validation_size")
    if config.data.train_subset:
        n = min(n, int(config.data.train_subset))
    batches = n / config.batch_size
    return max(1, math.floor(batches) if config.drop_remainder else math.ceil(batches))


def shape_experiment(config) -> experiment.Experiment:
    """:func:`build_experiment` of ``config`` on :func:`shape_splits` (no data loaded)."""
    return experiment.build_experiment(config, load=shape_splits)
