"""DHM family: a ResNet-18 classifier and a β-VAE trained jointly (docs/methods/dhm.md).

Module :class:`jaxhybrid.models.dhm.DHM`, objective :mod:`jaxhybrid.objectives.dhm`.
Its fields: :data:`DHMFamily.MODEL` (``config.model``: the network, its observation
model ``recon`` and the samples of its bounds) and :data:`DHMFamily.OBJECTIVE`
(``config.objective``: α, β, the KL weight c and its warm-up, the training samples), each
row with its default (the original's settings), its check and a line of doc.

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

from jaxhybrid import rng as rnglib
from jaxhybrid.families.base import Family, FamilyBase, Options, split_variables
from jaxhybrid.families.classifier import validate_classifier
from jaxhybrid.mathops import global_mean
from jaxhybrid.models.dhm import DHM, NORMS, SPLIT_LAYERS
from jaxhybrid.models.layers import torch_default_init
from jaxhybrid.models import likelihoods
from jaxhybrid.objectives import dhm as obj
from jaxhybrid.schema import Field, Schema, choice, count, equals, ints, num


REAL_VALUED = ("mse_mean", "gaussian", "gaussian_learned")
INITS = ("flax", "pytorch")

MODEL = Schema("model", {
    "name": Field("dhm", equals("dhm"), "the module: models/dhm.py's DHM"),
    "width": count(64, "channels of the trunk's first stage (64, 128, 256, 512 at 64)"),
    "blocks": Field((2, 2, 2, 2), ints(4, 1), "residual blocks per trunk stage (ResNet-18)"),
    "latent": count(256, "dimensions of z"),
    "head_hidden": count(256, "hidden units of the classifier head on concat(features, μ)"),
    "norm": choice("batch", NORMS, "the trunk's and decoder's normalisation"),
    "vae_split_layer": choice(0, SPLIT_LAYERS, "k: the VAE models the input of trunk stage "
                              "k (0 = the image)"),
    "recon": choice("mse_mean", obj.RECONS, "the reconstruction term: mse_mean (the "
                    "original) or the named likelihood of the decoder's output"),
    "recon_scale": num(1.0, "σ of gaussian (and of mse_mean's likelihood bound)", 0,
                       low_open=True),
    "recon_scale_min": num(0.01, "the floor of gaussian_learned's σ", 0, low_open=True),
    "iwae_samples": count(16, "K of the log_likelihood output (and of elbo's Monte Carlo)"),
    "init": choice("flax", INITS, "initial weights: flax (lecun_normal kernels, zero biases) "
                   "or pytorch (PyTorch's defaults: U(±1/√fan_in) kernels and biases, the "
                   "original's)"),
})

OBJECTIVE = Schema("objective", {
    "alpha": num(1.0, "α, the weight of the cross-entropy", 0),
    "beta": num(1.0, "β, the weight of the VAE term", 0),
    "kl_coef": num(0.1, "c, the KL's weight inside the VAE term (the original's 0.1)", 0),
    "kl_warmup_epochs": num(0.0, "c rises linearly from 0 over this many epochs (0 = off)", 0),
    "train_samples": count(1, "1: the ELBO-style loss; K > 1: β·(−IWAE_K) replaces "
                              "β·(recon + c·KL) (needs a proper likelihood)"),
})


def _rules(o: Options):
    out, m = [], o.model
    if m["vae_split_layer"] > 0 and m["recon"] not in REAL_VALUED:
        out.append(("model.recon", f"must be one of {', '.join(REAL_VALUED)} when "
                    "model.vae_split_layer > 0 (the VAE then reconstructs real-valued trunk "
                    "features)"))
    if o.objective["train_samples"] > 1 and m["recon"] == "mse_mean":
        out.append(("objective.train_samples", "must be 1 with model.recon='mse_mean' (the "
                    "IWAE loss needs a proper likelihood: gaussian, bernoulli, "
                    "discretized_logistic, discretized_mix_logistic)"))
    return out


def build_module(o: Options, num_classes: int, channels: int, axis_name=None, mean=None,
                 std=None, dtype="float32") -> DHM:
    """The DHM module of options ``o`` (:meth:`DHMFamily.options`; its model section) for
    ``channels`` data channels (the trunk's stage-k input's channels when
    ``vae_split_layer`` k ≥ 1); ``dtype`` is the compute dtype."""
    m, out = o.model, 0
    if m["recon"] != "mse_mean":
        name, options = obj.recon_likelihood(m["recon"], m["recon_scale"])
        width = channels if m["vae_split_layer"] == 0 else m["width"] * 2 ** max(
            m["vae_split_layer"] - 2, 0)              # stage k's input: w, w, 2w, 4w
        out = likelihoods.out_channels(name, width, **options)
    return DHM(num_classes, width=m["width"], blocks=m["blocks"], latent=m["latent"],
               head_hidden=m["head_hidden"], norm=m["norm"],
               vae_split_layer=m["vae_split_layer"], out_channels=out, axis_name=axis_name,
               mean=mean, std=std, dtype=str(jnp.dtype(dtype)))


def reparameterisation_noise(rng, ids, samples: int, latent: int):
    """eps [B, S, L] ~ N(0, I), example i's drawn from its own key (device-count free)."""
    keys = rnglib.example_keys(rnglib.stream(rng, rnglib.NOISE), ids)
    return jax.vmap(lambda key: jax.random.normal(key, (samples, latent)))(keys)


