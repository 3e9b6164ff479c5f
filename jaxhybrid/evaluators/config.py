"""``config.evals``: one row per field (default, check, meaning), read by the evaluation
suite (:mod:`jaxhybrid.evaluators.suite`) and its evaluators.

The rules that need another section (``heldout`` needs ``data.ood_classes``; a
``tfds:NAME`` OOD set prepared in ``data.data_dir``) and what the built family can serve
are :mod:`jaxhybrid.config_check`'s.
"""
from __future__ import annotations

import os

from jaxhybrid.evaluators.adversarial import ATTACKS, EPSILON_SPACES, epsilon_grid
from jaxhybrid.evaluators.ood_sets import NAMED, OOD_NORMALIZATIONS, labelled_items
from jaxhybrid.evaluators.suite import evaluator_names
from jaxhybrid.schema import Field, Schema, choice, count, flag, num, parsed_by

# evals.names by default: every evaluator, each run where the family serves what it needs
# (the report lists the others as skipped). A list given instead may name only evaluators
# the family serves (config_check.check_family_data).
DEFAULT_EVALUATORS = "classification,calibration,temperature,ood,adversarial,likelihood"
# The splits an evaluator can report on (EvalContext.split_source) and the checkpoints
# the final evaluation can use (train.py, evaluate.py; --checkpoint also takes a step).
EVAL_SPLITS = ("test", "validation", "train")
EVAL_CHECKPOINTS = ("best", "latest")


def ood_set_problem(v) -> str | None:
    """Each OOD set of ``evals.ood_sets`` known, an ``npz:PATH`` file present."""
    bad = []
    try:
        items = labelled_items(str(v))
    except ValueError as e:
        return str(e)
    for _, item in items:
        kind, _, rest = item.partition(":")
        if item in NAMED or (kind == "tfds" and rest):
            continue
        if kind == "npz" and rest:
            if not os.path.exists(rest):
                return f"OOD set {item!r}: no file {rest!r}"
            continue
        bad.append(item)
    if bad:
        return (f"unknown OOD set(s) {', '.join(map(repr, bad))}; valid: "
                f"{', '.join(NAMED)}, tfds:NAME[:SPLIT], npz:PATH, each optionally LABEL=SET "
                f"(comma-separated)")
    return None


EVALS = Schema("evals", {
    "names": Field(DEFAULT_EVALUATORS, parsed_by(evaluator_names), "comma-separated "
                   "evaluators, run at eval_every and at the end of training (the default: "
                   "each where the family serves it)",
                   valid_doc=f"comma-separated names of: {DEFAULT_EVALUATORS},predictions"),
    "checkpoint": choice("best", EVAL_CHECKPOINTS, "evaluated after training and by "
                         "--mode=eval: best | latest"),
    "seed": count(0, "fixed key of evaluation randomness (binarisation, samples)", low=0),
    "split": choice("test", EVAL_SPLITS, "the split the evaluators report on"),
    "num_bins": count(15, "calibration bins (docs/metrics.md)"),
    "ood_sets": Field("uniform_noise,gaussian_noise,constant,inverted", ood_set_problem,
                      "OOD sets: heldout (data.ood_classes), digits (sklearn digits "
                      "resized), uniform_noise, gaussian_noise, constant, inverted, and "
                      "datasets tfds:NAME[:split] / npz:PATH, each optionally LABEL=SET",
                      valid_doc="comma-separated OOD sets, each known or an existing file"),
    "ood_max_examples": count(0, "cap per OOD set (0 = all)", low=0),
    "max_examples": count(0, "cap on each split the evaluators read: first N (0 = all)",
                          low=0),
    "ood_normalization": choice("train", OOD_NORMALIZATIONS, "train: OOD sets pass through "
                                "the model's normalisation (data.mean/std) as they are; own: "
                                "each OOD set is standardised with its own per-channel "
                                "mean/std (the original DHM's protocol)"),
    "attack": choice("fgsm", ATTACKS, "fgsm | pgd"),
    "epsilons": Field("default", parsed_by(epsilon_grid), "default {0,1,2,4,8,16}/255 | dhm "
                      "{0,.02,..,.08} | '0.03' | '0,0.01,...'",
                      valid_doc="default, dhm, or comma-separated numbers >= 0"),
    "epsilon_space": choice("pixel", EPSILON_SPACES, "pixel: ε on the [0, 1] pixel scale, "
                            "x' clipped to [0, 1]; normalized: ε in units of the normalised "
                            "input (ε·data.std per channel in pixels), no clipping (the "
                            "original DHM)"),
    "pgd_steps": count(10, "PGD iterations"),
    "pgd_step_size": num(0.0, "PGD step (0 = 2.5·ε/steps)", 0),
    "pgd_random_start": flag(False, "PGD starts from a uniform point of the ε-ball"),
    "adversarial_max_examples": count(1000, "attacked examples (first N of the split; 0 = "
                                      "all)", low=0),
})


def evals_config(**overrides):
    """``config.evals`` at its defaults, then ``overrides``."""
    return EVALS.defaults(**overrides)
