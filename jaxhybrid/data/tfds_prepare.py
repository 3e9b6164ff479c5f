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
import io
import os
import re
import tempfile
from collections.abc import Mapping, Sequence

import numpy as np

from jaxhybrid.data.arrays import digits_arrays, npz_arrays
from jaxhybrid.data.tfds_source import TfdsSource, tfds_data_dir

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_FALLBACK_VERSION = "1.0.0"


def _png_bytes(image: np.ndarray) -> bytes:
    """uint8 [H, W, C] with C in {1, 3, 4} -> PNG bytes (Pillow)."""
    from PIL import Image  # pylint: disable=g-import-not-at-top

    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format="PNG")
    return buf.getvalue()


def _check_labels(split: str, labels: np.ndarray, num_images: int, num_classes: int):
    """labels int [N] in [0, num_classes) -> int64 [N]."""
    labels = np.asarray(labels).reshape(-1)
    if labels.shape[0] != num_images:
        raise ValueError(f"split {split!r}: {num_images} images but {labels.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"split {split!r}: labels must lie in [0, {num_classes}), "
            f"got [{labels.min()}, {labels.max()}]"
        )
    return labels.astype(np.int64)


def _check_splits(
    splits: Mapping[str, tuple[np.ndarray, np.ndarray | None]], num_classes: int
) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Validates the arrays -> {split: (uint8 [N, H, W, C], int64 [N] or None)}.

    Labels are all None (unlabeled; then `num_classes` must be 0) or all given.
    """
    if not splits:
        raise ValueError("no splits given")
    unlabeled = [s for s, (_, y) in splits.items() if y is None]
    if unlabeled and (len(unlabeled) != len(splits) or num_classes):
        raise ValueError(
            f"splits {unlabeled} have no labels: give labels for every split, or for "
            f"none and num_classes=0 (got {num_classes})"
        )
    out = {}
    for split, (images, labels) in splits.items():
        if not re.match(r"^[a-z][a-z0-9_]*$", split):
            raise ValueError(f"invalid split name {split!r}")
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise ValueError(f"split {split!r}: images must be uint8, got {images.dtype}")
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
            raise ValueError(
                f"split {split!r}: images must be [N, H, W] or [N, H, W, C] with C in "
                f"(1, 3, 4), got {images.shape}"
            )
        if labels is not None:
            labels = _check_labels(split, labels, images.shape[0], num_classes)
        out[split] = (images, labels)
    shapes = {s: x.shape[1:] for s, (x, _) in out.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"image shapes differ between splits: {shapes}")
    return out


def _registered_match(
    name: str, image_shape: tuple[int, int, int], num_classes: int, data_dir: str
) -> tuple[str, list[str]] | None:
    """(version, class names) of TFDS' registered builder `name` if its features are
    exactly {'image': Image(image_shape), 'label': ClassLabel(num_classes)}, else None."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    try:
        cls = tfds.builder_cls(name)
        features = cls(data_dir=data_dir).info.features
    except Exception:  # pylint: disable=broad-except
        return None  # not registered, or its code needs more than we have (e.g. TF)
    if set(features.keys()) != {"image", "label"}:
        return None
    image, label = features["image"], features["label"]
    if (
        not isinstance(image, tfds.features.Image)
        or tuple(image.shape) != tuple(image_shape)
        or np.dtype(image.np_dtype) != np.uint8
        or not isinstance(label, tfds.features.ClassLabel)
        or label.num_classes != num_classes
    ):
        return None
    return str(cls.VERSION), list(label.names)


def _image_shape(arrays: Mapping[str, tuple[np.ndarray, np.ndarray | None]]) -> tuple:
    """(H, W, C) of the checked arrays (the same in every split)."""
    return tuple(int(d) for d in next(iter(arrays.values()))[0].shape[1:])


def _is_labelled(arrays: Mapping[str, tuple[np.ndarray, np.ndarray | None]]) -> bool:
    """Whether the checked arrays carry labels (all splits do, or none)."""
    return next(iter(arrays.values()))[1] is not None


