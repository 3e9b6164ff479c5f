"""Every config field checked before any work starts: an error naming the field and what
is valid.

``check_config(config)`` runs first in :func:`jaxhybrid.experiment.build_experiment`
(training and evaluation both build the experiment), before devices, data, family or
run directory are touched. :data:`FIELDS` maps a dotted field to a short check that
returns ``None`` (valid) or what is valid; :data:`RULES` are the few checks across
fields. Names are checked against the library's own registries (optimizers,
schedules, lr scalings, data sources, transforms, evaluators, OOD sets, epsilon grids,
families), so a name added there is valid here. Every problem is reported at once, one
line per field, in one ValueError::

    config field optimizer.learning_rate = -0.1: must be a number > 0

Checked elsewhere, also before any training:

- the family's own sections, ``model.*`` and ``objective.*``: by the family's tables
  (``MODEL``, ``OBJECTIVE`` of :mod:`jaxhybrid.families`), called here too
  (:func:`_family_sections`), so they are reported with the rest. This table names no
  family's fields (the classifier's ``model`` table holds each network's options,
  :data:`jaxhybrid.models.MODEL_FIELDS`); a family outside the library
  (tests/configs/toy_vae.py) checks its own sections when its factory runs;
- what needs the data: :func:`check_against_data` (``data.frame`` >= the image size,
  ``data.mean``/``data.std`` one entry per channel), called in build_experiment right
  after the data are loaded; :func:`check_family_data` (a likelihood that needs binary
  pixels gets binary data), once the family is built; ``data.ood_classes``
  within the label set and ``data.validation_size`` <= the training examples by the
  data loader (:mod:`jaxhybrid.data.loading`), which also refuses npz labels that are
  not class ids; ``num_devices`` and the global batch sizes against the devices by
  :mod:`jaxhybrid.parallel` (``accumulation_steps``' micro-batches too, in
  :func:`check_against_data`); the evaluators of ``evals.names`` against what the built
  family serves by :func:`check_family_data`.

The OOD sets of ``evals.ood_sets`` are checked here: each name known, an ``npz:PATH``
file present, and (with the ``ood`` evaluator) a ``tfds:NAME`` set prepared in
``data.data_dir`` (:func:`_tfds_ood_sets`).

The failures of absl's flag parsing itself (an unknown key, a value of the wrong type, a
config file that fails) are worded by :mod:`jaxhybrid.flag_errors`.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

from jaxhybrid import optim, parallel
from jaxhybrid.data.loading import VALID_SOURCES
from jaxhybrid.data.resident import PLACEMENTS
from jaxhybrid.data.tfds_source import resolve_tfds_dir, tfds_data_dir
from jaxhybrid.data.transforms import parse_transforms
from jaxhybrid.config_defaults import DEFAULT_EVALUATORS
from jaxhybrid.evaluators.suite import evaluator_names, served_by
from jaxhybrid.evaluators.adversarial import ATTACKS, EPSILON_SPACES, epsilon_grid
from jaxhybrid.evaluators.ood_sets import NAMED, OOD_NORMALIZATIONS, labelled_items
from jaxhybrid.config_keys import MISSING, field_value
from jaxhybrid.families import FAMILIES
from jaxhybrid.models.likelihoods import get_likelihood
from jaxhybrid.precision import COMPUTE_DTYPES
from jaxhybrid.schema import (Check, boolean, integer, is_int as _is_int, is_number as _is_number,
                              number, one_of, parsed_by)

# The splits an evaluator can report on (EvalContext.split_source) and the checkpoints
# the final evaluation can use (train.py, evaluate.py; --checkpoint also takes a step).
EVAL_SPLITS = ("test", "validation", "train")
EVAL_CHECKPOINTS = ("best", "latest")


# -- the checks (the shared ones: jaxhybrid/schema.py) -----------------------------------
def _feature_name(v) -> str | None:
    if isinstance(v, str) and v:
        return None
    return "must name a TFDS feature, e.g. 'label' or 'coarse_label'"


def _validation_size(v) -> str | None:
    count = _is_int(v) or (_is_number(v) and v >= 1 and float(v).is_integer())
    if (count and v >= 0) or (_is_number(v) and 0 <= v < 1):
        return None
    return "must be a fraction in [0, 1) or a count >= 0 of the training examples"


def _class_ids(v) -> str | None:
    ok = isinstance(v, (tuple, list)) and all(_is_int(c) and c >= 0 for c in v)
    if not ok:
        return "must be a tuple of class ids (ints >= 0), e.g. (8, 9), or () for none"
    if len(set(v)) != len(v):
        return "must not repeat a class"
    return None


def _numbers(positive: bool) -> Check:
    def check(v):
        ok = isinstance(v, (tuple, list)) and all(
            _is_number(x) and (x > 0 or not positive) for x in v)
        return None if ok else ("must be a tuple of numbers" + (" > 0" if positive else "")
                                + ", one per channel, or () for none")
    return check


def _family(v) -> str | None:
    if isinstance(v, str) and (v in FAMILIES or ":" in v):
        return None
    return f"must be one of {', '.join(sorted(FAMILIES))} or 'package.module:factory'"


def _ood_sets(v) -> str | None:
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


def _tfds_ood_sets(c) -> list[tuple[str, str]]:
    """The ``tfds:NAME[:SPLIT]`` OOD sets of the ``ood`` evaluator: prepared in
    ``data.data_dir`` (as the training data must be), so that a missing one is found before
    training, not when the evaluation builds it."""
    if "ood" not in _evaluator_list(c):
        return []
    try:
        items = labelled_items(str(field_value(c, "evals.ood_sets", "")))
    except ValueError:
        return []      # reported by _ood_sets
    data_dir = field_value(c, "data.data_dir", "") or None
    for _, item in items:
        kind, _, rest = item.partition(":")
        if kind != "tfds" or not rest:
            continue
        name = rest.partition(":")[0]
        try:
            resolve_tfds_dir(name, data_dir)
        except (FileNotFoundError, ValueError) as e:
            where = tfds_data_dir(data_dir)
            return [("evals.ood_sets", f"OOD set {item!r}: {str(e).splitlines()[0]} Prepare it "
                     f"(python -m jaxhybrid.data.tfds_prepare --npz PATH --name {name} "
                     f"--data_dir {where}), point data.data_dir at where it is, or remove it")]
    return []


# Field -> check. A field missing from a config is skipped (a family may drop it).
FIELDS: dict[str, Check] = {
    "family": _family,
    "seed": integer(0),
    "batch_size": integer(1),
    "accumulation_steps": integer(1),
    "eval_batch_size": integer(1),
    "num_epochs": number(0),                      # > 0 unless num_steps: RULES
    "num_steps": integer(0),
    "drop_remainder": boolean,
    "max_train_seconds": number(0),
    "early_stopping_patience": integer(0),
    "log_every": integer(1),
    "tensorboard": boolean,
    "checkpoint_every": integer(0),
    "keep_checkpoints": integer(1),
    "eval_every": integer(0),
    "num_devices": integer(0),
    "compute_dtype": one_of(COMPUTE_DTYPES),
    "data.source": one_of(VALID_SOURCES),
    "data.placement": one_of(PLACEMENTS),
    "data.validation_size": _validation_size,
    "data.seed": integer(0),
    "data.ood_classes": _class_ids,
    "data.train_subset": integer(0),
    "data.frame": integer(0),
    "data.mean": _numbers(positive=False),
    "data.std": _numbers(positive=True),
    "data.train_transforms": parsed_by(parse_transforms),
    "data.crop_padding": integer(0),
    "data.label_key": _feature_name,
    "data.digits_test_fraction": number(0, 1, low_open=True, high_open=True),
    "optimizer.name": one_of(optim.OPTIMIZERS),
    "optimizer.learning_rate": number(0, low_open=True),
    "optimizer.lr_scaling": one_of(optim.LR_SCALINGS),
    "optimizer.base_batch_size": integer(1),
    "optimizer.schedule": one_of(optim.SCHEDULES),
    "optimizer.warmup_steps": integer(0),
    "optimizer.decay_factor": number(0, 1, low_open=True),
    "optimizer.decay_every_epochs": number(0),
    "optimizer.momentum": number(0, 1, high_open=True),
    "optimizer.b2": number(0, 1, high_open=True),
    "optimizer.weight_decay": number(0),
    "optimizer.grad_clip_norm": number(0),
    "optimizer.skip_nonfinite": boolean,
    "optimizer.skip_grad_norm": number(0),
    "optimizer.max_consecutive_skips": integer(1),
    "evals.names": parsed_by(evaluator_names),
    "evals.checkpoint": one_of(EVAL_CHECKPOINTS),
    "evals.seed": integer(0),
    "evals.split": one_of(EVAL_SPLITS),
    "evals.num_bins": integer(1),
    "evals.ood_sets": _ood_sets,
    "evals.ood_max_examples": integer(0),
    "evals.max_examples": integer(0),
    "evals.ood_normalization": one_of(OOD_NORMALIZATIONS),
    "evals.attack": one_of(ATTACKS),
    "evals.epsilons": parsed_by(epsilon_grid),
    "evals.epsilon_space": one_of(EPSILON_SPACES),
    "evals.pgd_steps": integer(1),
    "evals.pgd_step_size": number(0),
    "evals.pgd_random_start": boolean,
    "evals.adversarial_max_examples": integer(0),
}


def _evaluator_list(config) -> list[str]:
    return [n.strip() for n in str(field_value(config, "evals.names", "")).split(",") if n.strip()]


def _accumulation(batch_size, steps) -> list[tuple[str, str]]:
    """``accumulation_steps`` divides the global ``batch_size`` (the devices: in
    :func:`check_against_data`, once they are known)."""
    if not (_is_int(batch_size) and _is_int(steps)) or batch_size < 1 or steps < 1 \
            or batch_size % steps == 0:
        return []
    valid = [k for k in range(1, batch_size + 1) if batch_size % k == 0]
    return [("accumulation_steps", f"must divide the global batch_size {batch_size} (each "
             f"step's batch is accumulation_steps micro-batches of equal size); valid: "
             f"{', '.join(map(str, valid))}")]


# Checks across fields (or of a whole sub-config): config -> [(field, what is valid)].
RULES: list[Callable[[Any], list[tuple[str, str]]]] = [
    lambda c: [("num_epochs", "must be > 0 (or set num_steps > 0)")]
    if field_value(c, "num_steps", 1) == 0 and field_value(c, "num_epochs", 1) == 0 else [],
    lambda c: [("data.name", "must name a TFDS dataset when data.source='tfds'")]
    if field_value(c, "data.source") == "tfds" and not field_value(c, "data.name", "x") else [],
    lambda c: [("data.npz_path", "must name an .npz file when data.source='npz'")]
    if field_value(c, "data.source") == "npz" and not field_value(c, "data.npz_path", "x") else [],
    lambda c: [("evals.ood_sets", "'heldout' needs data.ood_classes (classes held out of "
                "training); set them or remove 'heldout'")]
    if "ood" in _evaluator_list(c) and "heldout" in
    [item for _, item in labelled_items(str(field_value(c, "evals.ood_sets", "")))]
    and not tuple(field_value(c, "data.ood_classes", (0,))) else [],
    _tfds_ood_sets,
    lambda c: _accumulation(field_value(c, "batch_size", 1),
                            field_value(c, "accumulation_steps", 1)),
]

def _family_sections(config) -> list[str]:
    """The lines of a library family's ``model`` and ``objective`` tables."""
    spec = FAMILIES.get(field_value(config, "family", None))
    return spec.problems(config) if spec else []


