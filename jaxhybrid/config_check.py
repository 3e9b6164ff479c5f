"""Every config field checked before any work starts: an error naming the field and what
is valid.

``check_config(config)`` runs first in :func:`jaxhybrid.experiment.build_experiment`
(training and evaluation both build the experiment), before devices, data, family or
run directory are touched. It is a loop over the sections' tables (:data:`SCHEMAS`), each
beside the code that reads it, plus the few rules across sections (:data:`RULES`):

- the run's own fields: :data:`jaxhybrid.run_config.RUN`;
- ``data``: :data:`jaxhybrid.data.config.DATA`;
- ``optimizer``: :data:`jaxhybrid.optim.OPTIMIZER`;
- ``evals``: :data:`jaxhybrid.evaluators.config.EVALS`;
- the family's ``model`` and ``objective``: its tables (``MODEL``, ``OBJECTIVE`` of
  :mod:`jaxhybrid.families`; a family outside the library, tests/configs/toy_vae.py,
  checks its own sections when its factory runs).

Names are checked against the library's own registries (optimizers, schedules, data
sources, transforms, evaluators, OOD sets, epsilon grids, families), so a name added
there is valid here. Every problem is reported at once, one line per field, in one
ValueError::

    config field optimizer.learning_rate = -0.1: must be a number > 0

Checked later, still before any training: what needs the data
(:func:`check_against_data`: ``data.frame`` >= the image size, ``data.mean``/``data.std``
one entry per channel, ``accumulation_steps``' micro-batches against the devices), what
needs the built family (:func:`check_family_data`: a likelihood that needs binary pixels
gets binary data; the evaluators of ``evals.names`` are ones the family serves), and in
the data loader, ``data.ood_classes`` within the labels and ``data.validation_size`` <=
the training examples. The failures of absl's flag parsing itself (an unknown key, a value
of the wrong type, a config file that fails) are worded by :mod:`jaxhybrid.flag_errors`.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from jaxhybrid import parallel
from jaxhybrid.data.config import DATA
from jaxhybrid.data.tfds_source import resolve_tfds_dir, tfds_data_dir
from jaxhybrid.data.transforms import parse_transforms
from jaxhybrid.config_keys import field_value
from jaxhybrid.evaluators.config import DEFAULT_EVALUATORS, EVALS
from jaxhybrid.evaluators.ood_sets import labelled_items
from jaxhybrid.evaluators.suite import served_by
from jaxhybrid.families import FAMILIES
from jaxhybrid.models.likelihoods import get_likelihood
from jaxhybrid.optim import OPTIMIZER
from jaxhybrid.run_config import RUN

# The sections' tables, each beside the code that reads it; a section missing from a config
# is skipped (a family outside the library may leave it out).
SCHEMAS = (RUN, DATA, OPTIMIZER, EVALS)


# -- the rules across sections: config -> [(field, what is valid)] ------------------------
def _evaluator_list(config) -> list[str]:
    return [n.strip() for n in str(field_value(config, "evals.names", "")).split(",") if n.strip()]


def _ood_items(config) -> list[str]:
    """The OOD sets of the ``ood`` evaluator ([] when it does not run or the list is bad:
    the evals table reports that)."""
    if "ood" not in _evaluator_list(config):
        return []
    try:
        return [item for _, item in labelled_items(str(field_value(config, "evals.ood_sets",
                                                                   "")))]
    except ValueError:
        return []


def _heldout_needs_classes(c) -> list[tuple[str, str]]:
    """The ``heldout`` OOD set is the test images of ``data.ood_classes``."""
    if "heldout" in _ood_items(c) and not tuple(field_value(c, "data.ood_classes", (0,))):
        return [("evals.ood_sets", "'heldout' needs data.ood_classes (classes held out of "
                 "training); set them or remove 'heldout'")]
    return []


def _tfds_ood_sets(c) -> list[tuple[str, str]]:
    """The ``tfds:NAME[:SPLIT]`` OOD sets of the ``ood`` evaluator: prepared in
    ``data.data_dir`` (as the training data must be), so that a missing one is found before
    training, not when the evaluation builds it."""
    data_dir = field_value(c, "data.data_dir", "") or None
    for item in _ood_items(c):
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


RULES: list[Callable[[Any], list[tuple[str, str]]]] = [_heldout_needs_classes, _tfds_ood_sets]


def _family_sections(config) -> list[str]:
    """The lines of a library family's ``model`` and ``objective`` tables."""
    spec = FAMILIES.get(field_value(config, "family", None))
    return spec.problems(config) if spec else []


def problems(config) -> list[str]:
    """One line per bad field: 'config field F = V: must be ...'."""
    out = []
    for schema in SCHEMAS:
        section = config if not schema.section else field_value(config, schema.section, None)
        if section is not None:
            out += schema.problems(section)
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
