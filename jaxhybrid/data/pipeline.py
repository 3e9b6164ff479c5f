"""Batching: deterministic, step-indexed global batches with masks.

A global batch is a function of (seed, step) only, so a resumed run sees exactly
the batches an uninterrupted run would have. Each epoch is a fresh permutation of
the training set; the last batch of an epoch is padded and masked, so every
training example is seen exactly once per epoch. Each host reads only its rows
of every global batch (multi-host correct) and the rows are assembled into global
arrays sharded along the ``data`` mesh axis.
"""
from __future__ import annotations

import dataclasses
import queue
import threading
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxhybrid import parallel
from jaxhybrid.data.preprocess import pad_to_frame, to_float


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """uint8 [n, H, W, C] -> float32 [n, frame_h, frame_w, C] in [0, 1] (zero-padded).

    Two stages, so that device-resident data (:mod:`jaxhybrid.data.resident`) store the
    framed uint8 images and scale on the device: :meth:`framed` (uint8, zero-padded;
    zero pixels scale to 0.0, so padding before scaling equals padding after) and the
    scaling to [0, 1] (:func:`~jaxhybrid.data.preprocess.to_float` on the host,
    :meth:`scale_on_device` in a jitted function: the same IEEE float32 product).
    """
    frame: tuple[int, int] | None = None

    def framed(self, images: np.ndarray) -> np.ndarray:
        """uint8 [n, H, W, C] -> uint8 [n, frame_h, frame_w, C], zero-padded, centred."""
        if self.frame is not None and tuple(images.shape[1:3]) != tuple(self.frame):
            return pad_to_frame(images, self.frame)
        return images

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return to_float(self.framed(images))

    @staticmethod
    def scale_on_device(images: jax.Array) -> jax.Array:
        """uint8 [..., H, W, C] -> float32 in [0, 1]: to_float's product, with jnp."""
        return images.astype(jnp.float32) * np.float32(1.0 / 255.0)

    def output_shape(self, image_shape) -> tuple[int, int, int]:
        h, w, c = image_shape
        return (*(self.frame or (h, w)), c)


def _read(source, indices: np.ndarray, preprocess: Preprocess) -> dict[str, np.ndarray]:
    """Rows at ``indices``; entries < 0 are padding (a copy of row 0 with mask False).

    Returns ``image`` [n, H, W, C] float32, ``mask`` [n] bool, ``id`` [n] int32 (the
    example's index in its split, −1 for padding: the key of its random draws) and
    ``label`` [n] int32 when the source has labels.
    """
    mask = indices >= 0
    safe = np.where(mask, indices, 0)
    if len(source) == 0:
        raise ValueError("cannot batch an empty split")
    rows = source.get(safe)
    batch = {"image": preprocess(rows["image"]), "mask": mask,
             "id": np.asarray(indices, np.int32)}
    if "label" in rows:
        batch["label"] = rows["label"].astype(np.int32)
    return batch


def steps_per_epoch(num_examples: int, global_batch_size: int, drop_remainder: bool) -> int:
    """Batches per epoch: the last partial batch is padded, or dropped with drop_remainder
    (then every batch holds exactly ``global_batch_size`` examples, e.g. so that the GFFN
    partition's B never shrinks; the dropped examples differ from epoch to epoch)."""
    if drop_remainder:
        if num_examples < global_batch_size:
            raise ValueError(f"drop_remainder: the global batch {global_batch_size} is larger "
                             f"than the {num_examples} training examples")
        return num_examples // global_batch_size
    return -(-num_examples // global_batch_size)


class TrainBatches:
    """Global training batches: ``batch(step)`` and a prefetching ``iterate(start)``."""

    def __init__(self, source, global_batch_size: int, *, seed: int, mesh: Mesh,
                 preprocess: Preprocess, shuffle: bool = True, drop_remainder: bool = False):
        parallel.check_global_batch(global_batch_size, mesh)
        self.source, self.batch_size, self.seed = source, global_batch_size, seed
        self.mesh, self.preprocess, self.shuffle = mesh, preprocess, shuffle
        self.num_examples = len(source)
        self.steps_per_epoch = steps_per_epoch(self.num_examples, global_batch_size,
                                               drop_remainder)
        self._rows = parallel.host_slice(global_batch_size, mesh)
        self._perm_cache: tuple[int, np.ndarray] | None = None

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._perm_cache is None or self._perm_cache[0] != epoch:
            if self.shuffle:
                rng = np.random.default_rng([self.seed, epoch])
                perm = rng.permutation(self.num_examples)
            else:
                perm = np.arange(self.num_examples)
            self._perm_cache = (epoch, perm)
        return self._perm_cache[1]

    def global_indices(self, step: int) -> np.ndarray:
        """Example ids of global batch ``step`` ([B]; −1 marks padding)."""
        epoch, i = divmod(step, self.steps_per_epoch)
        ids = self._permutation(epoch)[i * self.batch_size:(i + 1) * self.batch_size]
        return np.pad(ids, (0, self.batch_size - len(ids)), constant_values=-1)

    def host_batch(self, step: int) -> dict[str, np.ndarray]:
        return _read(self.source, self.global_indices(step)[self._rows], self.preprocess)

    def batch(self, step: int):
        return parallel.to_global(self.host_batch(step), self.mesh)

    def iterate(self, start_step: int, end_step: int, prefetch: int = 2) -> Iterator:
        """Yields (step, global batch) for start_step <= step < end_step.

        Host-side reading and preprocessing run in a background thread, ``prefetch``
        batches ahead of the device.
        """
        q: queue.Queue = queue.Queue(maxsize=max(prefetch, 1))
        stop = threading.Event()

        def producer():
            try:
                for s in range(start_step, end_step):
                    if stop.is_set():
                        return
                    q.put((s, self.host_batch(s)))
            except BaseException as e:  # surfaced in the consumer
                q.put((None, e))
            q.put((None, None))

        t = threading.Thread(target=producer, daemon=True)
        t.start()
        try:
            while True:
                s, item = q.get()
                if s is None:
                    if item is not None:
                        raise item
                    return
                yield s, parallel.to_global(item, self.mesh)
        finally:
            stop.set()
            while t.is_alive():
                try:
                    q.get_nowait()
                except queue.Empty:
                    t.join(timeout=0.05)


def eval_batches(source, global_batch_size: int, *, mesh: Mesh,
                 preprocess: Preprocess) -> Iterator[dict]:
    """Sequential global batches over the whole split, the last one padded and masked.

    Every example appears exactly once with mask True, on any device count.
    """
    parallel.check_global_batch(global_batch_size, mesh)
    rows = parallel.host_slice(global_batch_size, mesh)
    n = len(source)
    for start in range(0, n, global_batch_size):
        ids = np.arange(start, min(start + global_batch_size, n))
        ids = np.pad(ids, (0, global_batch_size - len(ids)), constant_values=-1)[rows]
        yield parallel.to_global(_read(source, ids, preprocess), mesh)
