"""The base config every jaxhybrid config builds on (configs/*.py), and the constants the
configs share (dataset statistics, the offline npz paths).

:func:`base_config` assembles the sections from their tables, each beside the code that
reads it, so that every field exists and the locked config refuses a misspelt key
(``--config.batchsize=...`` is an error naming the valid keys). A family's own sections,
``model`` and ``objective``, come from its tables (:class:`jaxhybrid.families.base.FamilyBase`:
``MODEL``, ``OBJECTIVE``), so that a field of one family is never a key of another's config.
"""
from __future__ import annotations

import os

import ml_collections

from jaxhybrid.data.config import data_config
from jaxhybrid.evaluators.config import evals_config
from jaxhybrid.families import FAMILIES
from jaxhybrid.optim import optimizer_config
from jaxhybrid.run_config import RUN


def shared_npz(name: str, env: str) -> str:
    """``$env`` if set, else ``<checkout>/../shared/data/<name>`` (the offline copies that
    sit beside a project checkout; never committed, never required)."""
    return os.environ.get(env, os.path.normpath(os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", name)))


MNIST_NPZ = shared_npz("mnist.npz", "JAXHYBRID_MNIST_NPZ")
FASHION_MNIST_NPZ = shared_npz("fashion_mnist.npz", "JAXHYBRID_FASHION_MNIST_NPZ")


# CIFAR-10 per-channel statistics of the training set (the GFFN configs' normalisation)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
# the statistics b-turan/hybrid_robustness normalises CIFAR-10 with (the DHM's cifar10
# variant, with CIFAR_MEAN): a std about 1.2-1.3× smaller than the training set's
DHM_CIFAR_STD = (0.2023, 0.1994, 0.2010)


def check_variant(variant: str, variants, config_file: str) -> str:
    """The variant name ('' = the first), or an error naming the valid choices."""
    variant = variant or variants[0]
    if variant not in variants:
        raise ValueError(f"Unknown variant {variant!r} of {config_file}; valid choices: "
                         f"{', '.join(variants)}")
    return variant


def base_config(family: str = "classifier") -> ml_collections.ConfigDict:
    """Every section at its defaults, from the tables beside the code that reads each: the
    run's fields (:data:`jaxhybrid.run_config.RUN`), ``family``'s ``model`` and
    ``objective`` (empty for a family outside the library, ``package.module:factory``: its
    config file sets them), ``data``, ``optimizer`` and ``evals``."""
    c = RUN.defaults(family=family)
    spec = FAMILIES.get(family)
    c.model = spec.default_model() if spec else ml_collections.ConfigDict()
    c.objective = spec.OBJECTIVE.defaults() if spec else ml_collections.ConfigDict()
    c.data = data_config()
    c.optimizer = optimizer_config()
    c.evals = evals_config()
    return c
