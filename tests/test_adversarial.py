"""FGSM / PGD on a tiny pure-jnp MLP: exact properties, finite differences, batch independence."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxhybrid.evaluators import adversarial

H, W, C, HIDDEN, K = 4, 4, 1, 8, 3
_rng = np.random.default_rng(0)
W1 = _rng.normal(size=(H * W * C, HIDDEN)) * 0.8
B1 = _rng.normal(size=HIDDEN) * 0.1
W2 = _rng.normal(size=(HIDDEN, K)) * 1.0
B2 = _rng.normal(size=K) * 0.1


def logits_fn(x):
    """Pixel-space [B, H, W, C] -> logits [B, K]; normalisation inside, as docs/metrics.md asks."""
    h = ((x - 0.5) / 0.25).reshape(x.shape[0], -1)
    h = jnp.tanh(h @ jnp.asarray(W1, jnp.float32) + jnp.asarray(B1, jnp.float32))
    return h @ jnp.asarray(W2, jnp.float32) + jnp.asarray(B2, jnp.float32)


def summed_ce_np(x, y):
    """The same model and summed CE in float64 numpy, for finite differences."""
    h = np.tanh(((x - 0.5) / 0.25).reshape(x.shape[0], -1) @ W1 + B1)
    z = h @ W2 + B2
    z = z - z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return -np.sum(logp[np.arange(x.shape[0]), y])


def _data(seed, b=6, lo=0.2, hi=0.8):
    r = np.random.default_rng(seed)
    x = r.uniform(lo, hi, size=(b, H, W, C)).astype(np.float32)
    y = r.integers(0, K, b)
    return x, y


def test_eps_zero_is_identity():
    x, y = _data(1)
    x[0, 0, 0, 0] = 1.7  # even outside the clip range, eps = 0 returns x untouched
    np.testing.assert_array_equal(np.asarray(adversarial.fgsm(logits_fn, x, y, 0.0)), x)
    np.testing.assert_array_equal(
        np.asarray(adversarial.pgd(logits_fn, x, y, 0.0, steps=3, step_size=0.01)), x)


def test_fgsm_step_size_clip_and_finite_difference_sign():
    x, y = _data(2)
    eps = 0.03
    x_adv = np.asarray(jax.jit(lambda x, y, e: adversarial.fgsm(logits_fn, x, y, e))(x, y, eps))
    delta = x_adv - x
    # Central finite differences of the summed CE, float64.
    h = 1e-5
    x64 = x.astype(np.float64)
    fd = np.zeros_like(x64)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x64)
        e[idx] = h
        fd[idx] = (summed_ce_np(x64 + e, y) - summed_ce_np(x64 - e, y)) / (2 * h)
    strong = np.abs(fd) > 1e-3
    assert strong.mean() > 0.5
    np.testing.assert_array_equal(np.sign(delta[strong]), np.sign(fd[strong]))
    # No clipping happened here (x in [0.2, 0.8]): |delta| == eps up to float32 rounding.
    np.testing.assert_allclose(np.abs(delta[strong]), eps, atol=1e-6)
    assert np.max(np.abs(delta)) <= eps + 1e-6


def test_fgsm_clips_to_range():
    x, y = _data(3, lo=0.0, hi=1.0)
    x[:, 0] = 0.0
    x[:, 1] = 1.0
    x_adv = np.asarray(adversarial.fgsm(logits_fn, x, y, 0.3))
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    x_adv = np.asarray(adversarial.fgsm(logits_fn, x, y, 0.3, clip_min=0.1, clip_max=0.9))
    assert x_adv.min() >= 0.1 and x_adv.max() <= 0.9


def test_sign_zero_is_zero():
    x, y = _data(4)
    # A model that ignores pixel (0, 0): its gradient is exactly 0 there, so it is not moved.
    f = lambda x: logits_fn(x.at[:, 0, 0, :].set(0.5))
    x_adv = np.asarray(adversarial.fgsm(f, x, y, 0.05))
    np.testing.assert_array_equal(x_adv[:, 0, 0, :], x[:, 0, 0, :])


def test_per_example_gradient_independent_of_batch():
    x, y = _data(5, b=8)
    g_batch = np.asarray(adversarial._summed_ce_grad(logits_fn, jnp.asarray(x), jnp.asarray(y)))
    adv_batch = np.asarray(adversarial.fgsm(logits_fn, x, y, 0.05))
    for i in (0, 5):
        g_one = np.asarray(adversarial._summed_ce_grad(logits_fn, jnp.asarray(x[i:i + 1]), jnp.asarray(y[i:i + 1])))
        np.testing.assert_allclose(g_batch[i], g_one[0], rtol=1e-5, atol=1e-7)  # summed, not mean
        adv_one = np.asarray(adversarial.fgsm(logits_fn, x[i:i + 1], y[i:i + 1], 0.05))
        np.testing.assert_array_equal(adv_batch[i], adv_one[0])
        # Changing the other examples does not change this one.
        x2 = x.copy()
        x2[np.arange(8) != i] = 1.0 - x2[np.arange(8) != i]
        np.testing.assert_array_equal(np.asarray(adversarial.fgsm(logits_fn, x2, y, 0.05))[i], adv_batch[i])


def test_pgd_one_step_equals_fgsm():
    x, y = _data(6, lo=0.0, hi=1.0)
    for eps in (0.01, 0.1, 0.5):
        a = adversarial.fgsm(logits_fn, x, y, eps)
        b = adversarial.pgd(logits_fn, x, y, eps, steps=1, step_size=eps)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_pgd_ball_range_jit_and_stronger_than_fgsm():
    x, y = _data(7, b=64, lo=0.0, hi=1.0)
    eps = 0.1
    attack = jax.jit(lambda x, y, e, key: adversarial.pgd(
        logits_fn, x, y, e, steps=10, step_size=e / 4, rng=key, random_start=True))
    x_pgd = np.asarray(attack(x, y, eps, jax.random.key(0)))
    assert np.max(np.abs(x_pgd - x)) <= eps + 1e-6
    assert x_pgd.min() >= 0.0 and x_pgd.max() <= 1.0
    x_pgd_det = adversarial.pgd(logits_fn, x, y, eps, steps=10, step_size=eps / 4)
    x_fgsm = adversarial.fgsm(logits_fn, x, y, eps)
    ce = lambda xa: float(summed_ce_np(np.asarray(xa, np.float64), y))
    assert ce(x_pgd_det) >= ce(x_fgsm) > ce(x)
    assert ce(x_pgd) >= ce(x_fgsm)
    with pytest.raises(ValueError, match="rng"):
        adversarial.pgd(logits_fn, x, y, eps, steps=2, step_size=0.05, random_start=True)


def test_epsilon_grid():
    assert adversarial.epsilon_grid("default") == adversarial.DEFAULT_EPSILONS
    assert adversarial.epsilon_grid("dhm") == adversarial.DHM_EPSILONS
    assert adversarial.DEFAULT_EPSILONS[0] == 0 and adversarial.DEFAULT_EPSILONS[-1] == 16 / 255
    assert adversarial.epsilon_grid([0, 0.1]) == (0.0, 0.1)
    assert adversarial.epsilon_grid(np.array([0.0, 0.5])) == (0.0, 0.5)
    assert adversarial.epsilon_grid("0, 0.01,0.1") == (0.0, 0.01, 0.1)   # as documented
    # one ε is a grid of one (--config.evals.epsilons=0.03, or a number in a config file)
    assert adversarial.epsilon_grid("0.03") == adversarial.epsilon_grid(0.03) == (0.03,)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        adversarial.epsilon_grid("0,1.5")
    with pytest.raises(ValueError, match="comma-separated list of numbers"):
        adversarial.epsilon_grid("0,a")
    with pytest.raises(ValueError, match="'default', 'dhm'"):
        adversarial.epsilon_grid("madry")
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        adversarial.epsilon_grid([0.1, -0.1])


def test_accuracy_vs_epsilon_plot(tmp_path):
    x, y = _data(8, b=64, lo=0.0, hi=1.0)
    y = np.asarray(jnp.argmax(logits_fn(x), -1))  # clean accuracy 1
    curves = {}
    for name in ("default", "dhm"):
        eps = adversarial.epsilon_grid(name)
        acc = [float(np.mean(np.asarray(jnp.argmax(logits_fn(adversarial.fgsm(logits_fn, x, y, e)), -1)) == y))
               for e in eps]
        assert acc[0] == 1.0  # eps = 0 is clean accuracy
        curves[name] = (eps, acc)
    p = adversarial.accuracy_vs_epsilon(curves, tmp_path / "acc.png", "FGSM")
    with open(p, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert 1000 < os.path.getsize(p) < 100_000


def test_pgd_example_keys_make_each_start_independent_of_the_batch():
    """With per-example keys, example i's random start (and its attack) is the same in
    any batch that contains it."""
    x, y = _data(3)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(0), i))(jnp.arange(len(y)))
    kw = dict(steps=2, step_size=0.02, random_start=True)
    full = np.asarray(adversarial.pgd(logits_fn, x, y, 0.05, example_keys=keys, **kw))
    part = np.asarray(adversarial.pgd(logits_fn, x[3:5], y[3:5], 0.05, example_keys=keys[3:5], **kw))
    np.testing.assert_allclose(full[3:5], part, atol=1e-6)
    assert not np.array_equal(full, np.asarray(x))


def test_normalized_epsilon_space_is_the_original_dhm_attack():
    """epsilon_space = normalized: x'_n = x_n + ε·sign(∇_{x_n} CE) in the normalised input
    x_n = (x − m)/s per channel, unclipped (b-turan/hybrid_robustness' FGSM); pixel: scale 1,
    clipped to [0, 1]."""
    m, s = np.array([0.3, 0.5, 0.6]), np.array([0.2, 0.1, 0.4])
    r = np.random.default_rng(3)
    w = r.normal(size=(2 * 2 * 3, K))

    def f(x):                                # a linear softmax model on normalised pixels
        xn = (x - jnp.asarray(m, jnp.float32)) / jnp.asarray(s, jnp.float32)
        return xn.reshape(x.shape[0], -1) @ jnp.asarray(w, jnp.float32)

    x = r.uniform(0.0, 1.0, size=(5, 2, 2, 3)).astype(np.float32)
    x[0, 0, 0] = [0.999, 0.001, 0.5]        # at the range's edges: no clipping in this space
    y = r.integers(0, K, 5)
    scale, clip, units = adversarial.epsilon_space("normalized", tuple(s), 3)
    assert clip == (-np.inf, np.inf) and "no clipping" in units
    eps = 0.08
    x_adv = np.asarray(adversarial.fgsm(f, x, y, eps * jnp.asarray(scale), *clip))
    xn = (x - m) / s                         # the gradient w.r.t. x_n, independently:
    logits = xn.reshape(5, -1) @ w           # Wᵀ(softmax − onehot)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g = ((p - np.eye(K)[y]) @ w.T).reshape(x.shape)
    np.testing.assert_allclose((x_adv - m) / s, xn + eps * np.sign(g), rtol=1e-5, atol=1e-5)
    assert x_adv.max() > 1.0 or x_adv.min() < 0.0
    scale, clip, _ = adversarial.epsilon_space("pixel", tuple(s), 3)
    assert np.all(scale == 1.0) and clip == (0.0, 1.0)
    assert np.all(adversarial.epsilon_space("normalized", (), 3)[0] == 1.0)   # no data.std
    with pytest.raises(ValueError, match="epsilon_space 'raw'.*pixel, normalized"):
        adversarial.epsilon_space("raw", (), 3)
