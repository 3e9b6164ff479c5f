"""The HVAE family (issue 9): Gaussian densities and KL against scipy, the original's
schedules, the loss against a numpy re-computation, the IW bound and L>k (S = 1 is the
ELBO, chunking changes nothing, LLR>0 = 0, S = 1000 runs), device-count invariance of the
data-dependent init, loss and gradients on a padded batch, finite gradients on extreme
inputs, config errors, and one tiny digits train + eval run through the CLI."""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxhybrid import mathops, parallel
from jaxhybrid.families import hvae as famlib
from jaxhybrid.objectives import elbo as obj
from tests.helpers import family_config, run_cli

TINY = {"name": "hvae",
        "config_deterministic": (({"out_channels": 4, "kernel_size": 3, "stride": 2},),
                                 ({"out_channels": 4, "kernel_size": 3, "stride": 2},)),
        "config_stochastic": ({"block": "GaussianConv2d", "latent_features": 2},
                              {"block": "GaussianDense", "latent_features": 3}),
        "warmup_epochs": 4.0, "free_nats_constant_epochs": 2, "free_nats_cooldown_epochs": 3}
PROGRESS = {"step": jnp.int32(5), "epoch": jnp.float32(2.5)}   # β = 3/4, λ = 2·(1 − 0/2)


def _config(**fields):
    return family_config(famlib.HVAEFamily, **{**TINY, **fields})


def _batch(b=16, pad=3, pad_value=0.0, seed=0):
    rng = np.random.default_rng(seed)
    image = (rng.uniform(size=(b, 8, 8, 1)) < 0.4).astype(np.float32)
    mask = np.arange(b) < b - pad
    image[~mask] = pad_value
    return {"image": image, "mask": mask,
            "id": np.where(mask, np.arange(b) + 100, -1).astype(np.int32)}


def _jnp(batch):
    return {k: jnp.asarray(v) for k, v in batch.items()}


def _variables(fam, batch, seed=1):
    """Variables without compiling the data-dependent init: shapes from eval_shape,
    directions v ~ N(0, 1/fan_in), gains 1.5, biases 0.1."""
    shapes = jax.eval_shape(fam.init, jax.random.PRNGKey(seed), _jnp(batch))
    rng = np.random.default_rng(seed)

    def fill(path, s):
        name = path[-1].key
        if name in ("g", "b"):
            return jnp.full(s.shape, 1.5 if name == "g" else 0.1, s.dtype)
        return jnp.asarray(rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1])), s.dtype)
    return jax.tree_util.tree_map_with_path(fill, shapes)


# -- densities, KL, schedules ----------------------------------------------------------
def test_single_sample_kl_estimate_is_unbiased():
    # log q(z) − log p(z) at z ~ q averages to the closed-form KL (tests/test_mathops.py
    # checks that against quadrature)
    eps = jax.random.normal(jax.random.PRNGKey(0), (200_000,))
    layer = {"z": 0.3 + 0.5 * eps, "q_mean": 0.3, "q_scale": 0.5, "p_mean": -1.0, "p_scale": 2.0}
    np.testing.assert_allclose(jnp.mean(obj.kl_elements(layer)),
                               mathops.kl_normal(0.3, 0.5, -1.0, 2.0), rtol=1e-2)


def test_free_nats_floors_per_element_and_per_layer():
    kl = jnp.asarray([[[[0.1, 0.9], [0.2, -0.4]]]])          # [S=1, B=1, 2 positions, C=2]
    # per element: each floored at λ/C = 0.5; per layer: max(Σ kl, λ); λ = 0: no floor
    np.testing.assert_allclose(obj.free_nats_kl(kl, 1.0), [[0.5 + 0.9 + 0.5 + 0.5]])
    np.testing.assert_allclose(obj.free_nats_kl(kl, 1.0, "per_layer"), [[1.0]])
    np.testing.assert_allclose(obj.free_nats_kl(kl, 0.5, "per_layer"), [[0.8]])
    np.testing.assert_allclose(obj.free_nats_kl(kl, 0.0), [[0.8]])
    with pytest.raises(ValueError, match="free nats mode 'x'.*per_element, per_layer"):
        obj.free_nats_kl(kl, 1.0, "x")


