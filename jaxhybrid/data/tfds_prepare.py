"""Write local arrays (an npz, or sklearn digits) in the TFDS on-disk format, offline.

No network and no TensorFlow are needed, to write or to read. Usage:

    python -m jaxhybrid.data.tfds_prepare --npz ../shared/data/mnist.npz \\
        --name mnist --data_dir ~/tensorflow_datasets [--max_train N --max_test N]
    python -m jaxhybrid.data.tfds_prepare --digits --name digits --data_dir DIR

then read it with `data.source="tfds"`, `data.name="mnist"`, `data.data_dir=DIR`.

How it works. A `tfds.core.GeneratorBasedBuilder` subclass is made for the
requested name (with `skip_registration=True`, so it never clashes with TFDS'
registered builder of the same name). Its features are
`{'image': tfds.features.Image(shape=(H, W, C)), 'label': ClassLabel(num_classes=K)}`
(no 'label' for unlabeled arrays, e.g. an npz without y_train/y_test) and
`_split_generators` yields each image as PNG bytes encoded with Pillow: handing
numpy arrays to `tfds.features.Image` would call TensorFlow. Records are written
as array_record (random access) with shuffling disabled, so record i of a split is
example i of the given arrays. The result is the standard layout
DATA_DIR/NAME/VERSION/{dataset_info.json, features.json, NAME-SPLIT.array_record-*},
the same as `tfds build NAME --file_format=array_record` writes.

Name clash with TFDS' own builders (e.g. "mnist"). `jaxhybrid.data.tfds_source.TfdsSource`
opens the version directory with `tfds.builder_from_directory`, which never runs
builder code, so it reads any version written here or by `tfds build`. So that
plain `tfds.data_source(NAME, split=..., data_dir=DIR)` works too, `version=None`
(the default) picks:
  * the version of TFDS' registered builder NAME, when that builder's features are
    exactly image + label of the same shape and number of classes (mnist,
    fashion_mnist, kmnist, ...). TFDS' own code then finds the data where it
    looks for it and decodes it with its own, identical features. Its class names
    are adopted unless `class_names` is given;
  * "1.0.0" otherwise (unregistered names, or registered builders with extra
    features such as cifar10's 'id'). Plain `tfds.data_source` then reads
    unregistered names from the files; registered ones need the version spelled
    out, `tfds.data_source("cifar10:1.0.0", ...)`, or `tfds.builder_from_directory`.
"""

from __future__ import annotations

import argparse
import importlib
import os
from collections.abc import Mapping, Sequence

import numpy as np

from jaxhybrid.data.arrays import digits_arrays, npz_arrays
from jaxhybrid.data.tfds_builder import (NAME_RE, build, builder_class, check_splits,
                                         features_of, resolve_version)
from jaxhybrid.data.tfds_source import TfdsSource, tfds_data_dir

def prepare_from_arrays(
    name: str,
    data_dir: str | os.PathLike | None,
    splits: Mapping[str, tuple[np.ndarray, np.ndarray]],
    num_classes: int,
    version: str | None = None,
    *,
    class_names: Sequence[str] | None = None,
    description: str = "",
    overwrite: bool = False,
) -> str:
    """Writes `splits` as TFDS dataset `name` (array_record) and returns its directory.

    Args:
      name: dataset name, snake_case (e.g. "mnist"); written to DATA_DIR/name/VERSION.
      data_dir: TFDS data dir (None: $TFDS_DATA_DIR or ~/tensorflow_datasets).
      splits: {split: (images uint8 [N, H, W] or [N, H, W, C], labels int [N])};
        labels None in every split writes an unlabeled dataset (no 'label' feature).
      num_classes: K of the ClassLabel feature; labels must lie in [0, K). 0 when
        unlabeled.
      version: "X.Y.Z"; None picks the registered TFDS builder's version when its
        features match, else "1.0.0" (see the module docstring).
      class_names: K names for the ClassLabel (default: the registered builder's,
        else "0".."K-1").
      description: free text stored in dataset_info.json (provenance).
      overwrite: replace an existing DATA_DIR/name/VERSION; otherwise
        FileExistsError.

    Returns:
      The dataset version directory, e.g. "/data/mnist/3.0.1".
    """
    importlib.import_module("tensorflow_datasets")  # without TFDS, fail before any check
    if not NAME_RE.match(name):
        raise ValueError(f"invalid dataset name {name!r}: use snake_case, e.g. 'mnist'")
    data_dir = tfds_data_dir(data_dir)
    arrays = check_splits(splits, int(num_classes))
    version, class_names = resolve_version(
        name, data_dir, arrays, num_classes, version, class_names
    )
    target = os.path.join(data_dir, name, version)
    if os.path.exists(target) and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True (--overwrite) to replace it")
    info_text = description or (
        "Written by jaxhybrid.data.tfds_prepare from local arrays: "
        + ", ".join(f"{s} {len(x)}" for s, (x, _) in arrays.items())
    )
    features = features_of(arrays, num_classes, class_names)
    return build(builder_class(name, version, info_text, features, arrays), data_dir, overwrite)


