"""Model families by name. Adding one touches only this registry."""
from __future__ import annotations

from jaxhybrid.families.base import Family
from jaxhybrid.families.classifier import make_classifier

FAMILIES = {"classifier": make_classifier}


def make_family(config, num_classes: int, mean=None, std=None) -> Family:
    if config.family not in FAMILIES:
        raise ValueError(f"Unknown family {config.family!r}; valid choices: "
                         f"{', '.join(sorted(FAMILIES))}")
    return FAMILIES[config.family](config, num_classes, mean=mean, std=std)