def problems(config) -> list[str]:
    """One line per bad field: 'config field F = V: must be ...'."""
    out = []
    for field, check in FIELDS.items():
        value = field_value(config, field, MISSING)
        if value is MISSING:
            continue
        why = check(value)
        if why:
            out.append(f"config field {field} = {value!r}: {why}")
    for rule in RULES:
        out += [f"config field {f} = {field_value(config, f, None)!r}: {why}"
                for f, why in rule(config) if not any(o.startswith(f"config field {f} = ")
                                                      for o in out)]
    return out + [line for line in _family_sections(config)
                  if not any(line.startswith(o.split(":")[0]) for o in out)]


def check_config(config) -> None:
    """Raise one ValueError listing every bad field of ``config`` (see the module doc)."""
    found = problems(config)
    if found:
        raise ValueError("\n".join(found))


def _accumulation_on_devices(config) -> list[str]:
    """The line refusing ``accumulation_steps`` > 1 whose micro-batches the devices of
    the run's mesh do not divide (none: [])."""
    steps = field_value(config, "accumulation_steps", 1)
    if steps == 1:
        return []
    mesh = parallel.make_mesh(field_value(config, "num_devices", 0) or None)
    try:
        parallel.check_accumulation(field_value(config, "batch_size"), steps, mesh)
    except ValueError as e:
        return [str(e)]
    return []


