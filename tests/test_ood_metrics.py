"""OOD metrics against scikit-learn (the oracle) and against direct threshold computations."""
import numpy as np
import pytest
from sklearn import metrics as skm

from jaxhybrid.evaluators import ood


def _sk(score_in, score_out):
    s = np.concatenate([score_in, score_out])
    is_in = np.concatenate([np.ones(len(score_in)), np.zeros(len(score_out))])
    return s, is_in


def _fpr95_direct(s_in, s_out):
    """Largest observed t with mean(s_in >= t) >= 0.95; accepted iff s >= t."""
    candidates = np.unique(np.concatenate([s_in, s_out]))
    ok = [t for t in candidates if np.mean(s_in >= t) >= 0.95]
    t = max(ok)
    return np.mean(s_out >= t), t


def _fpr80_ood_direct(s_in, s_out):
    """Smallest observed u with mean(s_out <= u) >= 0.80; flagged OOD iff s <= u."""
    candidates = np.unique(np.concatenate([s_in, s_out]))
    ok = [u for u in candidates if np.mean(s_out <= u) >= 0.80]
    u = min(ok)
    return np.mean(s_in <= u), u


def _random_case(seed, n_in, n_out, rounding):
    rng = np.random.default_rng(seed)
    s_in = rng.normal(1.0, 1.0, n_in)
    s_out = rng.normal(0.0, 1.5, n_out)
    if rounding is not None:  # many ties, also across the two sets
        s_in, s_out = np.round(s_in * rounding), np.round(s_out * rounding)
    return s_in, s_out


CASES = [(0, 500, 300, None), (1, 400, 700, 1), (2, 1000, 1000, 2), (3, 37, 1500, 3), (4, 800, 20, 1)]


@pytest.mark.parametrize("seed,n_in,n_out,rounding", CASES)
def test_matches_sklearn_with_ties(seed, n_in, n_out, rounding):
    s_in, s_out = _random_case(seed, n_in, n_out, rounding)
    m = ood.ood_metrics(s_in, s_out)
    s, is_in = _sk(s_in, s_out)
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(is_in, s), abs=1e-10)
    assert m["aupr_in"] == pytest.approx(skm.average_precision_score(is_in, s), abs=1e-10)
    assert m["aupr_out"] == pytest.approx(skm.average_precision_score(1 - is_in, -s), abs=1e-10)
    assert (m["num_in"], m["num_out"]) == (n_in, n_out)

    # FPR@95: the sklearn ROC lookup without dropped points, and a direct threshold scan.
    fpr, tpr, thr = skm.roc_curve(is_in, s, drop_intermediate=False)
    k = np.searchsorted(tpr, 0.95, side="left")
    assert m["fpr95"] == fpr[k]
    assert m["fpr95_threshold"] == thr[k]
    fpr95, t95 = _fpr95_direct(s_in, s_out)
    assert m["fpr95"] == fpr95 and m["fpr95_threshold"] == t95

    # FPR@80, OOD positive with score -s.
    fpr_o, tpr_o, thr_o = skm.roc_curve(1 - is_in, -s, drop_intermediate=False)
    k = np.searchsorted(tpr_o, 0.80, side="left")
    assert m["fpr80_ood"] == fpr_o[k]
    assert m["fpr80_ood_threshold"] == -thr_o[k]
    fpr80, u80 = _fpr80_ood_direct(s_in, s_out)
    assert m["fpr80_ood"] == fpr80 and m["fpr80_ood_threshold"] == u80

    # roc_curve == sklearn's full curve.
    f, t = ood.roc_curve(s_in, s_out)
    np.testing.assert_allclose(f, fpr, rtol=0, atol=1e-15)
    np.testing.assert_allclose(t, tpr, rtol=0, atol=1e-15)


def test_float32_and_jax_inputs_keep_ties():
    import jax.numpy as jnp

    s_in, s_out = _random_case(5, 300, 300, 4)
    m64 = ood.ood_metrics(s_in, s_out)
    m32 = ood.ood_metrics(jnp.asarray(s_in, jnp.float32), np.asarray(s_out, np.float32))
    for key in ("auroc", "aupr_in", "aupr_out", "fpr95", "fpr80_ood"):
        assert m32[key] == pytest.approx(m64[key], abs=1e-12)
    m_int = ood.ood_metrics(s_in.astype(np.int64), s_out.astype(np.int32))
    assert m_int["auroc"] == pytest.approx(m64["auroc"], abs=1e-12)


