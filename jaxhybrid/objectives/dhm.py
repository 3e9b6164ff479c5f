"""The DHM objective: α·CE + β·(reconstruction + c·KL), and its bounds on log p(x).

Per example, then averaged over the valid rows of the GLOBAL batch (psum over
``axis_name``):

- ``recon="mse_mean"`` (the original, docs/methods/dhm.md): recon = mean over the target's
  elements of (x̂ − x)², KL = mean over latent dimensions, c = ``kl_coef`` (0.1 in the
  original). Its "log p(x)" score is −(recon + c·KL).
- a proper likelihood of :mod:`jaxhybrid.models.likelihoods` (``gaussian`` with a fixed
  scale σ = ``scale``; ``gaussian_learned``, a per-pixel σ the decoder predicts,
  σ = ``scale_min`` + softplus(raw) so that it cannot collapse onto constant pixels;
  ``bernoulli``, ``discretized_logistic``, ``discretized_mix_logistic``):
  recon = −log p(x|z) SUMMED over the target's elements and KL summed over latent
  dimensions, in nats, so with c = 1 the generative term is −ELBO.

KL(N(μ, σ²) ‖ N(0, I)) = ½ Σ_j (μ_j² + σ_j² − 1 − log σ_j²)  (Kingma & Welling 2014, App. B).
IWAE_K = log (1/K) Σ_k p(x, z_k)/q(z_k|x), z_k ~ q(z|x)  (Burda et al. 2016, eq. 8);
K = 1 is the single-sample ELBO, and E[IWAE_K] increases with K.
ELBO = E_q[log p(x|z)] − KL(q(z|x) ‖ N(0, I)) (Monte Carlo over the samples, KL in closed
form). For mse_mean the bounds are of the NORMALISED input x̃ = (x − m)/s; adding
log |∂x̃/∂x| = −(H·W)·Σ_c log s_c makes them bounds on the density of the [0, 1] pixels.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxhybrid.mathops import (global_mean, kl_normal_std, log_mean_exp, normal_log_prob,
                               softmax_cross_entropy)
from jaxhybrid.models import likelihoods

RECONS = ("mse_mean", "gaussian", "gaussian_learned", "bernoulli", "discretized_logistic",
          "discretized_mix_logistic")


def log_q(z, mu, log_var):
    """Σ_j log N(z_j; μ_j, σ_j²): z [S, B, L], μ, log σ² [B, L] -> [S, B]."""
    return jnp.sum(normal_log_prob(z, mu, log_scale=0.5 * jnp.asarray(log_var, jnp.float32)),
                   axis=-1)


def recon_likelihood(recon: str, scale: float):
    """(name, options) of the likelihood for ``recon`` (mse_mean: a Gaussian of ``scale``)."""
    if recon in ("mse_mean", "gaussian"):
        return "gaussian", {"per_pixel_scale": False, "log_scale": math.log(scale)}
    if recon == "gaussian_learned":   # decoder output [mean | raw scale] (2C channels)
        return "gaussian", {"per_pixel_scale": True}
    return recon, {}


def likelihood_target(recon: str, pixels, normalised):
    """What the decoder models: the normalised input for mse_mean (as the original), the
    [0, 1] pixels for gaussian/bernoulli, 2x − 1 for the discretized likelihoods."""
    if recon == "mse_mean":
        return normalised
    if recon.startswith("discretized"):
        return 2.0 * pixels - 1.0
    return pixels


def learned_log_scale(raw, scale_min: float):
    """log σ of ``gaussian_learned``: σ = scale_min + softplus(raw) (float32)."""
    return jnp.log(scale_min + jax.nn.softplus(jnp.asarray(raw, jnp.float32)))


def log_px_given_z(recon: str, decoded, target, *, scale: float = 1.0,
                   scale_min: float = 0.01):
    """log p(target | z) in nats, summed: decoded [S, B, ...], target [B, ...] -> [S, B]."""
    if recon == "gaussian_learned":
        c = target.shape[-1]
        return likelihoods.gaussian_log_prob(
            decoded[..., :c], target, learned_log_scale(decoded[..., c:], scale_min))
    name, options = recon_likelihood(recon, scale)
    return likelihoods.log_prob(name, decoded, target, **options)


def mse_mean(decoded, target):
    """The original's recon: mean over elements of (x̂ − x)²: [S, B, ...] -> [S, B]."""
    d = jnp.square(jnp.asarray(decoded, jnp.float32) - jnp.asarray(target, jnp.float32))
    return jnp.mean(d.reshape(d.shape[:2] + (-1,)), axis=-1)


