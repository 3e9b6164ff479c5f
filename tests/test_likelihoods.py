"""Observation models (jaxhybrid/models/likelihoods.py, logistic.py), each against an independent
float64 computation (numpy / scipy / plain loops)."""
from __future__ import annotations

import dataclasses
import functools
import inspect
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from jaxhybrid.models import likelihoods as _lk


class _Jitted:
    """The module's functions, jitted (eager op-by-op dispatch is slow on this CPU);
    integer options, names and Python scalars static."""
    _static = ("num_mix", "num_bins", "channels", "log_scale_min")

    def __getattr__(self, attr):
        fn = getattr(_lk, attr)
        if attr in ("log_prob", "mean", "sample"):  # the registry's: name + **options
            return functools.partial(self._jit_non_arrays, fn)
        if not callable(fn) or attr == "out_channels":
            return fn
        params = inspect.signature(fn).parameters
        return jax.jit(fn, static_argnames=[p for p in self._static if p in params])

    @staticmethod
    def _jit_non_arrays(fn, *args, **kwargs):
        static = lambda a: isinstance(a, (str, bool, int, float))  # noqa: E731
        dyn = [a for a in args if not static(a)]

        def inner(*dyn_args):
            it = iter(dyn_args)
            return fn(*[a if static(a) else next(it) for a in args], **kwargs)
        return jax.jit(inner)(*dyn)


lk = _Jitted()


def _key(seed):
    """An RBG key: the samplers accept any key, and XLA:CPU compiles threefry's hash
    several times slower (seconds here)."""
    return jax.random.key(seed, impl="rbg")


def _centres(num_bins):
    return -1.0 + 2.0 * np.arange(num_bins) / (num_bins - 1)


def _ref_log_mass(x, mean, scale, num_bins):
    """float64 log P(bin of x) of Logistic(mean, scale) by CDF differences; the survival
    function on the right of the mean, so tails keep their precision."""
    h = 1.0 / (num_bins - 1)
    lo = np.where(x < -1 + h, -np.inf, (x - h - mean) / scale)
    hi = np.where(x > 1 - h, np.inf, (x + h - mean) / scale)
    right = x > mean
    with np.errstate(divide="ignore"):
        p = np.where(right, special.expit(-lo) - special.expit(-hi),
                     special.expit(hi) - special.expit(lo))
        return np.log(p)


# ----------------------------------------------------------------------------- Bernoulli

def test_bernoulli_matches_direct_float64():
    rng = np.random.default_rng(0)
    logits = rng.uniform(-8, 8, (3, 4, 5, 2)).astype(np.float32)
    for x in (rng.integers(0, 2, logits.shape).astype(np.float32),
              rng.uniform(0, 1, logits.shape).astype(np.float32)):  # continuous relaxation
        p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        ref = np.sum(x * np.log(p) + (1 - x) * np.log(1 - p), axis=(1, 2, 3))
        got = lk.bernoulli_log_prob(logits, x)
        assert got.shape == (3,) and got.dtype == jnp.float32
        np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_bernoulli_extreme_logits_finite_values_and_gradients():
    logits = jnp.array([[1e4, -1e4, 1e4, -1e4]], jnp.float32)
    x = jnp.array([[1.0, 0.0, 0.0, 1.0]])
    val, grad = jax.value_and_grad(lambda l: lk.bernoulli_log_prob(l, x).sum())(logits)
    np.testing.assert_allclose(val, -2e4, rtol=1e-6)  # two confident mistakes of 1e4 nats
    np.testing.assert_allclose(grad, [[0.0, 0.0, -1.0, 1.0]], atol=1e-6)  # x − σ(l)


# ------------------------------------------------------------------------------ Gaussian

@pytest.mark.parametrize("scale_kind", ["scalar", "per_channel", "per_pixel"])
def test_gaussian_matches_scipy(scale_kind):
    rng = np.random.default_rng(1)
    mean = rng.normal(size=(2, 3, 3, 2)).astype(np.float32)
    x = rng.normal(size=mean.shape).astype(np.float32)
    log_scale = {"scalar": np.float32(-0.7),
                 "per_channel": np.array([-1.0, 0.5], np.float32),
                 "per_pixel": rng.uniform(-2, 1, mean.shape).astype(np.float32)}[scale_kind]
    ref = stats.norm.logpdf(x, mean, np.exp(np.float64(log_scale))).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(lk.gaussian_log_prob(mean, x, log_scale), ref, rtol=1e-5)