class DHMFamily(FamilyBase):
    """The DHM family: the module of :func:`build_module`, the objective of
    :mod:`jaxhybrid.objectives.dhm`, the outputs and scores of the module doc."""
    name = "dhm"
    MODEL, OBJECTIVE, RULES = MODEL, OBJECTIVE, (_rules,)

    def __init__(self, config, num_classes: int, mean=None, std=None):
        super().__init__(config, num_classes, mean, std)
        self.needs_classes()
        m = self.opts.model
        self.recon, self.k = m["recon"], m["vae_split_layer"]
        self.lik = {"scale": m["recon_scale"], "scale_min": m["recon_scale_min"]}

    def module(self, axis_name=None, channels=None) -> DHM:
        return build_module(self.opts, self.num_classes, channels, axis_name, mean=self.mean,
                            std=self.std, dtype=self.dtype)

    def noise(self, rng, ids, samples: int):
        return reparameterisation_noise(rng, ids, samples, self.opts.model["latent"])

    def target_of(self, out, image):
        if self.k > 0:
            return out["target"]
        return obj.likelihood_target(self.recon, image, out["target"])

    def log_jacobian(self, image):
        """What turns a bound of the modelled target into one of the [0, 1] pixels: the
        normalisation's log-Jacobian for mse_mean (it models the normalised image), else 0
        (k > 0: trunk features, no pixel density)."""
        if self.recon != "mse_mean" or self.std is None or self.k > 0:
            return 0.0
        return obj.normalisation_log_jacobian(image.shape, self.std)

    def log_px(self, out, target):
        """log p(target | z) [S, B] at the S decoded samples (nats)."""
        return obj.log_px_given_z(self.recon, out["decoded"], target, **self.lik)

    def elbo(self, out, lp, image):
        """:func:`objectives.dhm.elbo` [B] of the outputs ``out`` with log p(x|z) ``lp``."""
        return obj.elbo(lp, out["mu"], out["log_var"], self.log_jacobian(image))

    def init(self, rng, batch, axis_name=None):
        image = batch["image"]
        eps = jnp.zeros((image.shape[0], 1, self.opts.model["latent"]))
        variables = dict(self.module(axis_name, image.shape[-1]).init(rng, image, train=False,
                                                                       eps=eps))
        if self.opts.model["init"] == "pytorch":
            variables["params"] = torch_default_init(
                variables["params"], rnglib.stream(rng, rnglib.TORCH_INIT))
        return variables

    def forward_train(self, variables, batch, rng, eps, axis_name):
        """The train-mode forward pass: (outputs, updated model state)."""
        m = self.module(axis_name, batch["image"].shape[-1])
        _, state = split_variables(variables)
        kwargs = dict(train=True, mask=batch["mask"], eps=eps,
                      keys=rnglib.example_keys(rnglib.stream(rng, rnglib.DROPOUT),
                                                batch["id"]))
        if self.opts.model["norm"] == "batch":
            out, state = m.apply(variables, batch["image"], mutable=["batch_stats"], **kwargs)
            return out, state
        return m.apply(variables, batch["image"], **kwargs), state

    def loss(self, variables, batch, rng, progress, axis_name=None):
        image, mask, o = batch["image"], batch["mask"], self.opts.objective
        eps = self.noise(rng, batch["id"], o["train_samples"])
        out, state = self.forward_train(variables, batch, rng, eps, axis_name)
        c = obj.kl_schedule(o["kl_coef"], o["kl_warmup_epochs"], progress["epoch"])
        target = self.target_of(out, image)
        recon_term, kl_term = obj.generative_terms(self.recon, out["decoded"], target, out["mu"],
                                                   out["log_var"], **self.lik)
        lp = self.log_px(out, target)                                       # [S, B]
        generative = None   # K > 1: −IWAE_K, the weights' KL part scaled by the warm-up c
        if o["train_samples"] > 1:
            generative = -obj.iwae_bound(lp, out["z"], out["mu"], out["log_var"], kl_coef=c)
        value, aux = obj.dhm_objective(out["logits"], batch["label"], mask, recon_term, kl_term,
                                       alpha=o["alpha"], beta=o["beta"], kl_coef=c,
                                       axis_name=axis_name, generative=generative)
        aux["elbo"] = lax.stop_gradient(global_mean(self.elbo(out, lp, image), mask, axis_name))
        return value, (dict(state), aux)

    def bounds(self, m, variables, batch, rng) -> dict:
        """``logits``, ``elbo`` and ``log_likelihood`` (IWAE) [B] with ``iwae_samples`` draws,
        in nats."""
        image = batch["image"]
        eps = self.noise(rng, batch["id"], self.opts.model["iwae_samples"])
        sampled = m.apply(variables, image, train=False, eps=eps)
        lp = self.log_px(sampled, self.target_of(sampled, image))              # [S, B]
        iwae = obj.iwae_bound(lp, sampled["z"], sampled["mu"], sampled["log_var"])
        return {"logits": sampled["logits"], "elbo": self.elbo(sampled, lp, image),
                "log_likelihood": iwae + self.log_jacobian(image)}

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
            res[name] = -(recon + self.opts.objective["kl_coef"] * kl)
        return res

    @staticmethod
    def ood_scores(out):
        logits = jnp.asarray(out["logits"], jnp.float32)
        return {"max_softmax": jnp.max(jax.nn.softmax(logits), axis=-1),
                "log_z": jax.nn.logsumexp(logits, axis=-1),
                **{k: out[k] for k in ("neg_loss_sampled", "neg_loss_at_mean", "elbo")}}

    def definitions(self) -> dict:
        """{output or OOD score: one-line definition} (Family.definitions)."""
        m, c = self.opts.model, self.opts.objective["kl_coef"]
        if self.recon == "mse_mean":
            recon = ("recon = mean over the target's elements of (x̂ − x)² (normalised pixels"
                     + (")" if self.k == 0 else f", or trunk features at stage {self.k})")
                     + f", KL = mean over the {m['latent']} latent dims")
            lik = (f"a Gaussian of scale {m['recon_scale']:g} on the normalised input, with the "
                   "normalisation's log-Jacobian")
        else:
            recon = (f"recon = −log p(x|z) under {self.recon}, summed nats; KL summed over the "
                     f"{m['latent']} latent dims")
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
                    f"{m['iwae_samples']} draws, KL in closed form (weight 1; not the "
                    f"original's score)",
            "log_likelihood": f"the IWAE bound with {m['iwae_samples']} samples under {lik}: "
                              + what,
        }

    def family(self) -> Family:
        m, o = self.opts.model, self.opts.objective
        names = ("logits", "neg_loss_sampled", "neg_loss_at_mean", "elbo") + (
            ("log_likelihood",) if self.k == 0 else ())
        definitions = {k: v for k, v in self.definitions().items()
                       if k in names or k in ("max_softmax", "log_z")}
        return Family(
            name="dhm", init=self.init, loss=self.loss, predict=self.predict, outputs=names,
            supervised=True, validation_outputs=("logits",), validate=validate_classifier,
            select=("accuracy", "max"),
            ood_outputs=("logits", "neg_loss_sampled", "neg_loss_at_mean", "elbo"),
            ood_score_fn=self.ood_scores, label=f"DHM β={o['beta']:g}", definitions=definitions,
            likelihood=obj.recon_likelihood(m["recon"], m["recon_scale"])[0] if self.k == 0
            else "",
            describe={"model": "dhm", **{f: m[f] for f in ("width", "latent", "norm",
                                                           "vae_split_layer")},
                      **{f: o[f] for f in ("alpha", "beta", "kl_coef")}, "recon": m["recon"],
                      "log_likelihood": f"the IWAE bound with {m['iwae_samples']} samples"})
