"""The run's own fields, the top level of a config (``batch_size``, ``num_steps``,
``checkpoint_every``, …): one row per field (default, check, meaning), read by the trainer
(:mod:`jaxhybrid.train`), the mesh (:mod:`jaxhybrid.parallel`) and the precision policy.
The sections have their own tables: ``data`` (:mod:`jaxhybrid.data.config`),
``optimizer`` (:mod:`jaxhybrid.optim`), ``evals`` (:mod:`jaxhybrid.evaluators.config`) and
each family's ``model`` and ``objective`` (:mod:`jaxhybrid.families`)."""
from __future__ import annotations

from jaxhybrid.families import FAMILIES
from jaxhybrid.precision import COMPUTE_DTYPES
from jaxhybrid.schema import Field, Schema, choice, count, flag, is_int, num, reads


def _family(v) -> str | None:
    if isinstance(v, str) and (v in FAMILIES or ":" in v):
        return None
    return f"must be one of {', '.join(sorted(FAMILIES))} or 'package.module:factory'"


@reads("num_steps", "num_epochs")
def _budget(values: dict) -> list[tuple[str, str]]:
    """Training needs a length: num_epochs > 0 unless num_steps > 0."""
    if values["num_steps"] == 0 and values["num_epochs"] == 0:
        return [("num_epochs", "must be > 0 (or set num_steps > 0)")]
    return []


@reads("batch_size", "accumulation_steps")
def _accumulation(values: dict) -> list[tuple[str, str]]:
    """``accumulation_steps`` divides the global ``batch_size`` (the devices: in
    :func:`jaxhybrid.config_check.check_against_data`, once they are known)."""
    batch, steps = values["batch_size"], values["accumulation_steps"]
    if not (is_int(batch) and is_int(steps)) or batch % steps == 0:
        return []
    valid = [k for k in range(1, batch + 1) if batch % k == 0]
    return [("accumulation_steps", f"must divide the global batch_size {batch} (each step's "
             f"batch is accumulation_steps micro-batches of equal size); valid: "
             f"{', '.join(map(str, valid))}")]


RUN = Schema("", {
    "family": Field("classifier", _family, "the model family: its module, objective and "
                    "outputs (jaxhybrid/families/), or 'package.module:factory'"),
    "seed": count(0, "initialisation and shuffling seed", low=0),
    "batch_size": count(128, "the GLOBAL batch over all devices and hosts"),
    "accumulation_steps": count(1, "gradient accumulation: each step's global batch is this "
                                "many micro-batches of batch_size / accumulation_steps, taken "
                                "one after the other (memory of one micro-batch); the GFFN "
                                "partition stays the whole global batch's"),
    "eval_batch_size": count(512, "the GLOBAL evaluation batch"),
    "num_epochs": num(10.0, "training length in epochs (> 0 unless num_steps)", 0),
    "num_steps": count(0, "> 0 overrides num_epochs", low=0),
    "drop_remainder": flag(False, "drop each epoch's last partial batch (constant B)"),
    "max_train_seconds": num(0.0, "wall-clock budget per run (0 = none); checkpoints and "
                             "stops", 0),
    "early_stopping_patience": count(0, "stop when the family's validation metric (accuracy "
                                     "for classifiers) has not improved for this many "
                                     "validations (one per checkpoint); 0 = off", low=0),
    "log_every": count(50, "steps between progress lines and metrics.jsonl records"),
    "tensorboard": flag(True, "also write metrics.jsonl's records as TensorBoard scalars "
                        "(jaxhybrid/tblog.py)"),
    "checkpoint_every": count(0, "steps between checkpoints; 0 = once per epoch", low=0),
    "keep_checkpoints": count(2, "latest N kept (the best by the family's metric too)"),
    "eval_every": count(0, "run the evaluators every N steps (0 = only at the end)", low=0),
    "num_devices": count(0, "devices of the mesh (0 = all)", low=0),
    "compute_dtype": choice("float32", COMPUTE_DTYPES, "float32 | bfloat16: matmuls and "
                            "convolutions in bf16; parameters, optimiser state and losses "
                            "float32 (jaxhybrid/precision.py)"),
}, rules=[_budget, _accumulation])