def _limit(arrays: tuple[np.ndarray, np.ndarray | None], max_n: int | None):
    """Keeps the first `max_n` examples (all if max_n is 0 or None); labels may be None."""
    images, labels = arrays
    if not max_n:
        return images, labels
    return images[:max_n], None if labels is None else labels[:max_n]


def _arg_parser() -> argparse.ArgumentParser:
    """The command line: what to write (--npz or --digits), where, and how much."""
    parser = argparse.ArgumentParser(
        prog="python -m jaxhybrid.data.tfds_prepare",
        description="Write a local npz (x_train, x_test [, y_train, y_test]) or sklearn "
        "digits as a TFDS dataset (array_record), offline, without "
        "TensorFlow.",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--npz",
        metavar="PATH",
        help="npz with x_train, x_test (uint8 [N, H, W] or [N, H, W, C]) and, if "
        "labelled, y_train, y_test",
    )
    what.add_argument(
        "--digits",
        action="store_true",
        help="sklearn digits, with the train/test split of data.source='digits'",
    )
    parser.add_argument("--name", required=True, help="dataset name, e.g. mnist")
    parser.add_argument(
        "--data_dir",
        default=None,
        help="TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)",
    )
    _add_output_args(parser)
    return parser


def _add_output_args(parser: argparse.ArgumentParser) -> None:
    """Adds --max_train, --max_test, --num_classes, --version and --overwrite."""
    parser.add_argument(
        "--max_train", type=int, default=0, help="keep only the first N train examples (0: all)"
    )
    parser.add_argument(
        "--max_test", type=int, default=0, help="keep only the first N test examples (0: all)"
    )
    parser.add_argument(
        "--num_classes", type=int, default=0, help="number of classes (0: max label + 1)"
    )
    parser.add_argument(
        "--version",
        default=None,
        help="X.Y.Z (default: the registered TFDS builder's version "
        "if its features match, else 1.0.0)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing prepared version"
    )


def _load_splits(args: argparse.Namespace) -> tuple[dict, str]:
    """-> ({"train": (x, y), "test": (x, y)} cut to --max_train/--max_test, provenance)."""
    if args.digits:
        arrays = digits_arrays()
        provenance = "sklearn.datasets.load_digits, pixels round(v*255/16)"
    else:
        arrays = npz_arrays(args.npz)
        provenance = f"npz {os.path.abspath(args.npz)}"
    splits = {
        "train": _limit(arrays["train"], args.max_train),
        "test": _limit(arrays["test"], args.max_test),
    }
    return splits, provenance


def _count_classes(splits: Mapping[str, tuple[np.ndarray, np.ndarray | None]]) -> int:
    """max label + 1 over every split; 0 for unlabeled splits (an npz without y_*)."""
    labelled = splits["train"][1] is not None  # an npz without y_* is unlabeled
    return max(int(y.max(initial=-1)) for _, y in splits.values()) + 1 if labelled else 0


def _report(args: argparse.Namespace, path: str, splits: Mapping, num_classes: int) -> None:
    """Prints what was written (read back through TfdsSource) and how to train on it."""
    data_dir = tfds_data_dir(args.data_dir)
    check = TfdsSource(f"{args.name}:{os.path.basename(path)}", "train", data_dir)
    print(
        f"Prepared {path}: "
        + ", ".join(f"{s} {len(x)}" for s, (x, _) in splits.items())
        + f", {num_classes} classes, image shape {check.image_shape}."
    )
    print(
        f"Use it with --config.data.source=tfds --config.data.name={args.name} "
        f"--config.data.data_dir={data_dir}"
    )


def main(argv: Sequence[str] | None = None) -> str:
    """The command line (see the module docstring); returns the written version directory."""
    args = _arg_parser().parse_args(argv)
    splits, provenance = _load_splits(args)
    num_classes = args.num_classes or _count_classes(splits)
    description = f"Written by jaxhybrid.data.tfds_prepare from {provenance}: " + ", ".join(
        f"{s} {len(x)}" for s, (x, _) in splits.items()
    )
    path = prepare_from_arrays(
        args.name,
        args.data_dir,
        splits,
        num_classes,
        args.version,
        description=description,
        overwrite=args.overwrite,
    )
    _report(args, path, splits, num_classes)
    return path


if __name__ == "__main__":
    main()
