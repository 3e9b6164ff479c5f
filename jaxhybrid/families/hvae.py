"""HVAE family: the hierarchical VAE of hvae-oodd and its LLR>k OOD scores (docs/methods/hvae.md).

Module :class:`jaxhybrid.models.hvae.HVAE`, objective :mod:`jaxhybrid.objectives.elbo`.
Its fields live under ``config.model`` (``name = "hvae"``; :data:`DEFAULTS` lists them,
with the original's Fashion-MNIST settings)::

    config_deterministic   stages, each a list of blocks {out_channels, kernel_size,
                           stride (1), gated (False)}; "block": "ResBlockConv2d" and
                           "weightnorm": True are accepted, as in the original's JSON
    config_stochastic      one per stage: {block: GaussianConv2d | GaussianDense,
                           latent_features, kernel_size (3, conv only)}
    likelihood             bernoulli (binary pixels: needs data.train_transforms=
                           binarize unless the data are binary already; refused
                           otherwise) | discretized_logistic |
                           discretized_mix_logistic (on 2x − 1, 256 levels)
    num_mix                mixture components (discretized_mix_logistic)
    likelihood_kernel      kernel of the conv to the likelihood's parameters
    min_scale              floor of every posterior and prior scale
    same_shape_skips       add skip inputs the original drops (models/hvae.py)
    warmup_epochs          KL warm-up β_t over this many epochs
    free_nats              λ₀; free_nats_constant_epochs, free_nats_cooldown_epochs:
                           λ_t = λ₀, then linearly to 0 (objectives/elbo.py)
    free_nats_mode         per_element (the original) | per_layer
    train_samples          S posterior samples per example in training (the
                           data-dependent initialisation sees the B rows of the first
                           batch once; the original's sees its S·B rows)
    train_importance_weighted   the IW training bound over them (else their mean)
    iwae_samples           S of the importance-weighted scores (log_likelihood, l_gt_k)
    score_chunk            samples evaluated at once (memory ∝ score_chunk, any S): the
                           scoring holds (eval_batch_size / devices) × L × score_chunk
                           rows of activations in flight (L passes for L>k); ≈ 1 MiB a row
                           at the Fashion-MNIST width, ≈ 5 MiB at the CIFAR-10 width
                           (benchmarks/hvae_scoring.py measures it)

Outputs (eval mode; every draw keyed by the fixed evaluation key, the example id and the
sample index, so nothing depends on the device count or the chunking):

- ``elbo`` [B]: the single-sample ELBO log p(x|z) − Σ KL (nats), sample 0;
- ``log_likelihood`` [B]: L(x), the S-sample importance-weighted bound (log-mean-exp),
  S = ``iwae_samples``; nats of the modelled pixels (binarised or 256-level);
- ``l_gt_k`` [B, L]: column k is L>k(x) with the same S samples: z_1..z_k at the
  posterior mean in inference and the conditional prior's mean in generation, their KL
  terms dropped, the layers above inferred from x. Column 0 is L(x) itself, computed in
  the same pass, so LLR>0 = 0 exactly.

OOD scores (higher = in-distribution): ``L``; ``L>k`` and ``-LLR>k`` = L>k − L for
k = 1..L−1 (LLR>k = L − L>k is high for OOD; negated here). The L>k bound keeps the KL
terms of ITS OWN pass for the layers above k, as the original's scripts/ood-llr.py does
since upstream commit 5726fa4 (it reads ``stage_datas_k``). :func:`definitions` gives
the one-line definition of each output and score that reports print beside the number.
The best checkpoint is the one with the highest validation ELBO (``val_elbo``);
validation is carved from train.
"""
from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxhybrid import rng as rnglib
from jaxhybrid.families.options import Options, is_int
from jaxhybrid.families.base import Family
from jaxhybrid.mathops import log_mean_exp
from jaxhybrid.models import likelihoods
from jaxhybrid.models.hvae import HVAE, Block, Latent, init_from_directions
from jaxhybrid.objectives import elbo as obj
from jaxhybrid.precision import compute_dtype

