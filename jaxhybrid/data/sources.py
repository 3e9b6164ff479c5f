"""Random-access data sources: the `Source` protocol, in-memory arrays and views.

A *source* is a host-side, numpy-only, random-access view of one split of an image
dataset (the `Source` protocol below). Labels are optional:

    source.has_labels   -> bool
    source.get(indices) -> {'image': uint8 [n, H, W, C], 'label': int32 [n]}
                           ('label' only when has_labels)
    source.labels       -> int32 [N]  (all labels, cached; ValueError when unlabeled)

`ArraySource` holds arrays in memory; `SubsetSource` is a view of another source at
some indices, with optional label remapping. `jaxhybrid.data.tfds_source.TfdsSource`
reads TFDS on disk; `jaxhybrid.data.loading` builds the splits of a config.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Source(Protocol):
    """A random-access, host-side split of an image dataset, labelled or not."""

    num_examples: int
    image_shape: tuple[int, int, int]  # (H, W, C) of the stored uint8 images

    def __len__(self) -> int: ...

    @property
    def has_labels(self) -> bool:
        """Whether `get` returns a 'label' and `labels` works."""
        ...

    def get(self, indices: np.ndarray) -> dict:
        """`indices: int [n]` -> {'image': uint8 [n, H, W, C], 'label': int32 [n]}.

        'label' is present only when `has_labels`.
        """
        ...

    # Hidden from `isinstance(x, Source)`: on Python 3.11 that check reads every
    # member, and `labels` raises on an unlabeled source.
    if TYPE_CHECKING:

        @property
        def labels(self) -> np.ndarray:
            """All labels, int32 [N]; ValueError when not `has_labels`."""
            ...


def as_indices(indices: Any, num_examples: int) -> np.ndarray:
    """Validates `indices` -> int64 [n]; raises IndexError when out of range."""
    idx = np.asarray(indices)
    if idx.size == 0:
        return np.zeros((0,), np.int64)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise IndexError(
            f"indices must be a 1-D integer array, got dtype {idx.dtype} and shape {idx.shape}"
        )
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= num_examples:
        raise IndexError(f"indices must lie in [0, {num_examples}), got min {lo} and max {hi}")
    return idx.astype(np.int64, copy=False)


def no_labels_error(source: Any) -> ValueError:
    """The error raised when the labels of an unlabeled `source` are asked for."""
    return ValueError(
        f"{source!r} has no labels (an unlabeled dataset); only models that train on "
        "images alone can use it"
    )


class ArraySource:
    """In-memory source over `images: uint8 [N, H, W, C]`, `labels: int [N]` or None."""

    def __init__(self, images: np.ndarray, labels: np.ndarray | None = None):
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(
                "images must be uint8 [N, H, W, C], got dtype "
                f"{images.dtype} and shape {images.shape}"
            )
        self._images = images
        self._labels = None if labels is None else self._check_labels(labels, len(images))
        self.num_examples = int(images.shape[0])
        self.image_shape = tuple(int(d) for d in images.shape[1:])

    @staticmethod
    def _check_labels(labels: np.ndarray, num_images: int) -> np.ndarray:
        """int [N] (any shape with N entries) -> int32 [N]."""
        labels = np.asarray(labels).reshape(-1)
        if labels.shape[0] != num_images:
            raise ValueError(f"{num_images} images but {labels.shape[0]} labels")
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
        return labels.astype(np.int32)

    def __len__(self) -> int:
        return self.num_examples

    @property
    def has_labels(self) -> bool:
        return self._labels is not None

    @property
    def labels(self) -> np.ndarray:
        if self._labels is None:
            raise no_labels_error(self)
        return self._labels

    def get(self, indices: np.ndarray) -> dict:
        idx = as_indices(indices, self.num_examples)
        if self._labels is None:
            return {"image": self._images[idx]}
        return {"image": self._images[idx], "label": self._labels[idx]}

    def __repr__(self) -> str:
        return (
            f"ArraySource(num_examples={self.num_examples}, image_shape={self.image_shape}"
            f"{'' if self.has_labels else ', unlabeled'})"
        )


class SubsetSource:
    """View of `base` at `indices: int [n]`, with optional label remapping.

    `label_map: int [K_base]` maps base labels to new labels (e.g. after removing OOD
    classes); it must not map a selected example to a negative id, and it needs a
    labelled `base`. The view is labelled exactly when `base` is.
    """

    def __init__(self, base: Source, indices: np.ndarray, label_map: np.ndarray | None = None):
        idx = as_indices(indices, len(base))
        if label_map is not None:
            if not base.has_labels:
                raise ValueError(f"label_map given for {base!r}, which has no labels")
            label_map = np.asarray(label_map, dtype=np.int32)
        # Views of views are flattened so that reads go straight to the base source.
        if isinstance(base, SubsetSource):
            idx = base._indices[idx]
            label_map = _compose_label_maps(base._label_map, label_map)
            base = base._base
        self._base = base
        self._indices = idx
        self._label_map = label_map
        self.num_examples = int(idx.shape[0])
        self.image_shape = tuple(base.image_shape)

    def __len__(self) -> int:
        return self.num_examples

    @property
    def has_labels(self) -> bool:
        return bool(self._base.has_labels)

    @property
    def indices(self) -> np.ndarray:
        """Indices into the base source, int64 [n]."""
        return self._indices

    def _remap(self, labels: np.ndarray) -> np.ndarray:
        if self._label_map is None:
            return labels.astype(np.int32, copy=False)
        out = self._label_map[labels]
        if out.size and out.min() < 0:
            raise ValueError("label_map sends a selected example to a removed class")
        return out

    @functools.cached_property
    def labels(self) -> np.ndarray:
        if not self.has_labels:
            raise no_labels_error(self)
        return self._remap(self._base.labels[self._indices])

    def get(self, indices: np.ndarray) -> dict:
        idx = as_indices(indices, self.num_examples)
        batch = self._base.get(self._indices[idx])
        if "label" not in batch:
            return {"image": batch["image"]}
        return {"image": batch["image"], "label": self._remap(batch["label"])}

    def __repr__(self) -> str:
        return (
            f"SubsetSource(num_examples={self.num_examples}, "
            f"image_shape={self.image_shape}, base={self._base!r})"
        )


def _compose_label_maps(inner: np.ndarray | None, outer: np.ndarray | None) -> np.ndarray | None:
    """base ids -> view ids (`inner`, -1: removed), then view ids -> new ids (`outer`)."""
    if inner is None:
        return outer
    if outer is None:
        return inner
    return np.where(inner >= 0, outer[inner.clip(0)], -1).astype(np.int32)
