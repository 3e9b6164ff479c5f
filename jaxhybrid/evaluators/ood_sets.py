"""OOD sets for the ``ood`` evaluator, from ``config.evals.ood_sets``.

* ``heldout``: test images of ``data.ood_classes`` (removed from training): near-OOD.
* ``digits``: sklearn's 1,797 8×8 digits, adapted to the in-distribution image shape
  (zero-padded, centred, when they fit); ``digits_resized``: the same digits resized
  bilinearly to the in-distribution image size (e.g. 28×28 for MNIST, hvae-oodd style).
* ``tfds:NAME[:SPLIT]`` (default split ``test``), ``npz:PATH`` (its test arrays):
  another dataset, adapted to the in-distribution image shape.
* ``LABEL=SET`` names any of these ``LABEL`` in reports and metric keys (e.g.
  ``mnist=npz:/data/mnist.npz``, rather than the path); labels are letters, digits and _.
* ``uniform_noise``, ``gaussian_noise``, ``constant``, ``inverted``: built-in transforms
  of the in-distribution evaluation split (noise drawn per example from a hash of
  (seed, example id), so identical on any device count and batch size).

``evals.ood_normalization`` (:func:`normalized_predict_fn`): ``train`` (default), each
OOD set goes through the model's own normalisation (``data.mean``/``data.std``, the
training set's); ``own``, each OOD set is standardised with its own per-channel pixel
mean and std (:func:`channel_stats`, over every pixel of the set), as the original DHM
normalises CIFAR-100 with CIFAR-100's statistics and SVHN with its own. It is applied as
the pixel transform x' = m_train + s_train·(x − m_own)/s_own, so that the model's
(x' − m_train)/s_train is (x − m_own)/s_own.

Foreign images are adapted to the in-distribution stored shape (H, W, C) by
:func:`jaxhybrid.data.preprocess.adapt_to` (zero-pad if they fit, else bilinear
resize; channels repeated 1→3 or luminance 3→1) and re-quantised to 8 bits; then the
usual preprocessing (e.g. padding to the model frame) applies. The rule used is
stated in the report.
"""
from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxhybrid import parallel

from jaxhybrid.data.preprocess import adapt_to, to_float
from jaxhybrid.data.loading import load_source_split
from jaxhybrid.data.sources import SubsetSource

TRANSFORMS = ("uniform_noise", "gaussian_noise", "constant", "inverted")
OOD_NORMALIZATIONS = ("train", "own")
NAMED = ("heldout", "digits", "digits_resized") + TRANSFORMS


@dataclasses.dataclass
class OODSet:
    name: str
    source: object
    description: str


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _rows(images: np.ndarray, base_rows: dict) -> dict:
    """``{'image': images}`` plus the base rows' ``'label'`` where there is one."""
    if "label" not in base_rows:
        return {"image": images}
    return {"image": images, "label": base_rows["label"]}


class _DerivedSource:
    """A source computed example by example from ``base`` (same length and labels)."""

    def __init__(self, base, image_shape):
        self.base, self.image_shape = base, tuple(image_shape)
        self.num_examples = len(base)

    def __len__(self):
        return self.num_examples

    @property
    def has_labels(self):
        return self.base.has_labels

    @property
    def labels(self):
        return self.base.labels


class AdaptedSource(_DerivedSource):
    """A foreign source whose images are adapted to ``target_shape`` (H, W, C)."""

    def __init__(self, base, target_shape, mode: str = "pad_or_resize"):
        super().__init__(base, target_shape)
        self.mode = mode
        _, self.rule = adapt_to(to_float(base.get(np.arange(min(1, len(base))))["image"]),
                                self.image_shape, mode)

    def get(self, indices):
        rows = self.base.get(np.asarray(indices))
        images, _ = adapt_to(to_float(rows["image"]), self.image_shape, self.mode)
        return _rows(_to_uint8(images), rows)


