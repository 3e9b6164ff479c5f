"""Calibration metrics against plain-loop references, edge bins, whole-set semantics, plots."""
import os

import numpy as np
import pytest

from jaxhybrid.evaluators import calibration


def _reference(probs, labels, num_bins=15):
    """Plain Python loop over examples; bin m is m/M < c <= (m+1)/M, 0 -> first bin."""
    probs = np.asarray(probs)
    sums = [[0, 0.0, 0.0] for _ in range(num_bins)]  # count, correct, confidence
    for p, y in zip(probs, labels):
        pred = int(np.argmax(p))
        c = float(p[pred])
        b = None
        for m in range(num_bins):
            lo, hi = m / num_bins, (m + 1) / num_bins  # Python float division, correctly rounded
            if lo < c <= hi:
                b = m
                break
        if b is None:
            assert c == 0.0
            b = 0
        sums[b][0] += 1
        sums[b][1] += float(pred == y)
        sums[b][2] += c
    n = len(labels)
    ece = mce = ms = 0.0
    for cnt, cor, conf in sums:
        if cnt:
            gap = abs(cor / cnt - conf / cnt)
            ece += cnt / n * gap
            ms += cnt / n * gap**2
            mce = max(mce, gap)
    return ece, mce, ms**0.5, [s[0] for s in sums]


