"""Observation models p(x | z) shared by the DHM and HVAE families.

Pure functions of arrays. Every ``*_log_prob`` returns the PER-EXAMPLE
log-likelihood in nats, summed (never averaged) over all event axes of ``x``;
divide by D·ln 2 for bits/dim (docs/metrics.md §Likelihoods). Inputs of any float
dtype (bf16 decoder outputs included) are cast to float32 first, so the
element-wise terms and the sums are float32.

Shapes: ``x: [B, *event]`` (images: ``[B, H, W, C]``). Decoder outputs may carry
extra leading axes, e.g. importance samples ``[S, B, H, W, C']``; they broadcast
against ``x`` and survive: the result is ``[B]`` (or ``[S, B]``).

Discretized likelihoods model 8-bit-style data scaled to [−1, 1]: ``x`` must lie on
the ``num_bins`` bin centres −1 + 2k/(num_bins − 1), k = 0..num_bins−1 (bin width
2/(num_bins − 1); the first bin extends to −∞ and the last to +∞). They are
probability masses over those levels, so no dequantisation correction applies.

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

Registry: ``LIKELIHOODS[name]`` with ``out_channels``, ``log_prob``, ``mean`` and
``sample`` entries, reached through the functions of the same names, so a family's
config says ``likelihood="discretized_mix_logistic"``. Each entry also states what data
it models (``support``) and what a bits/dim of it means (``bits_per_dim``, printed in
reports beside the number; docs/metrics.md §Likelihoods):

- ``bernoulli``: a mass over binary images {0, 1}^D, so the data must be binary
  (binarised pixels): not a mass over 256 grey levels;
- ``discretized_logistic``, ``discretized_mix_logistic``: a mass over the 256 levels of
  8-bit pixels; no 8-bit correction is added (none is needed);
- ``gaussian``: a density, not a mass: its bits/dim depend on the pixel scale, can be
  negative, and are not comparable with the bits/dim of a mass.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp

from jaxhybrid.mathops import normal_log_prob, reparameterise

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
# Bernoulli
# --------------------------------------------------------------------------------------

def bernoulli_log_prob(logits, x):
    """Σ_pixels [x log σ(l) + (1 − x) log σ(−l)]: logits, x: [..., B, *event] -> [..., B].

    ``x`` in {0, 1}, or probabilities in [0, 1] (the continuous relaxation, e.g.
    non-binarised grey levels). Written with softplus, so logits of ±1e4 give finite
    values and gradients.
    """
    logits, x = _f32(logits), _f32(x)
    # log σ(l) = −softplus(−l), log(1 − σ(l)) = −softplus(l)
    lp = -(x * jax.nn.softplus(-logits) + (1.0 - x) * jax.nn.softplus(logits))
    return _sum_event(lp, x.ndim - 1)


def bernoulli_mean(logits):
    """E[x] = σ(logits): [..., C] -> [..., C] (float32)."""
    return jax.nn.sigmoid(_f32(logits))


def bernoulli_sample(rng, logits):
    """x ~ Bernoulli(σ(logits)) as float32 {0, 1}: [..., C] -> [..., C]."""
    logits = _f32(logits)
    return jax.random.bernoulli(rng, jax.nn.sigmoid(logits)).astype(jnp.float32)


# --------------------------------------------------------------------------------------
# Gaussian
# --------------------------------------------------------------------------------------

def gaussian_log_prob(mean, x, log_scale):
    """Σ_pixels log N(x; μ, σ²) with σ = exp(log_scale): [..., B, *event] -> [..., B].

    ``log_scale`` broadcasts against ``mean``: a scalar (fixed or one learned σ), per
    channel ``[C]``, or per pixel ``[..., B, H, W, C]`` (decoder-predicted).
    """
    x = _f32(x)
    lp = normal_log_prob(x, mean, log_scale=log_scale)
    lp = jnp.broadcast_to(lp, jnp.broadcast_shapes(lp.shape, x.shape))
    return _sum_event(lp, x.ndim - 1)


def gaussian_sample(rng, mean, log_scale):
    """x = μ + σ·ε, ε ~ N(0, I): [..., C] -> [..., C] (float32)."""
    mean, log_scale = _f32(mean), _f32(log_scale)
    shape = jnp.broadcast_shapes(mean.shape, log_scale.shape)
    return reparameterise(mean, jnp.exp(log_scale), jax.random.normal(rng, shape, jnp.float32))


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


def discretized_logistic_log_prob(mean, log_scale, x, num_bins: int = 256,
                                  log_scale_min: float | None = -7.0):
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


def discretized_logistic_sample(rng, mean, log_scale, num_bins: int = 256,
                                log_scale_min: float | None = -7.0):
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


def mix_out_channels(channels: int, num_mix: int = 10) -> int:
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


def discretized_mix_logistic_log_prob(params, x, num_mix: int = 10, num_bins: int = 256,
                                      log_scale_min: float | None = -7.0):
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


def discretized_mix_logistic_mean(params, channels: int, num_mix: int = 10):
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


def discretized_mix_logistic_sample(rng, params, channels: int, num_mix: int = 10,
                                    num_bins: int = 256, log_scale_min: float | None = -7.0):
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


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------

def _split_scale(name, decoder_output, channels, per_pixel_scale, log_scale):
    """Decoder output -> (mean [..., C], log_scale). Per-pixel: [mean | log_scale] (2C)."""
    want = 2 * channels if per_pixel_scale else channels
    if decoder_output.shape[-1] != want:
        raise ValueError(
            f"{name} with per_pixel_scale={per_pixel_scale} expects {want} decoder channels "
            f"for {channels} data channels, got {decoder_output.shape[-1]}")
    if per_pixel_scale:
        if log_scale is not None:
            raise ValueError(f"{name}: log_scale is given but per_pixel_scale=True "
                             "(the decoder predicts it); set per_pixel_scale=False")
        return decoder_output[..., :channels], decoder_output[..., channels:]
    if log_scale is None:
        raise ValueError(f"{name} with per_pixel_scale=False needs log_scale "
                         "(a scalar, [C] or per-pixel array)")
    return decoder_output, log_scale


def _check_channels(name, decoder_output, channels):
    if decoder_output.shape[-1] != channels:
        raise ValueError(f"{name} expects {channels} decoder channels, "
                         f"got {decoder_output.shape[-1]}")


def _bernoulli_log_prob(out, x):
    _check_channels("bernoulli", out, x.shape[-1])
    return bernoulli_log_prob(out, x)


def _bernoulli_mean(out, channels):
    _check_channels("bernoulli", out, channels)
    return bernoulli_mean(out)


def _bernoulli_sample(rng, out, channels):
    _check_channels("bernoulli", out, channels)
    return bernoulli_sample(rng, out)


def _gaussian_log_prob(out, x, per_pixel_scale=True, log_scale=None):
    mean, ls = _split_scale("gaussian", out, x.shape[-1], per_pixel_scale, log_scale)
    return gaussian_log_prob(mean, x, ls)


def _gaussian_mean(out, channels, per_pixel_scale=True, log_scale=None):
    return _f32(_split_scale("gaussian", out, channels, per_pixel_scale, log_scale)[0])


def _gaussian_sample(rng, out, channels, per_pixel_scale=True, log_scale=None):
    return gaussian_sample(rng, *_split_scale("gaussian", out, channels, per_pixel_scale,
                                              log_scale))


def _dl_log_prob(out, x, per_pixel_scale=True, log_scale=None, num_bins=256,
                 log_scale_min=-7.0):
    mean, ls = _split_scale("discretized_logistic", out, x.shape[-1], per_pixel_scale,
                            log_scale)
    return discretized_logistic_log_prob(mean, ls, x, num_bins, log_scale_min)


def _dl_mean(out, channels, per_pixel_scale=True, log_scale=None, num_bins=256,
             log_scale_min=-7.0):
    del num_bins, log_scale_min
    return discretized_logistic_mean(
        _split_scale("discretized_logistic", out, channels, per_pixel_scale, log_scale)[0])


def _dl_sample(rng, out, channels, per_pixel_scale=True, log_scale=None, num_bins=256,
               log_scale_min=-7.0):
    mean, ls = _split_scale("discretized_logistic", out, channels, per_pixel_scale, log_scale)
    return discretized_logistic_sample(rng, mean, ls, num_bins, log_scale_min)


def _dml_mean(out, channels, num_mix=10, num_bins=256, log_scale_min=-7.0):
    del num_bins, log_scale_min
    return discretized_mix_logistic_mean(out, channels, num_mix)


@dataclasses.dataclass(frozen=True)
class Likelihood:
    """One observation model, as the registry exposes it.

    out_channels(channels, **options) -> decoder channels for ``channels`` data channels
    log_prob(decoder_output, x, **options) -> [..., B] nats (float32)
    mean(decoder_output, channels, **options) -> [..., C] point estimate of x
    sample(rng, decoder_output, channels, **options) -> [..., C] a draw of x
    options: the keyword options it accepts (each has a default).
    support: what x it models: ``binary`` ({0, 1}), ``levels`` (the 256 levels of 8-bit
      pixels) or ``real`` (a density over real values).
    bits_per_dim: what −log p(x)/(D·ln 2) of it means, in one line for reports.
    """
    out_channels: Callable[..., int]
    log_prob: Callable[..., jax.Array]
    mean: Callable[..., jax.Array]
    sample: Callable[..., jax.Array]
    options: tuple[str, ...]
    support: str
    bits_per_dim: str


SUPPORTS = ("binary", "levels", "real")
_LEVELS_BPD = ("a probability mass over the 256 levels of 8-bit pixels; no 8-bit "
               "correction is added, since the likelihood is already discrete")


LIKELIHOODS: dict[str, Likelihood] = {
    "bernoulli": Likelihood(
        out_channels=lambda channels: channels,
        log_prob=_bernoulli_log_prob, mean=_bernoulli_mean, sample=_bernoulli_sample,
        options=(), support="binary",
        bits_per_dim="a probability mass over binary images {0, 1}^D (the binarised "
                     "pixels), not over 256 grey levels: not comparable with bits/dim of "
                     "8-bit data"),
    "gaussian": Likelihood(
        out_channels=lambda channels, per_pixel_scale=True, log_scale=None:
            2 * channels if per_pixel_scale else channels,
        log_prob=_gaussian_log_prob, mean=_gaussian_mean, sample=_gaussian_sample,
        options=("per_pixel_scale", "log_scale"), support="real",
        bits_per_dim="a density, not a probability mass: it depends on the pixel scale, "
                     "can be negative, and is not comparable with bits/dim of a "
                     "discrete likelihood"),
    "discretized_logistic": Likelihood(
        out_channels=lambda channels, per_pixel_scale=True, log_scale=None, num_bins=256,
        log_scale_min=-7.0: 2 * channels if per_pixel_scale else channels,
        log_prob=_dl_log_prob, mean=_dl_mean, sample=_dl_sample,
        options=("per_pixel_scale", "log_scale", "num_bins", "log_scale_min"),
        support="levels", bits_per_dim=_LEVELS_BPD),
    "discretized_mix_logistic": Likelihood(
        out_channels=lambda channels, num_mix=10, num_bins=256, log_scale_min=-7.0:
            mix_out_channels(channels, num_mix),
        log_prob=discretized_mix_logistic_log_prob, mean=_dml_mean,
        sample=discretized_mix_logistic_sample,
        options=("num_mix", "num_bins", "log_scale_min"), support="levels",
        bits_per_dim=_LEVELS_BPD),
}


def get_likelihood(name: str, options: dict | None = None) -> Likelihood:
    """The registry entry ``name``; checks ``options`` against what it accepts."""
    if name not in LIKELIHOODS:
        raise ValueError(f"Unknown likelihood {name!r}; valid choices: "
                         f"{', '.join(sorted(LIKELIHOODS))}")
    entry = LIKELIHOODS[name]
    unknown = set(options or ()) - set(entry.options)
    if unknown:
        raise ValueError(f"Unknown option(s) {sorted(unknown)} for likelihood {name!r}; "
                         f"valid options: {', '.join(entry.options) or '(none)'}")
    return entry


def out_channels(name: str, channels: int, **options) -> int:
    """Channels a decoder must output for ``channels`` data channels under ``name``."""
    return get_likelihood(name, options).out_channels(channels, **options)


def log_prob(name: str, decoder_output, x, **options):
    """log p(x | decoder_output) per example, nats, float32.

    decoder_output: [..., B, *event, C'] with C' = out_channels(name, C, **options);
    x: [B, *event, C] -> [..., B].
    """
    return get_likelihood(name, options).log_prob(decoder_output, x, **options)


def mean(name: str, decoder_output, channels: int, **options):
    """Point estimate of x (the mean, see each ``*_mean``): [..., C'] -> [..., C]."""
    return get_likelihood(name, options).mean(decoder_output, channels, **options)


def sample(name: str, rng, decoder_output, channels: int, **options):
    """A draw of x from p(x | decoder_output): [..., C'] -> [..., C] (float32)."""
    return get_likelihood(name, options).sample(rng, decoder_output, channels, **options)
