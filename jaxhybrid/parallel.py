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
import os
import sys
import threading
from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "data"


class DistributedStartupError(ValueError):
    """jax.distributed could not start: a bad address, count or id, or no peers."""


_TRUE, _FALSE = ("1", "true", "True", "yes"), ("", "0", "false", "False", "no")
_HOW = ("give the coordinator explicitly on every process: --coordinator_address=HOST:PORT "
        "(process 0's host; the same on every process) --num_processes=N --process_id=I "
        "(0..N-1, different on each), or the environment variables JAX_COORDINATOR_ADDRESS, "
        "JAX_NUM_PROCESSES, JAX_PROCESS_ID")


def _int_setting(flag_value, env: str, flag: str) -> int | None:
    """A flag's value, else the environment variable's, as an int (None when neither)."""
    if flag_value is not None:
        return int(flag_value)
    raw = os.environ.get(env, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise DistributedStartupError(
            f"{env}={raw!r} is not an integer (it is what --{flag} would set)") from None


def distributed_settings(coordinator_address: str | None = None,
                         num_processes: int | None = None,
                         process_id: int | None = None) -> dict | None:
    """What :func:`maybe_initialize_distributed` would pass to ``jax.distributed.initialize``.

    Each setting comes from its argument (the CLI flags), else from JAX's own
    environment variable (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
    ``JAX_PROCESS_ID``). Returns None for a single-process run: none of the three given
    and ``JAXHYBRID_DISTRIBUTED`` unset or 0. Unset settings are left to JAX's
    auto-detection (Cloud TPU VMs, SLURM, Open MPI). Raises DistributedStartupError,
    naming the bad value, for anything that cannot work.
    """
    flag = os.environ.get("JAXHYBRID_DISTRIBUTED", "").strip()
    if flag not in _TRUE + _FALSE:
        raise DistributedStartupError(
            f"JAXHYBRID_DISTRIBUTED={flag!r}; valid values: 1 (start jax.distributed) or 0")
    address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "").strip() or None
    n = _int_setting(num_processes, "JAX_NUM_PROCESSES", "num_processes")
    i = _int_setting(process_id, "JAX_PROCESS_ID", "process_id")
    if flag not in _TRUE and address is None and n is None and i is None:
        return None
    if address is not None:
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise DistributedStartupError(
                f"coordinator address {address!r} is not HOST:PORT (e.g. 10.0.0.1:8476, "
                f"[::1]:8476 or 127.0.0.1:8476 on one machine)")
    if n is not None and n < 1:
        raise DistributedStartupError(f"num_processes={n}; it must be at least 1")
    if i is not None and (i < 0 or (n is not None and i >= n)):
        valid = f"0..{n - 1} (num_processes={n})" if n is not None else "0 or more"
        raise DistributedStartupError(f"process_id={i}; valid ids: {valid}")
    return {"coordinator_address": address, "num_processes": n, "process_id": i}


def _startup_timeout() -> int:
    """``JAXHYBRID_DISTRIBUTED_TIMEOUT`` (default 300) as whole seconds > 0."""
    raw_timeout = os.environ.get("JAXHYBRID_DISTRIBUTED_TIMEOUT", "300").strip()
    try:
        timeout = int(raw_timeout)
        assert timeout > 0
    except (ValueError, AssertionError):
        raise DistributedStartupError(
            f"JAXHYBRID_DISTRIBUTED_TIMEOUT={raw_timeout!r}; give a whole number of seconds "
            f"> 0") from None
    return timeout