def _original_schedules(n_warmup, free_nats, constant, cooldown, epochs):
    """hvae-oodd's DeterministicWarmup(n) and FreeNatsCooldown(c, d, λ, 0), one next() per
    epoch, as numpy arrays over epochs 0..epochs−1."""
    t, betas = 0.0, []
    for _ in range(epochs):
        t += 1.0 / n_warmup
        betas.append(min(t, 1.0))
    values = np.concatenate([[free_nats] * constant, np.linspace(free_nats, 0, cooldown)])
    lam = [values[i] if i < len(values) else 0.0 for i in range(epochs)]
    return np.array(betas), np.array(lam)


def test_warmup_and_free_nats_schedules_are_the_originals():
    betas, lam = _original_schedules(200, 2.0, 200, 200, 450)
    for e in range(450):                    # constant within an epoch: e, e + 0.5, e + 0.999
        for frac in (0.0, 0.5, 0.999):
            np.testing.assert_allclose(obj.warmup_beta(e + frac, 200.0), betas[e], rtol=1e-6)
            np.testing.assert_allclose(obj.free_nats_schedule(e + frac, 2.0, 200, 200),
                                       lam[e], rtol=1e-5, atol=1e-6)
    # documented values: β = 1/200 in the first epoch, 1 from epoch index 199; λ = 2 for
    # epochs 0..199 (and at 200, linspace's first value), 2·(1 − 100/199) at 300, 0 from 399
    assert float(obj.warmup_beta(0.0, 200.0)) == pytest.approx(0.005)
    assert float(obj.warmup_beta(199.0, 200.0)) == 1.0
    assert float(obj.free_nats_schedule(300.2, 2.0, 200, 200)) == pytest.approx(2 * 99 / 199)
    assert float(obj.free_nats_schedule(399.0, 2.0, 200, 200)) == 0.0
    assert float(obj.warmup_beta(3.0, 0.0)) == 1.0
    assert float(obj.free_nats_schedule(10.0, 2.0, 0, 0)) == 2.0    # no schedule: constant


# -- the loss and the bounds -----------------------------------------------------------
_FAMS = {}


def _family(**model):
    key = tuple(sorted(model.items()))
    if key not in _FAMS:
        _FAMS[key] = famlib.HVAEFamily.build(_config(**model), 0)
    return _FAMS[key]


_APPLY = {}


def _parts(o, variables, batch, key, samples, skip=0):
    """Module outputs (numpy) at the family's posterior noise for ``samples`` (one compile
    per sample count: ``skip`` is traced)."""
    module = famlib.build_module(o, 1)
    eps = famlib.posterior_noise(key, jnp.asarray(batch["id"]), jnp.arange(samples),
                                 module.latent_shapes((8, 8, 1)))
    if samples not in _APPLY:
        _APPLY[samples] = jax.jit(lambda v, x, e, k: module.apply(v, x, e, skip=k))
    return jax.tree.map(np.asarray, _APPLY[samples](variables, batch["image"], eps, skip))


def _np_terms(out, x):
    """(log p(x|z) [S, B], per-layer elementwise KL estimates [S, B, ...]) in numpy."""
    logits = out["decoded"]
    log_px = np.sum(x * -np.logaddexp(0, -logits) + (1 - x) * -np.logaddexp(0, logits),
                    axis=(2, 3, 4))
    kls = [stats.norm.logpdf(l["z"], l["q_mean"], l["q_scale"])
           - stats.norm.logpdf(l["z"], l["p_mean"], l["p_scale"]) for l in out["layers"]]
    return log_px, kls


def _np_objective(log_px, kls, mask, beta, lam, iw, mode="per_element"):
    """(loss, bound) of the module docstring in numpy: means over the valid rows."""
    s, b = log_px.shape
    flat = [k.reshape(s, b, -1) for k in kls]
    if mode == "per_element":
        floored = sum(np.maximum(f, lam / k.shape[-1]).sum(-1) for f, k in zip(flat, kls))
    else:
        floored = sum(np.maximum(f.sum(-1), lam) for f in flat)
    per_sample = -log_px + beta * floored                                    # [S, B]
    log_w = log_px - sum(f.sum(-1) for f in flat)
    lme = lambda a: np.logaddexp.reduce(a, 0) - np.log(s)  # noqa: E731
    loss = -lme(-per_sample) if iw else per_sample.mean(0)
    bound = lme(log_w) if iw else log_w.mean(0)
    return loss[mask].mean(), bound[mask].mean()


