"""Statistics over the seeds of a sweep: the numbers of each run, the grouping keys, and
mean ± std per group (std with ddof=1; none when n = 1, shown as '± n/a').

A run's numbers are its evaluation's row identities (:mod:`jaxhybrid.tools.identity`):
attack accuracies keyed by their exact ε, and a score whose definition differs between
runs under two names (``ood/heldout/log_px~1/auroc``, ``…~2…``), each defined in a note.
"""
from __future__ import annotations

import json
import math

import ml_collections
import numpy as np

from jaxhybrid.evaluators.adversarial import parse_attack_accuracy
from jaxhybrid.evaluators.calibration import ECE
from jaxhybrid.evaluators.classification import ACCURACY, NLL
from jaxhybrid.evaluators.likelihood import BITS_PER_DIM, LOG_LIKELIHOOD
from jaxhybrid.evaluators.ood import parse_ood_auroc
from jaxhybrid.evaluators.temperature import ECE_AFTER_TS
from jaxhybrid.optim import scaled_learning_rate
from jaxhybrid.tools import identity
from jaxhybrid.tools.runs import Run

BUDGET = ("steps", "train_seconds")       # from final_metrics.json
MAIN_METRICS = (ACCURACY, NLL, ECE, ECE_AFTER_TS)
LIKELIHOOD_METRICS = (LOG_LIKELIHOOD, BITS_PER_DIM)
SEED_KEY = "seed"


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def sort_key(values: tuple) -> tuple:
    return tuple((0, v, "") if is_number(v) else (1, 0, json.dumps(v)) for v in values)


def plain(value):
    """A value as JSON keeps it: tuples as lists."""
    return [plain(v) for v in value] if isinstance(value, (tuple, list)) else value


def same_value(a, b) -> bool:
    if is_number(a) and is_number(b):
        return float(a) == float(b)
    return plain(a) == plain(b)


def mean_std(values) -> tuple[float, float | None]:
    """Mean and std over seeds: std with ddof=1 when n > 1, None when n = 1."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return float("nan"), None
    return float(x.mean()), (float(x.std(ddof=1)) if x.size > 1 else None)


def _variant(e: identity.Entry) -> str:
    """What tells two entries of one name apart: the exact ε, or the definition."""
    return repr(e.key[1]) if e.section == "adversarial" else e.definition


def _split_name(e: identity.Entry, k: int) -> str:
    """The name of variant ``k`` (from 1) of an entry whose name has several: the exact
    ε of an attack accuracy, else ``~k`` on the score (or metric)."""
    if e.section == "adversarial":
        return f"{e.key[0]}/eps={e.key[1]!r}/accuracy"
    parts = e.metric.split("/")
    parts[2 if parse_ood_auroc(e.metric) else 0] += f"~{k}"
    return "/".join(parts)


def run_metrics(runs: list[Run]) -> tuple[list[dict[str, float]], list[str]]:
    """The numbers of each run (its evaluation's entries, then steps and train_seconds),
    and notes defining the names that were split because their definitions differ."""
    per_run = [identity.entries(r.evaluation.metrics, r.raw_config) for r in runs]
    variants: dict[str, list[str]] = {}
    for e in (e for entries in per_run for e in entries):
        if _variant(e) not in variants.setdefault(e.metric, []):
            variants[e.metric].append(_variant(e))
    out, notes = [], {}
    for run, entries in zip(runs, per_run):
        m = {}
        for e in entries:
            vs = variants[e.metric]
            key = e.metric if len(vs) == 1 else _split_name(e, vs.index(_variant(e)) + 1)
            if len(vs) > 1 and e.definition:
                notes[key] = f"{key}: {e.definition}"
            if is_number(e.value):
                m[key] = float(e.value)
        for key, field in (("steps", "step"), ("train_seconds", "train_seconds")):
            if is_number(run.final.get(field)):
                m[key] = float(run.final[field])
        out.append(m)
    return out, list(notes.values())


def group_keys(runs: list[Run], swept: list[str]) -> list[str]:
    """The ``swept`` keys (in sweep order), then the other config keys whose values
    differ between runs (sorted); never seed."""
    all_keys = set().union(*(r.config for r in runs)) if runs else set()
    differ = {k for k in all_keys
              if len({json.dumps(r.config.get(k), sort_keys=True) for r in runs}) > 1}
    keys = list(dict.fromkeys(list(swept) + sorted(differ)))
    return [k for k in keys if k != SEED_KEY]


def metric_order(found: list[str]) -> list[str]:
    """The table's metrics: main metrics, likelihood, OOD AUROCs, attack accuracies (by
    attack and ε), budget, then the rest in the order found."""
    scalars = MAIN_METRICS + LIKELIHOOD_METRICS
    main = sorted((k for k in found if k.split("~")[0] in scalars),
                  key=lambda k: (scalars.index(k.split("~")[0]), k))
    ood = [k for k in found if parse_ood_auroc(k)]
    adv = sorted((k for k in found if parse_attack_accuracy(k)),
                 key=parse_attack_accuracy)
    budget = [k for k in BUDGET if k in found]
    ordered = list(dict.fromkeys(main + ood + adv + budget))
    return ordered + [k for k in found if k not in ordered]


def learning_rate(raw_config: dict) -> float | None:
    """The peak learning rate after the config's lr scaling; None when it cannot say."""
    try:
        return scaled_learning_rate(ml_collections.ConfigDict(raw_config["optimizer"]),
                                    int(raw_config["batch_size"]))
    except (KeyError, ValueError, TypeError):
        return None


def _stats(values: list[float]) -> dict:
    mean, std = mean_std(values)
    return {"mean": mean, "std": std, "n": len(values), "values": values}


def group_runs(runs: list[Run], metrics: list[dict], keys: list[str]) -> list[dict]:
    """One row per group: {"group": {key: value}, "n", "seeds", "runs", "steps" (the
    evaluated step of each run), "learning_rate", "metrics": {name: {"mean", "std", "n",
    "values"}}}, sorted by the group values. ``metrics``: :func:`run_metrics`' first."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(runs):
        groups.setdefault(json.dumps([r.config.get(k) for k in keys]), []).append(i)
    all_names = metric_order(list(dict.fromkeys(n for m in metrics for n in m)))
    rows = []
    for members in groups.values():
        members = sorted(members, key=lambda i: runs[i].seed)
        stats = {}
        for name in all_names:
            vals = [metrics[i][name] for i in members
                    if name in metrics[i] and math.isfinite(metrics[i][name])]
            if vals:
                stats[name] = _stats(vals)
        first = runs[members[0]]
        rows.append({"group": {k: first.config.get(k) for k in keys}, "n": len(members),
                     "seeds": [runs[i].seed for i in members],
                     "runs": [runs[i].directory for i in members],
                     "evaluations": [runs[i].evaluation.relative for i in members],
                     "learning_rate": learning_rate(first.raw_config), "metrics": stats})
    rows.sort(key=lambda row: sort_key(tuple(row["group"][k] for k in keys)))
    return rows