LIKELIHOOD_NAMES = ("bernoulli", "discretized_logistic", "discretized_mix_logistic")
STOCHASTIC_BLOCKS = {"GaussianConv2d": "conv", "GaussianDense": "dense"}
_BLOCK_KEYS = {"block", "out_channels", "kernel_size", "stride", "gated", "weightnorm"}
_LATENT_KEYS = {"block", "latent_features", "kernel_size", "weightnorm"}


def _blocks(kernel, strides, channels=64):
    return tuple({"out_channels": channels, "kernel_size": kernel, "stride": s} for s in strides)


DEFAULTS = {
    "config_deterministic": (_blocks(5, (1, 1, 2)), _blocks(3, (1, 1, 2)),
                             _blocks(3, (1, 1, 1))),
    "config_stochastic": ({"block": "GaussianConv2d", "latent_features": 8},
                          {"block": "GaussianDense", "latent_features": 16},
                          {"block": "GaussianDense", "latent_features": 8}),
    "likelihood": "bernoulli", "num_mix": 10, "likelihood_kernel": 3, "min_scale": 1e-6,
    "same_shape_skips": False, "warmup_epochs": 200.0, "free_nats": 2.0,
    "free_nats_constant_epochs": 200, "free_nats_cooldown_epochs": 200,
    "free_nats_mode": "per_element", "train_samples": 1, "train_importance_weighted": False,
    "iwae_samples": 1, "score_chunk": 8,
}


def _entries(value, field, keys, need, bad):
    """A list of dicts with only ``keys`` and every key of ``need``; errors appended."""
    if not isinstance(value, (list, tuple)) or not value:
        bad.append(f"config field {field} = {value!r}: must be a non-empty list")
        return []
    out = []
    for j, d in enumerate(value):
        if not hasattr(d, "keys") or set(d.keys()) - keys or need - set(d.keys()):
            bad.append(f"config field {field}[{j}] = {d!r}: must be a dict with keys "
                       f"{', '.join(sorted(need))} (optional: {', '.join(sorted(keys - need))})")
            continue
        out.append(dict(d))
    return out


def _stage(value, i, bad) -> tuple:
    field = f"model.config_deterministic[{i}]"
    blocks = []
    for j, d in enumerate(_entries(value, field, _BLOCK_KEYS, {"out_channels", "kernel_size"},
                                   bad)):
        f = f"config field {field}[{j}]"
        d = {"stride": 1, "gated": False, "block": "ResBlockConv2d", "weightnorm": True, **d}
        if not all(is_int(d[k], 1) for k in ("out_channels", "kernel_size", "stride")):
            bad.append(f"{f} = {d!r}: out_channels, kernel_size and stride must be ints >= 1")
        elif d["block"] != "ResBlockConv2d" or d["weightnorm"] is not True:
            bad.append(f"{f}: block must be 'ResBlockConv2d' and weightnorm True (the only "
                       f"deterministic block), got {d['block']!r}, {d['weightnorm']!r}")
        elif not isinstance(d["gated"], bool):
            bad.append(f"{f}: gated must be True or False, got {d['gated']!r}")
        else:
            blocks.append(Block(d["out_channels"], d["kernel_size"], d["stride"], d["gated"]))
    return tuple(blocks)


def _latent(d, j, bad):
    f = f"config field model.config_stochastic[{j}]"
    d = {"kernel_size": 3, "weightnorm": True, **d}
    if d["block"] not in STOCHASTIC_BLOCKS:
        bad.append(f"{f}: block = {d['block']!r}; valid choices: {', '.join(STOCHASTIC_BLOCKS)}")
    elif not (is_int(d["latent_features"], 1) and is_int(d["kernel_size"], 1)):
        bad.append(f"{f} = {d!r}: latent_features and kernel_size must be ints >= 1")
    elif d["weightnorm"] is not True:
        bad.append(f"{f}: weightnorm must be True (the only stochastic layer)")
    else:
        return Latent(STOCHASTIC_BLOCKS[d["block"]], d["latent_features"], d["kernel_size"])
    return None


