"""Optimisers and learning-rate schedules from ``config.optimizer`` (its table:
:data:`OPTIMIZER`)."""
from __future__ import annotations

import math

import optax

from jaxhybrid.schema import Field, Schema, choice, count, flag, num, number

OPTIMIZERS = ("adam", "adamw", "sgd", "momentum")
SCHEDULES = ("constant", "cosine", "step")
LR_SCALINGS = ("none", "sqrt", "linear")

OPTIMIZER = Schema("optimizer", {
    "name": choice("adam", OPTIMIZERS, "adam | adamw | sgd | momentum"),
    "learning_rate": num(1e-3, "base learning rate at base_batch_size", 0, low_open=True),
    "lr_scaling": choice("none", LR_SCALINGS, "none | sqrt | linear, from base_batch_size "
                         "(Hoffer et al. 2017: sqrt)"),
    "base_batch_size": count(128, "the batch size learning_rate is given for"),
    "schedule": choice("constant", SCHEDULES, "constant | cosine | step"),
    "warmup_steps": count(0, "linear warm-up from 0 over this many steps", low=0),
    "decay_factor": num(0.1, "step schedule: multiply by this ...", 0, 1, low_open=True),
    "decay_every_epochs": Field(0, number(0), "... every this many epochs (0 = never)"),
    "momentum": num(0.9, "sgd momentum / adam b1", 0, 1, high_open=True),
    "b2": num(0.999, "adam's second-moment decay", 0, 1, high_open=True),
    "weight_decay": num(0.0, "adamw only", 0),
    "grad_clip_norm": num(0.0, "clip the global gradient norm to this (0 = no clipping)", 0),
    "skip_nonfinite": flag(False, "skip (do not apply) an update whose loss or gradient norm "
                           "is NaN/inf, instead of stopping the run"),
    "skip_grad_norm": num(0.0, "skip an update whose gradient norm exceeds this (0 = off; "
                          "VDVAE's skip_threshold)", 0),
    "max_consecutive_skips": count(10, "this many skipped updates in a row stop the run "
                                   "(NaN stop)"),
})


def optimizer_config(**overrides):
    """``config.optimizer`` at its defaults, then ``overrides``."""
    return OPTIMIZER.defaults(**overrides)


def scaled_learning_rate(opt_cfg, batch_size: int) -> float:
    """Base learning rate scaled to ``batch_size`` from ``opt_cfg.base_batch_size``.

    sqrt: lr = base_lr·sqrt(B / B_base) (Hoffer et al. 2017, the GFFN thesis' rule);
    linear: lr = base_lr·B / B_base; none: base_lr.
    """
    rule = opt_cfg.lr_scaling
    if rule not in LR_SCALINGS:
        raise ValueError(f"Unknown lr_scaling {rule!r}; valid choices: {', '.join(LR_SCALINGS)}")
    ratio = batch_size / opt_cfg.base_batch_size
    return opt_cfg.learning_rate * {"none": 1.0, "sqrt": math.sqrt(ratio), "linear": ratio}[rule]


def make_schedule(opt_cfg, batch_size: int, total_steps: int, steps_per_epoch: int):
    peak = scaled_learning_rate(opt_cfg, batch_size)
    warmup = int(opt_cfg.warmup_steps)
    name = opt_cfg.schedule
    if name not in SCHEDULES:
        raise ValueError(f"Unknown schedule {name!r}; valid choices: {', '.join(SCHEDULES)}")
    if name == "constant":
        main = optax.constant_schedule(peak)
    elif name == "cosine":
        main = optax.cosine_decay_schedule(peak, max(total_steps - warmup, 1))
    else:
        every = int(opt_cfg.decay_every_epochs * steps_per_epoch)
        boundaries = ({s: opt_cfg.decay_factor for s in range(every, total_steps + 1, every)}
                      if every > 0 else {})
        main = optax.piecewise_constant_schedule(peak, boundaries)
    if warmup > 0:
        return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), main], [warmup])
    return main


def make_optimizer(opt_cfg, schedule) -> optax.GradientTransformation:
    name = opt_cfg.name
    if name not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {name!r}; valid choices: {', '.join(OPTIMIZERS)}")
    if name == "adam":
        tx = optax.adam(schedule, b1=opt_cfg.momentum, b2=opt_cfg.b2)
    elif name == "adamw":
        tx = optax.adamw(schedule, b1=opt_cfg.momentum, b2=opt_cfg.b2,
                         weight_decay=opt_cfg.weight_decay)
    elif name == "sgd":
        tx = optax.sgd(schedule)
    else:
        tx = optax.sgd(schedule, momentum=opt_cfg.momentum)
    if opt_cfg.grad_clip_norm and opt_cfg.grad_clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(opt_cfg.grad_clip_norm), tx)
    return tx
