"""The GFFN thesis CNN: conv + ReLU + max-pool stages, then dense layers.

No dropout and no batch norm, so the logits are a deterministic function of the
input (docs/methods/gffn.md). Inputs are pixel-space images [B, H, W, C] in [0, 1];
optional per-channel normalisation happens inside the module, so that attacks and
OOD transforms work in pixel space.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxhybrid.models.layers import Normalize
from jaxhybrid.schema import Field, count, int_tuple

# The options of ``model.name = cnn`` (the classifier family's model table): ThesisCNN's fields.
FIELDS = {
    "width": count(32, "cnn: channels of the first stage (doubled at each further stage)"),
    "stages": count(2, "cnn: conv-pool stages"),
    "convs_per_stage": count(2, "cnn: 3×3 conv + ReLU layers per stage"),
    "hidden": Field((256,), int_tuple(1), "cnn: widths of the dense ReLU layers before the "
                    "class scores"),
}


def max_pool_2x2(x):
    """2×2 max-pool, stride 2, 'SAME' padding: x [B, H, W, C] -> [B, ⌈H/2⌉, ⌈W/2⌉, C].

    Written as reshape + max: the same forward values as ``nn.max_pool``, but its
    backward pass is several times faster on XLA:CPU (select-and-scatter is slow
    there). Gradients differ from ``nn.max_pool`` only at tied maxima, where any
    split is a valid subgradient (after a ReLU, tied zeros get no gradient anyway).
    """
    b, h, w, c = x.shape
    if h % 2 or w % 2:
        x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=-jnp.inf)
        b, h, w, c = x.shape
    return jnp.max(x.reshape(b, h // 2, 2, w // 2, 2, c), axis=(2, 4))


class ThesisCNN(nn.Module):
    """conv(w)-conv(w)-pool, conv(2w)-conv(2w)-pool, ..., dense(hidden)-ReLU, dense(K).

    x: [B, H, W, C] -> logits [B, K]. ``stages`` pooling stages, each of
    ``convs_per_stage`` 3×3 convolutions with ReLU; channel width doubles per stage.
    """
    num_classes: int
    width: int = 32
    stages: int = 2
    convs_per_stage: int = 2
    hidden: Sequence[int] = (256,)
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        del train  # deterministic: no dropout, no batch norm
        dtype = jnp.dtype(self.dtype)
        x = Normalize(self.mean, self.std)(x.astype(jnp.float32)).astype(dtype)
        for s in range(self.stages):
            for _ in range(self.convs_per_stage):
                x = nn.relu(nn.Conv(self.width * 2**s, (3, 3), padding="SAME", dtype=dtype)(x))
            x = max_pool_2x2(x)
        x = x.reshape((x.shape[0], -1))
        for h in self.hidden:
            x = nn.relu(nn.Dense(h, dtype=dtype)(x))
        return nn.Dense(self.num_classes, dtype=dtype)(x).astype(jnp.float32)
