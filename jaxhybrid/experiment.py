"""What training and evaluation share: mesh, data, transforms, family and the state."""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxhybrid import config_check, parallel, rng as rnglib
from jaxhybrid.data.pipeline import Preprocess
from jaxhybrid.data.loading import DataSplits, load_splits
from jaxhybrid.data.transforms import Transforms
from jaxhybrid.families import Family, make_family
from jaxhybrid.families.base import split_variables


@dataclasses.dataclass
class Experiment:
    config: Any
    mesh: Any
    splits: DataSplits
    preprocess: Preprocess
    transforms: Transforms
    family: Family
    input_shape: tuple[int, int, int]   # model input (H, W, C) after preprocessing

    @property
    def has_labels(self) -> bool:
        return self.splits.num_classes > 0


def build_experiment(config, load=load_splits) -> Experiment:
    """Everything a run needs of ``config``. ``load(config.data) -> DataSplits`` reads the
    data (the tools that need only shapes, e.g. :mod:`jaxhybrid.tools.lower`, pass their
    own)."""
    config_check.check_config(config)   # every field, before devices, data or workdir
    mesh = parallel.make_mesh(config.num_devices or None)
    parallel.check_global_batch(config.batch_size, mesh)
    parallel.check_global_batch(config.eval_batch_size, mesh, "eval_batch_size")
    transforms = Transforms.from_config(config.data)
    splits = load(config.data)
    config_check.check_against_data(config, splits)   # data.frame vs the image size
    frame = config.data.frame
    preprocess = Preprocess(frame=(frame, frame) if frame else None)
    input_shape = preprocess.output_shape(splits.image_shape)
    mean = tuple(config.data.mean) or None
    std = tuple(config.data.std) or None
    family = make_family(config, splits.num_classes, mean=mean, std=std)
    config_check.check_family_data(family, config, splits)   # its likelihood fits the data
    if family.supervised and splits.num_classes == 0:
        raise ValueError(f"family {family.name!r} needs labels, but data "
                         f"{config.data.source!r} has none")
    return Experiment(config, mesh, splits, preprocess, transforms, family, input_shape)


def augment(exp: Experiment, batch: dict, key: jax.Array) -> dict:
    """Per device: the train transforms of ``batch`` with per-example keys of step ``key``."""
    keys = rnglib.example_keys(rnglib.stream(key, rnglib.AUGMENT), batch["id"])
    return {**batch, "image": exp.transforms.train(batch["image"], keys)}


def batch_spec(exp: Experiment, global_batch: int) -> dict:
    """ShapeDtypeStructs of a global batch (for abstract init and restore)."""
    spec = {"image": jax.ShapeDtypeStruct((global_batch, *exp.input_shape), jnp.float32),
            "mask": jax.ShapeDtypeStruct((global_batch,), jnp.bool_),
            "id": jax.ShapeDtypeStruct((global_batch,), jnp.int32)}
    if exp.has_labels:
        spec["label"] = jax.ShapeDtypeStruct((global_batch,), jnp.int32)
    return spec


def make_init_fn(exp: Experiment, optimizer):
    """(run key, init key, first global batch as step 0 sees it) -> plain-pytree state
    {params, model_state, opt_state, step, rng}; ``optimizer=None``: no opt_state."""
    def init(run_rng, init_rng, batch):
        variables = parallel.shard_init(exp.family.init, exp.mesh)(init_rng, batch)
        params, model_state = split_variables(variables)
        opt_state = optimizer.init(params) if optimizer is not None else None
        return {"params": params, "model_state": model_state, "opt_state": opt_state,
                "step": jnp.zeros((), jnp.int32), "rng": run_rng}
    return init


def abstract_state(exp: Experiment, optimizer, seed: int):
    """ShapeDtypeStructs of the state, with replicated shardings (for init and restore).

    ``optimizer=None`` gives no optimizer state (evaluation restores the model only)."""
    key = jax.random.PRNGKey(seed)
    shapes = jax.eval_shape(make_init_fn(exp, optimizer), key, key,
                            batch_spec(exp, exp.config.batch_size))
    sharding = parallel.replicated(exp.mesh)
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                        shapes)


def first_step_view(exp: Experiment, batch: dict, run_rng: jax.Array) -> dict:
    """The first global batch with step 0's train transforms: what data-dependent init
    sees is exactly what the first step trains on."""
    fn = jax.shard_map(lambda b, key: augment(exp, b, key), mesh=exp.mesh,
                       in_specs=(parallel.P(parallel.AXIS), parallel.P()),
                       out_specs=parallel.P(parallel.AXIS))
    return jax.jit(fn)(batch, rnglib.step_key(run_rng, 0))


def create_state(exp: Experiment, optimizer, seed: int, first_batch: dict):
    """The initial state from the first global batch, created with its (replicated) sharding.

    Parameters are replicated, so the initialiser's random bits need no
    sharding-invariant ("partitionable") threefry; the classic lowering compiles
    ~3× faster on CPU (2.8 s vs 8.8 s for the thesis CNN on this 2-core machine). The
    batch's train transforms are drawn outside it, with the lowering the train step uses.
    """
    with jax.threefry_partitionable(False):
        run_rng, init_rng = jax.random.split(jax.random.PRNGKey(seed))
    batch = first_step_view(exp, first_batch, run_rng)
    shardings = jax.tree.map(lambda a: a.sharding, abstract_state(exp, optimizer, seed))
    with jax.threefry_partitionable(False):
        return jax.jit(make_init_fn(exp, optimizer), out_shardings=shardings)(
            run_rng, init_rng, batch)


def abstract_model(exp: Experiment) -> dict:
    """ShapeDtypeStructs of {params, model_state} (what evaluation restores)."""
    state = abstract_state(exp, None, exp.config.seed)
    return {"params": state["params"], "model_state": state["model_state"]}