def test_family_loss_is_the_original_formula_on_the_valid_rows():
    batch = _batch()
    fam = _family(train_samples=2)
    o = famlib.HVAEFamily.options(_config(train_samples=2))
    variables = _variables(fam, batch)
    key = jax.random.PRNGKey(3)
    value, (_, aux) = jax.jit(fam.loss)(variables, _jnp(batch), key, PROGRESS)
    log_px, kls = _np_terms(_parts(o, variables, batch, key, 2), batch["image"])
    m = batch["mask"]
    loss, bound = _np_objective(log_px, kls, m, beta=0.75, lam=2.0, iw=False)
    np.testing.assert_allclose(float(value), loss, rtol=1e-5)
    np.testing.assert_allclose(float(aux["elbo"]), bound, rtol=1e-5)
    np.testing.assert_allclose(float(aux["kl_z2"]), kls[1].sum(-1).mean(0)[m].mean(),
                               rtol=1e-4, atol=1e-4)
    assert float(aux["beta"]) == 0.75 and float(aux["free_nats"]) == 2.0
    # active units: Var over the valid rows of E_q[z] (sample 0) > 0.01, per unit
    q1 = _parts(o, variables, batch, key, 2)["layers"][0]["q_mean"][0][m]
    assert float(aux["active_z1"]) == np.sum(q1.reshape(len(q1), -1).var(0) > 0.01)


@pytest.mark.parametrize("iw, mode", [(True, "per_element"), (False, "per_layer"),
                                      (True, "per_layer")])
def test_objective_variants_are_the_formula(iw, mode):
    rng = np.random.default_rng(1)
    s, b = 3, 6
    shapes = [(s, b, 2, 2, 3), (s, b, 4)]
    layers = [{"z": rng.normal(size=sh), "q_mean": rng.normal(size=sh),
               "q_scale": np.exp(rng.normal(size=sh)), "p_mean": rng.normal(size=sh),
               "p_scale": np.exp(rng.normal(size=sh))} for sh in shapes]
    kls = [stats.norm.logpdf(l["z"], l["q_mean"], l["q_scale"])
           - stats.norm.logpdf(l["z"], l["p_mean"], l["p_scale"]) for l in layers]
    log_px, mask = -rng.uniform(10, 20, size=(s, b)), np.arange(b) < 4
    value, aux = obj.hvae_objective(log_px, layers, jnp.asarray(mask), beta=0.3, free_nats=1.5,
                                    free_nats_mode=mode, importance_weighted=iw)
    loss, bound = _np_objective(log_px, kls, mask, 0.3, 1.5, iw, mode)
    np.testing.assert_allclose(float(value), loss, rtol=1e-5)
    np.testing.assert_allclose(float(aux["elbo"]), bound, rtol=1e-5)