def generative_terms(recon: str, decoded, target, mu, log_var, *, scale: float = 1.0,
                     scale_min: float = 0.01):
    """(recon [B], KL [B]) as the objective weighs them: mean-reduced for mse_mean, summed
    nats otherwise; recon averaged over the S decoded samples."""
    kl = kl_normal_std(mu, log_var)
    if recon == "mse_mean":
        return jnp.mean(mse_mean(decoded, target), axis=0), jnp.mean(kl, axis=-1)
    return (-jnp.mean(log_px_given_z(recon, decoded, target, scale=scale,
                                     scale_min=scale_min), axis=0),
            jnp.sum(kl, axis=-1))


def log_weights(log_px, z, mu, log_var, *, kl_coef=1.0):
    """log p(x|z_k) + c·(log p(z_k) − log q(z_k|x)): log_px [K, B] (:func:`log_px_given_z`),
    z [K, B, L], μ, log σ² [B, L] -> [K, B] (c = 1: the importance weights, Burda et al.
    2016, eq. 8)."""
    log_p_z = jnp.sum(normal_log_prob(z, 0.0, log_scale=0.0), axis=-1)        # p(z) = N(0, I)
    return log_px + kl_coef * (log_p_z - log_q(z, mu, log_var))


def iwae_bound(log_px, z, mu, log_var, *, kl_coef=1.0):
    """IWAE_K = log (1/K) Σ_k exp(:func:`log_weights`_k) per example: log_px [K, B], z
    [K, B, L], μ, log σ² [B, L] -> [B] (Burda et al. 2016, eq. 8; c = ``kl_coef`` scales
    the weights' KL part, c = 1: the bound on log p(x))."""
    return log_mean_exp(log_weights(log_px, z, mu, log_var, kl_coef=kl_coef))


def elbo(log_px, mu, log_var, log_jacobian=0.0):
    """E_q[log p(x|z)] − KL(q(z|x) ‖ N(0, I)) + log_jacobian per example, nats: log_px
    [S, B] averaged over its S samples (Monte Carlo), the KL in closed form (weight 1)
    from μ, log σ² [B, L] -> [B]."""
    kl = jnp.sum(kl_normal_std(mu, log_var), axis=-1)
    return jnp.mean(log_px, axis=0) - kl + log_jacobian


def normalisation_log_jacobian(shape, std) -> float:
    """log |∂x̃/∂x| per example of x̃ = (x − m)/s, x of ``shape`` [B, H, W, C]:
    −(H·W)·Σ_c log s_c (s broadcast to the C channels), a constant in nats; a density of
    x̃ plus it is the density of x."""
    s = np.broadcast_to(np.asarray(std, np.float64), tuple(shape[-1:]))
    return -float(np.prod(shape[1:-1]) * np.sum(np.log(s)))


def dhm_objective(logits, labels, mask, recon_term, kl_term, *, alpha: float, beta: float,
                  kl_coef, axis_name=None, generative=None):
    """α·CE + β·(recon + c·KL) averaged over the global batch's valid rows; (loss, aux).

    ``generative`` [B] replaces recon + c·KL when given (the negative IWAE bound)."""
    ce = softmax_cross_entropy(logits, labels)
    gen = recon_term + kl_coef * kl_term if generative is None else generative
    value = global_mean(alpha * ce + beta * gen, mask, axis_name)
    sg = lax.stop_gradient
    acc = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    aux = {"ce": sg(global_mean(ce, mask, axis_name)),
           "recon": sg(global_mean(recon_term, mask, axis_name)),
           "kl": sg(global_mean(kl_term, mask, axis_name)),
           "accuracy": sg(global_mean(acc, mask, axis_name)),
           "kl_coef": jnp.asarray(kl_coef, jnp.float32)}
    return value, aux


def kl_schedule(kl_coef: float, warmup_epochs: float, epoch):
    """c·min(1, epoch / warm-up) (c when warm-up is 0): a pure function of progress."""
    if warmup_epochs <= 0:
        return jnp.asarray(kl_coef, jnp.float32)
    return kl_coef * jnp.minimum(1.0, jnp.asarray(epoch, jnp.float32) / warmup_epochs)
