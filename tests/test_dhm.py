"""The DHM family (issue 8): its KL, ELBO and IWAE against independent computations, the
original's loss formula, device-count invariance on a padded batch, decoder shapes for
any input and split layer, and the original's numbers. The CLI runs are in tests/test_dhm_runs.py."""
import os
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxhybrid import mathops, parallel
from jaxhybrid import rng as rnglib
from jaxhybrid.families import dhm as famlib
from jaxhybrid.models.dhm import DHM
from jaxhybrid.objectives import dhm as obj
from tests.helpers import family_config, REPO, fake_variables

K = 3
TINY = {"name": "dhm", "width": 2, "blocks": (1, 1, 1, 1), "latent": 3, "head_hidden": 8}


def _config(**fields):
    return family_config(famlib.DHMFamily, **{**TINY, **fields})


def _batch(b=16, shape=(8, 8, 1), pad=3, pad_value=0.0, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.uniform(size=(b, *shape)).astype(np.float32)
    mask = np.arange(b) < b - pad
    image[~mask] = pad_value
    return {"image": image, "label": rng.integers(0, K, b).astype(np.int32), "mask": mask,
            "id": np.where(mask, np.arange(b) + 100, -1).astype(np.int32)}


def _jnp(batch):
    return {k: jnp.asarray(v) for k, v in batch.items()}


def _variables(fam, batch, seed=1):
    return fake_variables(fam.init, _jnp(batch), seed)


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_kl_is_the_closed_form():
    rng = np.random.default_rng(0)
    mu, log_var = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
    sigma = np.exp(0.5 * log_var)
    # KL(N(μ, σ²) ‖ N(0, 1)) = log(1/σ) + (σ² + μ²)/2 − 1/2, per dimension
    expected = np.log(1.0 / sigma) + (sigma ** 2 + mu ** 2) / 2 - 0.5
    np.testing.assert_allclose(mathops.kl_normal_std(mu, log_var), expected, rtol=1e-5, atol=1e-6)


def _parts(fam_cfg, batch, samples, key):
    """A tiny bernoulli DHM in eval mode: (variables, module outputs at eps, eps, family)."""
    o = famlib.DHMFamily.options(fam_cfg)
    fam = famlib.DHMFamily.build(fam_cfg, K)
    b = _jnp(batch)
    variables = _variables(fam, batch)
    module = famlib.build_module(o, K, batch["image"].shape[-1])
    eps = famlib.reparameterisation_noise(key, b["id"], samples, o.model["latent"])
    out = jax.jit(lambda v, x, e: module.apply(v, x, train=False, eps=e))(variables, b["image"],
                                                                         eps)
    return fam, variables, jax.tree.map(np.asarray, out), np.asarray(eps)


def test_elbo_and_iwae_equal_direct_computations_from_the_parts():
    batch = _batch(b=8, pad=0)
    key = jax.random.PRNGKey(7)
    cfg = _config(recon="bernoulli", iwae_samples=8, norm="none")
    fam, variables, out, eps = _parts(cfg, batch, 8, key)
    x = batch["image"]                                     # probabilities in [0, 1]
    logits = out["decoded"]                                # [S, B, H, W, 1]
    log_px_z = np.sum(x * -np.logaddexp(0, -logits) + (1 - x) * -np.logaddexp(0, logits),
                      axis=(2, 3, 4))                      # [S, B]
    mu, log_var = out["mu"], out["log_var"]
    kl = np.sum(0.5 * (mu ** 2 + np.exp(log_var) - 1 - log_var), -1)
    predict = jax.jit(fam.predict, static_argnums=3)
    pred = jax.tree.map(np.asarray, predict(variables, _jnp(batch), key,
                                            ("elbo", "log_likelihood", "neg_loss_at_mean",
                                             "neg_loss_sampled")))
    np.testing.assert_allclose(pred["elbo"], log_px_z.mean(0) - kl, rtol=1e-5, atol=1e-3)
    z = mu + np.exp(0.5 * log_var) * np.moveaxis(eps, 1, 0)            # [S, B, L]
    norm = lambda v, m, lv: -0.5 * ((v - m) ** 2 / np.exp(lv) + lv + np.log(2 * np.pi))  # noqa
    log_w = log_px_z + norm(z, 0.0, 0.0).sum(-1) - norm(z, mu, log_var).sum(-1)
    m = log_w.max(0)
    iwae8 = m + np.log(np.mean(np.exp(log_w - m), 0))
    np.testing.assert_allclose(pred["log_likelihood"], iwae8, rtol=1e-5, atol=1e-3)
    # IWAE_8 >= the ELBO on average over the batch (and >= its own samples' mean, always)
    assert pred["log_likelihood"].mean() >= pred["elbo"].mean()
    assert np.all(iwae8 >= log_w.mean(0) - 1e-4)
    # K = 1: the IWAE bound is the single-sample ELBO, log p(x|z) + log p(z) − log q(z|x)
    fam1 = famlib.DHMFamily.build(_config(recon="bernoulli", iwae_samples=1, norm="none"), K)
    one = np.asarray(jax.jit(fam1.predict, static_argnums=3)(
        variables, _jnp(batch), key, ("log_likelihood",))["log_likelihood"])
    np.testing.assert_allclose(one, log_w[0], rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(mathops.log_mean_exp(jnp.asarray(log_w[:1])), log_w[0], rtol=1e-6)
    # −(recon + c·KL) at z = μ and at the one z = μ + σ·ε of the example's evaluation key
    # (the original's score), summed nats for a proper likelihood
    module = famlib.build_module(famlib.DHMFamily.options(cfg), K, 1)
    one_eps = famlib.reparameterisation_noise(key, jnp.asarray(batch["id"]), 1, 3)
    for name, e in (("neg_loss_at_mean", None), ("neg_loss_sampled", one_eps)):
        d = np.asarray(jax.jit(lambda v, x: module.apply(v, x, train=False, eps=e)["decoded"][0])(
            variables, jnp.asarray(x)))
        rec = -np.sum(x * -np.logaddexp(0, -d) + (1 - x) * -np.logaddexp(0, d), (1, 2, 3))
        np.testing.assert_allclose(pred[name], -(rec + 0.1 * kl), rtol=1e-5, atol=1e-3)
    assert np.all(np.abs(pred["neg_loss_sampled"] - pred["neg_loss_at_mean"]) > 1e-4)


def test_bound_formulas_are_the_closed_forms():
    """objectives.dhm's elbo, iwae_bound (with the warm-up's c) and the normalisation's
    log-Jacobian against plain numpy loops."""
    rng = np.random.default_rng(2)
    s, b, l = 4, 3, 5
    log_px = rng.normal(-50, 5, size=(s, b))
    mu, log_var, z = rng.normal(size=(b, l)), rng.normal(size=(b, l)), rng.normal(size=(s, b, l))
    log_n = lambda v, m, lv: -0.5 * ((v - m) ** 2 / np.exp(lv) + lv + np.log(2 * np.pi))  # noqa
    for c in (1.0, 0.3):
        want = []
        for i in range(b):
            w = [log_px[k, i] + c * (log_n(z[k, i], 0.0, 0.0).sum()
                                     - log_n(z[k, i], mu[i], log_var[i]).sum()) for k in range(s)]
            want.append(np.log(np.mean(np.exp(np.asarray(w) - max(w)))) + max(w))
        np.testing.assert_allclose(obj.iwae_bound(log_px, z, mu, log_var, kl_coef=c), want,
                                   rtol=1e-5)
    kl = [sum(0.5 * (mu[i, j] ** 2 + np.exp(log_var[i, j]) - 1 - log_var[i, j])
              for j in range(l)) for i in range(b)]
    np.testing.assert_allclose(obj.elbo(log_px, mu, log_var, 2.5),
                               log_px.mean(0) - np.asarray(kl) + 2.5, rtol=1e-5)
    # x̃ = (x − m)/s_c: log |det ∂x̃/∂x| = Σ over the H·W·C elements of log(1/s_c)
    std, shape = (0.2, 0.5, 2.0), (7, 4, 3, 3)
    want = sum(np.log(1.0 / std[c]) for h in range(4) for w in range(3) for c in range(3))
    assert obj.normalisation_log_jacobian(shape, std) == pytest.approx(want, rel=1e-12)
    assert obj.normalisation_log_jacobian((7, 4, 3, 3), 0.5) == pytest.approx(36 * np.log(2))


def test_iwae_bound_gradient_is_the_normalised_importance_weights():
    """d iwae_i / d log p(x|z_k) = softmax_k(w_ki), the self-normalised importance weights,
    finite and exact at weights ~1e4 nats apart (the log-mean-exp is stabilised)."""
    rng = np.random.default_rng(5)
    s, b, l = 5, 4, 3
    log_px = rng.normal(-50, 5, size=(s, b))
    log_px[0, 0], log_px[1, 1] = 1e4, -1e4                   # extreme samples
    mu, log_var, z = rng.normal(size=(b, l)), rng.normal(size=(b, l)), rng.normal(size=(s, b, l))
    grad = jax.grad(lambda lp: obj.iwae_bound(lp, z, mu, log_var, kl_coef=0.3).sum())(
        jnp.asarray(log_px, jnp.float32))
    log_n = lambda v, m, lv: -0.5 * ((v - m) ** 2 / np.exp(lv) + lv + np.log(2 * np.pi))  # noqa
    w = log_px + 0.3 * (log_n(z, 0.0, 0.0) - log_n(z, mu, log_var)).sum(-1)
    want = np.exp(w - w.max(0)) / np.exp(w - w.max(0)).sum(0)
    assert np.all(np.isfinite(np.asarray(grad)))
    np.testing.assert_allclose(np.asarray(grad), want, atol=1e-6)


def test_mse_mean_loss_is_the_original_formula():
    """α·CE + β·(mean (x̂ − x)² + 0.1·mean KL), batch mean over the valid rows (α = β = 1)."""
    batch = _batch(b=10, pad=2)
    cfg = _config()                                          # recon=mse_mean, c = 0.1, BN
    o = famlib.DHMFamily.options(cfg)
    assert (o.model["recon"], o.objective["kl_coef"], o.objective["alpha"],
            o.objective["beta"]) == ("mse_mean", 0.1, 1.0, 1.0)
    fam = famlib.DHMFamily.build(cfg, K)
    b, key = _jnp(batch), jax.random.PRNGKey(3)
    variables = _variables(fam, batch)
    progress = {"step": jnp.int32(0), "epoch": jnp.float32(0.5)}
    value, (state, aux) = jax.jit(fam.loss)(variables, b, key, progress)
    module = famlib.build_module(o, K, 1)
    eps = famlib.reparameterisation_noise(key, b["id"], 1, o.model["latent"])
    out, _ = jax.jit(lambda v, b: module.apply(
        v, b["image"], train=True, mask=b["mask"], eps=eps,
        keys=rnglib.example_keys(rnglib.stream(key, rnglib.DROPOUT), b["id"]),
        mutable=["batch_stats"]))(variables, b)
    out = jax.tree.map(np.asarray, out)
    m = batch["mask"]
    ce = -np.take_along_axis(_log_softmax(out["logits"]), batch["label"][:, None], 1)[:, 0]
    recon = np.mean((out["decoded"][0] - batch["image"]) ** 2, axis=(1, 2, 3))
    kl = np.mean(0.5 * (out["mu"] ** 2 + np.exp(out["log_var"]) - 1 - out["log_var"]), -1)
    expected = np.mean((ce + recon + 0.1 * kl)[m])
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)
    np.testing.assert_allclose(float(aux["ce"]), ce[m].mean(), rtol=1e-5)
    np.testing.assert_allclose(float(aux["recon"]), recon[m].mean(), rtol=1e-5)
    np.testing.assert_allclose(float(aux["kl"]), kl[m].mean(), rtol=1e-5)
    # KL warm-up: c·min(1, epoch / warm-up), a pure function of progress
    warm = famlib.DHMFamily.build(_config(kl_warmup_epochs=2.0), K)
    _, (_, aux_w) = jax.jit(warm.loss)(variables, b, key, progress)
    np.testing.assert_allclose(float(aux_w["kl_coef"]), 0.1 * 0.25, rtol=1e-6)


_STEPS = {}


def _step(n_devices, batch, key=0):
    """loss, aux, grads and new batch stats of a tiny BatchNorm DHM on n devices."""
    if n_devices not in _STEPS:
        fam = famlib.DHMFamily.build(_config(), K)
        mesh = parallel.make_mesh(n_devices)
        loss = parallel.shard_loss(fam.loss, mesh)
        progress = {"step": jnp.int32(0), "epoch": jnp.float32(0)}

        @jax.jit
        def grads(params, variables, sharded, rng):
            def objective(p):
                return loss({"params": p, **variables}, sharded, rng, progress)
            return jax.value_and_grad(objective, has_aux=True)(params)
        _STEPS[n_devices] = (fam, mesh, grads)
    fam, mesh, grads = _STEPS[n_devices]
    variables = _variables(fam, batch)
    params = variables.pop("params")
    sharded = {k: jax.device_put(v, parallel.data_sharded(mesh)) for k, v in batch.items()}
    (value, (state, aux)), g = grads(params, variables, sharded, jax.random.PRNGKey(key))
    return jax.tree.map(np.asarray, (value, aux, g, state))


def test_loss_grads_and_batch_stats_are_device_count_invariant_on_a_padded_batch():
    batch = _batch()                          # 3 padding rows: device 7 holds only padding
    one, eight = _step(1, batch), _step(8, batch)
    assert one[3]["batch_stats"]              # BatchNorm statistics are updated
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(eight)):
        assert np.all(np.isfinite(a))
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
    padded = _step(8, _batch(pad_value=1e3))  # padding rows change nothing
    for a, b in zip(jax.tree.leaves(eight), jax.tree.leaves(padded)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("shape", [(32, 32, 3), (8, 8, 1), (16, 24, 1)])
def test_decoder_reconstructs_any_input_shape_at_every_split_layer(shape):
    for k in famlib.SPLIT_LAYERS:
        o = famlib.DHMFamily.options(_config(vae_split_layer=k))
        module = famlib.build_module(o, K, shape[-1])
        x = jnp.zeros((2, *shape))
        eps = jnp.zeros((2, 4, o.model["latent"]))
        out, _ = jax.eval_shape(lambda: module.init_with_output(
            jax.random.PRNGKey(0), x, train=False, eps=eps))
        h, w, c = shape
        w2 = o.model["width"]
        target = {0: (h, w, c), 1: (h, w, w2), 2: (h, w, w2),
                  3: (-(-h // 2), -(-w // 2), 2 * w2), 4: (-(-h // 4), -(-w // 4), 4 * w2)}[k]
        assert out["target"].shape == (2, *target), k
        assert out["decoded"].shape == (4, 2, *target), k
        assert out["logits"].shape == (2, K) and out["mu"].shape == (2, o.model["latent"])
    # a proper likelihood's decoder outputs its parameters, e.g. the mixture's
    o = famlib.DHMFamily.options(_config(recon="discretized_mix_logistic"))
    out, _ = jax.eval_shape(lambda: famlib.build_module(o, K, shape[-1]).init_with_output(
        jax.random.PRNGKey(0), jnp.zeros((2, *shape)), train=False))
    assert out["decoded"].shape == (1, 2, *shape[:2], 10 * (1 + (3 if shape[-1] == 3 else 2)
                                                            * shape[-1]))


def test_decoder_refuses_sizes_that_are_not_multiples_of_8():
    o = famlib.DHMFamily.options(_config())
    with pytest.raises(ValueError, match="divisible by 8; got 28×28.*data.frame = 32"):
        jax.eval_shape(partial(famlib.build_module(o, K, 1).init, train=False),
                       jax.random.PRNGKey(0), jnp.zeros((2, 28, 28, 1)))


def test_learned_gaussian_scale_is_the_closed_form_with_its_floor():
    from scipy import stats
    rng = np.random.default_rng(0)
    mean, raw = rng.normal(size=(2, 3, 4, 4, 2)), 3 * rng.normal(size=(2, 3, 4, 4, 2))
    raw[0, 0, 0, 0] = -1e4                                 # σ at its floor, exactly
    target = rng.normal(size=(3, 4, 4, 2))
    decoded = jnp.asarray(np.concatenate([mean, raw], -1), jnp.float32)
    lp = obj.log_px_given_z("gaussian_learned", decoded, jnp.asarray(target, jnp.float32),
                            scale_min=0.05)
    sigma = 0.05 + np.logaddexp(0.0, raw)                  # floor + softplus
    ref = stats.norm.logpdf(target, mean, sigma).sum((2, 3, 4))
    np.testing.assert_allclose(lp, ref, rtol=1e-5)
    g = jax.grad(lambda d: obj.log_px_given_z("gaussian_learned", d, jnp.asarray(
        target, jnp.float32), scale_min=0.05).sum())(decoded)
    assert np.all(np.isfinite(g))
    for k, channels in ((0, 1), (2, TINY["width"]), (4, 4 * TINY["width"])):  # [mean | scale]
        o = famlib.DHMFamily.options(_config(recon="gaussian_learned", vae_split_layer=k))
        out, _ = jax.eval_shape(lambda: famlib.build_module(o, K, 1).init_with_output(
            jax.random.PRNGKey(0), jnp.zeros((2, 8, 8, 1)), train=False))
        assert out["decoded"].shape[-1] == 2 * out["target"].shape[-1] == 2 * channels, k


def test_options_are_checked_with_the_valid_choices():
    with pytest.raises(ValueError, match="model.norm = 'layer'.*batch, group, none"):
        famlib.DHMFamily.build(_config(norm="layer"), K)
    with pytest.raises(ValueError, match="model.vae_split_layer = 5"):
        famlib.DHMFamily.build(_config(vae_split_layer=5), K)
    with pytest.raises(ValueError, match="model.recon = 'mse'.*mse_mean, gaussian"):
        famlib.DHMFamily.build(_config(recon="mse"), K)
    with pytest.raises(ValueError, match=r"unknown config field\(s\) model.widht; valid "
                                         r"fields of model: name, width"):
        famlib.DHMFamily.build(_config(widht=3), K)
    with pytest.raises(ValueError, match="model.recon = 'bernoulli'.*vae_split_layer > 0"):
        famlib.DHMFamily.build(_config(recon="bernoulli", vae_split_layer=2), K)
    # a rule across the two sections, and a loss field under model.* named where it lives
    with pytest.raises(ValueError, match="objective.train_samples = 2: must be 1 with "
                                         "model.recon='mse_mean'"):
        famlib.DHMFamily.build(_config(train_samples=2), K)
    misplaced = _config()
    misplaced.model.beta = 2.0
    with pytest.raises(ValueError, match=r"model.beta \(did you mean objective.beta\?\)"):
        famlib.DHMFamily.build(misplaced, K)


def test_the_config_sections_are_the_tables():
    """base_config('dhm') is the two tables' defaults; nothing of another family leaks in."""
    from jaxhybrid.config_defaults import base_config
    c = base_config("dhm")
    assert dict(c.objective) == {k: f.default for k, f in famlib.OBJECTIVE.fields.items()}
    assert set(c.model) == set(famlib.MODEL.fields) and "joint_weight" not in c
    assert not set(famlib.MODEL.fields) & set(famlib.OBJECTIVE.fields)
    o = famlib.DHMFamily.options(c)
    assert (o.objective["beta"], o.objective["kl_coef"], o.model["width"]) == (1.0, 0.1, 64)
    assert "beta" not in o.model and "width" not in o.objective       # each in its section
    assert "| `objective.beta` | `1.0` |" in famlib.OBJECTIVE.table()


def test_pytorch_init_draws_every_layer_as_pytorch_does():
    """model.init=pytorch: every conv and dense kernel and bias ~ U(±b), b = gain·√3/√fan_in
    with kaiming_uniform_(a=√5)'s gain √(2/(1 + a²)) (PyTorch's formula, computed here),
    fan_in = kh·kw·C_in; norm scales and offsets stay 1 and 0; the draw is the key's."""
    from flax.traverse_util import flatten_dict
    batch = _jnp(_batch())
    init = lambda **kw: famlib.DHMFamily.build(_config(**kw), K).init(  # noqa: E731
        jax.random.PRNGKey(0), batch)["params"]
    theirs, ours = flatten_dict(init(init="pytorch")), flatten_dict(init())
    again = flatten_dict(init(init="pytorch"))
    gain = np.sqrt(2.0 / (1.0 + 5.0))
    redrawn = 0
    for path, v in theirs.items():
        np.testing.assert_array_equal(v, again[path])
        kernel = theirs.get(path[:-1] + ("kernel",))
        if kernel is None:                                   # norm parameters: unchanged
            np.testing.assert_array_equal(v, ours[path])
            continue
        bound = gain * np.sqrt(3.0) / np.sqrt(np.prod(kernel.shape[:-1]))
        v = np.asarray(v)
        assert np.abs(v).max() <= bound, (path, np.abs(v).max(), bound)
        if v.size >= 64:                                     # it fills the interval
            assert np.abs(v).max() > 0.8 * bound, path
            np.testing.assert_allclose(v.std(), bound / np.sqrt(3.0), rtol=0.3, err_msg=path)
        redrawn += 1
    convs_and_denses = sum(1 for p in ours if p[-1] == "kernel")
    biases = sum(1 for p in ours if p[-1] == "bias" and p[:-1] + ("kernel",) in ours)
    assert redrawn == convs_and_denses + biases and convs_and_denses > 20
    with pytest.raises(ValueError, match="model.init = 'torch': must be one of flax, pytorch"):
        famlib.DHMFamily.build(_config(init="torch"), K)


def test_upsampling_is_nearest_neighbour_resize():
    from jaxhybrid.models.dhm import upsample_2x
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 5, 4)), jnp.float32)
    np.testing.assert_array_equal(upsample_2x(x), jax.image.resize(x, (2, 6, 10, 4), "nearest"))


# --- The original's numbers (tests/fixtures/dhm_original/README.md) -----------------------
ORIGINAL = os.path.join(REPO, "tests", "fixtures", "dhm_original")
ORIGINAL_SEED = 20261203
ORIGINAL_MEAN, ORIGINAL_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def original_module(k: int) -> DHM:
    """The original's settings: 3×32×32, width 64, latent 256, 10 classes, BatchNorm."""
    return DHM(10, width=64, latent=256, vae_split_layer=k, mean=ORIGINAL_MEAN,
               std=ORIGINAL_STD)


def seeded_variables(shapes, seed: int):
    """Every leaf of ``shapes`` (a DHM's variables, shapes only) drawn from numpy's
    ``default_rng([seed, i])``, i its index in the sorted order of the '/'-joined paths:
    kernels N(0, 1/fan_in), biases N(0, 0.1²), BatchNorm scales 1 + N(0, 0.1²), running
    means N(0, 0.1²), running variances U(0.5, 1.5). Returns {path: float32 array}."""
    flat = {"/".join(str(getattr(p, "key", p)) for p in path): leaf.shape
            for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]}
    out = {}
    for i, name in enumerate(sorted(flat)):
        rng, shape, leaf = np.random.default_rng([seed, i]), flat[name], name.split("/")[-1]
        if leaf == "kernel":
            v = rng.normal(size=shape) / np.sqrt(np.prod(shape[:-1]))
        elif leaf == "scale":
            v = 1.0 + 0.1 * rng.normal(size=shape)
        elif leaf == "var":
            v = rng.uniform(0.5, 1.5, size=shape)
        else:                                   # bias, running mean
            v = 0.1 * rng.normal(size=shape)
        out[name] = v.astype(np.float32)
    return out