def test_one_sample_bound_is_the_elbo_and_lgtk_drops_the_lower_layers():
    batch, key = _batch(pad=0), jax.random.PRNGKey(7)
    fam = _family(iwae_samples=1)
    o = famlib.HVAEFamily.options(_config())
    variables = _variables(fam, batch)
    pred = jax.tree.map(np.asarray, jax.jit(fam.predict, static_argnums=3)(
        variables, _jnp(batch), key, ("elbo", "log_likelihood", "l_gt_k")))
    log_px, kls = _np_terms(_parts(o, variables, batch, key, 1), batch["image"])
    elbo = (log_px - sum(k.reshape(1, 16, -1).sum(-1) for k in kls))[0]
    np.testing.assert_allclose(pred["elbo"], elbo, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(pred["log_likelihood"], elbo, rtol=1e-5, atol=1e-3)
    # L>1: z1 at the prior's mean in generation, its KL dropped; z2 inferred from q's mean
    skipped = _parts(o, variables, batch, key, 1, skip=1)
    l1, l2 = skipped["layers"]
    np.testing.assert_array_equal(l1["z"], l1["p_mean"])
    eps = famlib.posterior_noise(key, jnp.asarray(batch["id"]), jnp.arange(1),
                                 famlib.build_module(o, 1).latent_shapes((8, 8, 1)))
    at_mean = _APPLY[1](variables, batch["image"], (jnp.zeros_like(eps[0]), eps[1]), 0)
    np.testing.assert_allclose(l2["q_mean"], at_mean["layers"][1]["q_mean"], rtol=1e-5,
                               atol=1e-6)                  # z2 inferred from z1 = its mean
    log_px1, kls1 = _np_terms(skipped, batch["image"])
    np.testing.assert_allclose(pred["l_gt_k"][:, 1], (log_px1 - kls1[1].sum(-1))[0],
                               rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(pred["l_gt_k"][:, 0], pred["log_likelihood"])


def test_thousand_samples_run_in_chunks_and_chunking_changes_nothing():
    batch, key = _batch(b=2, pad=0), jax.random.PRNGKey(11)
    variables = _variables(_family(), batch)
    out = {}
    for chunk in (300, 1000):             # 1000 = 3·300 + 100: the last chunk is padded
        fam = _family(iwae_samples=1000, score_chunk=chunk)
        out[chunk] = jax.tree.map(np.asarray, jax.jit(fam.predict, static_argnums=3)(
            variables, _jnp(batch), key, ("log_likelihood", "l_gt_k")))
    a, b = out[300], out[1000]
    assert a["l_gt_k"].shape == (2, 2) and np.all(np.isfinite(a["l_gt_k"]))
    np.testing.assert_allclose(a["l_gt_k"], b["l_gt_k"], rtol=1e-5)
    scores = _family().ood_score_fn(a)
    assert set(scores) == {"L", "L>1", "-LLR>1"}
    np.testing.assert_array_equal(scores["L"], a["l_gt_k"][:, 0])        # LLR>0 = 0 exactly
    np.testing.assert_allclose(scores["-LLR>1"], a["l_gt_k"][:, 1] - a["l_gt_k"][:, 0])


# -- device-count invariance -----------------------------------------------------------
_STEPS = {}


def _sharded(n_devices, batch):
    """(init variables, loss, aux, grads) of the tiny HVAE on n devices, data-dependent init
    from ``batch`` included."""
    if n_devices not in _STEPS:
        fam = _family()
        mesh = parallel.make_mesh(n_devices)
        init = jax.jit(parallel.shard_init(fam.init, mesh))
        loss = parallel.shard_loss(fam.loss, mesh)

        @jax.jit
        def grads(params, sharded, rng):
            return jax.value_and_grad(lambda p: loss({"params": p}, sharded, rng, PROGRESS),
                                      has_aux=True)(params)
        _STEPS[n_devices] = (mesh, init, grads)
    mesh, init, grads = _STEPS[n_devices]
    sharded = {k: jax.device_put(v, parallel.data_sharded(mesh)) for k, v in batch.items()}
    with jax.threefry_partitionable(False):
        variables = init(jax.random.PRNGKey(0), sharded)
    (value, (_, aux)), g = grads(variables["params"], sharded, jax.random.PRNGKey(5))
    return jax.tree.map(np.asarray, (variables, value, aux, g))


def test_init_loss_and_grads_are_device_count_invariant_on_a_padded_batch():
    batch = _batch()                  # 3 padding rows: device 7 of 8 holds only padding
    one, eight = _sharded(1, batch), _sharded(8, batch)
    g = one[0]["params"]["q1_1"]["conv1"]["g"]
    assert np.all(g > 0) and not np.allclose(g, g[0])      # gains came from the data
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(eight)):
        assert np.all(np.isfinite(a))
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    padded = _sharded(8, _batch(pad_value=1e3))   # what padding rows hold changes nothing
    for a, b in zip(jax.tree.leaves(eight), jax.tree.leaves(padded)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def test_gradients_are_finite_on_extreme_inputs():
    for value in (0.0, 1.0):
        batch = _batch(pad=0)
        batch["image"][:] = value                        # an all-black / all-white batch
        _, loss, aux, grads = _sharded(1, batch)
        assert np.isfinite(loss) and all(np.all(np.isfinite(v)) for v in aux.values())
        assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


# -- module shapes, precision, config errors ---------------------------------------------
def test_fashion_mnist_architecture_has_the_originals_parameter_count():
    from configs import hvae as configs
    o = famlib.HVAEFamily.options(configs.get_config("fashion_mnist"))
    module = famlib.build_module(o, 1)
    x = jnp.zeros((2, 28, 28, 1))
    eps = tuple(jnp.zeros((1, 2) + s) for s in module.latent_shapes((28, 28, 1)))
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), x, eps))
    n = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes))
    # the original's 2,620,258 less its unused inference projection of z3 (8·3136 + 2·3136)
    assert n == 2_620_258 - 31_360
    assert module.latent_shapes((28, 28, 1)) == ((14, 14, 8), (16,), (8,))


