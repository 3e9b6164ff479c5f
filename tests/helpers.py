"""Shared test helpers: tiny configs and restoring parameters from a run directory."""
from __future__ import annotations

import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np

from configs import gffn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def apply_overrides(config, overrides: dict):
    """Set dotted keys ("model.width": 8) on a ConfigDict, parsed as ``--config.KEY=VALUE``
    would be (the one mechanism, :func:`jaxhybrid.tools.overrides.apply_overrides`); returns it."""
    from jaxhybrid.tools.overrides import apply_overrides as apply
    return apply(config, overrides)


def tiny_config(**overrides):
    """The digits smoke config, made smaller; overrides as dotted keys."""
    c = gffn.get_config("smoke")
    c.model.width = 8
    c.model.hidden = (32,)
    c.evals.names = "classification"
    return apply_overrides(c, overrides)


def family_config(spec, **fields):
    """A config of the library family ``spec`` (a FamilyBase class) on digits: each of
    ``fields`` in the section whose table has it (``objective`` or ``model``)."""
    objective = {k: v for k, v in fields.items() if k in spec.OBJECTIVE.fields}
    model = {k: v for k, v in fields.items() if k not in objective}
    return ml_collections.ConfigDict({"data": {"source": "digits"}, "model": model,
                                      "objective": objective})


def restore_params(config, workdir, step="latest"):
    from jaxhybrid.checkpointing import Checkpointer
    from jaxhybrid.experiment import abstract_state, build_experiment
    from jaxhybrid.optim import make_optimizer, make_schedule
    exp = build_experiment(config)
    opt = make_optimizer(config.optimizer, make_schedule(config.optimizer, config.batch_size, 1, 1))
    ckpt = Checkpointer(workdir, read_only=True)
    s = ckpt.resolve(step)
    state, _ = ckpt.restore(s, abstract_state(exp, opt, config.seed))
    ckpt.close()
    return s, jax.tree.map(np.asarray, state)


def run_python(code: str, *, devices: int = 8, timeout: int = 900, env_extra=None):
    """Run ``code`` in a fresh Python process with ``devices`` fake CPU devices."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def run_cli(args: list[str], *, devices: int = 8, timeout: int = 900):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run([sys.executable, "-m", "jaxhybrid.main", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def fake_variables(init, batch, seed=1):
    """Variables of ``init(rng, batch)`` without compiling the initialiser (slow on
    XLA:CPU): shapes from ``jax.eval_shape``, kernels ~ N(0, 1/fan_in), biases 0, scales 1,
    BatchNorm statistics (0, 1)."""
    import jax.numpy as jnp
    shapes = jax.eval_shape(init, jax.random.PRNGKey(seed), batch)
    rng = np.random.default_rng(seed)

    def fill(path, s):
        name = path[-1].key
        if name in ("scale", "var"):
            return jnp.ones(s.shape, s.dtype)
        if name in ("bias", "mean"):
            return jnp.zeros(s.shape, s.dtype)
        fan_in = int(np.prod(s.shape[:-1]))
        return jnp.asarray(rng.normal(size=s.shape) / np.sqrt(fan_in), s.dtype)
    return dict(jax.tree_util.tree_map_with_path(fill, shapes))


def evaluation_metrics(workdir, step: int, **evals) -> dict:
    """metrics.json of the one evaluation at ``step`` of ``workdir`` whose settings
    (metrics.json's ``evals``) include ``evals``."""
    import json
    import pathlib
    found = [json.loads(p.read_text())
             for p in sorted((pathlib.Path(workdir) / "eval" / str(step)).glob("*/metrics.json"))]
    found = [m for m in found if all(m["evals"].get(k) == v for k, v in evals.items())]
    assert len(found) == 1, f"{len(found)} evaluations at step {step} with {evals}"
    return found[0]
