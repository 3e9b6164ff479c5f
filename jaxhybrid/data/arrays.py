"""The in-memory datasets: sklearn digits with its fixed train/test split, and npz files of
uint8 images (``x_train``, ``x_test``, optionally ``y_train``, ``y_test``), read and
checked with errors that name the file and what it should hold. :mod:`jaxhybrid.data.loading`
builds the run's splits from them."""
from __future__ import annotations

import os
import zipfile

import numpy as np

from jaxhybrid.data.splitting import resolve_count, stratified_split

# Seed of the fixed train/test split of sklearn digits (independent of `seed`).
DIGITS_SPLIT_SEED = 0
DEFAULT_DIGITS_TEST_FRACTION = 0.2

NPZ_CONTENTS = (
    "x_train, x_test (uint8 [N, H, W] or [N, H, W, C]) and optionally "
    "y_train, y_test (int [N])"
)


def digits_arrays(
    test_fraction: float = DEFAULT_DIGITS_TEST_FRACTION,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """sklearn digits as {'train', 'test', 'all'} -> (uint8 [n, 8, 8, 1], int32 [n]).

    Pixels: round(v * 255 / 16). train/test: stratified split with the fixed seed 0.
    """
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int32)
    num_test = resolve_count(float(test_fraction), len(labels), "digits_test_fraction")
    train, test = stratified_split(labels, num_test, DIGITS_SPLIT_SEED)
    return {
        "train": (images[train], labels[train]),
        "test": (images[test], labels[test]),
        "all": (images, labels),
    }


def _as_nhwc_uint8(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8, got {x.dtype}")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"{what} must be [N, H, W] or [N, H, W, C], got {x.shape}")
    return x


def _read_npz(path: str) -> dict[str, np.ndarray]:
    """The arrays x_train, x_test and, if both present, y_train, y_test of `path`."""
    if not path:
        raise ValueError("data.source='npz' needs data.npz_path")
    if not os.path.exists(path):
        raise FileNotFoundError(f"npz file {path!r} (data.npz_path) not found")
    not_npz = f"{path!r} (data.npz_path) is not a valid .npz file with {NPZ_CONTENTS}"
    try:
        f = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        raise ValueError(not_npz) from None  # numpy's message would suggest unpickling
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise ValueError(f"{not_npz}; it holds a single array")
    with f:
        found = sorted(f.files)
        missing = sorted({"x_train", "x_test"} - set(found))
        if missing:
            raise ValueError(f"{path!r}: no arrays {missing}; keys found: {found}. "
                             f"Expected {NPZ_CONTENTS}")
        keys = ["x_train", "x_test"] + [k for k in ("y_train", "y_test") if k in found]
        if len(keys) == 3:
            raise ValueError(f"{path!r}: has {keys[2]} but not its pair; give both "
                             "y_train and y_test (labelled) or neither (unlabeled)")
        try:
            return {k: f[k] for k in keys}
        except ValueError:
            raise ValueError(f"{not_npz}: it holds object arrays") from None


def _npz_labels(path: str, split: str, y) -> np.ndarray:
    """``y_<split>`` as int32 [n]: class ids, whole numbers >= 0 (the dataset's classes are
    0..the largest label); a ValueError naming the file and the bad values otherwise."""
    y = np.asarray(y).reshape(-1)
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)
            or y.dtype == bool):
        raise ValueError(f"npz file {path!r} (data.npz_path): y_{split} holds {y.dtype} "
                         f"values; labels must be class ids, whole numbers >= 0")
    ok = np.isfinite(y) & (y >= 0) & (np.mod(y, 1) == 0) if y.size else np.ones(0, bool)
    if not ok.all():
        bad = np.unique(y[~ok])
        shown = ", ".join(f"{v:g}" for v in bad[:8].tolist()) + (", ..." if bad.size > 8 else "")
        raise ValueError(f"npz file {path!r} (data.npz_path): y_{split} has {int((~ok).sum())} "
                         f"label(s) that are not class ids ({shown}); labels must be whole "
                         f"numbers >= 0, the classes being 0..the largest label")
    return y.astype(np.int32)


def npz_arrays(path: str) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """npz with x_train, x_test [, y_train, y_test] -> {'train', 'test'}: (images, labels).

    images: uint8 [n, H, W, C]; labels: int32 [n], or None for an npz without y_*.
    """
    arrays = _read_npz(path)
    out = {}
    for s in ("train", "test"):
        x = _as_nhwc_uint8(arrays[f"x_{s}"], f"{path}:x_{s}")
        y = arrays.get(f"y_{s}")
        if x.shape[0] == 0:
            raise ValueError(f"npz file {path!r} (data.npz_path): the {s} split has no "
                             f"examples (x_{s} has shape {x.shape}); train and test need "
                             f"at least one image each")
        if y is not None and np.asarray(y).size != x.shape[0]:
            raise ValueError(f"npz file {path!r} (data.npz_path): the {s} split has "
                             f"{x.shape[0]} images (x_{s}) but {np.asarray(y).size} labels "
                             f"(y_{s}); it needs one label per image")
        out[s] = (x, None if y is None else _npz_labels(path, s, y))
    if out["train"][0].shape[1:] != out["test"][0].shape[1:]:
        raise ValueError(f"npz file {path!r} (data.npz_path): train and test image shapes "
                         f"differ ({out['train'][0].shape[1:]} and "
                         f"{out['test'][0].shape[1:]})")
    return out
