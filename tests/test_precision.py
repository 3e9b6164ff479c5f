"""The precision policy (``config.compute_dtype``, jaxhybrid/precision.py), for every family
of the library: with bfloat16, every convolution and matrix multiply of the loss runs on
bf16 operands, while the parameters, the loss, the gradients and the optimiser state stay
float32 and the loss stays within bf16 rounding of the float32 one.

The end-to-end check (bf16 trains the digits DHM to within 1 point of float32) is
tests/test_dhm.py::test_bf16_digits_run_is_within_one_point_of_fp32."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import dhm as dhm_configs
from jaxhybrid import precision
from jaxhybrid.families import make_family
from tests.helpers import fake_variables, tiny_config

MATMULS = ("conv_general_dilated", "dot_general")


def _operand_dtypes(jaxpr, out=None):
    """{primitive: set of operand dtypes} of every conv / dot in ``jaxpr``, nested ones too."""
    out = {} if out is None else out
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in MATMULS:
            out.setdefault(eqn.primitive.name, set()).update(
                str(v.aval.dtype) for v in eqn.invars)
        for sub in _subjaxprs(eqn.params.values()):
            _operand_dtypes(sub, out)
    return out


def _subjaxprs(values):
    for v in values:
        if isinstance(v, (tuple, list)):
            yield from _subjaxprs(v)
        elif hasattr(v, "eqns"):
            yield v
        elif hasattr(v, "jaxpr") and hasattr(v.jaxpr, "eqns"):
            yield v.jaxpr


def _classifier(model):
    c = tiny_config(**{"model.width": 4})
    if model == "resnet18":
        c.model = ml_collections.ConfigDict({
            "name": "resnet18", "widths": (4, 4, 4, 4), "blocks_per_stage": (1, 1, 1, 1),
            "norm": "group", "groups": 2})
    return c


def _dhm():
    c = dhm_configs.get_config("digits")
    c.model.update({"width": 2, "latent": 3, "head_hidden": 8, "iwae_samples": 2})
    return c


CASES = {"cnn": lambda: _classifier("cnn"), "resnet18": lambda: _classifier("resnet18"),
         "dhm": _dhm}


def _batch(b=8):
    rng = np.random.default_rng(0)
    return {"image": jnp.asarray(rng.uniform(size=(b, 8, 8, 1)), jnp.float32),
            "label": jnp.asarray(rng.integers(0, 10, b), jnp.int32),
            "mask": jnp.arange(b) < b - 2, "id": jnp.arange(b, dtype=jnp.int32)}


def _loss_and_grads(config, dtype, variables=None):
    config.compute_dtype = dtype
    family = make_family(config, 10)
    batch, rng = _batch(), jax.random.PRNGKey(3)
    if variables is None:
        variables = fake_variables(family.init, batch)
    params = variables["params"]
    state = {k: v for k, v in variables.items() if k != "params"}
    progress = {"step": jnp.int32(0), "epoch": jnp.float32(0.0)}

    def loss(p):
        return family.loss({"params": p, **state}, batch, rng, progress)[0]
    jaxpr = jax.make_jaxpr(loss)(params).jaxpr
    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    return variables, jaxpr, value, grads


@pytest.mark.parametrize("case", sorted(CASES))
def test_bf16_computes_in_bf16_and_keeps_params_loss_grads_float32(case):
    variables, jaxpr32, loss32, grads32 = _loss_and_grads(CASES[case](), "float32")
    _, jaxpr16, loss16, grads16 = _loss_and_grads(CASES[case](), "bfloat16", variables)
    assert {d for ds in _operand_dtypes(jaxpr32).values() for d in ds} == {"float32"}
    ops16 = _operand_dtypes(jaxpr16)
    assert ops16.get("conv_general_dilated") == {"bfloat16"}, ops16   # every conv in bf16
    assert "bfloat16" in ops16["dot_general"]
    for leaf in jax.tree.leaves(variables):                          # params: float32
        assert leaf.dtype == jnp.float32
    assert loss16.dtype == jnp.float32 and np.isfinite(loss16)
    np.testing.assert_allclose(loss16, loss32, rtol=3e-2)           # bf16 rounding, not a bug
    flat32, flat16 = jax.tree.leaves(grads32), jax.tree.leaves(grads16)
    assert all(g.dtype == jnp.float32 and np.all(np.isfinite(g)) for g in flat16)
    g32 = np.concatenate([np.ravel(g) for g in flat32])
    g16 = np.concatenate([np.ravel(g) for g in flat16])
    cosine = g32 @ g16 / (np.linalg.norm(g32) * np.linalg.norm(g16))
    # bf16 keeps 8 mantissa bits: through a dozen tiny layers (BatchNorm on 6 rows, GroupNorm
    # on 2 channels) rounding turns the gradient by up to ~30°; it stays a descent direction
    assert cosine > 0.8, cosine
    opt = optax.adam(1e-3)                                          # optimiser state: float32
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(opt.init(variables["params"]))
               if jnp.issubdtype(leaf.dtype, jnp.floating))


def test_policy_names_the_valid_choices():
    with pytest.raises(ValueError, match="compute_dtype = 'float16': must be one of float32, "
                                         "bfloat16"):
        precision.check_compute_dtype("float16")
    assert precision.f32({"a": jnp.ones(2, jnp.bfloat16), "i": jnp.ones(2, jnp.int32)})[
        "a"].dtype == jnp.float32
