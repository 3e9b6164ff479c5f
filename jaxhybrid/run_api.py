"""A finished run in Python: ``load_run(workdir, checkpoint) -> LoadedRun``.

::

    from jaxhybrid import load_run
    run = load_run("runs/gffn", checkpoint="best")    # or "latest", or a step number
    out = run.predict(images)      # uint8 or float [0, 1] pixels [N, H, W, C] (or [N, H, W])
    out["logits"], out["probs"]    # classifier families, [N, K]
    out["L>1"], out["LLR>1"], out["elbo"], out["log_likelihood"]   # generative ones, [N]
    run.config, run.step, run.family, run.checkpoint

The run is described by its saved config (``config.json``); the model part of the
checkpoint ({params, model_state}) is restored sharded over the devices, and
``predict`` batches, pads and shards any N as the evaluators do. Its numbers are those
of the ``predictions`` evaluator on the same images: the same outputs, asked for in the
same groups (:func:`jaxhybrid.evaluators.predictions.fetch_outputs`), with the same
fixed evaluation key; its keys are that file's names without their prefix
(``probabilities`` is also ``probs``; ``ood/LLR>1`` is ``LLR>1``; ``bound/elbo`` is
``elbo``, unless an OOD score has the same name: then it stays ``bound/<name>``). Float pixels are used as they are (the data pipeline's uint8 images are the
special case ``x / 255``). Nothing is written to the run directory.

Building the model needs the run's data description: the data the config names are
loaded (offline) as in ``--mode=eval``, for the image shape, classes and normalisation.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jaxhybrid import selection
from jaxhybrid.checkpointing import Checkpointer, run_path
from jaxhybrid.data.pipeline import Preprocess
from jaxhybrid.data.preprocess import to_float
from jaxhybrid.evaluators.predictions import fetch_outputs, per_example
from jaxhybrid.experiment import Experiment, abstract_model, build_experiment
from jaxhybrid.families.base import variables_of
from jaxhybrid.predictor import Predictor
from jaxhybrid.saved_config import config_from_run

__all__ = ["load_run", "LoadedRun"]


@dataclasses.dataclass(frozen=True)
class _PixelPreprocess(Preprocess):
    """The data pipeline's preprocessing, for float pixels too (used as they are)."""

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if images.dtype == np.uint8:
            return to_float(self.framed(images))
        return np.asarray(self.framed(images), np.float32)


class _Pixels:
    """A source over the caller's images (uint8 or float32 [N, H, W, C]), no labels."""

    has_labels = False

    def __init__(self, images: np.ndarray):
        self.images, self.num_examples = images, len(images)
        self.image_shape = tuple(images.shape[1:])

    def __len__(self) -> int:
        return self.num_examples

    def get(self, indices: np.ndarray) -> dict:
        return {"image": self.images[np.asarray(indices)]}


def check_images(images: Any, shape: tuple[int, int, int]) -> np.ndarray:
    """uint8 or float [0, 1] pixels [N, H, W, C] ([N, H, W] for one channel) of the run's
    image ``shape``, as uint8 or float32; a clear error otherwise."""
    x = np.asarray(images)
    if x.ndim == 3 and shape[-1] == 1:
        x = x[..., None]
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(shape) or not len(x):
        raise ValueError(f"images must be [N, {', '.join(map(str, shape))}] with N >= 1 "
                         f"(the run's data), got shape {x.shape}")
    if x.dtype == np.uint8:
        return x
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"images must be uint8 or float pixels, got dtype {x.dtype}")
    if np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"integer images must be uint8 (0..255), got dtype {x.dtype}")
    if not np.all(np.isfinite(x)) or x.min() < 0 or x.max() > 1:
        raise ValueError(f"float pixels must lie in [0, 1] (uint8 / 255), got "
                         f"[{np.nanmin(x):.4g}, {np.nanmax(x):.4g}]")
    return x.astype(np.float32)


def _short_names(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """predictions.npz's names without their ``ood/`` or ``bound/`` prefix, plus
    ``probs``. An OOD score keeps the short name (the reports' ``L>1`` is the score); a
    bound of the same name stays ``bound/<name>``."""
    scores = {k.split("/", 1)[1] for k in arrays if k.startswith("ood/")}
    out = {}
    for k, v in arrays.items():
        head, _, tail = k.partition("/")
        short = tail if head in ("ood", "bound") else k
        out[k if head == "bound" and tail in scores else short] = v
    if "probabilities" in out:
        out["probs"] = out["probabilities"]
    return out


class LoadedRun:
    """A checkpoint of a run directory, restored for prediction (see the module docstring)."""

    def __init__(self, exp: Experiment, variables, step: int, checkpoint: str, workdir):
        self.experiment, self.variables = exp, variables
        self.config, self.step, self.checkpoint = exp.config, step, checkpoint
        self.family = exp.family.name
        self.workdir = workdir
        self.image_shape = tuple(exp.splits.image_shape)
        self._predictor = Predictor(dataclasses.replace(
            exp, preprocess=_PixelPreprocess(frame=exp.preprocess.frame)))

    def predict(self, images) -> dict[str, np.ndarray]:
        """{name: [N, ...]} for the images (see the module docstring for the names)."""
        source = _Pixels(check_images(images, self.image_shape))
        fam = self.experiment.family
        fetch = lambda names: self._predictor.outputs(self.variables, source, names)
        return _short_names(per_example(fam, *fetch_outputs(fam, fetch)))

    def __repr__(self) -> str:
        return (f"LoadedRun({self.workdir}, family={self.family!r}, step={self.step}, "
                f"checkpoint={self.checkpoint!r})")


def load_run(workdir, checkpoint: str | int = "best", *, num_devices: int | None = None,
             eval_batch_size: int | None = None) -> LoadedRun:
    """Restore ``checkpoint`` ('best', 'latest' or a step) of the run in ``workdir``.
    ``num_devices`` / ``eval_batch_size`` replace the saved values (e.g. a notebook with
    fewer devices than the training job: the batch must divide over them)."""
    config = config_from_run(workdir)
    with config.unlocked():
        if num_devices is not None:
            config.num_devices = int(num_devices)
        if eval_batch_size is not None:
            config.eval_batch_size = int(eval_batch_size)
    exp = build_experiment(config)
    ckpt = Checkpointer(workdir, read_only=True)
    try:
        step, label = selection.resolve(ckpt, checkpoint)
        model = ckpt.restore_model(step, abstract_model(exp))
    finally:
        ckpt.close()
    return LoadedRun(exp, variables_of(model), step, label, run_path(workdir))
