"""Model families by name. Adding one touches only this registry.

``config.family`` is a registered name (a :class:`FamilyBase` subclass: its ``MODEL`` and
``OBJECTIVE`` tables give the config's ``model`` and ``objective`` sections), or
``"package.module:factory"`` for a family defined outside the library (a factory
``(config, num_classes, mean, std) -> Family``; its config file builds its sections).
"""
from __future__ import annotations

import importlib

from jaxhybrid.families.base import Family, FamilyBase
from jaxhybrid.families.classifier import Classifier
from jaxhybrid.families.dhm import DHMFamily
from jaxhybrid.families.hvae import HVAEFamily
from jaxhybrid.models import MODELS

FAMILIES: dict[str, type[FamilyBase]] = {"classifier": Classifier, "dhm": DHMFamily,
                                         "hvae": HVAEFamily}


def _factory(name: str):
    if name in FAMILIES:
        return FAMILIES[name].build
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"family {name!r}: cannot import {attr!r} from {module!r} "
                             f"({e})") from None
    raise ValueError(f"Unknown family {name!r}; valid choices: {', '.join(sorted(FAMILIES))} "
                     f"or 'package.module:factory'")


def make_family(config, num_classes: int, mean=None, std=None) -> Family:
    return _factory(config.family)(config, num_classes, mean=mean, std=std)


def config_tables() -> str:
    """Markdown of every library family's ``model.*`` and ``objective.*`` tables (the page
    docs/config.md; ``python -m jaxhybrid.families`` prints it)."""
    out = ["# The families' config fields", "",
           "Written by `python -m jaxhybrid.families > docs/config.md` from the tables in "
           "`jaxhybrid/families/*.py` (`MODEL`, `OBJECTIVE`); `tests/test_family_seam.py` "
           "checks that it is current. The fields every family shares (data, optimiser, "
           "budget, evaluation) are in `jaxhybrid/config_defaults.py`.", ""]
    for name, spec in FAMILIES.items():
        out += [f"## `{name}` ({spec.__name__}, `jaxhybrid/families/{name}.py`)", ""]
        if spec.MODEL is None:
            out += ["`model.*`: a network of `jaxhybrid/models` (`model.name`: "
                    f"{', '.join(MODELS)}) and its options; default: "
                    f"`{dict(spec.default_model())}`.", ""]
        else:
            out += [spec.MODEL.table(), ""]
        out += [spec.OBJECTIVE.table(), ""]
    return "\n".join(out)
