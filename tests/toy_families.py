"""Two toy model families defined OUTSIDE the library, to prove the family seam.

Neither needs a line of family-specific code in train.py, evaluate.py or
experiment.py: the config names them as ``family = "tests.toy_families:make_vae"``.

- ``make_bn_classifier``: a stateful, stochastic classifier (Dense → BatchNorm over the
  global batch → ReLU → per-example dropout → Dense).
- ``make_vae``: an unsupervised Gaussian-latent VAE with a Bernoulli likelihood on
  (binarised) images, a KL warm-up following the fractional epoch, outputs ``elbo``
  and ``log_likelihood`` (IWAE bound with ``model.iwae_samples`` samples), selection
  by validation ELBO.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxhybrid import rng as rnglib
from jaxhybrid.families.base import Family, split_variables
from jaxhybrid.models.layers import BatchNorm, ExampleDropout


def _global_mean(values, mask, axis_name):
    """Mean of ``values`` [B] over the valid rows of the global batch."""
    w = mask.astype(jnp.float32)
    total, count = jnp.sum(jnp.where(mask, values, 0.0)), jnp.sum(w)
    if axis_name is not None:
        total, count = lax.psum((total, count), axis_name)
    return total / count


# -- a stateful, stochastic classifier ---------------------------------------------------
class BNMLP(nn.Module):
    num_classes: int
    hidden: int = 16
    dropout: float = 0.5
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, *, train: bool, mask=None, keys=None):
        x = x.reshape((x.shape[0], -1))
        x = nn.Dense(self.hidden)(x)
        x = BatchNorm(axis_name=self.axis_name)(x, train=train, mask=mask)
        x = ExampleDropout(self.dropout)(nn.relu(x), keys if train else None)
        return nn.Dense(self.num_classes)(x)


def make_bn_classifier(config, num_classes: int, mean=None, std=None) -> Family:
    del mean, std
    hidden = int(config.model.get("hidden", 16))

    def module(axis_name):
        return BNMLP(num_classes, hidden=hidden, axis_name=axis_name)

    def init(rng, batch, axis_name=None):
        return dict(module(axis_name).init(rng, batch["image"], train=False))

    def loss(variables, batch, rng, progress, axis_name=None):
        del progress
        keys = rnglib.example_keys(rng, batch["id"])
        logits, state = module(axis_name).apply(
            variables, batch["image"], train=True, mask=batch["mask"], keys=keys,
            mutable=["batch_stats"])
        ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["label"][:, None], -1)[:, 0]
        value = _global_mean(ce, batch["mask"], axis_name)
        acc = _global_mean((jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32),
                           batch["mask"], axis_name)
        return value, (dict(state), {"accuracy": lax.stop_gradient(acc)})

    def predict(variables, batch, rng, outputs=("logits",)):
        return {"logits": module(None).apply(variables, batch["image"], train=False)}

    def validate(out):
        return {"accuracy": float(np.mean(np.argmax(out["logits"], -1) == out["label"]))}

    return Family("bn_classifier", init, loss, predict, outputs=("logits",), supervised=True,
                  validation_outputs=("logits",), validate=validate, label="toy BN classifier")


NAN_STEPS = (2, 3)


def make_nan_bn_classifier(config, num_classes: int, mean=None, std=None) -> Family:
    """The BN classifier whose loss (and so every gradient) is NaN at the steps NAN_STEPS:
    a divergence the trainer's update skipping must absorb."""
    family = make_bn_classifier(config, num_classes, mean, std)

    def loss(variables, batch, rng, progress, axis_name=None):
        value, rest = family.loss(variables, batch, rng, progress, axis_name)
        poison = jnp.isin(progress["step"], jnp.asarray(NAN_STEPS))
        return value * jnp.where(poison, jnp.nan, 1.0), rest
    return dataclasses.replace(family, loss=loss)


