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


# -- identifiability (issue 10): a degenerate fit is reported, never presented as a result --
def test_perfectly_classified_split_is_not_identifiable():
    logits, labels = _sample(2, n=2_000)
    labels = logits.argmax(1)                      # every example correct: separable
    fit = temperature.temperature_fit(logits, labels)
    assert not fit.identifiable and fit.temperature is None
    assert fit.bound == temperature.T_MIN and "perfectly classified" in fit.reason
    assert fit.accuracy == 1.0 and fit.num_examples == 2_000
    # the clamped fit is the bound, which is why it must not be reported
    assert temperature.fit_temperature(logits, labels) == temperature.T_MIN


def test_normal_split_is_identifiable_inside_the_bounds():
    true_logits, labels = _sample(3, n=20_000)
    fit = temperature.temperature_fit(true_logits * 2.0, labels)
    assert fit.identifiable and fit.reason == "" and fit.bound is None
    assert temperature.T_MIN < fit.temperature < temperature.T_MAX
    assert fit.temperature == temperature.fit_temperature(true_logits * 2.0, labels)
    assert fit.temperature == pytest.approx(2.0, rel=0.05)


def test_other_degenerate_fits():
    logits = np.array([[3.0, 0.0], [0.0, 3.0]])
    wrong = temperature.temperature_fit(logits, np.array([1, 0]))       # worse than uniform
    assert not wrong.identifiable and wrong.bound == temperature.T_MAX
    assert "T -> infinity" in wrong.reason
    tied = temperature.temperature_fit(np.zeros((4, 3)), np.array([0, 1, 2, 0]))
    assert not tied.identifiable and "tie" in tied.reason
    # finite minima outside [T_MIN, T_MAX]: softmax(logits / k) is the true distribution
    true_logits, labels = _sample(4, n=5_000)
    below = temperature.temperature_fit(true_logits * 0.01, labels)      # T* = 0.01
    assert not below.identifiable and below.temperature is None
    assert below.bound == temperature.T_MIN and "below the search range" in below.reason
    above = temperature.temperature_fit(true_logits * 100.0, labels)     # T* = 100
    assert not above.identifiable and above.bound == temperature.T_MAX
    assert "above the search range" in above.reason


class _Ctx:
    """The part of an EvalContext the temperature evaluator uses."""

    def __init__(self, val, test, out_dir):
        import types
        self._outs = {"validation": val, "test": test}
        self.exp = types.SimpleNamespace(splits=types.SimpleNamespace(validation=val["label"]))
        self.config = types.SimpleNamespace(evals=types.SimpleNamespace(num_bins=15,
                                                                        split="test"))
        self.out_dir = str(out_dir)

    def outputs(self, split=None, names=("logits",)):
        return self._outs[split or "test"]


def test_plugin_reports_a_degenerate_fit_as_not_identifiable(tmp_path):
    from jaxhybrid.evaluators import suite
    logits, labels = _sample(5, n=3_000)
    val = {"logits": logits[:1000], "label": logits[:1000].argmax(1)}   # perfectly classified
    test = {"logits": logits[1000:] * 3.0, "label": labels[1000:]}
    sec = temperature.evaluate(_Ctx(val, test, tmp_path))
    m = sec.metrics
    assert m["identifiable"] is False and m["temperature"] is None
    assert m["bound"] == temperature.T_MIN and "perfectly classified" in m["reason"]
    assert not {"ece_after", "nll_after", "reliability_after"} & set(m)
    assert sec.headline == {} and not sec.figures
    assert "Not identifiable" in sec.markdown and "after (T=" not in sec.markdown
    assert m["ece_before"] > 0 and m["nll_before"] > 0
    # the rebuilt headline of metrics.json holds no "after" numbers either
    rebuilt = suite.headline({"temperature": m})
    assert rebuilt.get(temperature.TEMPERATURE) is None and temperature.ECE_AFTER_TS not in rebuilt

    val = {"logits": logits[:1000] * 3.0, "label": labels[:1000]}      # a normal split
    sec = temperature.evaluate(_Ctx(val, test, tmp_path))
    m = sec.metrics
    assert m["identifiable"] is True
    assert temperature.T_MIN < m["temperature"] < temperature.T_MAX
    assert m["ece_after"] < m["ece_before"] and m["nll_after"] <= m["nll_before"]
    assert sec.headline[temperature.TEMPERATURE] == m["temperature"]
    assert f"T = {m['temperature']:.4f}" in sec.markdown
