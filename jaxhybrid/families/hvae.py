"""HVAE family: the hierarchical VAE of hvae-oodd and its LLR>k OOD scores (docs/methods/hvae.md).

Module :class:`jaxhybrid.models.hvae.HVAE`, objective :mod:`jaxhybrid.objectives.elbo`.
Its fields: :data:`HVAEFamily.MODEL` (``config.model``: the network, its likelihood and
the sampling of its scores) and :data:`HVAEFamily.OBJECTIVE` (``config.objective``: the
bound trained, the KL warm-up and free nats), each row with its default (the original's
Fashion-MNIST settings), its check and a line of doc. The stage lists::

    config_deterministic   stages, each a list of blocks {out_channels, kernel_size,
                           stride (1), gated (False)}; "block": "ResBlockConv2d" and
                           "weightnorm": True are accepted, as in the original's JSON
    config_stochastic      one per stage: {block: GaussianConv2d | GaussianDense,
                           latent_features, kernel_size (3, conv only)}

``model.score_chunk`` sets the memory of scoring: it holds (eval_batch_size / devices) × L
× score_chunk rows of activations in flight (L passes for L>k); ≈ 1 MiB a row at the
Fashion-MNIST width, ≈ 5 MiB at the CIFAR-10 width (benchmarks/hvae_scoring.py). With
``objective.train_samples`` S > 1 the data-dependent initialisation sees the B rows of the
first batch once (the original's sees its S·B rows).

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

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxhybrid import rng as rnglib
from jaxhybrid.families.base import Family, FamilyBase, Options
from jaxhybrid.mathops import log_mean_exp
from jaxhybrid.models import likelihoods
from jaxhybrid.models.hvae import HVAE, Block, Latent, init_from_directions
from jaxhybrid.objectives import elbo as obj
from jaxhybrid.schema import Field, Schema, choice, count, equals, flag, is_int, num, parsed_by

LIKELIHOOD_NAMES = ("bernoulli", "discretized_logistic", "discretized_mix_logistic")
STOCHASTIC_BLOCKS = {"GaussianConv2d": "conv", "GaussianDense": "dense"}


def _blocks(kernel, strides, channels=64):
    return tuple({"out_channels": channels, "kernel_size": kernel, "stride": s} for s in strides)


def _entries(value, where, keys, need) -> list:
    """A non-empty list of dicts with only ``keys`` and every key of ``need``."""
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{where} must be a non-empty list")
    bad = [f"{where}[{j}] = {d!r} must be a dict with keys {', '.join(sorted(need))} "
           f"(optional: {', '.join(sorted(keys - need))})"
           for j, d in enumerate(value)
           if not hasattr(d, "keys") or set(d.keys()) - keys or need - set(d.keys())]
    if bad:
        raise ValueError("; ".join(bad))
    return [dict(d) for d in value]


def _block(d: dict, where: str) -> Block:
    d = {"stride": 1, "gated": False, "block": "ResBlockConv2d", "weightnorm": True, **d}
    if not all(is_int(d[k], 1) for k in ("out_channels", "kernel_size", "stride")):
        raise ValueError(f"{where} = {d!r}: out_channels, kernel_size and stride must be "
                         f"ints >= 1")
    if d["block"] != "ResBlockConv2d" or d["weightnorm"] is not True:
        raise ValueError(f"{where}: block must be 'ResBlockConv2d' and weightnorm True (the "
                         f"only deterministic block), got {d['block']!r}, {d['weightnorm']!r}")
    if not isinstance(d["gated"], bool):
        raise ValueError(f"{where}: gated must be True or False, got {d['gated']!r}")
    return Block(d["out_channels"], d["kernel_size"], d["stride"], d["gated"])


def parse_stages(value) -> tuple:
    """``model.config_deterministic`` -> stages, each a tuple of :class:`Block`."""
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError("must be a non-empty list of stages, each a non-empty list of "
                         "block dicts")
    keys, need = {"block", "out_channels", "kernel_size", "stride", "gated", "weightnorm"}, \
        {"out_channels", "kernel_size"}
    return tuple(tuple(_block(d, f"stage [{i}][{j}]")
                       for j, d in enumerate(_entries(stage, f"stage [{i}]", keys, need)))
                 for i, stage in enumerate(value))


def _latent(d: dict, where: str) -> Latent:
    d = {"kernel_size": 3, "weightnorm": True, **d}
    if d["block"] not in STOCHASTIC_BLOCKS:
        raise ValueError(f"{where}: block = {d['block']!r}; valid choices: "
                         f"{', '.join(STOCHASTIC_BLOCKS)}")
    if not (is_int(d["latent_features"], 1) and is_int(d["kernel_size"], 1)):
        raise ValueError(f"{where} = {d!r}: latent_features and kernel_size must be ints >= 1")
    if d["weightnorm"] is not True:
        raise ValueError(f"{where}: weightnorm must be True (the only stochastic layer)")
    return Latent(STOCHASTIC_BLOCKS[d["block"]], d["latent_features"], d["kernel_size"])


def parse_latents(value) -> tuple:
    """``model.config_stochastic`` -> one :class:`Latent` per stage."""
    keys = {"block", "latent_features", "kernel_size", "weightnorm"}
    return tuple(_latent(d, f"layer [{j}]") for j, d in enumerate(
        _entries(value, "the list", keys, {"block", "latent_features"})))


MODEL = Schema("model", {
    "name": Field("hvae", equals("hvae"), "the module: models/hvae.py's HVAE"),
    "config_deterministic": Field(
        (_blocks(5, (1, 1, 2)), _blocks(3, (1, 1, 2)), _blocks(3, (1, 1, 1))),
        parsed_by(parse_stages), "the deterministic stages: a list per stage of blocks "
        "{out_channels, kernel_size, stride (1), gated (False)}",
        valid_doc="a non-empty list of non-empty lists of block dicts"),
    "config_stochastic": Field(
        ({"block": "GaussianConv2d", "latent_features": 8},
         {"block": "GaussianDense", "latent_features": 16},
         {"block": "GaussianDense", "latent_features": 8}),
        parsed_by(parse_latents), "one stochastic layer per stage: {block: GaussianConv2d | "
        "GaussianDense, latent_features, kernel_size (3, conv only)}",
        valid_doc="one dict per stage"),
    "likelihood": choice("bernoulli", LIKELIHOOD_NAMES, "bernoulli (binary pixels: needs "
                         "data.train_transforms=binarize unless the data are binary) | "
                         "discretized_logistic | discretized_mix_logistic (on 2x − 1, 256 levels)"),
    "num_mix": count(10, "mixture components (discretized_mix_logistic)"),
    "likelihood_kernel": count(3, "kernel of the conv to the likelihood's parameters"),
    "min_scale": num(1e-6, "floor of every posterior and prior scale", 0, low_open=True),
    "same_shape_skips": flag(False, "add the skip inputs the original drops (models/hvae.py)"),
    "iwae_samples": count(1, "S of the importance-weighted scores (log_likelihood, l_gt_k)"),
    "score_chunk": count(8, "samples evaluated at once (memory ∝ score_chunk, any S)"),
})

OBJECTIVE = Schema("objective", {
    "warmup_epochs": num(200.0, "KL warm-up: β_t rises to 1 over this many epochs", 0),
    "free_nats": num(2.0, "λ₀ of the free-nats schedule (objectives/elbo.py)", 0),
    "free_nats_constant_epochs": count(200, "λ_t = λ₀ for this many epochs ...", 0),
    "free_nats_cooldown_epochs": count(200, "... then falls linearly to 0 over this many", 0),
    "free_nats_mode": choice("per_element", obj.FREE_NATS_MODES, "per_element (the original) "
                             "| per_layer"),
    "train_samples": count(1, "S posterior samples per example in training"),
    "train_importance_weighted": flag(False, "train the IW bound over the S samples (else "
                                             "their mean)"),
})


def with_layers(model) -> dict:
    """The model section ``model`` with ``stages`` and ``latents`` parsed from the two
    stage lists."""
    return {**model, "stages": parse_stages(model["config_deterministic"]),
            "latents": parse_latents(model["config_stochastic"])}


def module_options(model_cfg) -> Options:
    """``config.model`` alone, checked, with its layers (no objective section): what
    :func:`build_module` needs."""
    return Options(model=with_layers(MODEL.read(model_cfg)))


def _same_depth(o: Options):
    m = o.model
    if len(parse_latents(m["config_stochastic"])) == len(parse_stages(m["config_deterministic"])):
        return []
    return [("model.config_stochastic", f"{len(m['config_stochastic'])} layers, but "
             f"model.config_deterministic has {len(m['config_deterministic'])} stages: one "
             f"stochastic layer per stage")]


def build_module(o: Options, channels: int, axis_name=None, dtype=jnp.float32) -> HVAE:
    """The HVAE of options ``o`` (:meth:`HVAEFamily.options`; its model section) for
    ``channels`` data channels."""
    m = o.model
    return HVAE(m["stages"], m["latents"], out_channels(o, channels),
                likelihood_kernel=m["likelihood_kernel"], min_scale=m["min_scale"],
                same_shape_skips=m["same_shape_skips"], axis_name=axis_name, dtype=dtype)


def _likelihood_options(o: Options) -> dict:
    m = o.model
    return {"num_mix": m["num_mix"]} if m["likelihood"] == "discretized_mix_logistic" else {}


def out_channels(o: Options, channels: int) -> int:
    return likelihoods.out_channels(o.model["likelihood"], channels, **_likelihood_options(o))


def log_px(o: Options, decoded, image):
    """log p(x|z) in nats under ``model.likelihood``: decoded [S, B, H, W, C'], image
    [B, H, W, C] in [0, 1] -> [S, B]. Bernoulli models the pixels, the discretized
    likelihoods 2x − 1 on 256 levels."""
    name = o.model["likelihood"]
    target = image if name == "bernoulli" else 2.0 * image - 1.0
    return likelihoods.log_prob(name, decoded, target, **_likelihood_options(o))


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


class HVAEFamily(FamilyBase):
    """The HVAE family: the module of :func:`build_module`, the objective of
    :mod:`jaxhybrid.objectives.elbo`, the scores of :func:`importance_weighted_bounds`."""
    name = "hvae"
    MODEL, OBJECTIVE, RULES = MODEL, OBJECTIVE, (_same_depth,)

    def __init__(self, config, num_classes: int, mean=None, std=None):
        del num_classes                   # unsupervised: labels, if any, are not used
        if mean is not None or std is not None:
            raise ValueError("family 'hvae' models [0, 1] pixels: config fields data.mean and "
                             "data.std must be () (no normalisation)")
        super().__init__(config, 0, mean, std)
        self.n_latents = len(self.opts.model["latents"])

    @classmethod
    def options(cls, config) -> Options:
        """The checked sections, the model's with ``stages`` (tuples of Block) and
        ``latents`` (Latent)."""
        o = super().options(config)
        return dataclasses.replace(o, model=with_layers(o.model))

    def module(self, image, axis_name=None) -> HVAE:
        return build_module(self.opts, image.shape[-1], axis_name, self.dtype)

    def init(self, rng, batch, axis_name=None):  # data-dependent: the global batch's statistics
        image, m = batch["image"], self.module(batch["image"], axis_name)
        eps = posterior_noise(rng, batch["id"], jnp.arange(1), m.latent_shapes(image.shape[1:]))
        return init_from_directions(m, rng, image, eps, mask=batch["mask"])

    def loss(self, variables, batch, rng, progress, axis_name=None):
        image, epoch, o = batch["image"], progress["epoch"], self.opts.objective
        m = self.module(image)
        eps = posterior_noise(rng, batch["id"], jnp.arange(o["train_samples"]),
                              m.latent_shapes(image.shape[1:]))
        out = m.apply(variables, image, eps)
        value, aux = obj.hvae_objective(
            log_px(self.opts, out["decoded"], image), out["layers"], batch["mask"],
            beta=obj.warmup_beta(epoch, o["warmup_epochs"]),
            free_nats=obj.free_nats_schedule(epoch, o["free_nats"],
                                             o["free_nats_constant_epochs"],
                                             o["free_nats_cooldown_epochs"]),
            free_nats_mode=o["free_nats_mode"],
            importance_weighted=o["train_importance_weighted"], axis_name=axis_name)
        return value, ({}, aux)

    def predict(self, variables, batch, rng, outputs=("elbo",)):
        image, ids, m, o = batch["image"], batch["id"], self.module(batch["image"]), self.opts
        res = {}
        if "elbo" in outputs:
            res["elbo"] = importance_weighted_bounds(o, m, variables, image, ids, rng, (0,),
                                                     1, 1)[:, 0]
        if {"log_likelihood", "l_gt_k"} & set(outputs):
            skips = tuple(range(self.n_latents)) if "l_gt_k" in outputs else (0,)
            bounds = importance_weighted_bounds(o, m, variables, image, ids, rng, skips,
                                                o.model["iwae_samples"], o.model["score_chunk"])
            res["log_likelihood"], res["l_gt_k"] = bounds[:, 0], bounds
        return {k: res[k] for k in outputs}

    def ood_scores(self, out):
        """L, L>k and −LLR>k = L>k − L (k = 1..L−1), higher = in-distribution."""
        scores = {"L": out["log_likelihood"]}
        l_gt_k = np.asarray(out["l_gt_k"], np.float64)
        for k in range(1, self.n_latents):
            scores[f"L>{k}"] = l_gt_k[:, k]
        for k in range(1, self.n_latents):
            scores[f"-LLR>{k}"] = l_gt_k[:, k] - l_gt_k[:, 0]
        return scores

    @staticmethod
    def validate(out):
        return {"elbo": float(np.mean(out["elbo"]))}

    def bounds(self, out):      # L>k, k >= 1, for the likelihood evaluator (nats, bits/dim)
        l_gt_k = np.asarray(out["l_gt_k"], np.float64)
        return {f"L>{k}": l_gt_k[:, k] for k in range(1, self.n_latents)}

    def family(self) -> Family:
        m, o = self.opts.model, self.opts.objective
        s, n = m["iwae_samples"], self.n_latents
        return Family(
            name="hvae", init=self.init, loss=self.loss, predict=self.predict,
            outputs=("elbo", "log_likelihood", "l_gt_k"), supervised=False,
            validation_outputs=("elbo",), validate=self.validate, select=("elbo", "max"),
            ood_outputs=("log_likelihood", "l_gt_k"), ood_score_fn=self.ood_scores,
            bound_outputs=("l_gt_k",), bound_fn=self.bounds, label=f"HVAE (L={n})",
            likelihood=m["likelihood"], definitions=definitions(n, s, m["likelihood"]),
            describe={"model": "hvae", "latents": n, "likelihood": m["likelihood"],
                      "free_nats_mode": o["free_nats_mode"],
                      "log_likelihood": f"the importance-weighted bound L(x) with {s} "
                                        f"sample{'s' if s > 1 else ''} (log-mean-exp)"})