def _hash_uniform(seed: int, ids: np.ndarray, size: int) -> np.ndarray:
    """U[0, 1) [n, size], a deterministic function of (seed, id, position) (splitmix64)."""
    with np.errstate(over="ignore"):
        x = (np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
             + ids.astype(np.uint64)[:, None] * np.uint64(0xBF58476D1CE4E5B9)
             + np.arange(size, dtype=np.uint64)[None, :] * np.uint64(0x94D049BB133111EB))
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


class TransformedSource(_DerivedSource):
    """The in-distribution split with a transform applied per example."""

    def __init__(self, base, kind: str, seed: int = 0):
        if kind not in TRANSFORMS:
            raise ValueError(f"Unknown transform {kind!r}; valid: {', '.join(TRANSFORMS)}")
        super().__init__(base, base.image_shape)
        self.kind, self.seed = kind, seed

    def get(self, indices):
        indices = np.asarray(indices)
        rows = self.base.get(indices)
        n = len(indices)
        h, w, c = self.image_shape
        if self.kind == "inverted":
            images = 255 - rows["image"]
        elif self.kind == "uniform_noise":
            images = _to_uint8(_hash_uniform(self.seed, indices, h * w * c).reshape(n, h, w, c))
        elif self.kind == "gaussian_noise":  # N(0.5, 0.25²) clipped to [0, 1] (Box–Muller)
            u = _hash_uniform(self.seed + 1, indices, 2 * h * w * c)
            u1, u2 = np.maximum(u[:, 0::2], 1e-12), u[:, 1::2]
            g = np.sqrt(-2 * np.log(u1)) * np.cos(2 * np.pi * u2)
            images = _to_uint8(np.clip(0.5 + 0.25 * g, 0, 1).reshape(n, h, w, c))
        else:  # constant: one U[0,1] value per image and channel
            v = _hash_uniform(self.seed + 2, indices, c)
            images = _to_uint8(np.broadcast_to(v[:, None, None, :], (n, h, w, c)))
        return _rows(images, rows)


DESCRIPTIONS = {
    "uniform_noise": "uniform noise U[0,1] per pixel",
    "gaussian_noise": "Gaussian noise N(0.5, 0.25²) per pixel, clipped to [0,1]",
    "constant": "constant images, one U[0,1] value per image and channel",
    "inverted": "inverted in-distribution images (1 − x)",
}


def _foreign(exp, spec: str):
    kind, _, rest = spec.partition(":")
    if kind == "tfds":
        name, _, split = rest.partition(":")
        cfg = ml_collections.ConfigDict({"source": "tfds", "name": name,
                                         "data_dir": exp.config.data.data_dir})
        return load_source_split(cfg, split or "test"), f"TFDS {name} ({split or 'test'} split)"
    if kind == "npz":
        cfg = ml_collections.ConfigDict({"source": "npz", "npz_path": rest})
        return load_source_split(cfg, "test"), f"npz {rest} (test arrays)"
    raise ValueError(f"Unknown OOD set {spec!r}; valid: {', '.join(NAMED)}, "
                     f"tfds:NAME[:SPLIT], npz:PATH")


def build_ood_sets(exp, spec: str, *, max_examples: int = 0) -> list[OODSet]:
    sets = []
    eval_source = {"test": exp.splits.test, "validation": exp.splits.validation}.get(
        exp.config.evals.split, exp.splits.test)
    for label, item in labelled_items(spec):
        if item == "heldout":
            if exp.splits.heldout_test is None or len(exp.splits.heldout_test) == 0:
                raise ValueError("OOD set 'heldout' needs data.ood_classes (classes removed "
                                 "from training), but none are set")
            src = exp.splits.heldout_test
            desc = (f"test images of the held-out classes {tuple(exp.config.data.ood_classes)} "
                    f"(never seen in training)")
        elif item in TRANSFORMS:
            src = TransformedSource(eval_source, item, seed=exp.config.seed)
            desc = DESCRIPTIONS[item] + f", shaped like the {exp.config.evals.split} split"
        elif item in ("digits", "digits_resized"):
            cfg = ml_collections.ConfigDict({"source": "digits"})
            base = load_source_split(cfg, "all")
            src = AdaptedSource(base, exp.splits.image_shape,
                                "resize" if item == "digits_resized" else "pad_or_resize")
            desc = f"sklearn digits (all {len(base)}); {src.rule}"
        else:
            base, what = _foreign(exp, item)
            src = AdaptedSource(base, exp.splits.image_shape)
            desc = f"{what}; {src.rule}"
        if max_examples and len(src) > max_examples:
            src = SubsetSource(src, np.arange(max_examples))
            desc += f"; first {max_examples} examples"
        sets.append(OODSet(label, src, desc))
    return sets