def _random_probs(rng, n, k, temp=1.0, dtype=np.float64):
    logits = rng.normal(size=(n, k)) * 3.0 / temp
    p = np.exp(logits - logits.max(1, keepdims=True))
    return (p / p.sum(1, keepdims=True)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_loop_reference(dtype):
    rng = np.random.default_rng(0)
    probs = _random_probs(rng, 3000, 10, dtype=dtype)
    labels = rng.integers(0, 10, 3000)
    m = calibration.calibration_metrics(probs, labels)
    ece, mce, rms, counts = _reference(probs, labels)
    assert m["ece"] == pytest.approx(ece, abs=1e-12)
    assert m["mce"] == pytest.approx(mce, abs=1e-12)
    assert m["rms_ce"] == pytest.approx(rms, abs=1e-12)
    assert m["bin_counts"] == counts
    assert m["num_examples"] == 3000 and m["num_bins"] == 15 and m["binning"] == "equal_width"
    assert m["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == labels))
    assert len(m["bin_lower"]) == len(m["bin_upper"]) == 15
    assert m["bin_lower"][0] == 0.0 and m["bin_upper"][-1] == 1.0


def test_jax_input():
    import jax.numpy as jnp

    rng = np.random.default_rng(1)
    probs = _random_probs(rng, 500, 5, dtype=np.float32)
    labels = rng.integers(0, 5, 500)
    a = calibration.calibration_metrics(jnp.asarray(probs), jnp.asarray(labels))
    b = calibration.calibration_metrics(probs, labels)
    assert a == b


def test_confidence_one_lands_in_last_bin():
    for dtype in (np.float32, np.float64):
        probs = np.zeros((7, 3), dtype)
        probs[:5, 0] = 1.0  # saturated float32 softmax outputs
        probs[5] = [0.5, 0.25, 0.25]
        probs[6] = [0.0, 0.0, 0.0]  # confidence exactly 0 -> first bin
        labels = np.array([0, 0, 0, 1, 1, 0, 0])
        m = calibration.calibration_metrics(probs, labels)
        assert sum(m["bin_counts"]) == 7
        assert m["bin_counts"][-1] == 5 and m["bin_counts"][0] == 1
        assert m["bin_accuracy"][-1] == pytest.approx(3 / 5)
        assert m["bin_confidence"][-1] == 1.0
        assert len(m["bin_counts"]) == 15  # no extra bin for 1.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_edges_follow_stated_rule(dtype):
    num_bins = 15
    conf = np.array([k / num_bins for k in range(num_bins + 1)], dtype=dtype)
    # Also neighbours one ulp either side of every edge, in this dtype.
    conf = np.concatenate([conf, np.nextafter(conf, dtype(2)), np.nextafter(conf, dtype(-1))])
    conf = np.clip(conf, 0, 1).astype(dtype)
    conf = conf[(conf == 0) | (conf > 0.0625)]  # drop the denormal neighbour of 0
    # K = 16 classes: column 0 holds the confidence, the rest share 1 - c (< c for c >= 1/15).
    probs = np.concatenate([conf[:, None], np.repeat(((1 - conf) / 15)[:, None], 15, 1)], 1)
    probs = np.where(conf[:, None] == 0, 0, probs).astype(dtype)
    top = probs.max(1)
    assert np.array_equal(top, conf)
    idx = calibration.assign_bins(top, calibration.bin_edges(top, num_bins, "equal_width"))
    for c, b in zip(top, idx):
        c = float(c)
        expected = 0 if c == 0.0 else next(m for m in range(num_bins) if m / 15 < c <= (m + 1) / 15)
        assert b == expected, (c, b, expected)
    labels = np.zeros(len(top), int)
    m = calibration.calibration_metrics(probs, labels)
    _, _, _, counts = _reference(probs, labels)
    assert m["bin_counts"] == counts


def test_float32_edge_example():
    # float64 0.2 == 3/15 closes bin 2; float32(0.2) = 0.2000000030 lies above it.
    e = calibration.bin_edges(None, 15, "equal_width")
    assert calibration.assign_bins(np.array([0.2]), e)[0] == 2
    assert calibration.assign_bins(np.array([np.float32(0.2)]), e)[0] == 3
    assert calibration.assign_bins(np.array([0.0, 1.0, 1 / 15, np.nextafter(1 / 15, 1)]), e).tolist() == [0, 14, 0, 1]


def test_perfectly_calibrated_has_small_ece():
    rng = np.random.default_rng(2)
    n, k = 200_000, 10
    probs = _random_probs(rng, n, k, temp=1.5)
    # Sample the label from the predicted distribution: P(correct) = confidence.
    u = rng.random(n)
    labels = np.minimum((np.cumsum(probs, axis=1) < u[:, None]).sum(1), k - 1)
    m = calibration.calibration_metrics(probs, labels)
    assert m["ece"] < 0.01
    mass = calibration.calibration_metrics(probs, labels, binning="equal_mass")
    assert mass["ece"] < 0.01
    # An overconfident version of the same set is clearly miscalibrated.
    sharp = _random_probs(np.random.default_rng(2), n, k, temp=0.5)
    assert calibration.calibration_metrics(sharp, labels)["ece"] > 0.05


def test_whole_set_not_batch_average():
    # Batch A: confidence 0.9, all correct (gap 0.1). Batch B: confidence 0.9, all wrong (0.9).
    probs = np.tile([[0.9, 0.1]], (20, 1))
    labels = np.array([0] * 10 + [1] * 10)
    whole = calibration.calibration_metrics(probs, labels)["ece"]
    per_batch = [calibration.calibration_metrics(probs[i:i + 10], labels[i:i + 10])["ece"] for i in (0, 10)]
    assert whole == pytest.approx(0.4)
    assert np.mean(per_batch) == pytest.approx(0.5)
    assert abs(whole - np.mean(per_batch)) > 0.05


def test_equal_mass():
    rng = np.random.default_rng(3)
    probs = _random_probs(rng, 3000, 10)
    labels = rng.integers(0, 10, 3000)
    m = calibration.calibration_metrics(probs, labels, num_bins=10, binning="equal_mass")
    assert m["binning"] == "equal_mass" and m["num_bins"] == 10
    assert sum(m["bin_counts"]) == 3000
    assert all(abs(c - 300) <= 1 for c in m["bin_counts"])  # continuous confidences: equal mass
    assert m["bin_lower"][0] == 0.0 and m["bin_upper"][-1] == 1.0
    assert np.all(np.diff(m["bin_lower"]) >= 0)
    # ECE from the bins it reports, recomputed by hand.
    n = np.array(m["bin_counts"])
    gaps = np.abs(np.array(m["bin_accuracy"]) - np.array(m["bin_confidence"]))
    assert m["ece"] == pytest.approx(np.sum(n / n.sum() * gaps))
    # Many ties at 1.0: ties are never split, the extra bins are empty, nothing is lost.
    probs2 = np.concatenate([np.tile([[1.0, 0.0]], (600, 1)), probs[:400, :2] / probs[:400, :2].sum(1, keepdims=True)])
    labels2 = np.zeros(1000, int)
    m2 = calibration.calibration_metrics(probs2, labels2, binning="equal_mass")
    assert sum(m2["bin_counts"]) == 1000
    assert max(m2["bin_counts"]) >= 600
    assert any(c == 0 for c in m2["bin_counts"])
    assert all((a is None) == (c == 0) for a, c in zip(m2["bin_accuracy"], m2["bin_counts"]))


def test_errors():
    with pytest.raises(ValueError, match="equal_width, equal_mass"):
        calibration.calibration_metrics(np.eye(3), np.arange(3), binning="quantile")
    with pytest.raises(ValueError, match="logits"):
        calibration.calibration_metrics(np.eye(3) * 5, np.arange(3))
    with pytest.raises(ValueError, match=r"\[N\]"):
        calibration.calibration_metrics(np.eye(3), np.arange(4))
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        calibration.calibration_metrics(np.eye(3), np.array([0, 1, 3]))


def _is_png(path):
    with open(path, "rb") as f:
        head = f.read(8)
    return head == b"\x89PNG\r\n\x1a\n" and 1000 < os.path.getsize(path) < 100_000


def test_reliability_plots(tmp_path):
    import json

    rng = np.random.default_rng(4)
    probs = _random_probs(rng, 2000, 10, temp=0.3)  # sharp: most low bins are empty
    labels = rng.integers(0, 10, 2000)
    m = calibration.calibration_metrics(probs, labels)
    assert any(c == 0 for c in m["bin_counts"])
    json.dumps(m)  # clean JSON: None for empty bins, Python scalars elsewhere
    assert _is_png(calibration.reliability_diagram(m, tmp_path / "rel.png", title="test"))
    _check_reliability_figure()
    m2 = calibration.calibration_metrics(_random_probs(rng, 2000, 10), labels, binning="equal_mass")
    p = calibration.reliability_side_by_side({"FFN": m, "GFFN": m2}, tmp_path / "sub" / "side.png")
    assert _is_png(p)


def _check_reliability_figure():
    """Both gap colours are in the legend, and every non-empty bin's count is printed on a
    log axis, so a bin of one example (here the one that sets the MCE) is visible."""
    probs = np.array([[0.95, 0.05]] * 300 + [[0.55, 0.45]] * 40 + [[0.25, 0.75]])
    labels = np.array([0] * 300 + [1] * 40 + [0])        # last: confidence 0.75, wrong
    m = calibration.calibration_metrics(probs, labels, num_bins=10)
    assert m["mce"] == pytest.approx(0.75) and 1 in m["bin_counts"]
    fig = calibration.reliability_figure(m)
    top, bottom = fig.axes
    legend = [t.get_text() for t in top.get_legend().get_texts()]
    assert {"gap: confidence > accuracy", "gap: accuracy > confidence", "accuracy",
            "mean confidence"} <= set(legend)
    assert bottom.get_yscale() == "log"
    printed = sorted(int(t.get_text()) for t in bottom.texts)
    assert printed == sorted(c for c in m["bin_counts"] if c)      # 1, 40, 300
