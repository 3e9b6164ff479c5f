"""DHM family: a ResNet-18 classifier and a β-VAE trained jointly (docs/methods/dhm.md).

Module :class:`jaxhybrid.models.dhm.DHM`, objective :mod:`jaxhybrid.objectives.dhm`.
Its fields live under ``config.model`` (``name = "dhm"``; :data:`DEFAULTS` lists them
all with their defaults, the original's settings)::

    width, blocks, latent, head_hidden, norm, vae_split_layer     the module
    alpha, beta, kl_coef, recon, recon_scale, recon_scale_min,
    kl_warmup_epochs                                                the loss
                                  recon_scale: σ of gaussian (and of mse_mean's bound);
                                  recon_scale_min: the floor of gaussian_learned's σ
    train_samples                 1: the ELBO-style loss; K > 1: β·(−IWAE_K) replaces
                                  β·(recon + c·KL) (needs a proper likelihood)
    iwae_samples                  K of the ``log_likelihood`` output (and of ``elbo``)

Outputs, all in eval mode (dropout off, BatchNorm running statistics):

- ``logits`` [B, K] from the trunk and μ: classification, calibration, temperature
  scaling and the attacks (computed without the decoder);
- ``neg_loss_sampled`` [B]: the original's "log p(x)" score −(recon + c·KL), decoded at
  ONE sampled z = μ + σ·ε (ε from the fixed evaluation key and the example's id, so the
  same on any device count);
- ``neg_loss_at_mean`` [B]: the same, decoded at z = μ (deterministic);
- ``elbo`` [B]: E_q[log p(x|z)] − KL in nats (Monte Carlo over ``iwae_samples`` draws
  of the fixed evaluation key, the KL in closed form with weight 1): a bound under the
  likelihood below, not the original's score;
- ``log_likelihood`` [B]: the IWAE bound with ``iwae_samples`` samples, in nats of the
  [0, 1] pixels (for ``mse_mean``, the Gaussian of scale ``recon_scale`` on the
  normalised input, with the normalisation's log-Jacobian). Served for
  ``vae_split_layer = 0`` only: with k ≥ 1 the VAE models trunk features, not pixels.

OOD scores (higher = in-distribution): max_softmax, log_z (log Σ exp logits),
neg_loss_sampled, neg_loss_at_mean, elbo; ``Family.definitions`` defines each one. The
best checkpoint is the one with the highest validation accuracy.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from jaxhybrid import precision
from jaxhybrid import rng as rnglib
from jaxhybrid.families.base import Family, split_variables
from jaxhybrid.families.classifier import validate_classifier
from jaxhybrid.families.options import Options, is_int
from jaxhybrid.mathops import global_mean, kl_normal_std, log_mean_exp
from jaxhybrid.models.dhm import DHM, NORMS, SPLIT_LAYERS
from jaxhybrid.models import likelihoods
from jaxhybrid.objectives import dhm as obj


DEFAULTS = {
    "width": 64, "blocks": (2, 2, 2, 2), "latent": 256, "head_hidden": 256, "norm": "batch",
    "vae_split_layer": 0, "alpha": 1.0, "beta": 1.0, "kl_coef": 0.1, "recon": "mse_mean",
    "recon_scale": 1.0, "recon_scale_min": 0.01, "kl_warmup_epochs": 0.0,
    "train_samples": 1, "iwae_samples": 16,
}


def read_options(model_cfg) -> dict:
    """``config.model`` -> the family's options, every field checked (errors name the field
    and the valid choices)."""
    c = Options(model_cfg, DEFAULTS, "dhm")
    o = c.o
    c.ints(("width", "latent", "head_hidden", "train_samples", "iwae_samples"), 1)
    c.need("blocks", isinstance(o["blocks"], tuple) and len(o["blocks"]) == 4
           and all(is_int(b, 1) for b in o["blocks"]),
           "must be 4 ints >= 1 (blocks per stage), e.g. (2, 2, 2, 2)")
    c.one_of("norm", NORMS)
    c.need("vae_split_layer", is_int(o["vae_split_layer"]) and o["vae_split_layer"] in
           SPLIT_LAYERS, f"must be one of {', '.join(map(str, SPLIT_LAYERS))}")
    c.one_of("recon", obj.RECONS)
    c.numbers(("alpha", "beta", "kl_coef", "kl_warmup_epochs"), 0)
    c.numbers(("recon_scale", "recon_scale_min"), 0, low_open=True)
    real_valued = ("mse_mean", "gaussian", "gaussian_learned")
    if not c.bad and o["vae_split_layer"] > 0 and o["recon"] not in real_valued:
        c.need("recon", False, f"must be one of {', '.join(real_valued)} when "
               "model.vae_split_layer > 0 (the VAE then reconstructs real-valued trunk features)")
    if not c.bad and o["train_samples"] > 1 and o["recon"] == "mse_mean":
        c.need("train_samples", False, "must be 1 with model.recon='mse_mean' (the IWAE loss "
               "needs a proper likelihood: gaussian, bernoulli, discretized_logistic, "
               "discretized_mix_logistic)")
    return c.result(floats=("alpha", "beta", "kl_coef", "kl_warmup_epochs", "recon_scale",
                            "recon_scale_min"))


def build_module(o: dict, num_classes: int, channels: int, axis_name=None, mean=None,
                 std=None, dtype="float32") -> DHM:
    """The DHM module of options ``o`` (:func:`read_options`) for ``channels`` data channels
    (the trunk's stage-k input's channels when ``vae_split_layer`` k ≥ 1); ``dtype`` is the
    compute dtype."""
    out = 0
    if o["recon"] != "mse_mean":
        name, options = obj.recon_likelihood(o["recon"], o["recon_scale"])
        width = channels if o["vae_split_layer"] == 0 else o["width"] * 2 ** max(
            o["vae_split_layer"] - 2, 0)              # stage k's input: w, w, 2w, 4w
        out = likelihoods.out_channels(name, width, **options)
    return DHM(num_classes, width=o["width"], blocks=o["blocks"], latent=o["latent"],
               head_hidden=o["head_hidden"], norm=o["norm"],
               vae_split_layer=o["vae_split_layer"], out_channels=out, axis_name=axis_name,
               mean=mean, std=std, dtype=str(jnp.dtype(dtype)))


def reparameterisation_noise(rng, ids, samples: int, latent: int):
    """eps [B, S, L] ~ N(0, I), example i's drawn from its own key (device-count free)."""
    keys = rnglib.example_keys(rnglib.stream(rng, rnglib.NOISE), ids)
    return jax.vmap(lambda key: jax.random.normal(key, (samples, latent)))(keys)


