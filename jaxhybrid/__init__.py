"""jaxhybrid: hybrid discriminative-generative models in JAX/Flax.

``from jaxhybrid import load_run`` restores a finished run for prediction
(:mod:`jaxhybrid.run_api`); it is imported on first use, so ``import jaxhybrid`` stays
light.
"""

__version__ = "0.1.0"
__all__ = ["load_run"]


def __getattr__(name):
    if name == "load_run":
        from jaxhybrid.run_api import load_run
        return load_run
    raise AttributeError(f"module 'jaxhybrid' has no attribute {name!r}")
