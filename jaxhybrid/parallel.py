"""Device mesh, global arrays from host-local batches, and the shard_map'd step.

One 1-D mesh axis named ``data`` spans every device of every host. Parameters are
replicated (``P()``), batches are split along their leading axis (``P('data')``).
The loss is written per device and reduced with explicit collectives over
``data`` (e.g. the GFFN batch partition, :mod:`jaxhybrid.objectives.joint`); the
gradient is taken *outside* the ``jax.shard_map``, so it equals the single-device
full-batch gradient with no double reduction ("pmap-style", but with shard_map).
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "data"


def maybe_initialize_distributed() -> None:
    """Call ``jax.distributed.initialize()`` when JAXHYBRID_DISTRIBUTED=1.

    On a Cloud TPU pod or under SLURM, JAX auto-detects coordinator, process count
    and process id; the launch scripts in launch/ set the variable.
    """
    import os
    if os.environ.get("JAXHYBRID_DISTRIBUTED", "0") in ("1", "true", "True"):
        jax.distributed.initialize()
        logging.info("jax.distributed initialised: process %d of %d, %d local / %d global devices",
                     jax.process_index(), jax.process_count(), jax.local_device_count(),
                     jax.device_count())


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh over the first ``num_devices`` devices (all by default), axis ``data``."""
    devices = jax.devices()
    if num_devices is not None and num_devices > 0:
        if num_devices > len(devices):
            raise ValueError(f"num_devices={num_devices} but only {len(devices)} devices exist")
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), (AXIS,))


def check_global_batch(global_batch_size: int, mesh: Mesh) -> int:
    """Refuse a global batch the devices do not divide; return the per-host batch."""
    n_dev = mesh.devices.size
    n_proc = len({d.process_index for d in mesh.devices.flat})
    if global_batch_size <= 0 or global_batch_size % n_dev:
        raise ValueError(
            f"Global batch size {global_batch_size} is not divisible by the {n_dev} devices "
            f"({n_proc} host(s) × {n_dev // max(n_proc, 1)} local devices). The batch size in the "
            f"config is the GLOBAL batch; choose a multiple of {n_dev} "
            f"(e.g. {max(n_dev, (global_batch_size // n_dev) * n_dev) or n_dev}).")
    return global_batch_size // n_proc


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(AXIS))


def host_slice(global_batch_size: int, mesh: Mesh) -> slice:
    """The rows of a global batch that this host reads (its devices' share)."""
    n_proc = len({d.process_index for d in mesh.devices.flat})
    per_host = global_batch_size // n_proc
    # Processes own contiguous blocks of the 1-D mesh (jax.devices() is process-ordered).
    proc_ids = sorted({d.process_index for d in mesh.devices.flat})
    i = proc_ids.index(jax.process_index())
    return slice(i * per_host, (i + 1) * per_host)


def to_global(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble global arrays, sharded along ``data``, from this host's rows."""
    sharding = data_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local_batch.items()}


def to_host(x: jax.Array) -> np.ndarray:
    """Fetch a (possibly multi-host) sharded array as one numpy array on every host."""
    if jax.process_count() == 1:
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def shard_loss(loss_fn: Callable, mesh: Mesh) -> Callable:
    """Wrap ``loss_fn(variables, batch, rng, progress, axis_name) -> (loss, (state, aux))``.

    Inside, every device sees its own rows of the batch; ``variables``, ``rng`` and
    ``progress`` are replicated. Randomness is keyed per example (the batch's ``id``),
    never per device, so the draws do not depend on the device count. ``loss_fn`` must
    reduce its outputs over ``axis_name`` (psum/pmean) so that they are the same on
    every device (checked: ``check_vma``).
    """
    def per_device(variables, batch, rng, progress):
        return loss_fn(variables, batch, rng, progress, AXIS)

    return jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(AXIS), P(), P()),
                         out_specs=P())


def shard_init(init_fn: Callable, mesh: Mesh) -> Callable:
    """Wrap a per-device ``init_fn(rng, batch, axis_name) -> variables``: the key
    replicated, the batch split, the result replicated (so anything computed from the
    data must be reduced over ``axis_name``; checked by check_vma)."""
    return jax.shard_map(lambda rng, batch: init_fn(rng, batch, AXIS), mesh=mesh,
                         in_specs=(P(), P(AXIS)), out_specs=P())


def shard_outputs(fn: Callable, mesh: Mesh) -> Callable:
    """Wrap a per-example ``fn(variables, batch) -> pytree of [B, ...]`` for the mesh."""
    return jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=P(AXIS))


def _key_name(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def tree_shapes(tree: Any) -> dict[str, tuple]:
    """{'params/Conv_0/kernel': shape}: container-agnostic paths (a namedtuple field and
    a dict key of the same name give the same path), for readable mismatch messages."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(_key_name(k) for k in path): tuple(getattr(leaf, "shape", ()))
            for path, leaf in flat}

