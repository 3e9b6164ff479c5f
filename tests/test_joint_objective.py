"""The GFFN joint objective against the thesis' formulas, on 1 and 8 devices."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxhybrid import parallel
from jaxhybrid.objectives.classifier import classifier_objective
from jaxhybrid.objectives.conditional import conditional_nll
from jaxhybrid.objectives.joint import joint_nll, log_partition

LABEL_MODELS = ("softmax", "binary")


def _linear_problem(b=16, d=5, k=4, seed=0):
    r = np.random.default_rng(seed)
    params = {"w": jnp.asarray(r.normal(size=(d, k)), jnp.float32),
              "b": jnp.asarray(r.normal(size=(k,)), jnp.float32)}
    x = jnp.asarray(r.normal(size=(b, d)), jnp.float32)
    y = jnp.asarray(r.integers(0, k, size=b), jnp.int32)
    return params, x, y


def _f(params, x):
    return jnp.tanh(x @ params["w"]) * 2.0 + params["b"]


@pytest.mark.parametrize("label_model", LABEL_MODELS)
def test_log_partition_closed_form(label_model):
    logits = jnp.asarray(np.random.default_rng(1).normal(size=(6, 3)) * 3, jnp.float32)
    # brute-force Z(x) = Σ_y exp<y, f> over the label space of the model
    if label_model == "softmax":
        ys = np.eye(3)
    else:
        ys = np.array([[(i >> j) & 1 for j in range(3)] for i in range(8)], np.float64)
    brute = np.log(np.exp(np.asarray(logits, np.float64) @ ys.T).sum(-1))
    np.testing.assert_allclose(log_partition(logits, label_model), brute, rtol=1e-5)


@pytest.mark.parametrize("label_model", LABEL_MODELS)
def test_joint_gradient_equals_thesis_formula(label_model):
    """∂L/∂θ = −(1/B) Σ_l ∂<y_l, f(x_l)> + Σ_l p'(x_l) ∂log Z(x_l), p' = softmax_l log Z (eq. 4.15)."""
    params, x, y = _linear_problem()
    grad = jax.grad(lambda p: joint_nll(_f(p, x), y, label_model=label_model))(params)

    # independent: per-example Jacobians of <y_l, f(x_l)> and of log Z(x_l)
    def fit_l(p):
        return jnp.take_along_axis(_f(p, x), y[:, None], 1)[:, 0]

    def logz_l(p):
        f = _f(p, x)
        if label_model == "softmax":
            return jnp.log(jnp.sum(jnp.exp(f), -1))
        return jnp.sum(jnp.log1p(jnp.exp(f)), -1)

    j_fit, j_logz = jax.jacrev(fit_l)(params), jax.jacrev(logz_l)(params)
    z = np.exp(np.asarray(logz_l(params), np.float64))
    p_prime = z / z.sum()
    b = x.shape[0]
    for name in params:
        jf = np.asarray(j_fit[name], np.float64)
        jz = np.asarray(j_logz[name], np.float64)
        expected = -jf.sum(0) / b + np.tensordot(p_prime, jz, axes=(0, 0))
        np.testing.assert_allclose(grad[name], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("label_model", LABEL_MODELS)
def test_batch_of_one_equals_cross_entropy(label_model):
    params, x, y = _linear_problem(b=1)
    joint = lambda p: joint_nll(_f(p, x), y, label_model=label_model)
    cond = lambda p: conditional_nll(_f(p, x), y, label_model=label_model)
    np.testing.assert_allclose(joint(params), cond(params), rtol=1e-6)
    gj, gc = jax.grad(joint)(params), jax.grad(cond)(params)
    for name in params:
        np.testing.assert_allclose(gj[name], gc[name], rtol=1e-5, atol=1e-6)


def test_binary_conditional_is_thesis_eq_2_20():
    params, x, y = _linear_problem()
    f = _f(params, x)
    yk = np.eye(f.shape[1])[np.asarray(y)]
    expected = -np.mean(np.sum(yk * f - np.log1p(np.exp(np.asarray(f, np.float64))), -1))
    np.testing.assert_allclose(conditional_nll(f, y, label_model="binary"), expected, rtol=1e-5)


def test_joint_closed_form_value():
    params, x, y = _linear_problem()
    f = np.asarray(_f(params, x), np.float64)
    b = len(f)
    logz = np.log(np.exp(f).sum(-1))
    expected = -f[np.arange(b), np.asarray(y)].mean() + np.log(np.exp(logz).sum()) - np.log(b)
    np.testing.assert_allclose(joint_nll(_f(params, x), y), expected, rtol=1e-5)


@pytest.mark.parametrize("joint_weight", [0.0, 0.3, 1.0])
def test_classifier_objective_is_the_lambda_mix(joint_weight):
    """(1 − λ)·CE + λ·joint NLL over the valid rows (closed forms), both parts logged, the
    gradient only through the weighted parts."""
    params, x, y = _linear_problem()
    mask = jnp.arange(16) < 13
    f, yn, m = np.asarray(_f(params, x), np.float64), np.asarray(y), np.asarray(mask)
    logz = np.log(np.exp(f).sum(-1))
    fit = f[np.arange(16), yn]
    ce = np.mean((logz - fit)[m])
    joint = -fit[m].mean() + np.log(np.exp(logz[m]).sum()) - np.log(m.sum())
    loss, aux = classifier_objective(_f(params, x), y, mask, joint_weight=joint_weight,
                                     label_model="softmax")
    np.testing.assert_allclose(loss, (1 - joint_weight) * ce + joint_weight * joint, rtol=1e-5)
    np.testing.assert_allclose([aux["conditional_nll"], aux["joint_nll"]], [ce, joint],
                               rtol=1e-5)
    np.testing.assert_allclose(aux["accuracy"], np.mean((f.argmax(-1) == yn)[m]), rtol=1e-6)
    grad = jax.grad(lambda p: classifier_objective(
        _f(p, x), y, mask, joint_weight=joint_weight, label_model="softmax")[0])(params)
    parts = [jax.grad(lambda p: fn(_f(p, x), y, mask=mask))(params)
             for fn in (conditional_nll, joint_nll)]
    want = jax.tree.map(lambda a, b: (1 - joint_weight) * a + joint_weight * b, *parts)
    for g, w in zip(jax.tree.leaves(grad), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_mask_excludes_padding():
    params, x, y = _linear_problem()
    f = _f(params, x)
    mask = jnp.arange(16) < 11
    np.testing.assert_allclose(joint_nll(f, y, mask=mask), joint_nll(f[:11], y[:11]), rtol=1e-6)
    np.testing.assert_allclose(conditional_nll(f, y, mask=mask), conditional_nll(f[:11], y[:11]),
                               rtol=1e-6)


@pytest.mark.parametrize("label_model", LABEL_MODELS)
@pytest.mark.parametrize("joint_weight", [0.0, 0.5, 1.0])
def test_sharded_equals_single_device(label_model, joint_weight):
    params, x, y = _linear_problem(b=32)
    mask = jnp.ones(32, bool).at[-3:].set(False)   # padding rows on the last device
    batch = {"x": x, "label": y, "mask": mask}

    def loss_fn(p, batch, rng, axis_name=None):
        return classifier_objective(_f(p, batch["x"]), batch["label"], batch["mask"],
                                    joint_weight=joint_weight, label_model=label_model,
                                    axis_name=axis_name)

    results = []
    for n in (1, 8):
        mesh = parallel.make_mesh(n)
        # the objective's own shard_map (the trainer's wrapper, parallel.shard_loss, is
        # tested with the trainer): params replicated, batch split, outputs replicated
        sharded = jax.shard_map(lambda p, bt: loss_fn(p, bt, None, parallel.AXIS), mesh=mesh,
                                in_specs=(P(), P(parallel.AXIS)), out_specs=P())
        gbatch = jax.device_put(batch, parallel.data_sharded(mesh))
        (loss, aux), grads = jax.jit(jax.value_and_grad(sharded, has_aux=True))(params, gbatch)
        results.append((loss, aux, grads))
    (l1, a1, g1), (l8, a8, g8) = results
    (lref, aref), gref = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, None)
    for loss, aux, grads in results:
        np.testing.assert_allclose(loss, lref, rtol=1e-5, atol=1e-6)
        for k in aref:
            np.testing.assert_allclose(aux[k], aref[k], rtol=1e-5, atol=1e-6)
        for name in params:
            np.testing.assert_allclose(grads[name], gref[name], rtol=1e-5, atol=1e-6)


def _sharded_logit_grad(logits, labels, mesh):
    def per_device(lg, lb):
        return joint_nll(lg, lb, axis_name=parallel.AXIS)
    f = jax.shard_map(per_device, mesh=mesh, in_specs=(P(parallel.AXIS), P(parallel.AXIS)),
                      out_specs=P())
    return np.asarray(jax.jit(jax.grad(f))(logits, labels))


def test_partition_is_global_across_devices():
    """Perturbing an example on device 7 changes the weights p' of device 0's examples."""
    mesh = parallel.make_mesh(8)
    r = np.random.default_rng(3)
    logits = jnp.asarray(r.normal(size=(16, 5)), jnp.float32)
    labels = jnp.asarray(r.integers(0, 5, 16), jnp.int32)
    g = _sharded_logit_grad(logits, labels, mesh)
    g2 = _sharded_logit_grad(logits.at[-1].add(3.0), labels, mesh)   # row 15 lives on device 7
    assert not np.allclose(g[:2], g2[:2], atol=1e-6)                  # rows 0, 1: device 0
    # and the device-0 rows match the global formula ∂L/∂f_l = −y_l/B + p'_l softmax(f_l)
    for lg, grad in ((logits, g), (logits.at[-1].add(3.0), g2)):
        f = np.asarray(lg, np.float64)
        logz = np.log(np.exp(f).sum(-1))
        p_prime = np.exp(logz - logz.max()) / np.exp(logz - logz.max()).sum()
        soft = np.exp(f - logz[:, None])
        expected = -np.eye(5)[np.asarray(labels)] / 16 + p_prime[:, None] * soft
        np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)
    # a per-device partition (the silent bug) would give different weights
    local = np.asarray(jax.grad(lambda lg: joint_nll(lg[:2], labels[:2]))(logits))[:2] / 8
    assert not np.allclose(local, g[:2], atol=1e-6)


@pytest.mark.parametrize("label_model", LABEL_MODELS)
def test_large_logits_are_stable(label_model):
    r = np.random.default_rng(4)
    logits = jnp.asarray(r.normal(size=(16, 4)) * 1e4, jnp.float32)
    labels = jnp.asarray(r.integers(0, 4, 16), jnp.int32)
    mesh = parallel.make_mesh(8)

    def per_device(lg, lb):
        return joint_nll(lg, lb, label_model=label_model, axis_name=parallel.AXIS)
    f = jax.shard_map(per_device, mesh=mesh, in_specs=(P(parallel.AXIS), P(parallel.AXIS)),
                      out_specs=P())
    loss, grad = jax.jit(jax.value_and_grad(f))(logits, labels)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    loss1, grad1 = jax.value_and_grad(
        lambda lg: joint_nll(lg, labels, label_model=label_model))(logits)
    np.testing.assert_allclose(loss, loss1, rtol=1e-5)
    np.testing.assert_allclose(grad, grad1, rtol=1e-4, atol=1e-6)


def _masked_sharded_logit_grad(logits, labels, mask, mesh, label_model):
    def per_device(lg, lb, m):
        return joint_nll(lg, lb, label_model=label_model, axis_name=parallel.AXIS, mask=m)
    spec = P(parallel.AXIS)
    f = jax.shard_map(per_device, mesh=mesh, in_specs=(spec, spec, spec), out_specs=P())
    return jax.jit(jax.value_and_grad(f))(logits, labels, mask)


# Padding rows whose log Z(x) lies far above every valid row's (or that hold garbage):
# masking exp(log Z − shift) only *after* the exp gave 0·inf = NaN gradients (issue 7).
PADDING_CASES = {
    "padding_logits_1e4": (0.0, 1e4),      # valid rows ~N(0, 1), padding rows 1e4
    "valid_rows_low": (-300.0, 0.0),       # valid rows ~N(−300, 1), padding rows (zero images) 0
    "padding_nan": (0.0, float("nan")),
    "padding_inf": (0.0, float("inf")),
}


@pytest.mark.parametrize("label_model", LABEL_MODELS)
@pytest.mark.parametrize("case", sorted(PADDING_CASES))
def test_padding_rows_get_exactly_zero_finite_gradient(label_model, case):
    valid_offset, pad_value = PADDING_CASES[case]
    r = np.random.default_rng(5)
    n_valid, b = 13, 16                                   # 3 padding rows, on device 7 of 8
    valid = r.normal(size=(n_valid, 4)) + valid_offset
    logits = jnp.asarray(np.concatenate([valid, np.full((b - n_valid, 4), pad_value)]),
                         jnp.float32)
    labels = jnp.asarray(r.integers(0, 4, b), jnp.int32)
    mask = jnp.arange(b) < n_valid

    ref_loss, ref_grad = jax.value_and_grad(
        lambda lg: joint_nll(lg, labels[:n_valid], label_model=label_model))(logits[:n_valid])
    assert np.isfinite(ref_loss) and np.all(np.isfinite(ref_grad))
    single = jax.value_and_grad(
        lambda lg: joint_nll(lg, labels, label_model=label_model, mask=mask))(logits)
    sharded = _masked_sharded_logit_grad(logits, labels, mask, parallel.make_mesh(8),
                                         label_model)
    for loss, grad in (single, sharded):
        grad = np.asarray(grad)
        assert np.isfinite(loss) and np.all(np.isfinite(grad)), (loss, grad)
        assert np.all(grad[n_valid:] == 0.0), grad[n_valid:]
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
        np.testing.assert_allclose(grad[:n_valid], ref_grad, rtol=1e-5, atol=1e-7)
    # the conditional (FFN) part on the same padded batch
    cond_loss, cond_grad = jax.value_and_grad(
        lambda lg: conditional_nll(lg, labels, label_model=label_model, mask=mask))(logits)
    assert np.isfinite(cond_loss) and np.all(np.asarray(cond_grad)[n_valid:] == 0.0)
    assert np.all(np.isfinite(np.asarray(cond_grad)))
