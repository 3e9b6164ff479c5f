"""The TFDS builder that :mod:`jaxhybrid.data.tfds_prepare` writes arrays with: the arrays'
checks, the version it takes (TFDS' registered builder's, when the features match), the
features, a ``GeneratorBasedBuilder`` subclass yielding each image as PNG bytes (no
TensorFlow), and the build into ``DATA_DIR/NAME/VERSION``. The module docstring of
:mod:`jaxhybrid.data.tfds_prepare` explains the layout and the versions."""
from __future__ import annotations

import io
import os
import re
import tempfile
from collections.abc import Mapping, Sequence

import numpy as np

NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
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


def check_splits(
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


def resolve_version(
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


def features_of(
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


def builder_class(builder_name: str, version: str, info_text: str, features, arrays) -> type:
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


def build(builder_cls: type, data_dir: str, overwrite: bool) -> str:
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
