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
probability masses over those levels, so no dequantisation correction applies. Their
math (and its numerics: exact in the far tails, finite gradients, no tiny-mass guard
branch) lives in :mod:`jaxhybrid.models.logistic`; its public names are re-exported.

Registry: ``LIKELIHOODS[name]`` is an instance, with its default options, of one small
class per likelihood (:class:`Bernoulli`, :class:`Gaussian`,
:class:`DiscretizedLogistic`, :class:`DiscretizedMixLogistic`); its dataclass fields
are its options, each default declared once. Each has ``out_channels``, ``log_prob``,
``mean`` and ``sample``, reached through the functions of the same names, so a
family's config says ``likelihood="discretized_mix_logistic"``. Each also states what
data it models (``support``) and what a bits/dim of it means (``bits_per_dim``,
printed in reports beside the number; docs/metrics.md §Likelihoods):

- ``bernoulli``: a mass over binary images {0, 1}^D, so the data must be binary
  (binarised pixels): not a mass over 256 grey levels;
- ``discretized_logistic``, ``discretized_mix_logistic``: a mass over the 256 levels of
  8-bit pixels; no 8-bit correction is added (none is needed);
- ``gaussian``: a density, not a mass: its bits/dim depend on the pixel scale, can be
  negative, and are not comparable with the bits/dim of a mass.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxhybrid.mathops import normal_log_prob, reparameterise
from jaxhybrid.models.logistic import (  # noqa: F401  (re-exported)
    LOG_SCALE_MIN, NUM_BINS, NUM_MIX, _f32, _sum_event, discretized_logistic_log_prob,
    discretized_logistic_mean, discretized_logistic_sample,
    discretized_mix_logistic_log_prob, discretized_mix_logistic_mean,
    discretized_mix_logistic_sample, mix_out_channels)


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
# The likelihoods: one small class each
# --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Likelihood:
    """One observation model; its dataclass fields are its options (with defaults).

    out_channels(channels) -> decoder channels for ``channels`` data channels
    log_prob(decoder_output, x) -> [..., B] nats (float32)
    mean(decoder_output, channels) -> [..., C] point estimate of x
    sample(rng, decoder_output, channels) -> [..., C] a draw of x
    support: what x it models: ``binary`` ({0, 1}), ``levels`` (the 256 levels of 8-bit
      pixels) or ``real`` (a density over real values).
    bits_per_dim: what −log p(x)/(D·ln 2) of it means, in one line for reports.
    """
    name: ClassVar[str]
    support: ClassVar[str]
    bits_per_dim: ClassVar[str]

    @property
    def options(self) -> tuple[str, ...]:
        """The keyword options it accepts: its fields."""
        return tuple(f.name for f in dataclasses.fields(self))

    def out_channels(self, channels: int) -> int:
        return channels

    def _check_channels(self, decoder_output, channels: int):
        if decoder_output.shape[-1] != channels:
            raise ValueError(f"{self.name} expects {channels} decoder channels, "
                             f"got {decoder_output.shape[-1]}")


SUPPORTS = ("binary", "levels", "real")


@dataclasses.dataclass(frozen=True)
class Bernoulli(Likelihood):
    """Decoder output: the logits, one per data channel."""
    name: ClassVar[str] = "bernoulli"
    support: ClassVar[str] = "binary"
    bits_per_dim: ClassVar[str] = (
        "a probability mass over binary images {0, 1}^D (the binarised pixels), not over "
        "256 grey levels: not comparable with bits/dim of 8-bit data")

    def log_prob(self, decoder_output, x):
        self._check_channels(decoder_output, x.shape[-1])
        return bernoulli_log_prob(decoder_output, x)

    def mean(self, decoder_output, channels: int):
        self._check_channels(decoder_output, channels)
        return bernoulli_mean(decoder_output)

    def sample(self, rng, decoder_output, channels: int):
        self._check_channels(decoder_output, channels)
        return bernoulli_sample(rng, decoder_output)


@dataclasses.dataclass(frozen=True)
class _PixelScale(Likelihood):
    """A location-scale likelihood. Decoder output: [mean | log_scale] (2C channels) if
    ``per_pixel_scale``, else the mean (C channels) with ``log_scale`` given (a scalar,
    [C] or per-pixel array)."""
    per_pixel_scale: bool = True
    log_scale: Any = None

    def out_channels(self, channels: int) -> int:
        return 2 * channels if self.per_pixel_scale else channels

    def split(self, decoder_output, channels: int):
        """Decoder output -> (mean [..., C], log_scale)."""
        want = self.out_channels(channels)
        if decoder_output.shape[-1] != want:
            raise ValueError(
                f"{self.name} with per_pixel_scale={self.per_pixel_scale} expects {want} "
                f"decoder channels for {channels} data channels, "
                f"got {decoder_output.shape[-1]}")
        if self.per_pixel_scale:
            if self.log_scale is not None:
                raise ValueError(f"{self.name}: log_scale is given but per_pixel_scale="
                                 "True (the decoder predicts it); set per_pixel_scale=False")
            return decoder_output[..., :channels], decoder_output[..., channels:]
        if self.log_scale is None:
            raise ValueError(f"{self.name} with per_pixel_scale=False needs log_scale "
                             "(a scalar, [C] or per-pixel array)")
        return decoder_output, self.log_scale