class _DHM:
    """The DHM family's functions for options ``o``; :func:`make_dhm` wraps them in a Family."""

    def __init__(self, o: dict, num_classes: int, dtype, mean=None, std=None):
        self.o, self.num_classes, self.dtype, self.mean, self.std = o, num_classes, dtype, mean, std
        self.recon, self.k = o["recon"], o["vae_split_layer"]
        self.lik = {"scale": o["recon_scale"], "scale_min": o["recon_scale_min"]}

    def module(self, axis_name=None, channels=None) -> DHM:
        return build_module(self.o, self.num_classes, channels, axis_name, mean=self.mean,
                            std=self.std, dtype=self.dtype)

    def noise(self, rng, ids, samples: int):
        return reparameterisation_noise(rng, ids, samples, self.o["latent"])

    def target_of(self, out, image):
        if self.k > 0:
            return out["target"]
        return obj.likelihood_target(self.recon, image, out["target"])

    def log_jacobian(self, image):
        """log |d normalised / d pixels| summed per example (mse_mean models normalised x)."""
        if self.recon != "mse_mean" or self.std is None or self.k > 0:  # k > 0: features
            return 0.0
        s = np.broadcast_to(np.asarray(self.std, np.float64), image.shape[-1:])
        return -float(np.prod(image.shape[1:-1]) * np.sum(np.log(s)))

    def elbo_nats(self, out, target, image, lp=None):
        """E_q[log p(x|z)] − KL(q ‖ p) per example [B], nats (Monte Carlo over the decoded
        samples, the KL in closed form), with mse_mean's log-Jacobian."""
        if lp is None:
            lp = obj.log_px_given_z(self.recon, out["decoded"], target, **self.lik)
        kl = jnp.sum(kl_normal_std(out["mu"], out["log_var"]), axis=-1)
        return jnp.mean(lp, axis=0) - kl + self.log_jacobian(image)

    def init(self, rng, batch, axis_name=None):
        image = batch["image"]
        eps = jnp.zeros((image.shape[0], 1, self.o["latent"]))
        return dict(self.module(axis_name, image.shape[-1]).init(rng, image, train=False,
                                                                  eps=eps))

    def forward_train(self, variables, batch, rng, eps, axis_name):
        """The train-mode forward pass: (outputs, updated model state)."""
        m = self.module(axis_name, batch["image"].shape[-1])
        _, state = split_variables(variables)
        kwargs = dict(train=True, mask=batch["mask"], eps=eps,
                      keys=rnglib.example_keys(rnglib.stream(rng, rnglib.DROPOUT),
                                                batch["id"]))
        if self.o["norm"] == "batch":
            out, state = m.apply(variables, batch["image"], mutable=["batch_stats"], **kwargs)
            return out, state
        return m.apply(variables, batch["image"], **kwargs), state

    def iwae_term(self, out, target, c):
        """−IWAE_K per example [B], the weights' KL part scaled by the (warm-up) c."""
        lp = obj.log_px_given_z(self.recon, out["decoded"], target, **self.lik)   # [S, B]
        return -log_mean_exp(obj.log_weights(lp, out["z"], out["mu"], out["log_var"], kl_coef=c))

    def loss(self, variables, batch, rng, progress, axis_name=None):
        image, mask, o = batch["image"], batch["mask"], self.o
        eps = self.noise(rng, batch["id"], o["train_samples"])
        out, state = self.forward_train(variables, batch, rng, eps, axis_name)
        c = obj.kl_schedule(o["kl_coef"], o["kl_warmup_epochs"], progress["epoch"])
        target = self.target_of(out, image)
        recon_term, kl_term = obj.generative_terms(self.recon, out["decoded"], target, out["mu"],
                                                   out["log_var"], **self.lik)
        generative = self.iwae_term(out, target, c) if o["train_samples"] > 1 else None
        value, aux = obj.dhm_objective(out["logits"], batch["label"], mask, recon_term, kl_term,
                                       alpha=o["alpha"], beta=o["beta"], kl_coef=c,
                                       axis_name=axis_name, generative=generative)
        aux["elbo"] = lax.stop_gradient(global_mean(
            self.elbo_nats(out, target, image), mask, axis_name))
        return value, (dict(state), aux)

    def bounds(self, m, variables, batch, rng) -> dict:
        """``logits``, ``elbo`` and ``log_likelihood`` (IWAE) [B] with ``iwae_samples`` draws,
        in nats."""
        image = batch["image"]
        eps = self.noise(rng, batch["id"], self.o["iwae_samples"])
        sampled = m.apply(variables, image, train=False, eps=eps)
        target = self.target_of(sampled, image)
        lp = obj.log_px_given_z(self.recon, sampled["decoded"], target, **self.lik)  # [S, B]
        log_w = obj.log_weights(lp, sampled["z"], sampled["mu"], sampled["log_var"])
        return {"logits": sampled["logits"], "elbo": self.elbo_nats(sampled, target, image, lp=lp),
                "log_likelihood": log_mean_exp(log_w) + self.log_jacobian(image)}

    def predict(self, variables, batch, rng, outputs=("logits",)):
        image = batch["image"]
        m = self.module(None, image.shape[-1])
        if set(outputs) <= {"logits"}:
            return {"logits": m.apply(variables, image, train=False, decode=False)["logits"]}
        res = {}
        if {"neg_loss_sampled", "neg_loss_at_mean"} & set(outputs):
            res.update(self.neg_losses(m, variables, batch, rng))
        if {"elbo", "log_likelihood"} & set(outputs):
            res.update(self.bounds(m, variables, batch, rng))
        return {k: res[k] for k in outputs}

    def neg_losses(self, m, variables, batch, rng) -> dict:
        """``logits`` and −(recon + c·KL) [B] decoded at z = μ (``neg_loss_at_mean``) and at one
        z = μ + σ·ε (``neg_loss_sampled``, the original's score; ε from the example's key)."""
        image = batch["image"]
        eps = self.noise(rng, batch["id"], 1)
        eps = jnp.concatenate([jnp.zeros_like(eps), eps], axis=1)      # z = μ exactly, then
        out = m.apply(variables, image, train=False, eps=eps)          # one sample: [2, B, ...]
        target = self.target_of(out, image)
        res = {"logits": out["logits"]}
        for i, name in enumerate(("neg_loss_at_mean", "neg_loss_sampled")):
            recon, kl = obj.generative_terms(self.recon, out["decoded"][i:i + 1], target,
                                             out["mu"], out["log_var"], **self.lik)
            res[name] = -(recon + self.o["kl_coef"] * kl)
        return res

    @staticmethod
    def ood_scores(out):
        logits = jnp.asarray(out["logits"], jnp.float32)
        return {"max_softmax": jnp.max(jax.nn.softmax(logits), axis=-1),
                "log_z": jax.nn.logsumexp(logits, axis=-1),
                **{k: out[k] for k in ("neg_loss_sampled", "neg_loss_at_mean", "elbo")}}

    def definitions(self) -> dict:
        """{output or OOD score: one-line definition} (Family.definitions)."""
        o, c = self.o, self.o["kl_coef"]
        if self.recon == "mse_mean":
            recon = ("recon = mean over the target's elements of (x̂ − x)² (normalised pixels"
                     + (")" if self.k == 0 else f", or trunk features at stage {self.k})")
                     + f", KL = mean over the {o['latent']} latent dims")
            lik = (f"a Gaussian of scale {o['recon_scale']:g} on the normalised input, with the "
                   "normalisation's log-Jacobian")
        else:
            recon = (f"recon = −log p(x|z) under {self.recon}, summed nats; KL summed over the "
                     f"{o['latent']} latent dims")
            lik = f"the {self.recon} likelihood"
        density = self.recon in ("mse_mean", "gaussian", "gaussian_learned")
        what = ("a log-DENSITY of the continuous [0, 1] pixels (can exceed 0; its bits/dim "
                "−ll/(D·ln 2) is not a code length and not comparable with a discrete "
                "likelihood's)") if density else "a log-probability (mass) of the pixels"
        return {
            "logits": "class logits from concat(trunk features, μ), eval mode (dropout off, "
                      "BatchNorm running statistics)",
            "max_softmax": "max_k softmax(logits)_k",
            "log_z": "log Σ_k exp(logits_k)",
            "neg_loss_sampled": f"the original DHM's 'log p(x)' score −(recon + {c:g}·KL) at "
                                f"ONE sampled z = μ + σ·ε (ε from the fixed evaluation key, per "
                                f"example); {recon}",
            "neg_loss_at_mean": f"−(recon + {c:g}·KL) decoded at z = μ (deterministic; not the "
                                f"original's score); {recon}",
            "elbo": f"E_q[log p(x|z)] − KL(q‖p) in nats under {lik}, Monte Carlo over "
                    f"{o['iwae_samples']} draws, KL in closed form (weight 1; not the "
                    f"original's score)",
            "log_likelihood": f"the IWAE bound with {o['iwae_samples']} samples under {lik}: "
                              + what,
        }