def _resolve_version(
    name: str,
    data_dir: str,
    arrays: Mapping[str, tuple[np.ndarray, np.ndarray | None]],
    num_classes: int,
    version: str | None,
    class_names: Sequence[str] | None,
) -> tuple[str, Sequence[str] | None]:
    """-> (validated "X.Y.Z", class names or None), as described in the module docstring.

    version None picks TFDS' registered builder's version (and, unless `class_names` is
    given, its class names) when its features match the arrays, else "1.0.0"; unlabeled
    arrays always get "1.0.0". Raises ValueError for a malformed version or a number of
    class names other than `num_classes`.
    """
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    if version is None and not _is_labelled(arrays):
        version = _FALLBACK_VERSION
    if version is None:
        match = _registered_match(name, _image_shape(arrays), int(num_classes), data_dir)
        version = match[0] if match else _FALLBACK_VERSION
        if class_names is None and match:
            class_names = match[1]
    version = str(tfds.core.Version(version))  # validates "X.Y.Z"
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    return version, class_names


def _features(
    arrays: Mapping[str, tuple[np.ndarray, np.ndarray | None]],
    num_classes: int,
    class_names: Sequence[str] | None,
):
    """The FeaturesDict: 'image' (Image of the arrays' shape), plus 'label' (ClassLabel
    named by `class_names`, else of `num_classes` classes) when the arrays are labelled."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    feature_dict = {"image": tfds.features.Image(shape=_image_shape(arrays))}
    if _is_labelled(arrays):
        feature_dict["label"] = (
            tfds.features.ClassLabel(names=list(class_names))
            if class_names is not None
            else tfds.features.ClassLabel(num_classes=int(num_classes))
        )
    return tfds.features.FeaturesDict(feature_dict)


def _builder_class(builder_name: str, version: str, info_text: str, features, arrays) -> type:
    """A GeneratorBasedBuilder subclass (unregistered) named `builder_name` at `version`
    that writes `arrays` split by split, record i == example i, images as PNG bytes."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    labelled = _is_labelled(arrays)

    class LocalArrays(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """Builder over in-memory arrays; images pass as PNG bytes (no TensorFlow)."""

        name = builder_name
        # No code directory: no url checksums or metadata files to look up. (TFDS'
        # lookup for builders defined inside a package needs `importlib_resources`.)
        code_path = None
        VERSION = tfds.core.Version(version)
        RELEASE_NOTES = {version: info_text}

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description=info_text,
                features=features,
                supervised_keys=("image", "label") if labelled else None,
                disable_shuffling=True,
            )  # record i == example i

        def _split_generators(self, dl_manager):
            del dl_manager  # nothing to download
            return {split: self._generate_examples(x, y) for split, (x, y) in arrays.items()}

        def _generate_examples(self, images, labels):
            for i in range(images.shape[0]):
                example = {"image": _png_bytes(images[i])}
                if labels is not None:
                    example["label"] = int(labels[i])
                yield i, example

    return LocalArrays


def _build(builder_cls: type, data_dir: str, overwrite: bool) -> str:
    """Runs `builder_cls`'s download_and_prepare into `data_dir` as array_record (forcing a
    rewrite when `overwrite`) and returns the version directory it wrote."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    builder = builder_cls(data_dir=data_dir, file_format="array_record")
    mode = (
        tfds.download.GenerateMode.FORCE_REDOWNLOAD
        if overwrite
        else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    )
    with tempfile.TemporaryDirectory() as download_dir:  # keeps DATA_DIR clean
        builder.download_and_prepare(
            download_dir=download_dir,
            download_config=tfds.download.DownloadConfig(download_mode=mode),
        )
    return os.fspath(builder.data_dir)


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
    if not _NAME_RE.match(name):
        raise ValueError(f"invalid dataset name {name!r}: use snake_case, e.g. 'mnist'")
    data_dir = tfds_data_dir(data_dir)
    arrays = _check_splits(splits, int(num_classes))
    version, class_names = _resolve_version(
        name, data_dir, arrays, num_classes, version, class_names
    )
    target = os.path.join(data_dir, name, version)
    if os.path.exists(target) and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True (--overwrite) to replace it")
    info_text = description or (
        "Written by jaxhybrid.data.tfds_prepare from local arrays: "
        + ", ".join(f"{s} {len(x)}" for s, (x, _) in arrays.items())
    )
    features = _features(arrays, num_classes, class_names)
    return _build(_builder_class(name, version, info_text, features, arrays), data_dir, overwrite)


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