def _use_gloo_on_cpu() -> None:
    """Selects gloo for cross-process collectives on CPU unless one is already chosen."""
    try:  # CPU processes need a cross-process collectives implementation (gloo)
        if jax.config.jax_cpu_collectives_implementation in (None, "none"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except AttributeError:  # a JAX without the option: its default applies
        pass


def _not_connected_message(settings: dict, who: str, timeout: int) -> str:
    """The ``error: ...`` line printed when not every process connected within `timeout`."""
    n = settings["num_processes"]
    return (f"error: {DistributedStartupError.__name__}: {who}: not every process "
            f"connected to the coordinator "
            f"{settings['coordinator_address'] or '(auto-detected)'} within {timeout} s "
            f"(JAXHYBRID_DISTRIBUTED_TIMEOUT). Start all {n or 'N'} processes, process "
            f"0 among them, with the same --coordinator_address (process 0's host and a "
            f"free port), --num_processes={n or 'N'} and distinct --process_id values "
            f"0..{n - 1 if n else 'N-1'} (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, "
            f"JAX_PROCESS_ID).")


def _start_watchdog(settings: dict, who: str, timeout: int) -> threading.Event:
    """Starts a daemon thread that exits the process (status 1, message on stderr) unless
    the returned event is set within `timeout` seconds.

    JAX aborts the process (a C++ fatal error, no exception) when not every process
    connects in time; this exits cleanly with a clear message just before that instead.
    """
    connected = threading.Event()

    def give_up() -> None:
        if not connected.wait(timeout):
            print(_not_connected_message(settings, who, timeout), file=sys.stderr, flush=True)
            os._exit(1)

    threading.Thread(target=give_up, name="jax-distributed-startup", daemon=True).start()
    return connected


def _startup_error(e: Exception, given: dict) -> DistributedStartupError:
    """The DistributedStartupError for `jax.distributed.initialize(**given)` raising `e`."""
    if not given:
        what = ("jax.distributed.initialize() found no cluster to auto-detect (Cloud TPU "
                "VM, SLURM or Open MPI)")
    else:
        what = ("jax.distributed.initialize(" +
                ", ".join(f"{k}={v!r}" for k, v in given.items()) + ") failed")
    reason = str(e).strip().splitlines()[0].rstrip(".") if str(e).strip() else ""
    return DistributedStartupError(
        f"{what}: {type(e).__name__}: {reason}. To start a multi-process run, {_HOW}; "
        f"set JAXHYBRID_DISTRIBUTED=1 "
        f"only where JAX can auto-detect them.")


def maybe_initialize_distributed(coordinator_address: str | None = None,
                                 num_processes: int | None = None,
                                 process_id: int | None = None) -> bool:
    """Start ``jax.distributed`` for a multi-process run; returns whether it did.

    Explicit start-up (works anywhere, e.g. several processes on one machine or GPU
    nodes without SLURM): a coordinator address, the process count and this process's
    id, from the arguments or ``JAX_COORDINATOR_ADDRESS``/``JAX_NUM_PROCESSES``/
    ``JAX_PROCESS_ID``. Auto-detection: ``JAXHYBRID_DISTRIBUTED=1`` with none of them,
    on a Cloud TPU VM pod slice, under SLURM or Open MPI (the launch scripts in
    launch/ set it). ``JAXHYBRID_DISTRIBUTED_TIMEOUT`` (seconds, default 300) bounds
    the wait for the other processes. On CPU, cross-process collectives use gloo.
    Must run before anything touches a JAX device. Every failure is a
    DistributedStartupError that says what to give, except one: when not every process
    has connected within the timeout, JAX would abort the process from C++ (no
    exception to catch), so this process prints ``error: ...`` and exits with status 1
    first.
    """
    settings = distributed_settings(coordinator_address, num_processes, process_id)
    if settings is None:
        return False
    timeout = _startup_timeout()
    _use_gloo_on_cpu()
    given = {k: v for k, v in settings.items() if v is not None}
    who = (f"process {settings['process_id'] if settings['process_id'] is not None else '?'} "
           f"of {settings['num_processes'] or '?'}")
    logging.info("starting jax.distributed (%s, coordinator %s); waiting up to %d s for every "
                 "process to connect", who, settings["coordinator_address"] or "auto-detected",
                 timeout)
    connected = _start_watchdog(settings, who, timeout)
    try:
        jax.distributed.initialize(**given, initialization_timeout=timeout + 60)
    except Exception as e:  # noqa: BLE001 -- every start-up failure gets the same advice
        raise _startup_error(e, given) from e
    finally:
        connected.set()
    logging.info("jax.distributed initialised: process %d of %d, %d local / %d global devices",
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count())
    return True


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh over the first ``num_devices`` devices (all by default), axis ``data``.

    A subset of the devices is a single-process option: with several processes every
    process must own devices of the mesh, so ``num_devices`` (other than all of them) is
    refused there.
    """
    devices = jax.devices()
    if num_devices is not None and num_devices > 0 and num_devices != len(devices):
        if num_devices > len(devices):
            raise ValueError(f"num_devices={num_devices} but only {len(devices)} devices exist")
        if jax.process_count() > 1:
            raise ValueError(
                f"num_devices={num_devices} selects a subset of the devices, which only a "
                f"single-process run can do; this run has {jax.process_count()} processes and "
                f"{len(devices)} devices ({jax.local_device_count()} on this process). Use "
                f"--config.num_devices=0 (all devices) and choose the devices per process "
                f"instead (e.g. CUDA_VISIBLE_DEVICES, or fewer processes)")
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), (AXIS,))


def check_global_batch(global_batch_size: int, mesh: Mesh, field: str = "batch_size") -> int:
    """Refuse a global batch the devices do not divide; return the per-host batch.
    ``field``: the config field that set it, named in the error."""
    n_dev = mesh.devices.size
    n_proc = len({d.process_index for d in mesh.devices.flat})
    if global_batch_size <= 0 or global_batch_size % n_dev:
        raise ValueError(
            f"config field {field} = {global_batch_size}: the global batch is not divisible "
            f"by the {n_dev} devices "
            f"({n_proc} host(s) × {n_dev // max(n_proc, 1)} local devices). The batch size in the "
            f"config is the GLOBAL batch; choose a multiple of {n_dev} "
            f"(e.g. {max(n_dev, (global_batch_size // n_dev) * n_dev) or n_dev}).")
    return len(np.arange(global_batch_size)[host_slice(global_batch_size, mesh)])


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(AXIS))


def host_slice(global_batch_size: int, mesh: Mesh) -> slice | np.ndarray:
    """The rows of a global batch ``[B, ...]`` that this host reads: its devices' shards.

    Taken from the sharding itself (``addressable_devices_indices_map``), so it holds for
    any assignment of devices to processes, in the order that
    ``jax.make_array_from_process_local_data`` expects (ascending rows). A ``slice``
    when the rows are contiguous (the usual case), else an index array ``[B_host]``.
    """
    index_map = data_sharded(mesh).addressable_devices_indices_map((global_batch_size,))
    if not index_map:
        raise ValueError(f"process {jax.process_index()} owns no device of the mesh "
                         f"({mesh.devices.size} devices)")
    rows = np.unique(np.concatenate([
        np.arange(global_batch_size)[idx[0]] for idx in index_map.values()]))
    if rows.size and np.array_equal(rows, np.arange(rows[0], rows[0] + rows.size)):
        return slice(int(rows[0]), int(rows[0]) + int(rows.size))
    return rows


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


def shard_loss(loss_fn: Callable, mesh: Mesh, extra: int = 0) -> Callable:
    """Wrap ``loss_fn(variables, batch, rng, progress, axis_name, *rest) -> (loss, (state,
    aux))``; ``rest``: ``extra`` further replicated arguments (e.g. the global-batch
    statistics of :class:`jaxhybrid.families.base.GlobalStatistics`).

    Inside, every device sees its own rows of the batch; ``variables``, ``rng`` and
    ``progress`` are replicated. Randomness is keyed per example (the batch's ``id``),
    never per device, so the draws do not depend on the device count. ``loss_fn`` must
    reduce its outputs over ``axis_name`` (psum/pmean) so that they are the same on
    every device (checked: ``check_vma``).
    """
    def per_device(variables, batch, rng, progress, *rest):
        return loss_fn(variables, batch, rng, progress, AXIS, *rest)

    return jax.shard_map(per_device, mesh=mesh,
                         in_specs=(P(), P(AXIS), P(), P()) + (P(),) * extra, out_specs=P())


def check_accumulation(global_batch_size: int, steps: int, mesh: Mesh) -> None:
    """Refuse ``accumulation_steps`` whose micro-batches (global batch / steps) the
    devices do not divide: one ValueError naming the field and the valid choices."""
    n_dev = mesh.devices.size
    if steps >= 1 and global_batch_size % (steps * n_dev) == 0:
        return
    per_device = global_batch_size // n_dev if global_batch_size % n_dev == 0 else 0
    valid = ", ".join(str(k) for k in range(1, per_device + 1) if per_device % k == 0)
    raise ValueError(
        f"config field accumulation_steps = {steps}: the global batch_size "
        f"{global_batch_size} is split into {steps} micro-batches, each sharded over the "
        f"{n_dev} devices, so batch_size must be a multiple of accumulation_steps × devices "
        f"= {steps * n_dev}; valid accumulation_steps for batch_size {global_batch_size} on "
        f"{n_dev} devices: {valid or 'none (batch_size is not a multiple of the devices)'}")


def micro_batches(batch: dict, steps: int, mesh: Mesh) -> dict:
    """A global batch ``[B, ...]`` (sharded over ``data``) as ``steps`` micro-batches
    ``[steps, B/steps, ...]``, each sharded over every device as the batch is: micro-batch
    j holds rows j·m .. (j+1)·m − 1 of every device's own rows (m = B/(steps·devices)),
    so the split moves no data between devices."""
    def split(local):
        return jax.tree.map(lambda x: x.reshape(steps, x.shape[0] // steps, *x.shape[1:]),
                            local)

    return jax.shard_map(split, mesh=mesh, in_specs=P(AXIS), out_specs=P(None, AXIS))(batch)


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