def check_against_data(config, splits) -> None:
    """The fields that need the loaded data: ``data.frame`` >= the images' height and
    width; ``data.mean`` and ``data.std`` one entry per channel (or ``()``); and, the
    devices being known by then, ``accumulation_steps``: its micro-batches divisible by
    the devices (:func:`jaxhybrid.parallel.check_accumulation`). Every problem at once,
    in one ValueError."""
    out = _accumulation_on_devices(config)
    frame = field_value(config, "data.frame", 0)
    h, w, channels = splits.image_shape
    if frame and (frame < h or frame < w):
        out.append(f"config field data.frame = {frame!r}: smaller than the {h}x{w} images "
                   f"of {splits.name}; must be 0 (keep the size) or >= {max(h, w)}")
    for name in ("mean", "std"):
        value = tuple(field_value(config, f"data.{name}", ()))
        if value and len(value) != channels:
            out.append(f"config field data.{name} = {value!r}: {len(value)} "
                       f"entr{'y' if len(value) == 1 else 'ies'} for the {channels}-channel "
                       f"images of {splits.name}; must have one entry per channel "
                       f"({channels}), or be () for no normalisation")
    if out:
        raise ValueError("\n".join(out))


BINARY_CHECK_EXAMPLES = 2048   # images of each split whose pixels check_family_data reads