def make_dhm(config, num_classes: int, mean=None, std=None) -> Family:
    if num_classes < 2:
        raise ValueError(f"family 'dhm' needs labelled data with >= 2 classes; "
                         f"data {config.data.source!r} has {num_classes}")
    if config.model.get("name", "dhm") != "dhm":
        raise ValueError(f"family 'dhm' builds model 'dhm'; config field model.name = "
                         f"{config.model.name!r}: set it to 'dhm'")
    o = read_options(config.model)
    d = _DHM(o, num_classes, precision.compute_dtype(config), mean=mean, std=std)
    names = ("logits", "neg_loss_sampled", "neg_loss_at_mean", "elbo") + (
        ("log_likelihood",) if d.k == 0 else ())
    definitions = {k: v for k, v in d.definitions().items()
                   if k in names or k in ("max_softmax", "log_z")}
    return Family(name="dhm", init=d.init, loss=d.loss, predict=d.predict, outputs=names,
                  supervised=True, validation_outputs=("logits",), validate=validate_classifier,
                  select=("accuracy", "max"),
                  ood_outputs=("logits", "neg_loss_sampled", "neg_loss_at_mean", "elbo"),
                  ood_score_fn=d.ood_scores,
                  label=f"DHM β={o['beta']:g}", definitions=definitions,
                  likelihood=obj.recon_likelihood(o["recon"], o["recon_scale"])[0]
                  if d.k == 0 else "",
                  describe={"model": "dhm", **{f: o[f] for f in ("width", "latent", "norm",
                            "vae_split_layer", "alpha", "beta", "kl_coef", "recon")},
                            "log_likelihood": f"the IWAE bound with {o['iwae_samples']} samples"})
