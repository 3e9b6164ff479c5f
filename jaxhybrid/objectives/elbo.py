"""The hierarchical VAE's bounds, its training objective and schedules (docs/methods/hvae.md).

Per example, for S posterior samples z^(s) ~ q(z|x) and the layers' per-element
single-sample KL estimates kl_i = log q(z_i|·) − log p(z_i|·) (the original's
``kl_divergence_mc``; nats, float32):

    log w_s  = log p(x|z^(s)) − Σ_i Σ_elements kl_i                 (the importance weight)
    L_S(x)   = log (1/S) Σ_s w_s                                     (Burda et al. 2016, eq. 8)
    loss_s   = −log p(x|z^(s)) + β_t Σ_i FN_λt(kl_i)    (warm-up: Sønderby et al. 2016;
                                                         free bits: Kingma et al. 2016)

``importance_weighted`` training uses −log (1/S) Σ_s exp(−loss_s) (the IW bound with the
tempered, floored weights; the original's log-sum-exp of the LOSS itself is a slip and
is not copied), else the mean of loss_s over the S samples. With β = 1 and λ = 0 the
loss is −L_S (IW) or the negative S-sample ELBO.

**Free nats FN_λ.** ``per_element`` (default, the original's ``FreeNats(λ, shared_dims=1)``):
every element's KL is floored at λ/C, C = the layer's channel count (its features for a
dense latent), so a dense layer is floored at λ in total but a conv latent at λ·H·W: the
original divides by the channel axis only. Kept as the default because the paper's
numbers come from it. ``per_layer``: max(Σ_elements kl_i, λ), the floor Kingma et al.
describe (λ per group). Either way λ = 0 means no floor (MC KL elements may be negative;
the original skips the max at λ = 0 too).

**Schedules** (pure functions of the fractional ``epoch``, so a resumed run is exact).
The original steps them once per epoch, its first epoch (our epoch index 0, e ∈ [0, 1))
taking the first value:

- β (``DeterministicWarmup(n)``): min(1, (⌊e⌋ + 1)/n); 1 when n = 0;
- λ (``FreeNatsCooldown(c, d, λ₀, 0)``): λ₀ for ⌊e⌋ < c, then linspace(λ₀, 0, d), i.e.
  λ₀·(1 − (⌊e⌋ − c)/(d − 1)) for c ≤ ⌊e⌋ < c + d, then 0 (λ₀ when c = d = 0).
  The original's ``--free_nats_epochs 400`` is c = d = 200.

**Active units** (Burda et al. 2016): A_u = Cov_x(E_q[u]) > 0.01. Per training
batch we use the posterior means of sample 0 (for z_i, i > 1, that is E_q[z_i | z_{<i}]
at the sampled lower latents, not the mean marginalised over them), and the variance
over the valid rows of the global batch; an estimate, logged as ``active_z<i>``.
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from jaxhybrid.mathops import global_mean, log_mean_exp, normal_log_prob
from jaxhybrid.models.layers import masked_moments

FREE_NATS_MODES = ("per_element", "per_layer")
ACTIVE_THRESHOLD = 0.01


def _f32(a):
    return jnp.asarray(a, jnp.float32)


def kl_elements(layer: dict):
    """The single-sample KL estimate log q(z|·) − log p(z|·) per element: [S, B, *z]."""
    return (normal_log_prob(layer["z"], layer["q_mean"], scale=layer["q_scale"])
            - normal_log_prob(layer["z"], layer["p_mean"], scale=layer["p_scale"]))


def _sum_event(a):
    """[S, B, *event] -> [S, B]."""
    return jnp.sum(a.reshape(a.shape[:2] + (-1,)), axis=-1)


def log_weights(log_px, layers, skip=0):
    """log p(x|z) − Σ_{i > k} Σ_elements kl_i: [S, B]; z_1..z_k carry no KL (L>k, k = skip:
    an int or one per sample, [S])."""
    skip = jnp.asarray(skip).reshape((-1, 1))                             # [S or 1, 1]
    kl = sum(jnp.where(i >= skip, _sum_event(kl_elements(l)), 0.0) for i, l in enumerate(layers))
    return _f32(log_px) - kl


def free_nats_kl(kl, free_nats, mode: str = "per_element"):
    """Σ_elements of the floored KL of one layer, kl: [S, B, *z] -> [S, B] (module docstring)."""
    free_nats = _f32(free_nats)
    if mode == "per_element":
        floored = _sum_event(jnp.maximum(kl, free_nats / kl.shape[-1]))
        return jnp.where(free_nats > 0, floored, _sum_event(kl))
    if mode == "per_layer":
        total = _sum_event(kl)
        return jnp.where(free_nats > 0, jnp.maximum(total, free_nats), total)
    raise ValueError(f"Unknown free nats mode {mode!r}; valid choices: "
                     f"{', '.join(FREE_NATS_MODES)}")


def warmup_beta(epoch, warmup_epochs: float):
    """β_t = min(1, (⌊epoch⌋ + 1)/n) (the original's per-epoch DeterministicWarmup)."""
    if warmup_epochs <= 0:
        return jnp.float32(1.0)
    return jnp.minimum(1.0, (jnp.floor(_f32(epoch)) + 1.0) / float(warmup_epochs))


def free_nats_schedule(epoch, free_nats: float, constant_epochs: int, cooldown_epochs: int):
    """λ_t of the original's FreeNatsCooldown(constant, cooldown, λ₀, 0) at epoch ⌊e⌋."""
    if constant_epochs == cooldown_epochs == 0:
        return jnp.float32(free_nats)
    i = jnp.floor(_f32(epoch)) - constant_epochs          # position in the cooldown
    last = max(cooldown_epochs - 1, 1)
    ramp = jnp.maximum(last - i, 0.0) / last              # linspace(λ₀, 0, d)[i] / λ₀
    value = jnp.where(i < 0, 1.0, jnp.where(i < cooldown_epochs, ramp, 0.0))
    return jnp.float32(free_nats) * value


def active_units(q_mean, mask, axis_name=None, threshold: float = ACTIVE_THRESHOLD):
    """#units u with Var_x(E_q[u]) > threshold over the valid rows of the global batch.
    q_mean: [B, *z] -> scalar float32."""
    _, var = masked_moments(lax.stop_gradient(q_mean.reshape(q_mean.shape[0], -1)), mask,
                            axis_name)
    return jnp.sum((var > threshold).astype(jnp.float32))


def hvae_objective(log_px, layers, mask, *, beta, free_nats, free_nats_mode="per_element",
                   importance_weighted=False, axis_name=None):
    """The training loss (module docstring) averaged over the global batch's valid rows.

    log_px: [S, B]; layers: the module's per-layer dicts ([S, B, *z]); mask: [B].
    Returns (loss, aux) with aux scalars: elbo (the S-sample bound: IW if
    ``importance_weighted``, else the mean over samples), recon (−log p(x|z)), kl and
    kl_z<i> (nats), active_z<i>, beta, free_nats.
    """
    log_px = _f32(log_px)
    kls = [kl_elements(l) for l in layers]
    kl_layers = [_sum_event(k) for k in kls]                            # [S, B] each
    per_sample = -log_px + beta * sum(free_nats_kl(k, free_nats, free_nats_mode) for k in kls)
    log_w = log_px - sum(kl_layers)
    if importance_weighted:
        per_example, bound = -log_mean_exp(-per_sample), log_mean_exp(log_w)
    else:
        per_example, bound = jnp.mean(per_sample, 0), jnp.mean(log_w, 0)
    value = global_mean(per_example, mask, axis_name)
    sg, mean = lax.stop_gradient, lambda a: global_mean(jnp.mean(a, 0), mask, axis_name)  # noqa
    aux = {"elbo": sg(global_mean(bound, mask, axis_name)), "recon": sg(-mean(log_px)),
           "kl": sg(mean(sum(kl_layers))), "beta": _f32(beta), "free_nats": _f32(free_nats)}
    for i, (kl, layer) in enumerate(zip(kl_layers, layers)):
        aux[f"kl_z{i + 1}"] = sg(mean(kl))
        aux[f"active_z{i + 1}"] = active_units(layer["q_mean"][0], mask, axis_name)
    return value, aux