def read_options(model_cfg) -> dict:
    """``config.model`` -> the family's options, every field checked (errors name the field
    and the valid choices). Adds ``stages`` (tuples of Block) and ``latents`` (Latent)."""
    c = Options(model_cfg, DEFAULTS, "hvae", lists_to_tuples=False)
    o, bad, need = c.o, c.bad, c.need
    c.ints(("num_mix", "likelihood_kernel", "train_samples", "iwae_samples", "score_chunk"), 1)
    c.ints(("free_nats_constant_epochs", "free_nats_cooldown_epochs"), 0)
    c.numbers(("warmup_epochs", "free_nats"), 0)
    c.numbers(("min_scale",), 0, low_open=True)
    need("likelihood", o["likelihood"] in LIKELIHOOD_NAMES,
         f"must be one of {', '.join(LIKELIHOOD_NAMES)}")
    need("free_nats_mode", o["free_nats_mode"] in obj.FREE_NATS_MODES,
         f"must be one of {', '.join(obj.FREE_NATS_MODES)}")
    for f in ("same_shape_skips", "train_importance_weighted"):
        need(f, isinstance(o[f], bool), "must be True or False")
    stages = o["config_deterministic"]
    if not isinstance(stages, (list, tuple)) or not stages:
        need("config_deterministic", False, "must be a non-empty list of stages, each a "
             "non-empty list of block dicts")
        stages = ()
    o["stages"] = tuple(_stage(s, i, bad) for i, s in enumerate(stages))
    latents = _entries(o["config_stochastic"], "model.config_stochastic", _LATENT_KEYS,
                       {"block", "latent_features"}, bad)
    o["latents"] = tuple(_latent(d, j, bad) for j, d in enumerate(latents))
    if not bad and len(o["latents"]) != len(o["stages"]):
        bad.append(f"config fields model.config_stochastic ({len(o['latents'])} layers) and "
                   f"model.config_deterministic ({len(o['stages'])} stages) must have the "
                   f"same length: one stochastic layer per stage")
    return c.result(floats=("warmup_epochs", "free_nats"))


def build_module(o: dict, channels: int, axis_name=None, dtype=jnp.float32) -> HVAE:
    """The HVAE of options ``o`` (:func:`read_options`) for ``channels`` data channels."""
    return HVAE(o["stages"], o["latents"], out_channels(o, channels),
                likelihood_kernel=o["likelihood_kernel"], min_scale=o["min_scale"],
                same_shape_skips=o["same_shape_skips"], axis_name=axis_name, dtype=dtype)


def _likelihood_options(o: dict) -> dict:
    return {"num_mix": o["num_mix"]} if o["likelihood"] == "discretized_mix_logistic" else {}


def out_channels(o: dict, channels: int) -> int:
    return likelihoods.out_channels(o["likelihood"], channels, **_likelihood_options(o))


def log_px(o: dict, decoded, image):
    """log p(x|z) in nats: decoded [S, B, H, W, C'], image [B, H, W, C] in [0, 1] -> [S, B].
    Bernoulli models the pixels, the discretized likelihoods 2x − 1 on 256 levels."""
    target = image if o["likelihood"] == "bernoulli" else 2.0 * image - 1.0
    return likelihoods.log_prob(o["likelihood"], decoded, target, **_likelihood_options(o))


def posterior_noise(rng, ids, samples, shapes) -> tuple:
    """ε ~ N(0, I) per layer, [S, B, *shape] for each of ``shapes``. Sample s of example i
    is one draw from member s of its example key (the LAYER_NOISE stream of ``rng``, then
    the global id; :mod:`jaxhybrid.rng`), so neither the device count nor the chunking
    changes it. samples: [S] sample indices."""
    ex = rnglib.example_keys(rnglib.stream(rng, rnglib.LAYER_NOISE), ids)
    sizes = [math.prod(sh) for sh in shapes]
    draw = lambda s: jax.vmap(lambda k: jax.random.normal(  # noqa: E731
        rnglib.member(k, s), (sum(sizes),)))(ex)
    flat = jax.vmap(draw)(samples)                                          # [S, B, Σ sizes]
    parts = jnp.split(flat, list(itertools.accumulate(sizes))[:-1], axis=-1)
    return tuple(p.reshape(p.shape[:2] + sh) for p, sh in zip(parts, shapes))