def unflatten(flat: dict) -> dict:
    tree = {}
    for name, v in flat.items():
        *parents, leaf = name.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = jnp.asarray(v)
    return tree


def _original_case(k: int):
    """(fixture, our module, variables regenerated from the fixture's seed)."""
    ref = dict(np.load(os.path.join(ORIGINAL, f"original_k{k}.npz")))
    module = original_module(k)
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros(
        ref["x"].shape), train=False, eps=jnp.zeros((ref["x"].shape[0], 1, 256))))
    return ref, module, unflatten(seeded_variables(shapes, ORIGINAL_SEED + k))


def _close(ours, ref, what, rtol=1e-5):
    """Largest |difference| within rtol of the reference's largest |value| (float32)."""
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape, (what, ours.shape, ref.shape)
    err = float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))
    assert err <= rtol, (what, err)


@pytest.mark.parametrize("k", [0, 2])
def test_the_original_computes_our_numbers(k):
    """Parameters regenerated from the fixture's seed, ported into b-turan/hybrid_robustness
    with pl_bolts (tests/fixtures/dhm_original/README.md): eval-mode logits, μ, log σ²,
    the reconstruction and the original's sampled score −(recon + 0.1·KL); the train-mode
    (batch statistics, dropout off) outputs, loss and its parts, all at the same ε; and one
    BatchNorm running-statistics update (the unbiased variance)."""
    ref, module, variables = _original_case(k)
    x = jnp.asarray(ref["x"])
    labels = jnp.asarray(ref["labels"])
    mask = jnp.ones(x.shape[:1], bool)

    def terms(out):
        recon, kl = obj.generative_terms("mse_mean", out["decoded"], out["target"], out["mu"],
                                         out["log_var"])
        loss, aux = obj.dhm_objective(out["logits"], labels, mask, recon, kl, alpha=1.0,
                                      beta=1.0, kl_coef=0.1)
        return {**out, "score": -(recon + 0.1 * kl), "loss": loss, "ce": aux["ce"],
                "recon_loss": aux["recon"], "kl": aux["kl"]}

    @jax.jit
    def run(v, eps_eval, eps_train):
        evaluated = module.apply(v, x, train=False, eps=eps_eval[:, None])
        trained, state = module.apply(v, x, train=True, eps=eps_train[:, None],
                                      mutable=["batch_stats"])
        return {"eval": terms(evaluated), "train": terms(trained)}, state

    outs, state = run(variables, jnp.asarray(ref["eval/eps"]), jnp.asarray(ref["train/eps"]))
    for mode, out in outs.items():
        out["recon"] = out["decoded"][0][..., :ref[f"{mode}/recon"].shape[-1]]
        for name in ("logits", "mu", "log_var", "score", "recon", "loss", "ce", "recon_loss",
                     "kl"):
            _close(out[name], ref[f"{mode}/{name}"], f"{mode}/{name}", 1e-5)
    stats = [n for n in ref if n.startswith("batch_stats/")]
    assert len(stats) >= 10
    flat = {"/".join(str(getattr(p, "key", p)) for p in path): leaf for path, leaf in
            jax.tree_util.tree_flatten_with_path({"batch_stats": state["batch_stats"]})[0]}
    for name in stats:
        _close(flat[name], ref[name], name, 1e-5)


