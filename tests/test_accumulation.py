"""Issue 24 §4: gradient accumulation (``config.accumulation_steps`` = k).

On 8 devices, k = 4 micro-batches of 16 take the same steps as one batch of 64: the
same losses and parameters after 3 steps (float32 rounding), for the GFFN (label models
softmax and binary: its batch partition stays the whole global batch's) and for the
HVAE (binarisation and posterior noise keyed per example); the same gradients on a
padded batch and on one where a whole micro-batch is padding. The GFFN's micro-batch
objective is checked against the whole-batch formula on its own; a batch_size the
micro-batches and devices do not divide is refused; BatchNorm statistics are per
micro-batch and the running averages updated once per micro-batch, in order.
"""
import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import hvae
from jaxhybrid import config_check, parallel
from jaxhybrid.config_defaults import base_config
from jaxhybrid.data.pipeline import TrainBatches
from jaxhybrid.experiment import build_experiment, create_state
from jaxhybrid.objectives.joint import (combine_partition_statistics, joint_nll,
                                        joint_nll_given_partition, log_partition,
                                        partition_statistics)
from jaxhybrid.optim import make_optimizer, make_schedule
from jaxhybrid.train import make_train_step
from tests.helpers import run_cli, tiny_config
from tests.test_hvae import TINY

B, K, STEPS, LR = 64, 4, 3, 0.05
RTOL, ATOL = 1e-5, 1e-6


# -- the micro-batch objective against the whole-batch formula -----------------------------
@pytest.mark.parametrize("label_model", ("softmax", "binary"))
def test_micro_batch_joint_objective_sums_to_the_global_batch_one(label_model):
    """Σ_j (n_j/N)·L_j = joint NLL of the whole batch, value and gradient, with padding
    rows (extreme logits) and a micro-batch of padding alone."""
    r = np.random.default_rng(0)
    x = jnp.asarray(r.normal(size=(16, 5)), jnp.float32)
    y = jnp.asarray(r.integers(0, 4, 16), jnp.int32)
    w = jnp.asarray(r.normal(size=(5, 4)), jnp.float32)
    mask = np.ones(16, bool)
    mask[[3, 9, 12, 13, 14, 15]] = False          # micro-batch 3 (rows 12..15) is padding
    mask = jnp.asarray(mask)
    pad = jnp.where(mask[:, None], 0.0, 1e4)       # padding logits far above the rest

    def logits(w):
        return 3.0 * jnp.tanh(x @ w) + pad

    def whole(w):          # independent: the formula written out on the valid rows
        f = np.asarray(mask)
        lg = logits(w)[f]
        fit = jnp.take_along_axis(lg, y[f][:, None], 1)[:, 0]
        log_z = (jnp.log(jnp.sum(jnp.exp(lg), -1)) if label_model == "softmax"
                 else jnp.sum(jnp.log1p(jnp.exp(lg)), -1))
        n = f.sum()
        return -jnp.mean(fit) + jnp.log(jnp.sum(jnp.exp(log_z))) - jnp.log(n)

    def accumulated(w):
        lg, parts = logits(w).reshape(4, 4, 4), []
        ys, ms = y.reshape(4, 4), mask.reshape(4, 4)
        shares = [partition_statistics(lg[j], label_model=label_model, mask=ms[j])
                  for j in range(4)]
        stats = combine_partition_statistics(jax.tree.map(lambda *a: jnp.stack(a), *shares))
        for j in range(4):
            n_j = jnp.sum(ms[j].astype(jnp.float32))
            parts.append(n_j / stats["count"] * joint_nll_given_partition(
                lg[j], ys[j], stats, label_model=label_model, mask=ms[j]))
        return sum(parts)

    value, grad = jax.value_and_grad(accumulated)(w)
    np.testing.assert_allclose(value, whole(w), rtol=RTOL)
    np.testing.assert_allclose(value, joint_nll(logits(w), y, label_model=label_model,
                                                mask=mask), rtol=RTOL)
    np.testing.assert_allclose(grad, jax.grad(whole)(w), rtol=1e-4, atol=1e-6)
    assert np.all(np.isfinite(grad)) and float(jnp.abs(grad).max()) > 1e-2
    # the partition share is log Σ Z over the micro-batch's valid rows
    share = partition_statistics(logits(w)[:4], label_model=label_model, mask=mask[:4])
    np.testing.assert_allclose(share["log_sum"], jax.nn.logsumexp(
        log_partition(logits(w)[:4], label_model)[np.asarray(mask[:4])]), rtol=RTOL)


