"""Temperature scaling: recovers a known temperature; NLL never gets worse."""
import numpy as np
import pytest

from jaxhybrid.evaluators import calibration, temperature


def _sample(seed, n=50_000, k=10, scale=2.0):
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(size=(n, k)) * scale
    p = np.exp(true_logits - true_logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    u = rng.random(n)
    labels = np.minimum((np.cumsum(p, axis=1) < u[:, None]).sum(1), k - 1)
    return true_logits, labels


@pytest.mark.parametrize("k_scale", [0.5, 2.5, 6.0])
def test_recovers_known_temperature(k_scale):
    true_logits, labels = _sample(0)
    logits = true_logits * k_scale  # softmax(logits / k) is the true distribution
    t = temperature.fit_temperature(logits, labels)
    assert t > 0
    assert t == pytest.approx(k_scale, rel=0.05)
    before = temperature.nll(logits, labels)
    after = temperature.nll(temperature.apply_temperature(logits, t), labels)
    assert after <= before
    # The fit is a minimum: nudging T either way does not lower the NLL.
    for f in (0.97, 1.03):
        assert after <= temperature.nll(logits / (t * f), labels) + 1e-12
    # The init only changes the start of the search, not the answer.
    assert temperature.fit_temperature(logits, labels, init=15.0) == pytest.approx(t, rel=1e-6)


def test_ece_improves_on_overconfident_logits():
    true_logits, labels = _sample(1, n=20_000)
    logits = true_logits * 3.0
    t = temperature.fit_temperature(logits, labels)
    soft = lambda z: np.exp(z - z.max(1, keepdims=True)) / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)
    ece_before = calibration.calibration_metrics(soft(logits), labels)["ece"]
    ece_after = calibration.calibration_metrics(soft(logits / t), labels)["ece"]
    assert ece_after < ece_before and ece_after < 0.02


def test_nll_stable_and_matches_direct():
    logits = np.array([[1000.0, 0.0, -1000.0], [0.0, 1.0, 2.0]])
    labels = np.array([0, 2])
    direct = -np.log(np.exp([0.0, 1.0, 2.0])[2] / np.exp([0.0, 1.0, 2.0]).sum())
    assert temperature.nll(logits, labels) == pytest.approx(direct / 2)
    import jax.numpy as jnp

    assert temperature.nll(jnp.asarray(logits, jnp.float32), jnp.asarray(labels)) == pytest.approx(direct / 2, rel=1e-6)


def test_clamped_to_range_and_positive():
    # Separable, all correct: NLL keeps falling as T -> 0; the fit stops at T_MIN.
    logits = np.array([[3.0, 0.0], [0.0, 3.0]])
    assert temperature.fit_temperature(logits, np.array([0, 1])) == temperature.T_MIN
    # All wrong: NLL falls as T grows; the fit stops at T_MAX.
    assert temperature.fit_temperature(logits, np.array([1, 0])) == temperature.T_MAX
    with pytest.raises(ValueError, match="init"):
        temperature.fit_temperature(logits, np.array([0, 1]), init=-1.0)
    with pytest.raises(ValueError, match="labels"):
        temperature.fit_temperature(logits, np.array([0, 2]))