def test_batchnorm_running_variance_conventions():
    """Train-mode output normalised by the biased variance under both conventions; the running
    variance updated with it (flax) or with n/(n − 1) times it (PyTorch), n the global count
    of valid values per feature (padding rows excluded)."""
    from jaxhybrid.models.layers import BatchNorm
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, size=(5, 2, 3, 4)).astype(np.float32)
    mask = np.array([1, 1, 0, 1, 1], bool)
    valid = x[mask].reshape(-1, 4)
    n, mean, var = valid.shape[0], valid.mean(0), valid.var(0)
    for unbiased, factor in ((False, 1.0), (True, n / (n - 1))):
        bn = BatchNorm(unbiased_running_var=unbiased)
        v = bn.init(jax.random.PRNGKey(0), x, train=False)
        y, st = bn.apply(v, x, train=True, mask=jnp.asarray(mask), mutable=["batch_stats"])
        np.testing.assert_allclose(np.asarray(y)[mask], ((x - mean) / np.sqrt(var + 1e-5))[mask],
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(st["batch_stats"]["var"], 0.9 + 0.1 * var * factor, rtol=1e-5)
        np.testing.assert_allclose(st["batch_stats"]["mean"], 0.1 * mean, rtol=1e-5, atol=1e-6)


def test_own_ood_normalisation_is_a_pixel_transform_the_model_undoes():
    """evals.ood_normalization = own: the model's (x' − m_train)/s_train equals the set's own
    standardisation (x − m_own)/s_own, with m_own, s_own its per-channel pixel statistics."""
    from jaxhybrid.data.sources import ArraySource
    from jaxhybrid.evaluators.ood_sets import channel_stats, own_normalization_transform
    from jaxhybrid.models.layers import Normalize
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(37, 4, 5, 3), dtype=np.uint8)
    mean, std = channel_stats(ArraySource(images, None), chunk=10)
    x = images.astype(np.float64) / 255.0
    np.testing.assert_allclose(mean, x.mean((0, 1, 2)), rtol=1e-6)   # from float32 pixels
    np.testing.assert_allclose(std, x.std((0, 1, 2)), rtol=1e-6)
    for m_train, s_train in ((ORIGINAL_MEAN, ORIGINAL_STD), ((), ())):
        scale, shift = own_normalization_transform(m_train, s_train, mean, std)
        seen = Normalize(m_train or None, s_train or None).apply({}, jnp.asarray(
            x * scale + shift, jnp.float32))
        np.testing.assert_allclose(seen, (x - mean) / std, rtol=1e-5, atol=1e-5)
