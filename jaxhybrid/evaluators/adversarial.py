"""The ``adversarial`` evaluator: accuracy under untargeted FGSM or PGD on the true label,
in pixel space, at each ε of ``evals.epsilons``.

The attacks (:func:`fgsm`, :func:`pgd`), the ε grids and units (:func:`epsilon_grid`,
:func:`epsilon_space`), the sharded attack of the evaluated split
(:func:`attacked_predictions_fn`, also the predictions evaluator's), the evaluator
(:func:`evaluate`) with its figure (:func:`accuracy_vs_epsilon`), and its headline names
``<attack>/eps=<ε to 4 significant digits>/accuracy`` (:func:`attack_accuracy`).

Conventions follow docs/metrics.md ("Adversarial robustness"):
- eps is in units of the [0, 1] pixel scale (``evals.epsilon_space = pixel``, clipped to
  [0, 1]), or of the normalised input (x − mean)/std (``normalized``: the original DHM's
  attack, eps·std per channel in pixel units, no clipping; :func:`epsilon_space`);
  `logits_fn` takes pixel-space inputs and normalises inside, so attacks never see
  normalised inputs;
- the loss is the SUMMED cross-entropy over the batch, so each example's input gradient
  depends on that example only;
- sign(0) = 0; results are clipped to the valid data range [clip_min, clip_max];
- models with stochastic parts are attacked in deterministic evaluation mode: `logits_fn`
  must be deterministic (close over params, no rng).

The attacks are pure and jittable with `logits_fn` closed over; eps and step_size may be
traced scalars, `steps` must be a Python int.
"""

from __future__ import annotations

import numbers
import os
import re
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxhybrid import parallel, rng as rnglib
from jaxhybrid.evaluators import EvalContext, Evaluator, Section, md_table
from jaxhybrid.evaluators.canvas import new_figure, save_figure
from jaxhybrid.mathops import softmax_cross_entropy

DEFAULT_EPSILONS = (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255)  # docs/metrics.md default grid
DHM_EPSILONS = (0.0, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08)  # DHM paper grid, plus clean
EPSILON_GRIDS = {"default": DEFAULT_EPSILONS, "dhm": DHM_EPSILONS}

EPSILON_SPACES = ("pixel", "normalized")
ATTACKS = ("fgsm", "pgd")   # the attacks of evals.attack

LogitsFn = Callable[[jax.Array], jax.Array]


def epsilon_space(space: str, std, channels: int):
    """(scale [C], (clip_min, clip_max), description) of ``evals.epsilon_space``: the pixel
    step is ε·scale per channel. ``pixel``: scale 1, clipped to [0, 1]. ``normalized``: ε in
    units of the model's normalised input (x − mean)/std, scale = std (``data.std``; 1 if
    none), no clipping (x' = x + ε·sign(g) in normalised units, the original DHM's FGSM)."""
    if space not in EPSILON_SPACES:
        raise ValueError(f"Unknown evals.epsilon_space {space!r}; valid choices: "
                         f"{', '.join(EPSILON_SPACES)}")
    if space == "pixel":
        return np.ones(channels, np.float32), (0.0, 1.0), "pixel scale [0, 1]"
    s = np.broadcast_to(np.asarray(tuple(std) or (1.0,), np.float32), (channels,))
    return (s.copy(), (-np.inf, np.inf),
            f"normalised input (x − mean)/std: ε·std per channel in pixels, std = "
            f"{tuple(round(float(v), 4) for v in s)}; no clipping")


