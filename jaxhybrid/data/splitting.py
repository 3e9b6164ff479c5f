"""Seeded splits of example positions 0..N-1 (vectorised; loops run over classes only).

  * `resolve_count`: an int count or a float fraction of N -> a count.
  * `stratified_split`: per-class counts proportional to the class frequencies
    (largest-remainder rounding), for labelled data.
  * `random_split`: a plain seeded random split, for unlabeled data.
  * `split_positions`: stratified when labels are given, random otherwise.
All are deterministic functions of `seed` and return sorted int64 index arrays.
"""

from __future__ import annotations

import numpy as np


def resolve_count(size: int | float | None, total: int, what: str) -> int:
    """int count or float fraction of `total` -> count in [0, total]."""
    if size is None:
        return 0
    if isinstance(size, bool):
        raise ValueError(f"{what} must be an int count or a float fraction, got {size!r}")
    if isinstance(size, (float, np.floating)) and size >= 1 and float(size).is_integer():
        size = int(size)  # ConfigDict float fields turn a count of 5000 into 5000.0
    if isinstance(size, (float, np.floating)):
        if not 0.0 <= size < 1.0:
            raise ValueError(f"{what} as a fraction must be in [0, 1), got {size}")
        return int(round(float(size) * total))
    size = int(size)
    if not 0 <= size <= total:
        raise ValueError(f"{what}={size} must be in [0, {total}]")
    return size


def stratified_split(
    labels: np.ndarray, num_second: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Splits positions 0..N-1 into (first, second), stratified by `labels: [N]`.

    `second` has exactly `num_second` examples; each class gets a share proportional
    to its frequency (largest-remainder rounding, ties to the lower class id). Which
    examples go where is a deterministic function of `seed`. Both index arrays are
    returned sorted (int64).
    """
    labels = np.asarray(labels).reshape(-1)
    n = labels.shape[0]
    if not 0 <= num_second <= n:
        raise ValueError(f"cannot take {num_second} of {n} examples")
    if num_second == 0 or num_second == n:
        everything = np.arange(n, dtype=np.int64)
        empty = np.zeros((0,), np.int64)
        return (everything, empty) if num_second == 0 else (empty, everything)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    quota = counts * (num_second / n)
    take = np.floor(quota).astype(np.int64)
    remainder = num_second - int(take.sum())
    order = np.lexsort((np.arange(len(classes)), -(quota - take)))
    take[order[:remainder]] += 1
    # Random order, then grouped by class; rank of each example within its class.
    perm = np.random.default_rng(seed).permutation(n)
    grouped = perm[np.argsort(inverse[perm], kind="stable")]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(n) - starts[inverse[grouped]]
    chosen = rank < take[inverse[grouped]]
    return np.sort(grouped[~chosen]), np.sort(grouped[chosen])


def random_split(num_examples: int, num_second: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Splits positions 0..N-1 into (first, second) at random, for unlabeled data.

    `second` has exactly `num_second` examples, drawn uniformly without replacement;
    a deterministic function of `seed`. Both index arrays are sorted (int64).
    """
    if not 0 <= num_second <= num_examples:
        raise ValueError(f"cannot take {num_second} of {num_examples} examples")
    perm = np.random.default_rng(seed).permutation(num_examples)
    return np.sort(perm[num_second:]), np.sort(perm[:num_second])


def split_positions(
    num_examples: int, num_second: int, seed: int, labels: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """`stratified_split(labels: [N], ...)` if labels are given, else `random_split`."""
    if labels is None:
        return random_split(num_examples, num_second, seed)
    return stratified_split(labels, num_second, seed)