def test_perfect_separation():
    m = ood.ood_metrics(np.arange(10.0, 20.0), np.arange(0.0, 10.0))
    assert m["auroc"] == 1.0 and m["aupr_in"] == 1.0 and m["aupr_out"] == 1.0
    assert m["fpr95"] == 0.0 and m["fpr80_ood"] == 0.0
    # Reversed: every OOD scores higher than every in-distribution example.
    m = ood.ood_metrics(np.arange(0.0, 10.0), np.arange(10.0, 20.0))
    assert m["auroc"] == 0.0 and m["fpr95"] == 1.0 and m["fpr80_ood"] == 1.0


def test_identical_distributions():
    s = np.arange(100.0)
    m = ood.ood_metrics(s, s)
    assert m["auroc"] == 0.5
    # Thresholds keep ties together: t = 5 keeps 95/100 in, and also 95/100 OOD.
    assert m["fpr95"] == 0.95 and m["fpr95_threshold"] == 5.0
    assert m["fpr80_ood"] == 0.80 and m["fpr80_ood_threshold"] == 79.0
    # All scores equal: one threshold, everything accepted; AUROC 0.5, AUPR = prevalence.
    m = ood.ood_metrics(np.zeros(30), np.zeros(10))
    assert m["auroc"] == 0.5 and m["fpr95"] == 1.0 and m["fpr80_ood"] == 1.0
    assert m["aupr_in"] == pytest.approx(0.75) and m["aupr_out"] == pytest.approx(0.25)


def test_fpr95_hand_case_with_ties():
    # 20 in: 19 at 5.0, 1 at 0.0. Keeping 95% needs t = 5.0 (19/20 = 0.95 exactly).
    s_in = np.array([5.0] * 19 + [0.0])
    s_out = np.array([5.0, 5.0, 4.0, 1.0, -1.0])
    m = ood.ood_metrics(s_in, s_out)
    assert m["fpr95_threshold"] == 5.0 and m["fpr95"] == pytest.approx(2 / 5)


def test_fpr95_differs_from_sklearn_default_drop_intermediate():
    # Every threshold holds one in and one OOD example: a straight diagonal ROC. sklearn's
    # default drop_intermediate=True keeps only its end points, so its lookup gives 1.0;
    # the definition (first point with TPR >= 0.95) gives 0.95.
    s = np.arange(100.0)
    m = ood.ood_metrics(s, s)
    s_all, is_in = _sk(s, s)
    fpr_d, tpr_d, _ = skm.roc_curve(is_in, s_all)
    assert fpr_d[np.searchsorted(tpr_d, 0.95, side="left")] == 1.0
    assert m["fpr95"] == 0.95


def test_errors():
    with pytest.raises(ValueError, match="NaN"):
        ood.ood_metrics(np.array([0.0, np.nan]), np.array([1.0]))
    with pytest.raises(ValueError, match="empty"):
        ood.ood_metrics(np.array([]), np.array([1.0]))
    with pytest.raises(ValueError, match="1-D"):
        ood.ood_metrics(np.zeros((2, 2)), np.array([1.0]))


def test_infinite_scores_allowed():
    m = ood.ood_metrics(np.array([np.inf, 1.0, 2.0]), np.array([-np.inf, 0.0, 1.5]))
    assert 0.0 <= m["auroc"] <= 1.0
    assert m["auroc"] == pytest.approx(8 / 9)


def _is_png(path):
    with open(path, "rb") as f:
        head = f.read(8)
    import os

    return head == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 1000


def test_plots(tmp_path):
    s_in, s_out = _random_case(6, 2000, 3000, None)
    s_out2 = np.concatenate([s_out[:100], [-np.inf]])
    p = ood.score_histograms(s_in, {"ood_a": s_out, "ood_b": s_out2}, tmp_path / "h.png",
                               "log p(x)", unit="nats")
    assert _is_png(p)
    # a title, the score's unit on the axis, and in-distribution drawn last, on top
    fig = ood.score_histogram_figure(s_in, {"ood_a": s_out, "ood_b": s_out2}, "L>1",
                                       title="HVAE: L>1", unit="nats")
    (ax,) = fig.axes
    assert ax.get_title() == "HVAE: L>1"
    assert ax.get_xlabel() == "L>1 (nats); higher = in-distribution"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[-1].startswith("in-distribution (n=2000)")
    assert labels[1].startswith("ood_b (n=101")
    top = max(ax.patches, key=lambda a: a.get_zorder())
    assert top.get_label().startswith("in-distribution") and not top.get_fill()
    curves = {}
    for name, so in {"a": s_out, "b": s_out + 1.0}.items():
        fpr, tpr = ood.roc_curve(s_in, so)
        curves[name] = (fpr, tpr, ood.ood_metrics(s_in, so)["auroc"])
    p = ood.roc_curves(curves, tmp_path / "roc.png", "ROC")
    assert _is_png(p)
    import os

    assert os.path.getsize(p) < 100_000
