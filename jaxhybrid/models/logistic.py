"""The discretized logistic and the PixelCNN++ discretized logistic mixture: the pure
math behind those likelihoods of :mod:`jaxhybrid.models.likelihoods` (which re-exports
the public names here; its docstring states the shared conventions: per-example sums
in nats, float32, shapes, data on the ``num_bins`` bin centres in [−1, 1]).

Numerics of a discretized logistic bin, with a = (x + h − μ)/s, b = (x − h − μ)/s and
half-width h: the edge bins use log σ(a) (x = −1) and log(1 − σ(b)) = −softplus(b)
(x = 1) as in PixelCNN++. Interior bins use the exact identity
    log(σ(a) − σ(b)) = log σ(a) + log σ(−b) + log(1 − e^{−(a−b)}),
whose three terms are all ≤ 0 (no cancellation) and finite for finite inputs. It
agrees with log(σ(a) − σ(b)) wherever that is representable and stays exact in the
far tails, where PixelCNN++ switches to its tiny-mass guard (log pdf at the bin
centre + log bin width, an approximation) because σ(a) − σ(b) underflows. So no
separate guard branch is needed, and every branch of each ``where`` is finite, so
gradients are finite too.

The defaults (256 bins, PixelCNN++'s log-scale floor −7 and 10 components) are
declared once, below, and shared with the likelihood classes.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

NUM_BINS = 256          # the levels of 8-bit pixels
LOG_SCALE_MIN = -7.0    # PixelCNN++'s lower clamp of log-scales (None: off)
NUM_MIX = 10            # PixelCNN++'s mixture components

_LN2 = math.log(2.0)


def _f32(a):
    return jnp.asarray(a, jnp.float32)


def _sum_event(log_probs, event_ndims: int):
    """Sum the last ``event_ndims`` axes: [..., B, *event] -> [..., B]."""
    return jnp.sum(log_probs, axis=tuple(range(log_probs.ndim - event_ndims, log_probs.ndim)))


def _log1mexp(d):
    """log(1 − e^{−d}) for d > 0, accurate for small and large d (Mächler 2012)."""
    small = d < _LN2
    d_small = jnp.maximum(jnp.where(small, d, _LN2), 1e-30)  # both branches finite
    d_large = jnp.where(small, _LN2, d)
    return jnp.where(small, jnp.log(-jnp.expm1(-d_small)), jnp.log1p(-jnp.exp(-d_large)))


def _bin_width(num_bins: int) -> float:
    if num_bins < 2:
        raise ValueError(f"num_bins must be >= 2, got {num_bins}")
    return 2.0 / (num_bins - 1)


def _to_bins(y, num_bins: int):
    """Continuous values -> the nearest bin centre in [−1, 1] (edges absorb the tails)."""
    width = _bin_width(num_bins)
    k = jnp.round((jnp.clip(y, -1.0, 1.0) + 1.0) / width)
    return k * width - 1.0


# --------------------------------------------------------------------------------------
# Discretized logistic
# --------------------------------------------------------------------------------------

def _discretized_logistic_log_mass(x, mean, log_scale, num_bins: int):
    """Element-wise log P(bin of x) under Logistic(μ, s); float32 arrays, broadcast.

    The one place the discretized-logistic formula lives (see the module docstring
    for the numerics); used by the single and the mixture likelihoods.
    """
    half = 0.5 * _bin_width(num_bins)
    inv_scale = jnp.exp(-log_scale)
    centred = x - mean
    plus_in = inv_scale * (centred + half)    # a
    minus_in = inv_scale * (centred - half)   # b
    log_cdf_plus = -jax.nn.softplus(-plus_in)   # log σ(a): first bin, x = −1
    log_sf_minus = -jax.nn.softplus(minus_in)   # log(1 − σ(b)): last bin, x = 1
    # log(σ(a) − σ(b)) = log σ(a) + log σ(−b) + log(1 − e^{−(a−b)}), a − b = 2h/s
    log_delta = log_cdf_plus + log_sf_minus + _log1mexp(2.0 * half * inv_scale)
    # bins of Salimans et al. 2017, eq. 2 (one component), edges as in their code
    return jnp.where(x < -1.0 + half, log_cdf_plus,
                     jnp.where(x > 1.0 - half, log_sf_minus, log_delta))


def _clamp_log_scale(log_scale, log_scale_min):
    return log_scale if log_scale_min is None else jnp.maximum(log_scale, log_scale_min)


def discretized_logistic_log_prob(mean, log_scale, x, num_bins: int = NUM_BINS,
                                  log_scale_min: float | None = LOG_SCALE_MIN):
    """Σ_pixels log P(x) of a single discretized logistic per sub-pixel.

    mean: [..., B, *event]; log_scale broadcastable to it (scalar, per channel or per
    pixel); x: [B, *event] on the bin centres in [−1, 1] -> [..., B].
    ``log_scale`` is clamped below at ``log_scale_min`` (PixelCNN++'s −7; None: off).
    """
    mean, x = _f32(mean), _f32(x)
    log_scale = _clamp_log_scale(_f32(log_scale), log_scale_min)
    lp = _discretized_logistic_log_mass(x, mean, log_scale, num_bins)
    lp = jnp.broadcast_to(lp, jnp.broadcast_shapes(lp.shape, x.shape))
    return _sum_event(lp, x.ndim - 1)


def discretized_logistic_mean(mean):
    """Point estimate clip(μ, −1, 1): [..., C] -> [..., C] (float32)."""
    return jnp.clip(_f32(mean), -1.0, 1.0)


def discretized_logistic_sample(rng, mean, log_scale, num_bins: int = NUM_BINS,
                                log_scale_min: float | None = LOG_SCALE_MIN):
    """Exact sample on the bin centres: a logistic draw, clipped, rounded. [..., C]."""
    mean = _f32(mean)
    log_scale = _clamp_log_scale(_f32(log_scale), log_scale_min)
    shape = jnp.broadcast_shapes(mean.shape, log_scale.shape)
    y = mean + jnp.exp(log_scale) * jax.random.logistic(rng, shape, jnp.float32)
    return _to_bins(y, num_bins)


# --------------------------------------------------------------------------------------
# Discretized logistic mixture (PixelCNN++)
# --------------------------------------------------------------------------------------

def _mix_params_per_channel(channels: int) -> int:
    """Per channel and component: mean, log-scale, and (3 channels only) a coefficient."""
    return 3 if channels == 3 else 2


def mix_out_channels(channels: int, num_mix: int = NUM_MIX) -> int:
    """Decoder channels for the mixture: num_mix · (1 + P·C), P = 3 if C == 3 else 2."""
    return num_mix * (1 + _mix_params_per_channel(channels) * channels)


def _split_mix_params(params, channels: int, num_mix: int):
    """params [..., D] -> logits [..., M], means, raw log_scales [..., C, M], coeffs|None.

    coeffs (C = 3 only) are tanh-squashed: coeffs[..., k, :] is α (k=0: g←r),
    β (k=1: b←r), γ (k=2: b←g), stored in PixelCNN++'s slots.
    """
    expected = mix_out_channels(channels, num_mix)
    if params.shape[-1] != expected:
        per = _mix_params_per_channel(channels)
        raise ValueError(
            f"discretized_mix_logistic params have {params.shape[-1]} channels; "
            f"expected num_mix·(1 + {per}·C) = {num_mix}·(1 + {per}·{channels}) = {expected}")
    m = num_mix
    logits = params[..., :m]
    rest = params[..., m:].reshape(params.shape[:-1] + (channels, -1))
    means, log_scales = rest[..., :m], rest[..., m:2 * m]
    coeffs = jnp.tanh(rest[..., 2 * m:3 * m]) if channels == 3 else None
    return logits, means, log_scales, coeffs


def _autoregressive_means(means, coeffs, x):
    """μ_g += α·r, μ_b += β·r + γ·g (Salimans et al. 2017, eq. 3).

    means, coeffs: [..., 3, M]; x: [..., 3, 1] or [..., 3, M] (the conditioning values).
    """
    r, g = x[..., 0, :], x[..., 1, :]
    mu_g = means[..., 1, :] + coeffs[..., 0, :] * r
    mu_b = means[..., 2, :] + coeffs[..., 1, :] * r + coeffs[..., 2, :] * g
    return jnp.stack([jnp.broadcast_to(means[..., 0, :], mu_b.shape), mu_g, mu_b], axis=-2)


def discretized_mix_logistic_log_prob(params, x, num_mix: int = NUM_MIX,
                                      num_bins: int = NUM_BINS,
                                      log_scale_min: float | None = LOG_SCALE_MIN):
    """PixelCNN++ discretized logistic mixture: Σ_pixels log Σ_m π_m Π_c P(x_c | m).

    x: [B, *spatial, C] on the bin centres in [−1, 1], C = 3 (with the channel
    coefficients of PixelCNN++) or any other C (channels independent given the
    component; C = 1 for grey images). The component (and π) is shared by the C
    channels of a pixel.

    params: [..., B, *spatial, D], D = num_mix · (1 + P·C), P = 3 if C == 3 else 2.
    Layout (PixelCNN++'s own for C = 3):
      params[..., :M]                        mixture logits (M = num_mix)
      params[..., M:].reshape(..., C, P·M)   per channel c: [means (M) | log-scales (M)
                                             | coefficient slot c (M), C = 3 only]
    with the coefficients α, β, γ (tanh-squashed) in slots 0, 1, 2. So D = 10·M for
    RGB and 3·M for one channel. Log-scales are clamped below at ``log_scale_min``.

    Returns [..., B] (nats, float32).
    """
    params, x = _f32(params), _f32(x)
    channels = x.shape[-1]
    logits, means, log_scales, coeffs = _split_mix_params(params, channels, num_mix)
    log_scales = _clamp_log_scale(log_scales, log_scale_min)
    x_c = x[..., None]  # [B, *spatial, C, 1] against [..., C, M]
    if coeffs is not None:
        means = _autoregressive_means(means, coeffs, x_c)
    log_mass = _discretized_logistic_log_mass(x_c, means, log_scales, num_bins)
    # log Σ_m π_m Π_c P(x_c | μ_cm, s_cm)  (Salimans et al. 2017, eq. 2 and 3)
    log_joint = jnp.sum(log_mass, axis=-2) + jax.nn.log_softmax(logits, axis=-1)
    log_pixel = jax.nn.logsumexp(log_joint, axis=-1)  # [..., B, *spatial]
    return _sum_event(log_pixel, x.ndim - 2)


def discretized_mix_logistic_mean(params, channels: int, num_mix: int = NUM_MIX):
    """Approximate E[x]: Σ_m π_m μ̃_m with μ̃ the component means after the channel
    coefficients (applied to the clipped means of the preceding channels), clipped to
    [−1, 1]. It ignores the discretisation and the clipping of the tails.

    params: [..., D] (layout of :func:`discretized_mix_logistic_log_prob`) -> [..., C].
    """
    params = _f32(params)
    logits, means, _, coeffs = _split_mix_params(params, channels, num_mix)
    if coeffs is not None:
        # μ̃_g needs clip(μ_r) only; μ̃_b needs clip(μ̃_g): two passes over the raw means.
        first = _autoregressive_means(means, coeffs, jnp.clip(means, -1.0, 1.0))
        means = _autoregressive_means(means, coeffs, jnp.clip(first, -1.0, 1.0))
    weights = jax.nn.softmax(logits, axis=-1)[..., None, :]
    return jnp.clip(jnp.sum(weights * means, axis=-1), -1.0, 1.0)


def discretized_mix_logistic_sample(rng, params, channels: int, num_mix: int = NUM_MIX,
                                    num_bins: int = NUM_BINS,
                                    log_scale_min: float | None = LOG_SCALE_MIN):
    """Exact sample on the bin centres: a component ~ softmax(logits); per channel in
    order, a logistic draw around the (coefficient-adjusted, given the already sampled
    channels) mean, clipped and rounded. params: [..., D] -> [..., C] (float32)."""
    params = _f32(params)
    logits, means, log_scales, coeffs = _split_mix_params(params, channels, num_mix)
    log_scales = _clamp_log_scale(log_scales, log_scale_min)
    # one uniform draw per pixel: M Gumbel variables (component) and C logistic ones
    u = jax.random.uniform(rng, logits.shape[:-1] + (num_mix + channels,), jnp.float32,
                           minval=1e-6, maxval=1.0 - 1e-6)
    gumbel = -jnp.log(-jnp.log(u[..., :num_mix]))
    comp = jnp.argmax(logits + gumbel, axis=-1)  # component ~ softmax(logits)
    pick = lambda a: jnp.take_along_axis(a, comp[..., None, None], axis=-1)[..., 0]  # noqa: E731
    means, scales = pick(means), jnp.exp(pick(log_scales))  # [..., C]
    u_c = u[..., num_mix:]
    noise = scales * (jnp.log(u_c) - jnp.log1p(-u_c))  # Logistic(0, s) by inversion
    if coeffs is None:
        return _to_bins(means + noise, num_bins)
    coeffs = pick(coeffs)
    r = _to_bins(means[..., 0] + noise[..., 0], num_bins)
    g = _to_bins(means[..., 1] + coeffs[..., 0] * r + noise[..., 1], num_bins)
    b = _to_bins(means[..., 2] + coeffs[..., 1] * r + coeffs[..., 2] * g + noise[..., 2],
                 num_bins)
    return jnp.stack([r, g, b], axis=-1)
