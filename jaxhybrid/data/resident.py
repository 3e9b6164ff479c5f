"""Device-resident training data: the split on the devices once, each batch gathered there.

``data.placement`` chooses where the training split lives:

- ``host``: :class:`~jaxhybrid.data.pipeline.TrainBatches` reads and preprocesses each
  global batch on the host and sends it to the devices (float32, every step);
- ``device``: :class:`DeviceTrainBatches` puts the split on the devices ONCE, as uint8
  already zero-padded to the frame, replicated over the ``data`` mesh (every device of
  every process holds the whole split); each step sends only the batch's int32 example
  indices (this process's rows) and a jitted gather builds the batch on the devices;
- ``auto`` (the default): ``device`` when the split fits the devices' memory budget
  (:func:`device_budget`), else ``host``.

The indices come from the host pipeline's own step-indexed permutation
(:meth:`TrainBatches.global_indices`, a function of (seed, step)), and the gather
applies the same padding rule (index −1: a copy of row 0, mask False, id −1) and the
same scaling, so the batches are bit-identical to the host mode's: every guarantee of
the host pipeline (exact resume, per-example ids as keys, the train transforms in the
step, drop_remainder, multi-host rows) carries over.
"""
from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P

from jaxhybrid import parallel
from jaxhybrid.data.pipeline import Preprocess, TrainBatches

log = logging.getLogger("jaxhybrid")

PLACEMENTS = ("auto", "host", "device")
# Share of a device's free memory (bytes_limit − bytes_in_use) the resident split may take:
# the rest is left to parameters, optimiser state and activations.
DEVICE_MEMORY_FRACTION = 0.25
# Backends that report no memory stats (XLA:CPU): the devices share the host's memory, so
# the copies over this process's devices together may take this many bytes.
CPU_RESIDENT_LIMIT_BYTES = 1 << 30
_READ_CHUNK = 8192   # rows read from the source at a time when filling the resident split


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def resident_bytes(source, preprocess: Preprocess) -> int:
    """Bytes one device holds for ``source`` in device mode: uint8 framed images and
    int32 labels (read from the shapes; nothing is loaded)."""
    per_example = int(np.prod(preprocess.output_shape(source.image_shape)))
    return len(source) * (per_example + (4 if source.has_labels else 0))


def device_budget(stats: list, fraction: float = DEVICE_MEMORY_FRACTION,
                  cpu_limit: int = CPU_RESIDENT_LIMIT_BYTES) -> tuple[int, str]:
    """(bytes each device may hold for resident data, how that was found).

    ``stats``: ``device.memory_stats()`` of this process's devices of the mesh (None
    where the backend reports nothing). With ``bytes_limit`` on every device: ``fraction``
    of the smallest free memory; otherwise ``cpu_limit`` shared by the devices.
    """
    if stats and all(s and "bytes_limit" in s for s in stats):
        free = min(int(s["bytes_limit"]) - int(s.get("bytes_in_use", 0)) for s in stats)
        return int(free * fraction), (f"{fraction:.0%} of the {_mib(free)} free on the "
                                      f"fullest device, from its memory stats")
    n = max(len(stats), 1)
    return cpu_limit // n, (f"the backend reports no memory stats: {_mib(cpu_limit)} over "
                            f"this process's {n} device(s)")


def choose_placement(requested: str, need: int, budget: int, how: str,
                     fits_everywhere: bool | None = None) -> tuple[str, str]:
    """(placement, why) for ``data.placement = requested``; ``need``/``budget``: bytes
    per device. ``fits_everywhere``: whether every process's devices fit (default: this
    process's verdict). ValueError for an unknown value or a forced device mode that
    does not fit."""
    if requested not in PLACEMENTS:
        raise ValueError(f"config field data.placement = {requested!r}: must be one of "
                         f"{', '.join(PLACEMENTS)}")
    fits = need <= budget if fits_everywhere is None else fits_everywhere
    size = f"{_mib(need)} per device as uint8, against a budget of {_mib(budget)} ({how})"
    if requested == "host":
        return "host", f"data.placement=host; the training split would take {size}"
    if not fits:
        if requested == "device":
            where = "" if need > budget else " on another process"
            raise ValueError(f"config field data.placement = 'device': the training split "
                             f"does not fit{where}: {size}. Use data.placement=host (or auto)")
        return "host", f"auto: the training split does not fit: {size}"
    if requested == "auto":
        return "device", f"auto: the training split fits: {size}"
    return "device", f"data.placement=device; the training split takes {size}"