# -- the trainer: k micro-batches vs one batch ----------------------------------------------
def _gffn_config(label_model):
    c = tiny_config(**{"objective.joint_weight": 1.0, "objective.label_model": label_model},
                    batch_size=B, seed=3)
    c.model.width, c.model.hidden, c.model.stages, c.model.convs_per_stage = 4, (16,), 1, 1
    # inputs ×10 inside the model: log Z(x) varies across the batch, so the partition
    # term (what a per-micro-batch partition would get wrong) is large
    c.data.mean, c.data.std = (0.0,), (0.1,)
    return c


def _hvae_config():
    c = hvae.get_config("digits")
    for key, value in TINY.items():
        if key != "name":
            (c.objective if key in c.objective else c.model)[key] = value
    c.batch_size, c.seed = B, 3
    return c


def _setup(config, lr=LR):
    config.optimizer.name, config.optimizer.learning_rate = "sgd", lr
    config.optimizer.lr_scaling = "none"
    exp = build_experiment(config)
    batches = TrainBatches(exp.splits.train, B, seed=config.seed, mesh=exp.mesh,
                           preprocess=exp.preprocess)
    schedule = make_schedule(config.optimizer, B, 10, batches.steps_per_epoch)
    optimizer = make_optimizer(config.optimizer, schedule)
    state = create_state(exp, optimizer, config.seed, batches.batch(0))
    return exp, batches, optimizer, schedule, state


def _gradient_as_params():
    """An 'optimizer' whose update sets the parameters to the gradient (p + (g − p)):
    the train step then returns its gradient, to float32 rounding of max(|g|, |p|)."""
    return optax.GradientTransformation(
        lambda params: optax.EmptyState(),
        lambda grads, state, params: (jax.tree.map(jnp.subtract, grads, params), state))


def _step_fn(setup, k, family=None, optimizer=None):
    exp, batches, default, schedule, _ = setup
    optimizer = optimizer or default
    config = exp.config.copy_and_resolve_references()
    config.accumulation_steps = k
    exp = dataclasses.replace(exp, config=config, family=family or exp.family)
    return make_train_step(exp, optimizer, schedule, batches.steps_per_epoch)


def _run(step, state, batches):
    state, losses = jax.tree.map(jnp.copy, state), []
    for b in batches:
        state, metrics = step(state, b)
        assert float(metrics["params_finite"]) == 1.0
        losses.append(float(metrics["loss"]))
    return np.array(losses), jax.tree.map(np.asarray, state)


def _padded(batches, step, rows):
    """Global batch ``step`` with ``rows`` (global indices) made padding: mask False,
    id −1 and extreme pixels."""
    host = dict(batches.host_batch(step))
    mask = host["mask"].copy()
    mask[rows] = False
    image = host["image"].copy()
    image[~mask] = 1e4
    host.update(mask=mask, image=image, id=np.where(mask, host["id"], -1).astype(np.int32))
    return parallel.to_global(host, batches.mesh)


def _check_same_training(setup, family_without_stats=None):
    _, batches, _, _, state0 = setup
    real = [batches.batch(s) for s in range(STEPS)]
    one, micro = _step_fn(setup, 1), _step_fn(setup, K)
    ref_loss, ref = _run(one, state0, real)
    loss, got = _run(micro, state0, real)
    assert np.ptp(ref_loss) > 1e-3                               # training moves
    np.testing.assert_allclose(loss, ref_loss, rtol=RTOL)
    moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), ref["params"], state0["params"])
    assert max(jax.tree.leaves(moved)) > 1e-3
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL),
                 got["params"], ref["params"])
    # gradients on padded batches: the last 20 rows padding (a last partial batch), and
    # each device's last 2 rows padding (micro-batch 3 is padding alone)
    tail = np.arange(B - 20, B)
    whole_micro = np.concatenate([d * 8 + np.array([6, 7]) for d in range(8)])
    grad = {k: _step_fn(setup, k, optimizer=_gradient_as_params()) for k in (1, K)}
    start = {**state0, "opt_state": optax.EmptyState()}
    for rows in (tail, whole_micro):
        padded = [_padded(batches, STEPS, rows)]
        (l1, g1), (lk, gk) = _run(grad[1], start, padded), _run(grad[K], start, padded)
        np.testing.assert_allclose(lk, l1, rtol=RTOL)
        assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(g1["params"]))
        assert max(np.abs(g).max() for g in jax.tree.leaves(g1["params"])) > 1e-2
        # float32 sums in another order: rounding relative to the tensor's scale
        jax.tree.map(lambda a, b: np.testing.assert_allclose(
            a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max()), gk["params"], g1["params"])
    return ref_loss


