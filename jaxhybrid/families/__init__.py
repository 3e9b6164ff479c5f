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