def labelled_items(spec: str) -> list[tuple[str, str]]:
    """``'a,mnist=npz:/p'`` -> [('a', 'a'), ('mnist', 'npz:/p')]; a repeated label is an
    error (two sets would share one metric key)."""
    out = []
    for item in [s.strip() for s in spec.split(",") if s.strip()]:
        label, eq, rest = item.partition("=")
        if eq and re.fullmatch(r"[A-Za-z0-9_]+", label):
            item = rest.strip()
        else:
            label = item
        if label in [lab for lab, _ in out]:
            raise ValueError(f"OOD set {label!r} is named twice in evals.ood_sets={spec!r}")
        out.append((label, item))
    return out


def channel_stats(source, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) std [C] of every pixel of ``source``, in [0, 1]."""
    total = total_sq = 0.0
    count = 0
    for start in range(0, len(source), chunk):
        x = to_float(source.get(np.arange(start, min(start + chunk, len(source))))["image"])
        x = x.astype(np.float64).reshape(-1, x.shape[-1])
        total, total_sq, count = total + x.sum(0), total_sq + np.square(x).sum(0), count + len(x)
    mean = total / count
    return mean, np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))


def own_normalization_transform(train_mean, train_std, own_mean, own_std):
    """(scale, shift) [C] float32 of x' = x·scale + shift = m_train + s_train·(x − m_own)/s_own
    (``train_*``: ``data.mean``/``data.std``, () for none: 0 and 1)."""
    own_mean, own_std = np.asarray(own_mean, np.float64), np.asarray(own_std, np.float64)
    c = len(own_mean)
    m_train = np.broadcast_to(np.asarray(tuple(train_mean) or (0.0,), np.float64), (c,))
    s_train = np.broadcast_to(np.asarray(tuple(train_std) or (1.0,), np.float64), (c,))
    scale = s_train / np.maximum(own_std, 1e-12)
    return scale.astype(np.float32), (m_train - own_mean * scale).astype(np.float32)


def normalized_predict_fn(ctx, source, names: tuple):
    """(fn, record) for the OOD set ``source`` under ``evals.ood_normalization``: fn is None
    for ``train`` (the predictor's own), else a jitted, sharded (variables, batch) ->
    {name: [B, ...]} that predicts on x' = m_train + s_train·(x − m_own)/s_own; record
    says what was done (for metrics.json)."""
    kind = ctx.config.evals.ood_normalization
    if kind not in OOD_NORMALIZATIONS:
        raise ValueError(f"Unknown evals.ood_normalization {kind!r}; valid choices: "
                         f"{', '.join(OOD_NORMALIZATIONS)}")
    if kind == "train":
        return None, {"ood_normalization": "train"}
    mean, std = channel_stats(source)
    scale, shift = own_normalization_transform(ctx.config.data.mean, ctx.config.data.std,
                                               mean, std)
    scale, shift = jnp.asarray(scale), jnp.asarray(shift)
    predictor, family = ctx.predictor, ctx.family

    def per_device(variables, batch):
        batch = predictor.eval_view(batch)
        batch = {**batch, "image": batch["image"] * scale + shift}
        out = family.predict(variables, batch, predictor.model_key(), names)
        return {k: out[k] for k in names}
    record = {"ood_normalization": "own", "own_mean": mean.round(6).tolist(),
              "own_std": std.round(6).tolist()}
    return jax.jit(parallel.shard_outputs(per_device, ctx.exp.mesh)), record