# ------------------------------------------------------------------ Discretized logistic

_EXTREME_MEANS = (-30.0, -1.5, -1.0, -0.3, 0.0, 0.5, 1.0, 1.2, 30.0)
_EXTREME_LOG_SCALES = (-7.0, -4.0, -1.0, 0.0, 2.0, 5.0)


def test_discretized_logistic_bins_sum_to_one():
    xs = jnp.asarray(_centres(256), jnp.float32)[:, None]  # 256 examples of one sub-pixel
    pairs = np.array(list(itertools.product(_EXTREME_MEANS, _EXTREME_LOG_SCALES)), np.float32)

    @jax.jit
    @jax.vmap
    def total_log_mass(pair):
        lp = lk.discretized_logistic_log_prob(pair[0], pair[1], xs)  # [256]
        return jax.nn.logsumexp(lp)

    np.testing.assert_allclose(total_log_mass(pairs), 0.0, atol=2e-5)


def test_discretized_logistic_matches_float64_cdf_differences():
    rng = np.random.default_rng(2)
    shape = (4, 6, 6, 3)
    mean = rng.uniform(-1.2, 1.2, shape).astype(np.float32)
    log_scale = rng.uniform(-5, 1, shape).astype(np.float32)
    x = _centres(256)[rng.integers(0, 256, shape)].astype(np.float32)
    x[0, 0, :, 0], x[0, 1, :, 0] = -1.0, 1.0  # edges included
    ref = _ref_log_mass(x.astype(np.float64), mean.astype(np.float64),
                        np.exp(log_scale.astype(np.float64)), 256)
    got_elem = jax.vmap(lambda m, s, v: lk.discretized_logistic_log_prob(m, s, v))(
        mean.reshape(-1, 1), log_scale.reshape(-1, 1), x.reshape(-1, 1))
    np.testing.assert_allclose(got_elem.ravel(), ref.ravel(), rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(lk.discretized_logistic_log_prob(mean, log_scale, x),
                               ref.sum(axis=(1, 2, 3)), rtol=1e-5)


def test_discretized_logistic_edges():
    mean = np.array([[-0.9, 0.0, 0.95]], np.float32)
    log_scale = np.array([[-3.0, -1.0, -4.0]], np.float32)
    s, h = np.exp(log_scale.astype(np.float64)), 1 / 255
    for edge, ref in ((-1.0, np.log(special.expit((-1 + h - mean) / s))),
                      (1.0, np.log(special.expit(-(1 - h - mean) / s)))):  # 1 − σ(z) = σ(−z)
        got = jax.vmap(lambda m, ls: lk.discretized_logistic_log_prob(m, ls, jnp.full((1,), edge)))(
            mean.T, log_scale.T)
        np.testing.assert_allclose(got.ravel(), ref.ravel(), rtol=1e-5)


def test_discretized_logistic_gradients_finite_at_extremes():
    means = jnp.array([-50.0, -3.0, -1.0, 0.0, 1.0, 3.0, 50.0])
    log_scales = jnp.array([-10.0, -7.0, 0.0, 5.0])  # −10 is below the −7 clamp
    xs = jnp.array([-1.0, -1 + 2 / 255, 0.0, 1 - 2 / 255, 1.0])
    m, ls, x = (a.ravel() for a in jnp.meshgrid(means, log_scales, xs, indexing="ij"))

    def f(m, ls):
        return lk.discretized_logistic_log_prob(m[:, None], ls[:, None], x[:, None])

    vals = f(m, ls)
    gm, gs = jax.grad(lambda m, ls: f(m, ls).sum(), argnums=(0, 1))(m, ls)
    assert np.all(np.isfinite(vals)) and np.all(np.isfinite(gm)) and np.all(np.isfinite(gs))
    ref = _ref_log_mass(np.asarray(x, np.float64), np.asarray(m, np.float64),
                        np.exp(np.maximum(np.asarray(ls, np.float64), -7.0)), 256)
    ok = np.isfinite(ref)  # float64 itself underflows for the most extreme bins
    np.testing.assert_allclose(vals[ok], ref[ok], rtol=1e-5, atol=1e-4)


def test_discretized_logistic_tiny_mass_bins():
    """Where σ(a) − σ(b) underflows in float32 (PixelCNN++'s tiny-mass branch, cdf_delta
    < 1e-5), the value stays finite, equals float64, and agrees with PixelCNN++'s guard
    (log pdf at the bin centre + log bin width)."""
    mean, log_scale = np.float32(0.9), np.float32(-4.0)
    x = np.array([-0.5, -0.2, 0.3, 0.6], np.float32)[:, None]  # 7 to 77 scales away
    s, h = np.exp(np.float32(log_scale)), np.float32(1 / 255)
    naive = np.log(special.expit((x + h - mean) / s) - special.expit((x - h - mean) / s))
    assert np.all(naive < np.log(1e-5))  # the guarded regime; float32 differencing fails
    got = lk.discretized_logistic_log_prob(mean, log_scale, x)
    ref = _ref_log_mass(x.astype(np.float64), np.float64(mean), np.exp(np.float64(log_scale)),
                        256)[:, 0]
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    mid = (x[:, 0] - mean) / s  # PixelCNN++: log_pdf_mid − log(127.5)
    guard = mid - log_scale - 2 * np.logaddexp(0, mid) + np.log(2 / 255)
    np.testing.assert_allclose(got, guard, atol=0.02)


# ----------------------------------------------------------------------------- Mixture

def test_mixture_single_component_equals_single_logistic():
    rng = np.random.default_rng(3)
    mean = rng.uniform(-1.2, 1.2, (2, 5, 5, 1)).astype(np.float32)
    log_scale = rng.uniform(-6, 1, mean.shape).astype(np.float32)
    x = _centres(256)[rng.integers(0, 256, mean.shape)].astype(np.float32)
    single = lk.discretized_logistic_log_prob(mean, log_scale, x)
    params = np.concatenate([rng.normal(size=mean.shape), mean, log_scale], -1)  # 3·M, M=1
    np.testing.assert_allclose(lk.discretized_mix_logistic_log_prob(params, x, num_mix=1),
                               single, rtol=1e-6)
    # three identical components, any weights: the same distribution
    same = np.concatenate([rng.normal(size=mean.shape[:-1] + (3,)), np.repeat(mean, 3, -1),
                           np.repeat(log_scale, 3, -1)], -1)
    np.testing.assert_allclose(lk.discretized_mix_logistic_log_prob(same, x, num_mix=3),
                               single, rtol=1e-5)


def _random_mix_params(rng, lead, channels, num_mix, spread=1.0):
    m, per = num_mix, (3 if channels == 3 else 2)
    logits = rng.normal(size=lead + (m,)) * spread
    rest = np.empty(lead + (channels, per * m))
    rest[..., :m] = rng.uniform(-1.3, 1.3, lead + (channels, m))
    rest[..., m:2 * m] = rng.uniform(-3, 0.5, lead + (channels, m))
    if per == 3:
        rest[..., 2 * m:] = rng.normal(size=lead + (channels, m)) * 2 * spread
    return np.concatenate([logits, rest.reshape(lead + (-1,))], -1).astype(np.float32)


@pytest.mark.parametrize("channels,num_bins", [(3, 8), (1, 256)])
def test_mixture_normalised_over_all_joint_values(channels, num_bins):
    rng = np.random.default_rng(4)
    grid = np.array(list(itertools.product(_centres(num_bins), repeat=channels)), np.float32)
    x = grid[:, None, None, :]  # every joint value as one example of a 1×1 image
    for spread in (1.0, 10.0):  # 10: near-one-hot weights, coefficients tanh → ±1
        params = _random_mix_params(rng, (1, 1, 1), channels, 4, spread)
        lp = lk.discretized_mix_logistic_log_prob(params, x, num_mix=4, num_bins=num_bins)
        assert lp.shape == (len(grid),)
        np.testing.assert_allclose(jax.nn.logsumexp(lp), 0.0, atol=2e-5)


def _loop_reference(params, x, num_mix, num_bins=256):
    """Plain-loop float64 PixelCNN++ (3 channels): Σ_pixels log Σ_m π_m Π_c P(x_c | m)."""
    params, x = params.astype(np.float64), x.astype(np.float64)
    b_, h_, w_, c_ = x.shape
    m_ = num_mix
    out = np.zeros(b_)
    for b, i, j in itertools.product(range(b_), range(h_), range(w_)):
        p = params[b, i, j]
        logits = p[:m_]
        log_pi = logits - special.logsumexp(logits)
        per_channel = p[m_:].reshape(c_, 3 * m_)
        terms = []
        for k in range(m_):
            mu = [per_channel[c, k] for c in range(3)]
            ls = [max(per_channel[c, m_ + k], -7.0) for c in range(3)]
            alpha, beta, gamma = (math.tanh(per_channel[c, 2 * m_ + k]) for c in range(3))
            r, g, bl = x[b, i, j]
            mu = [mu[0], mu[1] + alpha * r, mu[2] + beta * r + gamma * g]
            lp = sum(_ref_log_mass(np.float64(v), mu[c], math.exp(ls[c]), num_bins)
                     for c, v in enumerate((r, g, bl)))
            terms.append(log_pi[k] + lp)
        out[b] += special.logsumexp(terms)
    return out


def test_mixture_rgb_equals_loop_reference():
    rng = np.random.default_rng(5)
    num_mix = 3
    params = _random_mix_params(rng, (2, 2, 3), 3, num_mix)
    params[0, 0, 0, num_mix + num_mix:num_mix + 2 * num_mix] = -9.0  # below the clamp
    x = _centres(256)[rng.integers(0, 256, (2, 2, 3, 3))].astype(np.float32)
    x[0, 0, 0], x[1, 1, 2] = (-1.0, 1.0, -1.0), (1.0, 1.0, 1.0)
    got = lk.discretized_mix_logistic_log_prob(params, x, num_mix=num_mix)
    np.testing.assert_allclose(got, _loop_reference(params, x, num_mix), rtol=1e-5)


def test_mixture_gradients_finite_at_edges():
    rng = np.random.default_rng(6)
    params = _random_mix_params(rng, (2, 3, 3), 3, 5, spread=5.0)
    params[0, ..., 5:10] = 20.0     # channel-0 means far outside [−1, 1]
    params[1, ..., 10:15] = -20.0   # channel-0 log-scales far below the clamp
    params[1, ..., 25:30] = 5.0     # channel-1 log-scales large
    x = rng.choice([-1.0, 1.0], (2, 3, 3, 3)).astype(np.float32)
    val, grad = jax.value_and_grad(
        lambda p: lk.discretized_mix_logistic_log_prob(p, x, num_mix=5).sum())(params)
    assert np.isfinite(val) and np.all(np.isfinite(grad))


def test_mixture_rejects_wrong_param_count():
    with pytest.raises(ValueError, match="expected num_mix"):
        lk.discretized_mix_logistic_log_prob(jnp.zeros((1, 2, 2, 30)), jnp.zeros((1, 2, 2, 3)))


def test_mixture_sample_matches_probabilities():
    """Sampling on a 4-bin grid, 3 channels: empirical frequencies of the 64 joint values
    match exp(log_prob)."""
    rng = np.random.default_rng(7)
    num_bins, num_mix, n = 4, 2, 40_000
    params = _random_mix_params(rng, (1, 1, 1), 3, num_mix)
    draws = lk.discretized_mix_logistic_sample(
        _key(0), jnp.broadcast_to(params, (n,) + params.shape[1:]), 3, num_mix, num_bins)
    grid = _centres(num_bins)
    idx = np.rint((np.asarray(draws).reshape(n, 3) + 1) / (grid[1] - grid[0])).astype(int)
    assert np.allclose(np.asarray(draws).reshape(n, 3), grid[idx], atol=1e-6)  # on the grid
    freq = np.bincount(np.ravel_multi_index(idx.T, (num_bins,) * 3), minlength=64) / n
    joint = np.array(list(itertools.product(grid, repeat=3)), np.float32)[:, None, None, :]
    prob = np.exp(lk.discretized_mix_logistic_log_prob(params, joint, num_mix, num_bins))
    assert np.all(np.abs(freq - prob) <= 4 * np.sqrt(prob * (1 - prob) / n) + 1e-3)


def test_mixture_mean_of_sharp_component():
    params = np.zeros((1, 10), np.float32)  # M = 1, RGB: logit | per channel (μ, log s, coeff)
    params[0, 1:] = [0.2, -7, 0.5, 0.1, -7, 0.0, -0.3, -7, 1.0]  # α=tanh .5, β=0, γ=tanh 1
    r = 0.2
    g = 0.1 + np.tanh(0.5) * r
    b = -0.3 + 0.0 * r + np.tanh(1.0) * g
    np.testing.assert_allclose(lk.discretized_mix_logistic_mean(params, 3, num_mix=1),
                               [[r, g, b]], rtol=1e-5)


# ------------------------------------------------------------------------------ bf16

def test_bf16_inputs_give_float32_outputs():
    rng = np.random.default_rng(8)
    x_bin = rng.integers(0, 2, (2, 4, 4, 3)).astype(np.float32)
    x_img = _centres(256)[rng.integers(0, 256, (2, 4, 4, 3))].astype(np.float32)
    mean = rng.uniform(-1, 1, x_img.shape).astype(np.float32)
    ls = rng.uniform(-4, 0, x_img.shape).astype(np.float32)
    mix = _random_mix_params(rng, (2, 4, 4), 3, 10)
    cases = [
        (lk.bernoulli_log_prob, (mean * 5, x_bin)),
        (lk.gaussian_log_prob, (mean, x_img, ls)),
        (lambda m, s, x: lk.discretized_logistic_log_prob(m, s, x), (mean, ls, x_img)),
        (lambda p, x: lk.discretized_mix_logistic_log_prob(p, x), (mix, x_img)),
    ]
    for fn, args in cases:
        # decoder outputs in bf16; the data x stays float32 (its bins are not bf16-exact)
        low = [a.astype(jnp.bfloat16) if a is not args[-1] else a for a in args]
        got = fn(*low)
        assert got.dtype == jnp.float32
        same_values = fn(*[jnp.asarray(a, jnp.float32) for a in low])
        np.testing.assert_allclose(got, same_values, rtol=1e-6)  # accumulated in fp32
        np.testing.assert_allclose(got, fn(*args), rtol=0.05)  # bf16 rounding of params


# ---------------------------------------------------------------------------- Registry

def test_registry_out_channels_and_errors():
    assert lk.out_channels("bernoulli", 1) == 1
    assert lk.out_channels("gaussian", 3) == 6
    assert lk.out_channels("gaussian", 3, per_pixel_scale=False) == 3
    assert lk.out_channels("discretized_logistic", 3) == 6
    assert lk.out_channels("discretized_mix_logistic", 3) == 100  # PixelCNN++: 10·M
    assert lk.out_channels("discretized_mix_logistic", 1, num_mix=5) == 15
    with pytest.raises(ValueError, match="valid choices: bernoulli, discretized_logistic"):
        lk.log_prob("logistic", jnp.zeros((1, 2)), jnp.zeros((1, 2)))
    with pytest.raises(ValueError, match="valid options: num_bins, log_scale_min, num_mix"):
        lk.out_channels("discretized_mix_logistic", 3, num_bin=8)
    with pytest.raises(ValueError, match="expects 4 decoder channels"):
        lk.log_prob("gaussian", jnp.zeros((1, 3)), jnp.zeros((1, 2)))


def test_registry_log_prob_splits_decoder_output():
    rng = np.random.default_rng(9)
    x = _centres(256)[rng.integers(0, 256, (2, 3, 3, 3))].astype(np.float32)
    out2 = rng.normal(size=(2, 3, 3, 6)).astype(np.float32)
    mean, ls = out2[..., :3], out2[..., 3:]
    np.testing.assert_allclose(lk.log_prob("gaussian", out2, x), lk.gaussian_log_prob(mean, x, ls))
    np.testing.assert_allclose(lk.log_prob("gaussian", mean, x, per_pixel_scale=False,
                                           log_scale=0.3),
                               lk.gaussian_log_prob(mean, x, 0.3))
    np.testing.assert_allclose(lk.log_prob("discretized_logistic", out2, x, num_bins=256),
                               lk.discretized_logistic_log_prob(mean, ls, x))
    np.testing.assert_allclose(lk.log_prob("bernoulli", mean, (x > 0).astype(np.float32)),
                               lk.bernoulli_log_prob(mean, x > 0))
    mix = _random_mix_params(rng, (2, 3, 3), 3, 10)
    np.testing.assert_allclose(lk.log_prob("discretized_mix_logistic", mix, x),
                               lk.discretized_mix_logistic_log_prob(mix, x))
    # importance samples on a leading axis broadcast against x: [S, B]
    stacked = np.stack([mix, mix[::-1]])
    got = lk.log_prob("discretized_mix_logistic", stacked, x)
    assert got.shape == (2, 2)
    np.testing.assert_allclose(got[1], lk.discretized_mix_logistic_log_prob(mix[::-1], x),
                               rtol=1e-6)
    # means and samples come back in data space, float32 (samples: one jit for all four)
    outs = {"bernoulli": mean, "gaussian": out2, "discretized_logistic": out2,
            "discretized_mix_logistic": mix}
    for name, out in outs.items():
        assert lk.mean(name, out, 3).shape == x.shape
    samples = jax.jit(lambda key, outs: {
        name: _lk.sample(name, jax.random.fold_in(key, i), out, 3)
        for i, (name, out) in enumerate(outs.items())})(_key(1), outs)
    for name, s in samples.items():
        assert s.shape == x.shape and s.dtype == jnp.float32, name
    assert set(np.unique(samples["bernoulli"])) <= {0.0, 1.0}
    grid = _centres(256)
    for name in ("discretized_logistic", "discretized_mix_logistic"):
        drawn = np.asarray(samples[name])
        np.testing.assert_allclose(drawn, grid[np.rint((drawn + 1) * 127.5).astype(int)],
                                   atol=1e-6)


# ------------------------------------------------------------ One class per likelihood

def test_each_default_declared_once_and_shared_with_the_math():
    classes = {type(entry) for entry in _lk.LIKELIHOODS.values()}
    owners = {}  # option -> the classes that declare it
    for cls in classes:
        for f in dataclasses.fields(cls):
            owners.setdefault(f.name, set()).update(
                k for k in cls.__mro__ if f.name in vars(k).get("__annotations__", {}))
    assert all(len(declared) == 1 for declared in owners.values()), owners
    defaults = {f.name: f.default for cls in classes for f in dataclasses.fields(cls)}
    assert defaults == {"per_pixel_scale": True, "log_scale": None, "num_bins": 256,
                        "log_scale_min": -7.0, "num_mix": 10}
    for fn in (_lk.discretized_logistic_log_prob, _lk.discretized_logistic_sample,
               _lk.discretized_mix_logistic_log_prob, _lk.discretized_mix_logistic_mean,
               _lk.discretized_mix_logistic_sample, _lk.mix_out_channels):
        for p in inspect.signature(fn).parameters.values():
            if p.name in defaults and p.default is not p.empty:
                assert p.default == defaults[p.name], (fn.__name__, p.name)


def test_registry_entries_describe_themselves():
    assert list(_lk.LIKELIHOODS) == ["bernoulli", "gaussian", "discretized_logistic",
                                     "discretized_mix_logistic"]
    for name, entry in _lk.LIKELIHOODS.items():
        assert entry.name == name and entry.support in _lk.SUPPORTS
        assert entry.bits_per_dim and entry.options == tuple(
            f.name for f in dataclasses.fields(entry))
        assert _lk.get_likelihood(name) is entry
    configured = _lk.get_likelihood("discretized_mix_logistic", {"num_mix": 3})
    assert configured.num_mix == 3 and configured.num_bins == 256
    assert _lk.LIKELIHOODS["discretized_mix_logistic"].num_mix == 10  # default untouched
    with pytest.raises(ValueError, match="log_scale is given but per_pixel_scale=True"):
        _lk.log_prob("gaussian", jnp.zeros((1, 4)), jnp.zeros((1, 2)), log_scale=0.0)
    with pytest.raises(ValueError, match="per_pixel_scale=False needs log_scale"):
        _lk.log_prob("discretized_logistic", jnp.zeros((1, 2)), jnp.zeros((1, 2)),
                     per_pixel_scale=False)


def _by_hand(name, out, x, key, channels, opts):
    """What each registry entry computed before the classes: the math functions with
    the options' old defaults spelled out (256 bins, log-scale floor −7, 10 components)."""
    o = {"per_pixel_scale": True, "log_scale": None, "num_bins": 256,
         "log_scale_min": -7.0, "num_mix": 10, **opts}
    if name == "bernoulli":
        return (_lk.bernoulli_log_prob(out, x), _lk.bernoulli_mean(out),
                _lk.bernoulli_sample(key, out))
    if name == "discretized_mix_logistic":
        bins = (o["num_bins"], o["log_scale_min"])
        return (_lk.discretized_mix_logistic_log_prob(out, x, o["num_mix"], *bins),
                _lk.discretized_mix_logistic_mean(out, channels, o["num_mix"]),
                _lk.discretized_mix_logistic_sample(key, out, channels, o["num_mix"], *bins))
    loc, ls = ((out[..., :channels], out[..., channels:]) if o["per_pixel_scale"]
               else (out, o["log_scale"]))
    if name == "gaussian":
        return (_lk.gaussian_log_prob(loc, x, ls), loc.astype(jnp.float32),
                _lk.gaussian_sample(key, loc, ls))
    bins = (o["num_bins"], o["log_scale_min"])
    return (_lk.discretized_logistic_log_prob(loc, ls, x, *bins),
            _lk.discretized_logistic_mean(loc),
            _lk.discretized_logistic_sample(key, loc, ls, *bins))


def test_classes_equal_the_math_functions_bit_for_bit():
    rng = np.random.default_rng(10)
    x = _centres(256)[rng.integers(0, 256, (2, 3, 3, 3))].astype(np.float32)
    out6 = rng.normal(size=(2, 2, 3, 3, 6)).astype(np.float32)  # [S, B, H, W, 2C]
    cases = [("bernoulli", out6[..., :3], (x > 0).astype(np.float32), {}),
             ("gaussian", out6, x, {}),
             ("gaussian", out6[..., :3], x, {"per_pixel_scale": False, "log_scale": 0.3}),
             ("discretized_logistic", out6, x, {}),
             ("discretized_logistic", out6[..., :3], x,
              {"per_pixel_scale": False, "log_scale": -2.0, "log_scale_min": None}),
             ("discretized_mix_logistic", _random_mix_params(rng, (2, 3, 3), 3, 10), x, {}),
             ("discretized_mix_logistic", _random_mix_params(rng, (2, 3, 3), 1, 2),
              x[..., :1], {"num_mix": 2, "num_bins": 8, "log_scale_min": -5.0})]

    @jax.jit
    def both(key, arrays):
        res = []
        for (name, _, _, opts), (out, x) in zip(cases, arrays):
            c = x.shape[-1]
            entry = _lk.get_likelihood(name, opts)
            res.append(((entry.log_prob(out, x), entry.mean(out, c), entry.sample(key, out, c)),
                        _by_hand(name, out, x, key, c, opts)))
        return res

    results = both(_key(2), [(out, x) for _, out, x, _ in cases])
    for (name, out, x, opts), (got, want) in zip(cases, results):
        assert _lk.get_likelihood(name, opts).out_channels(x.shape[-1]) == out.shape[-1]
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w, err_msg=f"{name} {opts}")
