"""jaxhybrid: hybrid discriminative-generative models in JAX/Flax."""

__version__ = "0.1.0"
