"""Optimiser schedules, learning-rate rules, and the model registry."""
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxhybrid.optim import optimizer_config
from jaxhybrid.models import build_model
from jaxhybrid.optim import make_optimizer, make_schedule, scaled_learning_rate


def test_lr_scaling_rules():
    o = optimizer_config(learning_rate=1e-3, base_batch_size=128)
    for rule, expected in (("none", 1e-3), ("sqrt", 2e-3), ("linear", 4e-3)):
        o.lr_scaling = rule
        assert scaled_learning_rate(o, 512) == pytest.approx(expected)
    o.lr_scaling = "cubic"
    with pytest.raises(ValueError, match="none, sqrt, linear"):
        scaled_learning_rate(o, 512)


def test_schedules():
    o = optimizer_config(learning_rate=1.0, schedule="step", decay_every_epochs=2,
                         decay_factor=0.1, warmup_steps=0)
    s = make_schedule(o, 128, total_steps=100, steps_per_epoch=10)
    assert [float(s(t)) for t in (0, 19, 20, 39, 40)] == pytest.approx([1, 1, .1, .1, .01])
    o.schedule, o.warmup_steps = "cosine", 10
    s = make_schedule(o, 128, total_steps=110, steps_per_epoch=10)
    assert float(s(0)) == 0 and float(s(5)) == pytest.approx(0.5)
    assert float(s(10)) == pytest.approx(1.0) and float(s(110)) == pytest.approx(0, abs=1e-6)
    o.schedule = "exotic"
    with pytest.raises(ValueError, match="constant, cosine, step"):
        make_schedule(o, 128, 10, 1)


def test_grad_clipping_and_optimizer_names():
    o = optimizer_config(name="sgd", learning_rate=1.0, grad_clip_norm=1.0)
    tx = make_optimizer(o, 1.0)
    p = {"w": jnp.zeros(3)}
    upd, _ = tx.update({"w": jnp.array([30.0, 40.0, 0.0])}, tx.init(p), p)
    np.testing.assert_allclose(upd["w"], [-0.6, -0.8, 0.0], rtol=1e-6)
    o.name = "lion"
    with pytest.raises(ValueError, match="adam, adamw, sgd, momentum"):
        make_optimizer(o, 1.0)


def test_models_shapes_and_errors():
    cfg = ml_collections.ConfigDict({"name": "cnn", "width": 4, "stages": 2,
                                     "convs_per_stage": 1, "hidden": (8,)})
    m = build_model(cfg, 10, mean=(0.5,), std=(0.5,))
    x = jnp.ones((2, 32, 32, 1))
    params = jax.jit(m.init)(jax.random.PRNGKey(0), x)
    assert jax.jit(m.apply)(params, x).shape == (2, 10)
    r = ml_collections.ConfigDict({"name": "resnet18", "widths": (4, 8, 8, 8), "norm": "group",
                                   "groups": 2})
    m = build_model(r, 7)
    x = jnp.ones((2, 8, 8, 3))
    out = jax.eval_shape(lambda x: m.apply(m.init(jax.random.PRNGKey(0), x), x), x)
    assert out.shape == (2, 7)
    with pytest.raises(ValueError, match="valid choices: cnn, resnet18"):
        build_model(ml_collections.ConfigDict({"name": "vgg"}), 10)
    cfg.depth = 3
    with pytest.raises(ValueError, match=r"Unknown option\(s\) \['depth'\]"):
        build_model(cfg, 10)


def test_classifier_trains_a_resnet18_step_through_the_cli(tmp_path):
    """``model.name=resnet18`` on the gffn config: its own options (the CNN's are ignored),
    one step trained and evaluated. One ε is a grid of one: ``evals.epsilons=0.03`` attacks
    at [0.03] (one run, to spare CI a second)."""
    from tests.helpers import run_cli
    wd = tmp_path / "run"
    r = run_cli(["--config=configs/gffn.py:smoke", f"--workdir={wd}", "--config.num_steps=1",
                 "--config.model.name=resnet18", "--config.model.widths=(4, 4, 4, 4)",
                 "--config.model.blocks_per_stage=(1, 1, 1, 1)", "--config.model.norm=group",
                 "--config.model.groups=2", "--config.evals.names=classification,adversarial",
                 "--config.evals.epsilons=0.03", "--config.evals.adversarial_max_examples=16"],
                devices=1)
    assert r.returncode == 0, r.stderr[-3000:]
    final = json.loads((wd / "final_metrics.json").read_text())
    assert final["step"] == 1 and 0 <= final["accuracy"] <= 1, final
    saved = json.loads((wd / "config.json").read_text())["model"]
    assert saved["name"] == "resnet18" and saved["norm"] == "group", saved
    metrics = json.loads((wd / final["eval_dir"] / "metrics.json").read_text())
    assert metrics["adversarial"]["epsilons"] == [0.03], metrics["adversarial"]


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (2, 7, 5, 2)])
def test_max_pool_matches_flax(shape):
    import flax.linen as nn
    from jaxhybrid.models.cnn import max_pool_2x2
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    ref = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
    np.testing.assert_array_equal(max_pool_2x2(x), ref(x))
    g = jax.grad(lambda x: jnp.sum(max_pool_2x2(x) ** 2))(x)
    np.testing.assert_allclose(g, jax.grad(lambda x: jnp.sum(ref(x) ** 2))(x))