def epsilon_grid(name_or_values) -> tuple[float, ...]:
    """"default" | "dhm" | floats in [0, 1] (a sequence, one number, or "0.03" /
    "0,0.01,...": one ε is a grid of one) -> tuple (pixel scale)."""
    values = name_or_values
    if isinstance(values, str):
        key = values.strip().lower()
        if key in EPSILON_GRIDS:
            return EPSILON_GRIDS[key]
        try:
            values = [float(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise ValueError(
                f"unknown epsilon grid {name_or_values!r}; valid choices: "
                f"{', '.join(repr(k) for k in EPSILON_GRIDS)} or a comma-separated list of "
                f"numbers in [0, 1] (e.g. 0.03 or 0,0.01,0.03)") from None
    elif isinstance(values, numbers.Real) and not isinstance(values, bool):
        values = [values]
    if not isinstance(values, Sequence) and not hasattr(values, "__array__"):
        raise ValueError(
            f"epsilon grid must be one of {', '.join(repr(k) for k in EPSILON_GRIDS)} "
            f"or a sequence of floats, got {name_or_values!r}"
        )
    values = tuple(float(v) for v in list(values))
    if not values:
        raise ValueError("epsilon grid is empty")
    bad = [v for v in values if not 0.0 <= v <= 1.0]
    if bad:
        raise ValueError(f"epsilons must be in [0, 1] (pixel scale), got {bad}")
    return values


def _summed_ce_grad(logits_fn: LogitsFn, x: jax.Array, y: jax.Array) -> jax.Array:
    """x: [B, ...] pixels, y: [B] ints -> d/dx sum_i CE(logits_fn(x)_i, y_i): [B, ...].

    Summed (not averaged) so row i is the gradient of example i's own loss (docs/metrics.md).
    """

    def summed_ce(x):
        return jnp.sum(softmax_cross_entropy(logits_fn(x), y))

    return jax.grad(summed_ce)(x)


def fgsm(logits_fn: LogitsFn, x, y, eps, clip_min=0.0, clip_max=1.0) -> jax.Array:
    """Fast gradient sign method (Goodfellow et al., 2015), untargeted, on the true label.

    Args:
      logits_fn: pixel-space inputs [B, H, W, C] -> logits [B, K]; deterministic.
      x: [B, H, W, C] clean inputs in [clip_min, clip_max] (pixel scale).
      y: [B] int true labels.
      eps: scalar >= 0 (may be traced), or per channel [C] (:func:`epsilon_space`).
    Returns:
      x_adv: [B, H, W, C] = clip(x + eps * sign(grad_x sum_i CE_i), clip_min, clip_max);
      eps == 0 returns x unchanged (not even clipped).
    """
    x = jnp.asarray(x)
    g = _summed_ce_grad(logits_fn, x, jnp.asarray(y))
    x_adv = jnp.clip(x + eps * jnp.sign(g), clip_min, clip_max)  # docs/metrics.md FGSM; sign(0) = 0
    return jnp.where(eps == 0, x, x_adv).astype(x.dtype)


def pgd(
    logits_fn: LogitsFn,
    x,
    y,
    eps,
    *,
    steps: int,
    step_size,
    rng=None,
    random_start: bool = False,
    example_keys=None,
    clip_min=0.0,
    clip_max=1.0,
) -> jax.Array:
    """Projected gradient descent, L-inf (Madry et al., 2018), untargeted, on the true label.

    Each of `steps` iterations:
        x <- clip(proj_{|x - x0|_inf <= eps}(x + step_size * sign(grad_x sum_i CE_i)),
                  clip_min, clip_max)
    starting from x0, or, with random_start (needs rng), from clip(x0 + U[-eps, eps]).
    With steps=1, step_size=eps and no random start this equals `fgsm` exactly.

    Args:
      logits_fn: pixel-space inputs [B, H, W, C] -> logits [B, K]; deterministic.
      x: [B, H, W, C] clean inputs; y: [B] int labels.
      eps: scalar radius >= 0 (may be traced); step_size: scalar (may be traced).
      steps: Python int >= 1.
      rng: jax PRNG key for the random start (one draw for the whole batch), or
      example_keys: [B, *key] per-example keys (the start of example i depends only on
        its own key: the same on any device count and in any batch); one of the two is
        required iff random_start.
    Returns:
      x_adv: [B, H, W, C], within eps of x and within [clip_min, clip_max];
      eps == 0 returns x unchanged.
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a Python int >= 1, got {steps!r}")
    if random_start and rng is None and example_keys is None:
        raise ValueError("random_start=True needs an rng key or example_keys, got neither")
    x0 = jnp.asarray(x)
    y = jnp.asarray(y)
    lower, upper = x0 - eps, x0 + eps  # the eps-ball, computed once so projection is exact

    x_start = x0
    if random_start:
        if example_keys is not None:
            delta = jax.vmap(lambda k, xi: jax.random.uniform(
                k, xi.shape, xi.dtype, minval=-eps, maxval=eps))(example_keys, x0)
        else:
            delta = jax.random.uniform(rng, x0.shape, x0.dtype, minval=-eps, maxval=eps)
        x_start = jnp.clip(x0 + delta, clip_min, clip_max)

    def step(_, x_cur):
        g = _summed_ce_grad(logits_fn, x_cur, y)
        x_new = jnp.clip(x_cur + step_size * jnp.sign(g), lower, upper)
        return jnp.clip(x_new, clip_min, clip_max).astype(x0.dtype)

    x_adv = jax.lax.fori_loop(0, steps, step, x_start.astype(x0.dtype))
    return jnp.where(eps == 0, x0, x_adv)


# -- headline names ---------------------------------------------------------------------------
_ATTACK_ACCURACY = re.compile(r"^([^/]+)/eps=([^/]+)/accuracy$")


def attack_name(attack: str, epsilon_space: str = "pixel") -> str:
    """The attack's name in metric names: ``fgsm``/``pgd`` in pixel units, and
    ``fgsm_normalized``/``pgd_normalized`` for ε in normalised units
    (``evals.epsilon_space``), so that the two never share a name or a table row."""
    return attack if epsilon_space in ("", "pixel") else f"{attack}_{epsilon_space}"


def attack_accuracy(attack: str, epsilon: float) -> str:
    """Accuracy under ``attack`` (fgsm, pgd) at ``epsilon`` (pixel scale [0, 1])."""
    return f"{attack}/eps={epsilon:.4g}/accuracy"


def parse_attack_accuracy(name: str) -> tuple[str, float] | None:
    """'fgsm/eps=0.03137/accuracy' -> ('fgsm', 0.03137); None for other names."""
    m = _ATTACK_ACCURACY.match(name)
    if not m:
        return None
    try:
        return m.group(1), float(m.group(2))
    except ValueError:
        return None


def headline(section: dict) -> dict:
    """{<attack>/eps=<ε>/accuracy: accuracy} of every ε of the section."""
    attack = attack_name(section.get("attack", "attack"), section.get("epsilon_space", "pixel"))
    return {attack_accuracy(attack, eps): acc
            for eps, acc in zip(section.get("epsilons", []), section.get("accuracy", []))}


# -- the evaluator ----------------------------------------------------------------------------
def attacked_predictions_fn(ctx: EvalContext, epsilons, scale, clip):
    """Jitted, sharded: batch -> {'prediction_<i>': [B] int32}, the class predicted for the
    attacked input at each ε of the grid (pixel step ε·scale per channel, clipped to
    ``clip``; :func:`epsilon_space`). The attack of the adversarial and predictions
    evaluators, written once.

    The family's ``logits`` output in eval mode is attacked (dropout off, batch norm on
    its running averages, no sampling). PGD's random starts are drawn per example from
    the PGD_START stream of the fixed evaluation key, member i for the i-th ε, then the
    example's id (:mod:`jaxhybrid.rng`): the same on any device count."""
    ev = ctx.config.evals
    predictor, family = ctx.predictor, ctx.family
    attack = ev.attack
    if attack not in ATTACKS:
        raise ValueError(f"Unknown evals.attack {attack!r}; valid choices: "
                         f"{', '.join(ATTACKS)}")

    def per_device(variables, batch):
        batch = predictor.eval_view(batch)
        f = lambda z: family.predict(variables, {**batch, "image": z}, predictor.model_key(),
                                     ("logits",))["logits"]
        x, y = batch["image"], batch["label"]
        out = {}
        for i, eps in enumerate(epsilons):
            step = (ev.pgd_step_size or 2.5 * eps / max(ev.pgd_steps, 1)) * jnp.asarray(scale)
            eps = eps * jnp.asarray(scale)
            if attack == "fgsm":
                x_adv = fgsm(f, x, y, eps, *clip)
            else:
                keys = rnglib.example_keys(rnglib.stream(predictor.key, rnglib.PGD_START, i),
                                           batch["id"])
                x_adv = pgd(f, x, y, eps, steps=int(ev.pgd_steps), step_size=step,
                            example_keys=keys, random_start=bool(ev.pgd_random_start),
                            clip_min=clip[0], clip_max=clip[1])
            out[f"prediction_{i}"] = jnp.argmax(f(x_adv), -1).astype(jnp.int32)
        return out

    return jax.jit(parallel.shard_outputs(per_device, ctx.exp.mesh))


def evaluate(ctx: EvalContext) -> Section:
    """Accuracy under FGSM (or PGD) at each ε, in ``evals.epsilon_space`` units (pixel: the
    [0, 1] scale, clipped to [0, 1]; normalized: the model's normalised input, unclipped),
    over the first ``evals.adversarial_max_examples`` examples of the evaluated split."""
    ev = ctx.config.evals
    epsilons = epsilon_grid(ev.epsilons)
    scale, clip, units = epsilon_space(ev.epsilon_space, ctx.config.data.std,
                                       ctx.exp.input_shape[-1])
    fn = attacked_predictions_fn(ctx, epsilons, scale, clip)
    out = ctx.predictor.outputs(ctx.variables, ctx.split_source(), fn=fn,
                                max_examples=int(ev.adversarial_max_examples))
    acc = [float(np.mean(out[f"prediction_{i}"] == out["label"]))
           for i in range(len(epsilons))]
    n = int(len(out["label"]))
    fig = "robustness.png"
    accuracy_vs_epsilon({ctx.family.label or ctx.family.name: (list(epsilons), acc)},
                        os.path.join(ctx.out_dir, fig), title=f"{ev.attack.upper()} accuracy")
    m = {"attack": ev.attack, "epsilons": list(epsilons), "accuracy": acc, "num_examples": n,
         "epsilon_space": ev.epsilon_space, "epsilon_units": units,
         "clip": [float(c) for c in clip] if np.isfinite(clip[0]) else None}
    if ev.attack == "pgd":
        m.update(pgd_steps=int(ev.pgd_steps), pgd_step_size=ev.pgd_step_size or "2.5·ε/steps",
                 pgd_random_start=bool(ev.pgd_random_start))
    clipped = "x' clipped to [0, 1]" if m["clip"] else "x' not clipped"
    md = (f"Untargeted {ev.attack.upper()} on the true label, ε in units of the {units} "
          f"(evals.epsilon_space = {ev.epsilon_space}; normalisation happens inside the "
          f"model), {clipped}, sign(0) = 0, per-example gradients; {n} examples of the "
          f"{ev.split} split.\n\n"
          + md_table([[f"{e:.4f} ({e * 255:.1f}/255)" if m["clip"] else f"{e:.4f}", a]
                      for e, a in zip(epsilons, acc)], ["ε", "accuracy"]))
    return Section("adversarial", m, headline(m), md, [(f"Accuracy vs ε ({ev.attack})", fig)])


def accuracy_vs_epsilon(curves: dict, path, title: str = "") -> str:
    """curves: {name -> (eps list, accuracy list)} -> accuracy under attack vs eps; returns path."""
    fig = new_figure(5.0, 3.8)
    ax = fig.subplots()
    for name, (eps, acc) in curves.items():
        ax.plot(np.asarray(eps, float), np.asarray(acc, float), marker="o", ms=4, lw=1.5,
                label=str(name))
    ax.set_xlabel("ε (pixel scale [0,1])")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return save_figure(fig, path)


EVALUATOR = Evaluator("adversarial", evaluate, frozenset({"logits", "labels"}), headline,
                      "Adversarial robustness")