def resident_split(source, preprocess: Preprocess) -> dict[str, np.ndarray]:
    """The whole split as the devices hold it: ``image`` uint8 [N, frame_h, frame_w, C]
    (:meth:`Preprocess.framed`) and ``label`` int32 [N] when labelled."""
    n = len(source)
    if n == 0:
        raise ValueError("cannot batch an empty split")
    images = np.empty((n, *preprocess.output_shape(source.image_shape)), np.uint8)
    labels = np.empty((n,), np.int32) if source.has_labels else None
    for start in range(0, n, _READ_CHUNK):
        rows = source.get(np.arange(start, min(start + _READ_CHUNK, n)))
        images[start:start + len(rows["image"])] = preprocess.framed(rows["image"])
        if labels is not None:
            labels[start:start + len(rows["label"])] = rows["label"]
    return {"image": images} if labels is None else {"image": images, "label": labels}


def gather_fn(preprocess: Preprocess, mesh):
    """jitted (resident split, ids int32 [B] sharded on ``data``) -> global batch.

    Per device, from its own replica: rows at its ids (id −1: row 0, mask False), scaled
    to float32 [0, 1]. Returns ``image`` [B, H, W, C] float32, ``mask`` [B] bool, ``id``
    [B] int32 and ``label`` [B] int32 when labelled, sharded along ``data``: the host
    pipeline's batch, bit for bit.
    """
    def per_device(split, ids):
        mask = ids >= 0
        safe = jnp.where(mask, ids, 0)
        batch = {"image": preprocess.scale_on_device(jnp.take(split["image"], safe, axis=0,
                                                              mode="clip")),
                 "mask": mask, "id": ids}
        if "label" in split:
            batch["label"] = jnp.take(split["label"], safe, axis=0, mode="clip")
        return batch

    return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(parallel.AXIS)),
                                 out_specs=P(parallel.AXIS)),
                   out_shardings=parallel.data_sharded(mesh))   # as to_global's, on 1 device too


class DeviceTrainBatches(TrainBatches):
    """:class:`TrainBatches` whose split lives on the devices (uint8, replicated over
    ``data``, put there once); ``batch(step)`` sends this process's int32 ids of the
    step and gathers on the devices. ``host_batch`` still reads from the host source."""

    def __init__(self, source, global_batch_size: int, *, seed: int, mesh,
                 preprocess: Preprocess, shuffle: bool = True, drop_remainder: bool = False):
        super().__init__(source, global_batch_size, seed=seed, mesh=mesh,
                         preprocess=preprocess, shuffle=shuffle, drop_remainder=drop_remainder)
        sharding = parallel.replicated(mesh)
        self.resident = {k: jax.make_array_from_callback(v.shape, sharding,
                                                         lambda index, v=v: v[index])
                         for k, v in resident_split(source, preprocess).items()}
        self._gather = gather_fn(preprocess, mesh)

    def global_ids(self, step: int) -> jax.Array:
        """int32 [B] ids of global batch ``step``, sharded along ``data`` (from this
        process's rows only)."""
        local = np.asarray(self.global_indices(step)[self._rows], np.int32)
        return parallel.to_global({"id": local}, self.mesh)["id"]

    def batch(self, step: int) -> dict:
        return self._gather(self.resident, self.global_ids(step))

    def iterate(self, start_step: int, end_step: int, prefetch: int = 2):
        """Yields (step, global batch); dispatch is asynchronous, so the gather of a step
        queues behind the previous train step without a prefetch thread."""
        del prefetch
        for step in range(start_step, end_step):
            yield step, self.batch(step)


def _local_memory_stats(mesh) -> list:
    out = []
    for d in mesh.devices.flat:
        if d.process_index == jax.process_index():
            try:
                out.append(d.memory_stats())
            except (NotImplementedError, RuntimeError):
                out.append(None)
    return out


def make_train_batches(exp, config) -> TrainBatches:
    """The training batches of ``config`` in the placement ``data.placement`` chooses
    (logged with the reason); every process reaches the same choice."""
    source, mesh = exp.splits.train, exp.mesh
    requested = str(config.data.get("placement", "auto"))
    need = resident_bytes(source, exp.preprocess)
    budget, how = device_budget(_local_memory_stats(mesh))
    fits = need <= budget
    if jax.process_count() > 1:   # one verdict for all: the gather is a global computation
        fits = bool(np.all(multihost_utils.process_allgather(np.int32(fits))))
    placement, why = choose_placement(requested, need, budget, how, fits)
    log.info("data placement: %s (%s)", placement, why)
    cls = DeviceTrainBatches if placement == "device" else TrainBatches
    return cls(source, config.batch_size, seed=config.seed, mesh=mesh,
               preprocess=exp.preprocess, drop_remainder=bool(config.drop_remainder))