def importance_weighted_bounds(o, module, variables, image, ids, rng, skips, samples, chunk):
    """[B, K]: L>k(x) for each of the K values k of ``skips``, the S-sample bound
    log (1/S) Σ_s w_s (S = ``samples``). Samples are evaluated ``chunk`` at a time, the K
    passes of a chunk as one batch of K·chunk samples (lax.map over chunks: memory ∝
    K·chunk; samples past S in the last chunk are dropped). Sample s has the same noise ε
    in every pass, so the K bounds share their random numbers."""
    chunk, k = min(chunk, samples), len(skips)
    n = -(-samples // chunk)
    skip = jnp.repeat(jnp.asarray(skips, jnp.int32), chunk)                  # [K·chunk]
    shapes = module.latent_shapes(image.shape[1:])

    def one(c):
        eps = posterior_noise(rng, ids, c * chunk + jnp.arange(chunk), shapes)
        eps = tuple(jnp.tile(e, (k,) + (1,) * (e.ndim - 1)) for e in eps)     # [K·chunk, B, *z]
        out = module.apply(variables, image, eps, skip=skip)
        log_w = obj.log_weights(log_px(o, out["decoded"], image), out["layers"], skip)
        return jnp.moveaxis(log_w.reshape((k, chunk, -1)), 0, -1)           # [chunk, B, K]
    log_w = lax.map(one, jnp.arange(n)).reshape((n * chunk, image.shape[0], k))
    return log_mean_exp(log_w[:samples])


def definitions(n_latents: int, samples: int, likelihood: str) -> dict:
    """{output or OOD score: one-line definition} for ``n_latents`` layers, the S =
    ``samples`` of the importance-weighted scores and the ``likelihood``'s name."""
    pixels = "binary pixels" if likelihood == "bernoulli" else "256-level pixels"
    s = f"S = {samples} posterior sample{'s' if samples > 1 else ''}"
    def lgtk(k):
        low = "z_1" if k == 1 else f"z_1..z_{k}"
        return (f"L>{k}(x): the bound L with {low} at the posterior mean in inference and "
                f"the conditional prior's mean in generation, their KL terms dropped, the "
                f"layers above sampled ({s}, the same as L's; nats)")
    out = {
        "elbo": f"log p(x|z) − Σ_i KL_i with one posterior sample z ~ q(z|x): the "
                f"one-sample ELBO (nats of the {pixels}; validation selects on it)",
        "log_likelihood": f"L(x) = log (1/S) Σ_s p(x, z_s)/q(z_s|x), the "
                          f"importance-weighted bound on log p(x) with {s} (nats of the "
                          f"{pixels})",
        "l_gt_k": f"[{n_latents}] column k: L>k(x), column 0: L(x)",
        "L": f"L(x), the importance-weighted bound on log p(x) with {s} (nats)",
    }
    for k in range(1, n_latents):
        out[f"L>{k}"] = lgtk(k)
    for k in range(1, n_latents):
        out[f"-LLR>{k}"] = (f"−LLR>{k}(x) = L>{k}(x) − L(x), both with the same {s} "
                            f"(nats); LLR>{k} = L − L>{k} is high for OOD data, so it is "
                            f"negated (higher = in-distribution)")
    return out


def make_hvae(config, num_classes: int, mean=None, std=None) -> Family:
    del num_classes                       # unsupervised: labels, if any, are not used
    if mean is not None or std is not None:
        raise ValueError("family 'hvae' models [0, 1] pixels: config fields data.mean and "
                         "data.std must be () (no normalisation)")
    if config.model.get("name", "hvae") != "hvae":
        raise ValueError(f"family 'hvae' builds model 'hvae'; config field model.name = "
                         f"{config.model.name!r}: set it to 'hvae'")
    o = read_options(config.model)
    dtype = compute_dtype(config)
    n_latents = len(o["latents"])

    def module(image, axis_name=None):
        return build_module(o, image.shape[-1], axis_name, dtype)

    def init(rng, batch, axis_name=None):   # data-dependent: statistics of the global batch
        image, m = batch["image"], module(batch["image"], axis_name)
        eps = posterior_noise(rng, batch["id"], jnp.arange(1), m.latent_shapes(image.shape[1:]))
        return init_from_directions(m, rng, image, eps, mask=batch["mask"])

    def loss(variables, batch, rng, progress, axis_name=None):
        image, epoch = batch["image"], progress["epoch"]
        m = module(image)
        eps = posterior_noise(rng, batch["id"], jnp.arange(o["train_samples"]),
                              m.latent_shapes(image.shape[1:]))
        out = m.apply(variables, image, eps)
        value, aux = obj.hvae_objective(
            log_px(o, out["decoded"], image), out["layers"], batch["mask"],
            beta=obj.warmup_beta(epoch, o["warmup_epochs"]),
            free_nats=obj.free_nats_schedule(epoch, o["free_nats"],
                                             o["free_nats_constant_epochs"],
                                             o["free_nats_cooldown_epochs"]),
            free_nats_mode=o["free_nats_mode"],
            importance_weighted=o["train_importance_weighted"], axis_name=axis_name)
        return value, ({}, aux)

    def predict(variables, batch, rng, outputs=("elbo",)):
        image, ids, m = batch["image"], batch["id"], module(batch["image"])
        res = {}
        if "elbo" in outputs:
            res["elbo"] = importance_weighted_bounds(o, m, variables, image, ids, rng, (0,),
                                                     1, 1)[:, 0]
        if {"log_likelihood", "l_gt_k"} & set(outputs):
            skips = tuple(range(n_latents)) if "l_gt_k" in outputs else (0,)
            bounds = importance_weighted_bounds(o, m, variables, image, ids, rng, skips,
                                                o["iwae_samples"], o["score_chunk"])
            res["log_likelihood"], res["l_gt_k"] = bounds[:, 0], bounds
        return {k: res[k] for k in outputs}

    def ood_scores(out):
        scores = {"L": out["log_likelihood"]}
        l_gt_k = np.asarray(out["l_gt_k"], np.float64)
        for k in range(1, n_latents):
            scores[f"L>{k}"] = l_gt_k[:, k]
        for k in range(1, n_latents):
            scores[f"-LLR>{k}"] = l_gt_k[:, k] - l_gt_k[:, 0]
        return scores

    def validate(out):
        return {"elbo": float(np.mean(out["elbo"]))}

    def bounds(out):        # L>k, k >= 1, for the likelihood evaluator (nats, bits/dim)
        l_gt_k = np.asarray(out["l_gt_k"], np.float64)
        return {f"L>{k}": l_gt_k[:, k] for k in range(1, n_latents)}

    s = o["iwae_samples"]
    return Family(name="hvae", init=init, loss=loss, predict=predict,
                  outputs=("elbo", "log_likelihood", "l_gt_k"), supervised=False,
                  validation_outputs=("elbo",), validate=validate, select=("elbo", "max"),
                  ood_outputs=("log_likelihood", "l_gt_k"), ood_score_fn=ood_scores,
                  bound_outputs=("l_gt_k",), bound_fn=bounds,
                  label=f"HVAE (L={n_latents})", likelihood=o["likelihood"],
                  definitions=definitions(n_latents, s, o["likelihood"]),
                  describe={"model": "hvae", "latents": n_latents,
                            "likelihood": o["likelihood"], "free_nats_mode": o["free_nats_mode"],
                            "log_likelihood": f"the importance-weighted bound L(x) with {s} "
                                              f"sample{'s' if s > 1 else ''} (log-mean-exp)"})