def test_bfloat16_compute_keeps_float32_parameters_and_losses():
    cfg = _config()
    cfg.compute_dtype = "bfloat16"
    fam = famlib.HVAEFamily.build(cfg, 0)
    batch = _jnp(_batch())
    shapes = jax.eval_shape(fam.init, jax.random.PRNGKey(0), batch)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(shapes))
    value, (_, aux) = jax.eval_shape(fam.loss, shapes, batch, jax.random.PRNGKey(0), PROGRESS)
    assert value.dtype == jnp.float32 and all(a.dtype == jnp.float32 for a in aux.values())


@pytest.mark.parametrize("model, message", [
    ({"likelihood": "gaussian"}, r"model.likelihood = 'gaussian'.*bernoulli, discretized"),
    ({"free_nats_mode": "global"},
     r"objective.free_nats_mode = 'global': must be one of per_element, per_layer"),
    ({"iwae_samples": 0}, r"model.iwae_samples = 0: must be an int >= 1"),
    ({"latent": 3}, r"unknown config field\(s\) model.latent; valid fields of model: name"),
    ({"config_stochastic": ({"block": "GaussianConv", "latent_features": 2},
                            {"block": "GaussianDense", "latent_features": 3})},
     r"model.config_stochastic = .*: layer \[0\]: block = 'GaussianConv'; valid choices: "
     r"GaussianConv2d"),
    ({"config_deterministic": (({"out_channels": 4, "kernel": 3},),)},
     r"model.config_deterministic = .*: stage \[0\]\[0\] = .* must be a dict with keys "
     r"kernel_size"),
    ({"config_deterministic": (({"out_channels": 4, "kernel_size": 3},),)},
     r"model.config_stochastic = .*: 2 layers, but model.config_deterministic has 1 stages"),
])
def test_bad_options_name_the_field_and_the_valid_choices(model, message):
    with pytest.raises(ValueError, match=message):
        famlib.HVAEFamily.build(_config(**model), 0)


def test_normalised_inputs_and_other_models_are_refused():
    with pytest.raises(ValueError, match="data.mean and data.std must be"):
        famlib.HVAEFamily.build(_config(), 0, mean=(0.5,), std=(0.5,))
    with pytest.raises(ValueError, match="model.name = 'dhm'"):
        famlib.HVAEFamily.build(_config(name="dhm"), 0)


# -- the CLI -----------------------------------------------------------------------------
def test_digits_trains_and_evaluates_through_the_cli(tmp_path):
    """The digits variant, shrunk to two one-block stages (XLA:CPU compile time) from the
    command line: tuples of block dicts are valid --config overrides."""
    stages = str(tuple((dict(b, out_channels=8),) for (b,) in TINY["config_deterministic"]))
    r = run_cli(["--config=configs/hvae.py:digits", f"--workdir={tmp_path}",
                 f"--config.model.config_deterministic={stages}",
                 f"--config.model.config_stochastic={TINY['config_stochastic']}",
                 "--config.num_steps=40", "--config.log_every=10",
                 "--config.checkpoint_every=20", "--config.eval_batch_size=512",
                 "--config.model.iwae_samples=4", "--config.model.score_chunk=4",
                 "--config.evals.ood_sets=inverted,uniform_noise"], devices=1)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
    elbo = [l["elbo"] for l in lines if l["kind"] == "train"]
    assert len(elbo) == 4 and elbo[-1] > elbo[0] + 10, elbo       # the ELBO improves
    val = [l["val_elbo"] for l in lines if l["kind"] == "validation"]
    assert len(val) == 2 and val[1] > val[0], val
    final = json.load(open(tmp_path / "final_metrics.json"))
    out = tmp_path / final["eval_dir"]             # the evaluation final_metrics.json names
    m = json.load(open(out / "metrics.json"))
    for name in ("inverted", "uniform_noise"):
        scores = m["ood"]["sets"][name]["scores"]
        assert set(scores) == {"L", "L>1", "-LLR>1"}
        assert all(0.0 <= s["auroc"] <= 1.0 for s in scores.values())
    saved = np.load(out / "ood_scores.npz")
    assert saved["test/-LLR>1"].shape == saved["inverted/L>1"].shape == (359,)
    like = m["likelihood"]
    assert like["dims"] == 64 and 0 < like["bits_per_dim"] < 10
    assert like["bits_per_dim"] == pytest.approx(-like["log_likelihood_nats"] / (64 * np.log(2)))
    assert "4 samples" in like["bound"]
    l1 = like["bounds"]["L>1"]                                      # L>1 in nats and bits/dim
    assert l1["bits_per_dim"] == pytest.approx(-l1["log_likelihood_nats"] / (64 * np.log(2)))
    assert l1["log_likelihood_nats"] == pytest.approx(float(np.mean(saved["test/L>1"])))
    assert (out / "ood_hist__LLRgt1.png").exists() and (out / "ood_roc_Lgt1.png").exists()
    _check_report(out, m)


