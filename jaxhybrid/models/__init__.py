"""Model registry: ``build_model(model_cfg, num_classes)``."""
from __future__ import annotations

import jax.numpy as jnp

from jaxhybrid.models import cnn, resnet
from jaxhybrid.models.cnn import ThesisCNN
from jaxhybrid.models.resnet import ResNet18

MODELS = {"cnn": ThesisCNN, "resnet18": ResNet18}
# Each network's options (jaxhybrid.schema Fields): the classifier family's model table is
# model.name plus all of them; a network is built with its own (network_config).
MODEL_FIELDS = {"cnn": cnn.FIELDS, "resnet18": resnet.RESNET18_FIELDS}


def network_config(options: dict) -> dict:
    """``{"name": N, <N's options>}`` of a checked model section holding every network's
    options (the classifier's): the other networks' options are not N's."""
    name = options["name"]
    return {"name": name, **{k: options[k] for k in MODEL_FIELDS[name]}}


def build_model(model_cfg, num_classes: int, mean=None, std=None, dtype="float32"):
    """Instantiate ``model_cfg.name`` with the other fields of ``model_cfg`` as kwargs;
    ``dtype`` is the compute dtype (``config.compute_dtype``, jaxhybrid/precision.py)."""
    name = model_cfg["name"]
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}; valid choices: {', '.join(sorted(MODELS))}")
    kwargs = {k: (tuple(v) if isinstance(v, list) else v)
              for k, v in model_cfg.items() if k != "name"}
    cls = MODELS[name]
    valid = set(cls.__dataclass_fields__) - {"parent", "name", "num_classes", "mean", "std", "dtype"}
    unknown = set(kwargs) - valid
    if unknown:
        raise ValueError(f"Unknown option(s) {sorted(unknown)} for model {name!r}; "
                         f"valid options: {', '.join(sorted(valid))}")
    return cls(num_classes=num_classes, mean=mean, std=std, dtype=str(jnp.dtype(dtype)),
               **kwargs)
