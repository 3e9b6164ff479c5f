"""Config modules as the sweep reads them: ``FILE.py[:VARIANT]``, its ``get_config`` and
its optional ``get_sweep(variant)``, which declares the grid beside the config::

    {"objective.beta": [0.1, 1.0, 10.0], "seeds": 3,       # the grid (config keys) and seeds
     "x": "objective.beta", "x_scale": "log10",            # how the aggregate presents it
     "titles": {"objective.beta": "β"}, "labels": {"objective.beta": {1.0: "VAE"}},
     "plots": [{"metrics": ["accuracy"]}, {"kind": "reliability"}]}

The presentation entries are those of :mod:`jaxhybrid.tools.presentation`.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import re

from jaxhybrid.config_keys import get_field
from jaxhybrid.tools.presentation import PRESENTATION_KEYS, check_presentation

SEED_KEY = "seed"


def split_config_arg(arg: str) -> tuple[str, str | None]:
    """'configs/gffn.py:digits' -> ('configs/gffn.py', 'digits')."""
    m = re.match(r"^(.*?\.py)(?::(.*))?$", arg)
    if not m:
        raise ValueError(f"--config must be FILE.py[:VARIANT], got {arg!r}")
    return m.group(1), m.group(2)


def load_config_module(path: str):
    """The config module at ``path``; a missing file is an error naming it."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file {path!r} does not exist")
    spec = importlib.util.spec_from_file_location(
        "_jaxhybrid_sweep_config_" + re.sub(r"\W", "_", os.path.abspath(path)), path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"Cannot load config file {path!r}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def call_with_variant(fn, variant):
    return fn(variant) if variant is not None else fn()


@dataclasses.dataclass
class DeclaredSweep:
    grid: dict[str, list]     # config key -> values
    seeds: int | None         # the 'seeds' count
    presentation: dict        # x, x_label, x_scale, titles, labels, plots: for aggregate


def declared_sweep(module, variant) -> DeclaredSweep | None:
    """The module's ``get_sweep(variant)`` split into grid, seeds and presentation
    (checked by :func:`jaxhybrid.tools.presentation.check_presentation`); None without one."""
    fn = getattr(module, "get_sweep", None)
    if fn is None:
        return None
    spec = dict(call_with_variant(fn, variant) or {})
    seeds = spec.pop("seeds", None)
    presentation = check_presentation(
        {k: spec.pop(k) for k in PRESENTATION_KEYS if k in spec})
    for k, values in spec.items():
        if not isinstance(values, (list, tuple)):
            raise ValueError(f"get_sweep({variant!r})[{k!r}] must be a list of values, got "
                             f"{values!r} (entries that are not config keys: seeds, "
                             f"{', '.join(PRESENTATION_KEYS)})")
    return DeclaredSweep({k: list(v) for k, v in spec.items()},
                         None if seeds is None else int(seeds), presentation)


def check_presentation_keys(config, presentation: dict) -> None:
    """The keys named by ``x``, ``titles`` and ``labels`` must be config keys."""
    keys = [presentation.get("x")] + list(presentation.get("titles", {})) \
        + list(presentation.get("labels", {}))
    for key in keys:
        if key and key != SEED_KEY:
            get_field(config, key)