# -- an unsupervised VAE -----------------------------------------------------------------
class DataInitDense(nn.Module):
    """Dense layer whose bias is initialised from the data (as weight-norm layers are):
    b = −mean of x·W over the valid rows of the GLOBAL first batch, so that the first
    pre-activations are centred. ``init_mask``/``axis_name`` given only at init."""
    features: int
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, init_mask=None):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features))
        y = x @ kernel

        def data_bias(_):
            w = jnp.ones(x.shape[:1]) if init_mask is None else init_mask.astype(jnp.float32)
            total, count = jnp.sum(w[:, None] * y, 0), jnp.sum(w)
            if self.axis_name is not None:
                total, count = lax.psum((total, count), self.axis_name)
            return -lax.stop_gradient(total / count)
        return y + self.param("bias", data_bias)


class MLPVAE(nn.Module):
    latent: int = 4
    hidden: int = 32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, eps, init_mask=None):
        """x: [B, H, W, C] in {0, 1}; eps: [B, S, latent] ->
        (log p(x|z) [B, S], log p(z) − log q(z|x) [B, S]) at z = μ + σ·eps."""
        flat = x.reshape((x.shape[0], -1))
        h = nn.relu(DataInitDense(self.hidden, self.axis_name)(flat, init_mask))
        mu, log_var = jnp.split(nn.Dense(2 * self.latent)(h), 2, axis=-1)
        z = mu[:, None] + jnp.exp(0.5 * log_var)[:, None] * eps          # [B, S, L]
        logits = nn.Dense(flat.shape[-1])(nn.relu(nn.Dense(self.hidden)(z)))
        log_px_z = -jnp.sum(bernoulli_nll(logits, flat[:, None]), -1)
        log_pz = jnp.sum(jax.scipy.stats.norm.logpdf(z), -1)
        log_qz = jnp.sum(jax.scipy.stats.norm.logpdf(eps) - 0.5 * log_var[:, None], -1)
        return log_px_z, log_pz - log_qz


def bernoulli_nll(logits, x):
    """−log Bernoulli(x; sigmoid(logits)), elementwise."""
    return jax.nn.softplus(logits) - x * logits


def make_vae(config, num_classes: int, mean=None, std=None) -> Family:
    del num_classes, mean, std
    latent, hidden = int(config.model.latent), int(config.model.hidden)
    samples = int(config.model.iwae_samples)
    warmup = float(config.objective.kl_warmup_epochs)
    module = MLPVAE(latent, hidden)

    def noise(rng, ids, s):
        return jax.vmap(lambda k: jax.random.normal(k, (s, latent)))(rnglib.example_keys(rng, ids))

    def init(rng, batch, axis_name=None):   # data-dependent: the first layer's bias
        eps = jnp.zeros((batch["image"].shape[0], 1, latent))
        return dict(MLPVAE(latent, hidden, axis_name).init(rng, batch["image"], eps,
                                                           batch["mask"]))

    def loss(variables, batch, rng, progress, axis_name=None):
        beta = jnp.minimum(1.0, progress["epoch"] / warmup) if warmup > 0 else 1.0
        log_px_z, log_ratio = module.apply(variables, batch["image"], noise(rng, batch["id"], 1))
        elbo = log_px_z[:, 0] + log_ratio[:, 0]
        value = -_global_mean(log_px_z[:, 0] + beta * log_ratio[:, 0], batch["mask"], axis_name)
        aux = {"elbo": lax.stop_gradient(_global_mean(elbo, batch["mask"], axis_name)),
               "beta": jnp.asarray(beta, jnp.float32)}
        return value, ({}, aux)

    def predict(variables, batch, rng, outputs=("elbo",)):
        s = samples if "log_likelihood" in outputs else 1
        log_px_z, log_ratio = module.apply(variables, batch["image"], noise(rng, batch["id"], s))
        log_w = log_px_z + log_ratio
        return {"elbo": jnp.mean(log_w, axis=1),
                "log_likelihood": jax.nn.logsumexp(log_w, axis=1) - jnp.log(s)}

    return Family("toy_vae", init, loss, predict, outputs=("elbo", "log_likelihood"),
                  supervised=False, validation_outputs=("elbo",),
                  validate=lambda out: {"elbo": float(np.mean(out["elbo"]))},
                  select=("elbo", "max"), ood_outputs=("elbo",),
                  ood_score_fn=lambda out: {"elbo": out["elbo"]}, label="toy VAE",
                  describe={"log_likelihood": f"the IWAE bound with {samples} samples"})
