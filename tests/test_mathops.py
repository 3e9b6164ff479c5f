"""The shared formulas of jaxhybrid.mathops against scipy/numpy, and the masked global
reductions on 1 and 8 devices with padding rows."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from scipy import integrate, special, stats

from jaxhybrid import mathops, parallel


def test_normal_log_prob_equals_scipy_in_both_parametrisations():
    r = np.random.default_rng(0)
    x, m, s = r.normal(size=50), r.normal(size=50), np.exp(r.normal(size=50))
    expected = stats.norm.logpdf(x, m, s)
    np.testing.assert_allclose(mathops.normal_log_prob(x, m, scale=s), expected, rtol=1e-5)
    np.testing.assert_allclose(mathops.normal_log_prob(x, m, log_scale=np.log(s)), expected,
                               rtol=1e-5)
    np.testing.assert_allclose(mathops.HALF_LOG_2PI, -stats.norm.logpdf(0.0), rtol=1e-15)
    with pytest.raises(ValueError, match="exactly one of scale, log_scale"):
        mathops.normal_log_prob(x, m)


def test_gaussian_kls_equal_quadrature():
    for mq, sq, mp, sp in [(0.3, 0.5, -1.0, 2.0), (2.0, 1.5, 0.0, 1.0), (-0.5, 0.1, 0.2, 0.3)]:
        q, p = stats.norm(mq, sq), stats.norm(mp, sp)
        kl, _ = integrate.quad(lambda u: q.pdf(u) * (q.logpdf(u) - p.logpdf(u)),
                               mq - 12 * sq, mq + 12 * sq)
        np.testing.assert_allclose(mathops.kl_normal(mq, sq, mp, sp), kl, rtol=1e-5)
        if (mp, sp) == (0.0, 1.0):
            np.testing.assert_allclose(mathops.kl_normal_std(mq, 2 * np.log(sq)), kl, rtol=1e-5)
    r = np.random.default_rng(1)
    mu, log_var = r.normal(size=(4, 6)), r.normal(size=(4, 6))
    np.testing.assert_allclose(mathops.kl_normal_std(mu, log_var),
                               mathops.kl_normal(mu, np.exp(0.5 * log_var), 0.0, 1.0),
                               rtol=1e-5, atol=1e-6)


def test_reparameterised_samples_have_the_moments_of_n_mu_sigma():
    eps = jax.random.normal(jax.random.PRNGKey(0), (200_000,))
    z = np.asarray(mathops.reparameterise(1.5, 0.25, eps), np.float64)
    np.testing.assert_allclose([z.mean(), z.std()], [1.5, 0.25], rtol=5e-3)
    assert stats.kstest(z[:5000], stats.norm(1.5, 0.25).cdf).pvalue > 1e-3


def test_softmax_cross_entropy_and_log_mean_exp_equal_numpy():
    r = np.random.default_rng(2)
    logits, labels = r.normal(size=(7, 5)) * 30, r.integers(0, 5, size=7)
    expected = special.logsumexp(logits, axis=-1) - logits[np.arange(7), labels]
    np.testing.assert_allclose(mathops.softmax_cross_entropy(logits, jnp.asarray(labels)),
                               expected, rtol=1e-5, atol=1e-5)
    log_w = r.normal(size=(6, 3)) * 50
    np.testing.assert_allclose(mathops.log_mean_exp(jnp.asarray(log_w, jnp.float32)),
                               special.logsumexp(log_w, axis=0) - np.log(6), rtol=1e-5)
    np.testing.assert_allclose(mathops.log_mean_exp(jnp.asarray(log_w, jnp.float32), axis=1),
                               special.logsumexp(log_w, axis=1) - np.log(3), rtol=1e-5)


def _reductions(x, values, mask, axis_name):
    """Every masked global reduction of one (per-device) batch: a dict of arrays."""
    total, count = mathops.masked_sum_and_count(x, mask, axis_name, keep_last=True)
    return {"mean": mathops.global_mean(values, mask, axis_name),
            "count": mathops.global_count(mask, axis_name),
            "logsumexp": mathops.global_logsumexp(values, mask, axis_name),
            "feature_sums": total, "rows": count}


def _padded_batch(b=24, valid=13):
    """x [B, 2, 3], values [B], mask [B]: padding rows hold 1e30 (one value inf), placed
    so that the 8 devices hold 0, 3, 3, 3, 3, 1, 0, 0 valid rows."""
    r = np.random.default_rng(3)
    x = r.normal(size=(b, 2, 3)).astype(np.float32)
    values = r.normal(size=b).astype(np.float32) * 4
    mask = np.arange(b) < valid
    x[~mask], values[~mask] = 1e30, 1e30
    values[valid] = np.inf
    first = np.arange(valid, valid + 3)                   # padding first: device 0 has none
    order = np.r_[first, np.setdiff1d(np.arange(b), first)]
    return x[order], values[order], mask[order]


def test_masked_global_reductions_are_the_same_on_1_and_8_devices_and_equal_numpy():
    x, values, mask = _padded_batch()
    v = values[mask].astype(np.float64)
    expected = {"mean": v.mean(), "count": mask.sum(), "logsumexp": special.logsumexp(v),
                "feature_sums": x[mask].astype(np.float64).sum(axis=(0, 1)),
                "rows": mask.sum()}
    one = _reductions(*map(jnp.asarray, (x, values, mask)), None)
    mesh = parallel.make_mesh(8)
    spec = P(parallel.AXIS)
    sharded = jax.jit(jax.shard_map(lambda a, b, c: _reductions(a, b, c, parallel.AXIS),
                                    mesh=mesh, in_specs=(spec, spec, spec), out_specs=P()))
    eight = sharded(*map(jnp.asarray, (x, values, mask)))
    assert not mask[:3].any()          # device 0 holds padding only
    for name, want in expected.items():
        np.testing.assert_allclose(one[name], want, rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(eight[name], want, rtol=1e-5, err_msg=name)
    no_rows = mathops.global_mean(jnp.ones(4), jnp.zeros(4, bool))
    assert float(no_rows) == 0.0


def test_gradients_are_finite_and_zero_on_padding_rows_with_extreme_values():
    x, values, mask = map(jnp.asarray, _padded_batch())

    def scalar(values, x, axis_name=None):
        out = _reductions(x, values, mask, axis_name)
        return out["mean"] + out["logsumexp"] + jnp.sum(out["feature_sums"])

    g_values, g_x = jax.grad(scalar, argnums=(0, 1))(values, x)
    for g in (g_values, g_x):
        assert np.all(np.isfinite(g))
        assert np.all(np.asarray(g)[~np.asarray(mask)] == 0.0)
    # valid rows: d mean/dv = 1/B, d logsumexp/dv = softmax over the valid rows
    v = np.asarray(values, np.float64)[np.asarray(mask)]
    np.testing.assert_allclose(np.asarray(g_values)[np.asarray(mask)],
                               1.0 / v.size + special.softmax(v), rtol=1e-5)