@pytest.mark.parametrize("label_model", ("softmax", "binary"))
def test_gffn_micro_batches_train_as_one_global_batch(label_model):
    setup = _setup(_gffn_config(label_model))
    exp, batches, _, _, state0 = setup
    assert exp.family.global_stats is not None
    ref_loss = _check_same_training(setup)
    # the test has teeth: a partition per micro-batch (no global statistics) is off by far
    # more than the tolerance
    naive = _step_fn(setup, K, dataclasses.replace(exp.family, global_stats=None))
    naive_loss, _ = _run(naive, state0, [batches.batch(0)])
    assert abs(naive_loss[0] - ref_loss[0]) > 1000 * RTOL * abs(ref_loss[0])


@pytest.mark.slow_smoke       # the GFFN's two cases run in test-newest
def test_hvae_micro_batches_train_as_one_global_batch():
    setup = _setup(_hvae_config(), lr=1e-4)   # an ELBO of ~100 nats: steep gradients
    assert setup[0].family.global_stats is None     # a plain mean: gradients averaged
    assert "binarize" in setup[0].config.data.train_transforms  # per-example randomness
    _check_same_training(setup)


# -- BatchNorm: statistics per micro-batch, running averages in order --------------------
def test_batchnorm_statistics_are_per_micro_batch_and_updated_in_order():
    c = base_config("tests.toy_families:make_bn_classifier")
    c.model = ml_collections.ConfigDict({"hidden": 8})
    c.data.validation_size, c.batch_size, c.evals.names = 0.15, B, "classification"
    setup = _setup(c)
    _, batches, _, _, state0 = setup
    bn0 = jax.tree.map(np.asarray, state0["model_state"]["batch_stats"]["BatchNorm_0"])
    _, got = _run(_step_fn(setup, K), state0, [batches.batch(0)])
    _, whole = _run(_step_fn(setup, 1), state0, [batches.batch(0)])
    # independent: micro-batch j = rows j·2, j·2 + 1 of each device's 8 rows, in order
    host, dense = batches.host_batch(0), state0["params"]["Dense_0"]
    h = host["image"].reshape(B, -1) @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"])
    mean, var = bn0["mean"], bn0["var"]
    for j in range(K):
        rows = np.concatenate([d * 8 + 2 * j + np.arange(2) for d in range(8)])
        mean, var = 0.9 * mean + 0.1 * h[rows].mean(0), 0.9 * var + 0.1 * h[rows].var(0)
    bn = got["model_state"]["batch_stats"]["BatchNorm_0"]
    np.testing.assert_allclose(bn["mean"], mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(bn["var"], var, rtol=1e-4, atol=1e-6)
    # one batch of 64: one update with the whole batch's statistics, which differs
    bn1 = whole["model_state"]["batch_stats"]["BatchNorm_0"]
    np.testing.assert_allclose(bn1["mean"], 0.9 * bn0["mean"] + 0.1 * h.mean(0), rtol=1e-4,
                               atol=1e-6)
    assert np.abs(bn1["var"] - var).max() > 1e-3


# -- refused configs --------------------------------------------------------------------------
def test_accumulation_steps_that_do_not_divide_the_batch_are_refused():
    c = tiny_config(batch_size=B, accumulation_steps=3)
    with pytest.raises(ValueError) as e:
        config_check.check_config(c)
    assert str(e.value) == ("config field accumulation_steps = 3: must divide the global "
                            "batch_size 64 (each step's batch is accumulation_steps "
                            "micro-batches of equal size); valid: 1, 2, 4, 8, 16, 32, 64")
    for bad in (0, -2):
        with pytest.raises(ValueError, match=f"config field accumulation_steps = {bad}: "):
            config_check.check_config(tiny_config(accumulation_steps=bad))
    # divides the batch, but 64 / 16 = 4 rows per micro-batch are not 8 devices' worth
    with pytest.raises(ValueError) as e:
        build_experiment(tiny_config(batch_size=B, accumulation_steps=16))
    assert str(e.value).startswith("config field accumulation_steps = 16: the global "
                                   "batch_size 64 is split into 16 micro-batches")
    assert "multiple of accumulation_steps × devices = 128" in str(e.value)
    assert str(e.value).endswith("valid accumulation_steps for batch_size 64 on 8 devices: "
                                 "1, 2, 4, 8")


def test_cli_refuses_a_non_dividing_accumulation_in_one_error_line(tmp_path):
    r = run_cli(["--config=configs/gffn.py:smoke", f"--workdir={tmp_path / 'run'}",
                 "--config.batch_size=64", "--config.accumulation_steps=16"])
    assert r.returncode == 1
    errors = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "config field accumulation_steps = 16" in errors[0], r.stderr
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