def _grey_pixel(source, limit: int = BINARY_CHECK_EXAMPLES) -> tuple[int, int] | None:
    """(index, value) of the first of the first ``limit`` images of ``source`` with a
    pixel other than 0 or 255; None when they are all binary."""
    n = min(len(source), limit)
    if n == 0:
        return None
    images = np.asarray(source.get(np.arange(n))["image"]).reshape(n, -1)
    grey = (images != 0) & (images != 255)
    rows = np.flatnonzero(grey.any(axis=1))
    if rows.size == 0:
        return None
    i = int(rows[0])
    return i, int(images[i][grey[i]][0])


def check_family_data(family, config, splits) -> None:
    """What the built family can do against the config and the data, before anything is
    written: :func:`_served_evaluators` and :func:`_binary_data`."""
    _served_evaluators(family, config)
    _binary_data(family, config, splits)


def _served_evaluators(family, config) -> None:
    """``evals.names`` other than the default (every evaluator, each where the family serves
    it) names only evaluators the family serves: one it cannot serve would train, then
    evaluate nothing."""
    names = _evaluator_list(config)
    if ",".join(names) == DEFAULT_EVALUATORS:
        return
    served = served_by(family)
    unserved = [n for n in names if n not in served]
    if unserved:
        raise ValueError(
            f"config field evals.names = {field_value(config, 'evals.names', '')!r}: family "
            f"{family.name!r} cannot serve the evaluator(s) {', '.join(unserved)} (its outputs: "
            f"{', '.join(sorted(family.provides()))}); it serves {', '.join(served)}")


def _binary_data(family, config, splits) -> None:
    """A likelihood that does not fit the data: a family whose ``likelihood`` models
    binary pixels (support ``binary``, e.g. Bernoulli) needs ``binarize`` in
    ``data.train_transforms`` (evaluation then binarises every split once, seeded by
    ``evals.seed``), or data that are binary already (every pixel 0 or 255 in the first
    :data:`BINARY_CHECK_EXAMPLES` images of train and test). Called in build_experiment
    once the family is built, before anything is written."""
    if not family.likelihood or get_likelihood(family.likelihood).support != "binary":
        return
    transforms = parse_transforms(field_value(config, "data.train_transforms", ""))
    if "binarize" in transforms:
        return
    field = f"config field data.train_transforms = {field_value(config, 'data.train_transforms', '')!r}"
    want = (f"family {family.name!r} models the pixels with the {family.likelihood!r} "
            f"likelihood, which needs binary data: add binarize to data.train_transforms "
            f"(--config.data.train_transforms=binarize), or choose a likelihood for 8-bit "
            f"data (discretized_logistic, discretized_mix_logistic)")
    if "dequantize" in transforms:
        raise ValueError(f"{field}: dequantize makes the pixels continuous, but {want}")
    for split in ("train", "test"):
        grey = _grey_pixel(getattr(splits, split))
        if grey is not None:
            raise ValueError(f"{field}: the {split} images of {splits.name} are not binary "
                             f"({split} image {grey[0]} has the pixel value {grey[1]}/255), "
                             f"but {want}")
