"""The formulas the objectives, families and models share, each written once.

- Masked reductions over the GLOBAL batch: the rows of every device of ``axis_name``
  (``lax.psum`` inside a ``shard_map``'d step; ``axis_name=None``: the local batch is the
  whole batch), padding rows (``mask`` False) excluded. Padding rows may hold anything,
  inf and NaN included: they are removed with ``jnp.where`` before any arithmetic, so
  they contribute exact zeros to the values and to the gradients.
- Gaussian log-densities, the Gaussian KL divergences, the reparameterisation.
- Softmax cross-entropy, log-mean-exp (the IWAE bound).

Every function is float32 and pure; shapes are in the docstrings.
"""
from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _f32(a):
    return jnp.asarray(a, jnp.float32)


# -- masked reductions over the global batch ------------------------------------------

def psum(x, axis_name: Optional[str]):
    """``lax.psum(x, axis_name)``; x itself when ``axis_name`` is None (one device)."""
    return x if axis_name is None else lax.psum(x, axis_name)


def _row_mask(mask, x):
    """mask [B] (None: every row valid) broadcast against x [B, ...]."""
    if mask is None:
        return jnp.ones(x.shape[:1] + (1,) * (x.ndim - 1), bool)
    return mask.astype(bool).reshape(mask.shape + (1,) * (x.ndim - 1))


def masked_sum_and_count(x, mask, axis_name=None, keep_last: bool = False):
    """(Σ, n) over the valid rows of the global batch, one psum for both.

    x: [B, ...]; mask: [B] bool or None. Σ sums every axis (scalar), or every axis but the
    last ([F], ``keep_last``); n is the global number of valid ROWS (scalar float32).
    """
    x = _f32(x)
    m = _row_mask(mask, x)
    axes = tuple(range(x.ndim - 1)) if keep_last else None
    total = jnp.sum(jnp.where(m, x, 0.0), axis=axes)
    count = jnp.sum(m.astype(jnp.float32))
    return psum((total, count), axis_name)


def global_count(mask, axis_name=None):
    """B, the number of valid rows of the global batch: mask [B] bool -> scalar float32."""
    return psum(jnp.sum(mask.astype(jnp.float32)), axis_name)


def global_mean(values, mask, axis_name=None):
    """(1/B) Σ_valid values_i over the global batch: values [B], mask [B] -> scalar
    (0 when no row is valid)."""
    total, count = masked_sum_and_count(values, mask, axis_name)
    return total / jnp.maximum(count, 1.0)


def global_logsumexp(values, mask, axis_name=None):
    """log Σ_i exp(values_i) over the valid rows of the global batch: [B] -> scalar.

    The shift is the global max; pmax has no differentiation rule, so its INPUT is
    stop_gradient'ed (the shift cancels analytically, so the gradient is exact). Padding
    entries are set to −inf before the exp: exp(−inf) = 0 with derivative 0. (Masking
    after the exp would leave exp(values − shift) = inf for a padding entry more than ~88
    above the valid maximum, and 0·inf = NaN in the backward pass.)
    """
    masked = jnp.where(mask, values, -jnp.inf)
    local_max = jnp.max(lax.stop_gradient(masked))
    shift = local_max if axis_name is None else lax.pmax(local_max, axis_name)
    shift = jnp.where(jnp.isfinite(shift), shift, 0.0)
    return jnp.log(psum(jnp.sum(jnp.exp(masked - shift)), axis_name)) + shift


# -- Gaussians ------------------------------------------------------------------------

def normal_log_prob(x, mean, *, scale=None, log_scale=None):
    """log N(x; μ, σ²) = −½((x − μ)/σ)² − log σ − ½ log 2π (the log of Bishop 2006, eq. 1.46),
    elementwise (broadcasting).

    Give σ as ``scale`` or as ``log_scale`` (log σ), whichever the caller holds, so that
    neither is recomputed from the other.
    """
    x, mean = _f32(x), _f32(mean)
    if (scale is None) == (log_scale is None):
        raise ValueError("normal_log_prob takes exactly one of scale, log_scale")
    if log_scale is None:
        scale = _f32(scale)
        u, log_scale = (x - mean) / scale, jnp.log(scale)
    else:
        log_scale = _f32(log_scale)
        u = (x - mean) * jnp.exp(-log_scale)
    return -0.5 * jnp.square(u) - log_scale - HALF_LOG_2PI


def kl_normal_std(mu, log_var):
    """KL(N(μ, σ²) ‖ N(0, 1)) = ½(μ² + σ² − 1 − log σ²) elementwise (Kingma & Welling 2014,
    App. B): [...] -> [...]."""
    mu, log_var = _f32(mu), _f32(log_var)
    return 0.5 * (jnp.square(mu) + jnp.exp(log_var) - 1.0 - log_var)


def kl_normal(q_mean, q_scale, p_mean, p_scale):
    """KL(N(μq, σq²) ‖ N(μp, σp²)) = log(σp/σq) + (σq² + (μq − μp)²)/(2σp²) − ½, the
    closed form of E_q[log q − log p] (its σp = 1, μp = 0 case: :func:`kl_normal_std`),
    elementwise."""
    q_mean, q_scale, p_mean, p_scale = map(_f32, (q_mean, q_scale, p_mean, p_scale))
    return (jnp.log(p_scale / q_scale)
            + (jnp.square(q_scale) + jnp.square(q_mean - p_mean)) / (2 * jnp.square(p_scale))
            - 0.5)


def reparameterise(mean, scale, eps):
    """z = μ + σ·ε, ε ~ N(0, I) (Kingma & Welling 2014, §2.4), broadcasting."""
    return mean + scale * eps


# -- categorical and importance-weighted ----------------------------------------------

def softmax_cross_entropy(logits, labels):
    """−log softmax(f)_y, the per-example NLL of docs/metrics.md: logits [B, K], labels [B]
    int -> [B] float32."""
    logp = jax.nn.log_softmax(_f32(logits), axis=-1)
    return -jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]


def log_mean_exp(log_w, axis: int = 0):
    """log (1/K) Σ_k exp(log_w_k) over ``axis`` (K its length): with log_w the log
    importance weights [K, B], the IWAE_K bound [B] (Burda et al. 2016, eq. 8)."""
    return jax.nn.logsumexp(log_w, axis=axis) - jnp.log(log_w.shape[axis])