@dataclasses.dataclass(frozen=True)
class Gaussian(_PixelScale):
    """N(x; μ, exp(log_scale)²) per sub-pixel."""
    name: ClassVar[str] = "gaussian"
    support: ClassVar[str] = "real"
    bits_per_dim: ClassVar[str] = (
        "a density, not a probability mass: it depends on the pixel scale, can be "
        "negative, and is not comparable with bits/dim of a discrete likelihood")

    def log_prob(self, decoder_output, x):
        loc, log_scale = self.split(decoder_output, x.shape[-1])
        return gaussian_log_prob(loc, x, log_scale)

    def mean(self, decoder_output, channels: int):
        return _f32(self.split(decoder_output, channels)[0])

    def sample(self, rng, decoder_output, channels: int):
        return gaussian_sample(rng, *self.split(decoder_output, channels))


@dataclasses.dataclass(frozen=True)
class _Binned(Likelihood):
    """A mass over ``num_bins`` levels in [−1, 1]; log-scales clamped at
    ``log_scale_min`` (None: off)."""
    num_bins: int = NUM_BINS
    log_scale_min: float | None = LOG_SCALE_MIN
    support: ClassVar[str] = "levels"
    bits_per_dim: ClassVar[str] = (
        "a probability mass over the 256 levels of 8-bit pixels; no 8-bit correction is "
        "added, since the likelihood is already discrete")


@dataclasses.dataclass(frozen=True)
class DiscretizedLogistic(_Binned, _PixelScale):
    """One discretized logistic per sub-pixel; options: per_pixel_scale, log_scale,
    num_bins, log_scale_min."""
    name: ClassVar[str] = "discretized_logistic"

    def log_prob(self, decoder_output, x):
        loc, log_scale = self.split(decoder_output, x.shape[-1])
        return discretized_logistic_log_prob(loc, log_scale, x, self.num_bins,
                                             self.log_scale_min)

    def mean(self, decoder_output, channels: int):
        return discretized_logistic_mean(self.split(decoder_output, channels)[0])

    def sample(self, rng, decoder_output, channels: int):
        loc, log_scale = self.split(decoder_output, channels)
        return discretized_logistic_sample(rng, loc, log_scale, self.num_bins,
                                           self.log_scale_min)


@dataclasses.dataclass(frozen=True)
class DiscretizedMixLogistic(_Binned):
    """PixelCNN++'s mixture of ``num_mix`` discretized logistics (layout of the decoder
    output: :func:`discretized_mix_logistic_log_prob`)."""
    name: ClassVar[str] = "discretized_mix_logistic"
    num_mix: int = NUM_MIX

    def out_channels(self, channels: int) -> int:
        return mix_out_channels(channels, self.num_mix)

    def log_prob(self, decoder_output, x):
        return discretized_mix_logistic_log_prob(decoder_output, x, self.num_mix,
                                                 self.num_bins, self.log_scale_min)

    def mean(self, decoder_output, channels: int):
        return discretized_mix_logistic_mean(decoder_output, channels, self.num_mix)

    def sample(self, rng, decoder_output, channels: int):
        return discretized_mix_logistic_sample(rng, decoder_output, channels, self.num_mix,
                                               self.num_bins, self.log_scale_min)


LIKELIHOODS: dict[str, Likelihood] = {
    lk.name: lk for lk in (Bernoulli(), Gaussian(), DiscretizedLogistic(),
                           DiscretizedMixLogistic())}


# --------------------------------------------------------------------------------------
# By name
# --------------------------------------------------------------------------------------

def get_likelihood(name: str, options: dict | None = None) -> Likelihood:
    """The likelihood ``name`` with ``options`` (checked against what it accepts) in
    place of its defaults."""
    if name not in LIKELIHOODS:
        raise ValueError(f"Unknown likelihood {name!r}; valid choices: "
                         f"{', '.join(sorted(LIKELIHOODS))}")
    entry = LIKELIHOODS[name]
    unknown = set(options or ()) - set(entry.options)
    if unknown:
        raise ValueError(f"Unknown option(s) {sorted(unknown)} for likelihood {name!r}; "
                         f"valid options: {', '.join(entry.options) or '(none)'}")
    return dataclasses.replace(entry, **options) if options else entry


def out_channels(name: str, channels: int, **options) -> int:
    """Channels a decoder must output for ``channels`` data channels under ``name``."""
    return get_likelihood(name, options).out_channels(channels)


def log_prob(name: str, decoder_output, x, **options):
    """log p(x | decoder_output) per example, nats, float32.

    decoder_output: [..., B, *event, C'] with C' = out_channels(name, C, **options);
    x: [B, *event, C] -> [..., B].
    """
    return get_likelihood(name, options).log_prob(decoder_output, x)


def mean(name: str, decoder_output, channels: int, **options):
    """Point estimate of x (the mean, see each ``*_mean``): [..., C'] -> [..., C]."""
    return get_likelihood(name, options).mean(decoder_output, channels)


def sample(name: str, rng, decoder_output, channels: int, **options):
    """A draw of x from p(x | decoder_output): [..., C'] -> [..., C] (float32)."""
    return get_likelihood(name, options).sample(rng, decoder_output, channels)
