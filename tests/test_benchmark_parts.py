"""The benchmarks' shared parts on their own: the XLA floor's counting
(benchmarks/xla_floor.py: FLOPs, convolutions in a jaxpr and in HLO) and the device
suite's stages (benchmarks/device_stages.py: peaks, MFU, dependency ranges, budgets, the
synthetic data), each against a closed form. Fast and pure: no timing."""
from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import device_stages, xla_floor


def test_xla_flops_of_a_matmul_is_two_m_n_k():
    a, b = jnp.ones((8, 16)), jnp.ones((16, 4))
    compiled = jax.jit(jnp.matmul).lower(a, b).compile()
    assert xla_floor.xla_flops(compiled) == 2 * 8 * 16 * 4


def test_hlo_conv_counts_counts_convolutions_and_convs_made_dots():
    text = "\n".join([
        "%c.1 = f32[1,4,4,2] convolution(%a, %k), window={size=3x3}",
        "%c.2 = f32[1,4,4,2] convolution(%b, %k), window={size=1x1}",
        '%d.1 = f32[4,2] dot(%x, %y), metadata={op_name="jit(f)/conv_general_dilated"}',
        '%d.2 = f32[4,2] dot(%x, %y), metadata={op_name="jit(f)/dot_general"}'])
    assert xla_floor.hlo_conv_counts(text) == (2, 1)


def test_collect_convs_finds_the_forward_and_both_gradients():
    def conv(x, k):
        return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    x, k = jnp.ones((2, 6, 6, 3)), jnp.ones((3, 3, 3, 4))
    ops = {}
    fwd = xla_floor.collect_convs(jax.make_jaxpr(conv)(x, k), ops)
    assert sum(fwd.values()) == 1 and [o.kind for o in ops.values()] == ["fwd"]
    grads = jax.make_jaxpr(jax.grad(lambda x, k: conv(x, k).sum(), argnums=(0, 1)))(x, k)
    ops = {}
    counts = xla_floor.collect_convs(grads, ops)
    assert sum(counts.values()) == 3
    assert sorted(o.kind for o in ops.values()) == ["dw", "dx", "fwd"]


def test_peaks_and_mfu():
    assert device_stages.peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.4e12
    assert device_stages.peak_flops("NVIDIA H100 PCIe", "float32") == 378.0e12
    assert device_stages.peak_flops("TPU v5 lite", "float32") == 197.0e12
    assert device_stages.peak_flops("cpu", "float32") is None
    with pytest.raises(ValueError, match="valid choices: float32, bfloat16"):
        device_stages.peak_flops("NVIDIA A100", "float16")
    assert device_stages.mfu(5e14, 2.0, 1e15) == pytest.approx(0.25)
    for bad in ((5e14, 0.0, 1e15), (0.0, 1.0, 1e15), (5e14, 1.0, None), (np.nan, 1.0, 1e15)):
        assert device_stages.mfu(*bad) is None
    assert device_stages.fmt_mfu(0.25) == "25.0%" and device_stages.fmt_mfu(None) == "n/a"


def test_out_of_range_names_each_missing_or_outside_dependency():
    found = device_stages.out_of_range({"jax>=0.10.2,<0.13": "0.9.0", "flax>=0.12": "0.12.8",
                                        "optax>=0.2": None})
    assert found == ["jax 0.9.0, pyproject: <0.13,>=0.10.2", "optax missing, pyproject: >=0.2"]


def test_budget_overrides():
    flags = types.SimpleNamespace(train_seconds=120.0, train_steps=0)
    assert device_stages.budget_overrides(flags) == ["--config.max_train_seconds=120"]
    flags = types.SimpleNamespace(train_seconds=0.0, train_steps=4)
    assert device_stages.budget_overrides(flags) == ["--config.num_steps=4"]


def test_synthetic_npz_has_the_shapes_and_every_class(tmp_path):
    spec = device_stages.StepSpec("gffn", "configs/gffn.py:cifar10", (32, 32, 3), True)
    with np.load(device_stages.synthetic_npz(str(tmp_path), spec, 25)) as d:
        assert d["x_train"].shape == (25, 32, 32, 3) and d["x_test"].shape == (10, 32, 32, 3)
        assert set(d["y_train"].tolist()) == set(range(10))
    spec = device_stages.StepSpec("hvae", "configs/hvae.py:smoke", (28, 28, 1), False)
    with np.load(device_stages.synthetic_npz(str(tmp_path), spec, 5)) as d:
        assert d["x_train"].shape == (5, 28, 28) and "y_train" not in d.files