def _check_report(out, m):
    """The report defines L, L>1 and LLR>1 with their S, says the evaluated images were
    binarised with evals.seed, what bits/dim of a Bernoulli mean, and describes no
    evaluator that did not run (no calibration bins, no ε)."""
    report = (out / "report.md").read_text()
    assert m["ood"]["definitions"]["-LLR>1"].startswith("−LLR>1(x) = L>1(x) − L(x)")
    for score in ("L", "L>1", "-LLR>1"):
        text = m["ood"]["definitions"][score]
        assert "S = 4 posterior samples" in text and f"{score} = {text}" in report, score
    assert "S = 4 posterior samples" in m["likelihood"]["bounds"]["L>1"]["definition"]
    assert "binarised once" in report and "evals.seed = 0" in report
    assert m["likelihood"]["likelihood"] == "bernoulli"
    assert "{0, 1}^D" in m["likelihood"]["bits_per_dim_meaning"]
    assert m["likelihood"]["bits_per_dim_meaning"] in report
    assert "256 levels" not in report and "bins" not in report and "ε" not in report
    assert "per-bin" not in report and "ood_scores.npz" in report
    row = next(l for l in report.splitlines() if l.startswith("| log_likelihood |"))
    assert row.count(" | ") == 5 and "q(z_s\\|x)" in row      # '|' escaped in a cell


@pytest.mark.parametrize("kernel,size", [(5, 14), (3, 7), (3, 4), (1, 5)])
def test_transposed_conv_equals_lax_conv_transpose_values_and_gradients(kernel, size):
    """The CPU form of the upsampling conv (zero insertion + a plain conv) against
    lax.conv_transpose: values and both gradients."""
    from jax import lax
    from jaxhybrid.models.hvae import conv_transpose_same
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, size, size, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(kernel, kernel, 3, 4)), jnp.float32)
    ref = lambda x, w: lax.conv_transpose(x, w, (2, 2), "SAME",  # noqa: E731
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"))
    ours = lambda x, w: conv_transpose_same(x, w, 2)  # noqa: E731
    np.testing.assert_allclose(ours(x, w), ref(x, w), rtol=1e-5, atol=1e-5)
    assert ours(x, w).shape == (2, 2 * size, 2 * size, 4)
    g = jnp.asarray(rng.normal(size=(2, 2 * size, 2 * size, 4)), jnp.float32)
    for a, b in zip(jax.vjp(ours, x, w)[1](g), jax.vjp(ref, x, w)[1](g)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_every_output_and_score_is_defined_with_its_samples():
    """Family.definitions covers every output and every OOD score, and each bound states
    the S it was computed with (the report prints these beside the numbers)."""
    config = _config(iwae_samples=250, config_deterministic=(
        ({"out_channels": 8, "kernel_size": 3},),) * 3, config_stochastic=(
        {"block": "GaussianConv2d", "latent_features": 2},
        {"block": "GaussianDense", "latent_features": 4},
        {"block": "GaussianDense", "latent_features": 2}))
    fam = famlib.HVAEFamily.build(config, 0)
    n = 4
    out = {"log_likelihood": np.zeros(n), "l_gt_k": np.zeros((n, 3))}
    scores = fam.ood_score_fn(out)
    assert set(scores) == {"L", "L>1", "L>2", "-LLR>1", "-LLR>2"}
    assert set(fam.definitions) == set(scores) | set(fam.outputs)
    for name in ("L", "L>1", "L>2", "-LLR>1", "-LLR>2", "log_likelihood"):
        assert "S = 250 posterior samples" in fam.definitions[name], name
    assert fam.definitions["L>2"].startswith("L>2(x): the bound L with z_1..z_2 at the posterior")
    assert fam.likelihood == "bernoulli"
