"""The ``predictions`` evaluator: per-example outputs, for analyses of one's own.

Writes ``predictions.npz`` (compressed) into the evaluation directory with, for the
evaluated split and each OOD set of ``evals.ood_sets``, whatever the family serves per
example, under ``"<source>/<name>"`` keys (``sources`` lists the source names, so a set
name holding ``/``, e.g. ``npz:PATH``, is read by prefix):

- ``label``; ``logits`` and ``probabilities`` (softmax in float64, as the
  classification and calibration evaluators compute it) where the family has logits;
- ``log_likelihood`` (its bound on log p(x), nats) and ``bound/<name>`` for the further
  bounds of its ``bound_fn``;
- ``ood/<score>``: its OOD scores (higher = more in-distribution);
- on the evaluated split, where it has logits and labels: ``<attack>/prediction``, the
  class predicted for the attacked input of each of the first
  ``evals.adversarial_max_examples`` examples at each ε of ``<attack>/epsilon``, with the
  attack of the ``adversarial`` evaluator (``evals.attack``, FGSM or PGD, same keys).

Outputs of the evaluated split come from the suite's cache (not computed again); the
report lists every array with its shape, dtype and meaning.
"""
from __future__ import annotations

import io
import os

import jax
import numpy as np
from etils import epath

from jaxhybrid.evaluators import EvalContext, Evaluator, Section, md_table, probs
from jaxhybrid.evaluators import ood_sets as ood_sets_lib
from jaxhybrid.evaluators.adversarial import (attacked_predictions_fn, epsilon_grid,
                                              epsilon_space)

PREDICTIONS_FILE = "predictions.npz"

MEANINGS = {
    "label": "the example's label (where the source has labels)",
    "logits": "the family's logits (class scores)",
    "probabilities": "softmax of the logits, float64",
    "log_likelihood": "the family's bound on log p(x), nats",
    "bound": "a further bound on log p(x) of the family, nats",
    "ood": "OOD score, higher = more in-distribution",
    "prediction": "class predicted for the attacked input: rows the first M examples, "
                  "columns the ε",
    "epsilon": "the ε of each column of prediction, in the units of evals.epsilon_space "
               "(the adversarial evaluator's)",
    "sources": "the source names: the evaluated split, then each OOD set",
}


def wanted_outputs(family) -> tuple[str, ...]:
    """The family's outputs this evaluator needs: logits, log_likelihood, and what its
    bound_fn and ood_score_fn are computed from."""
    names = [n for n in ("logits", "log_likelihood") if n in family.outputs]
    if family.bound_fn is not None:
        names += family.bound_outputs
    if family.ood_score_fn is not None:
        names += family.ood_outputs
    return tuple(dict.fromkeys(names))


def fetch_outputs(family, fetch) -> tuple[dict, dict]:
    """(outputs of the OOD-score group, all outputs) of one source, ``fetch(names) ->
    {name: [N, ...]}``. The OOD scores' outputs are asked for together, as the ood
    evaluator asks for them (a family may compute an output differently depending on
    what else is asked for, e.g. an ELBO averaged over the IWAE's samples), then the
    other outputs wanted, so the scores equal the ood evaluator's."""
    ood_names = tuple(family.ood_outputs) if family.ood_score_fn is not None else ()
    rest = tuple(n for n in wanted_outputs(family) if n not in ood_names)
    ood_out = fetch(ood_names) if ood_names else {}
    return ood_out, {**(fetch(rest) if rest else {}), **ood_out}


def per_example(family, ood_out: dict, out: dict) -> dict[str, np.ndarray]:
    """{name: [N, ...]} of one source from its outputs (:func:`fetch_outputs`)."""
    arrays = {}
    if "label" in out:
        arrays["label"] = np.asarray(out["label"])
    if "logits" in out:
        arrays["logits"] = np.asarray(out["logits"])
        arrays["probabilities"] = probs(out["logits"])
    if "log_likelihood" in out:
        arrays["log_likelihood"] = np.asarray(out["log_likelihood"])
    if family.bound_fn is not None:
        arrays.update({f"bound/{k}": np.asarray(v) for k, v in family.bound_fn(out).items()})
    if family.ood_score_fn is not None:
        arrays.update({f"ood/{k}": np.asarray(v)
                       for k, v in family.ood_score_fn(ood_out).items()})
    return arrays


def attacked(ctx: EvalContext) -> dict[str, np.ndarray]:
    """{'<attack>/prediction': [M, E] int32, '<attack>/epsilon': [E]} on the evaluated split."""
    ev = ctx.config.evals
    epsilons = epsilon_grid(ev.epsilons)
    scale, clip, _ = epsilon_space(ev.epsilon_space, ctx.config.data.std,
                                   ctx.exp.input_shape[-1])
    out = ctx.predictor.outputs(ctx.variables, ctx.split_source(),
                                fn=attacked_predictions_fn(ctx, epsilons, scale, clip),
                                max_examples=int(ev.adversarial_max_examples))
    preds = np.stack([out[f"prediction_{i}"] for i in range(len(epsilons))], axis=1)
    return {f"{ev.attack}/prediction": preds,
            f"{ev.attack}/epsilon": np.asarray(epsilons, np.float64)}


def _meaning(name: str, definitions: dict) -> str:
    """The meaning of an array name, with the family's definition of its output or score
    (``Family.definitions``) where it gives one."""
    parts = name.split("/")
    meaning = MEANINGS.get(parts[0]) or MEANINGS[parts[-1]]
    own = definitions.get(parts[-1])
    return f"{meaning}: {own}" if own else meaning


def schema(sources: dict[str, dict], definitions: dict) -> dict[str, dict]:
    """{key: {shape, dtype, meaning}} of every array of the file, for metrics.json."""
    out = {f"{src}/{k}": {"shape": list(v.shape), "dtype": str(v.dtype),
                          "meaning": _meaning(k, definitions)}
           for src, values in sources.items() for k, v in values.items()}
    out["sources"] = {"shape": [len(sources)], "dtype": "str", "meaning": MEANINGS["sources"]}
    return out


def schema_rows(sources: dict[str, dict], split: str, definitions: dict) -> list[list]:
    """The report's table: one row per name, ``<source>/NAME`` with N = the source's
    example count, and the split's attacked predictions with their own shapes."""
    rows: dict[str, list] = {}
    for src, values in sources.items():
        for k, v in values.items():
            attack = src == split and k.endswith(("/prediction", "/epsilon"))
            key = f"{split}/{k}" if attack else f"<source>/{k}"
            shape = tuple(v.shape) if attack else ("N", *v.shape[1:])
            rows.setdefault(key, [f"`{key}`", "[" + ", ".join(map(str, shape)) + "]",
                                  str(v.dtype), _meaning(k, definitions)])
    return [*rows.values(), ["`sources`", f"[{len(sources)}]", "str", MEANINGS["sources"]]]


def save_npz(path, arrays: dict) -> None:
    """np.savez_compressed through epath (any location), on process 0 only."""
    if jax.process_index() != 0:
        return
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    epath.Path(path).write_bytes(buf.getvalue())


def evaluate(ctx: EvalContext) -> Section:
    """Per-example arrays of the evaluated split and each OOD set -> predictions.npz."""
    fam, ev = ctx.family, ctx.config.evals
    names = wanted_outputs(fam)
    split = ev.split
    sources = {split: per_example(fam, *fetch_outputs(fam, lambda n: ctx.outputs(names=n)))}
    attack = "logits" in fam.outputs and ctx.exp.has_labels
    if attack:
        sources[split].update(attacked(ctx))
    sets = ood_sets_lib.build_ood_sets(ctx.exp, ev.ood_sets, max_examples=ev.ood_max_examples)
    for s in sets if names else ():
        fetch = lambda n, src=s.source: ctx.predictor.outputs(ctx.variables, src, n)
        sources[s.name] = per_example(fam, *fetch_outputs(fam, fetch))
    arrays = {f"{src}/{k}": v for src, values in sources.items() for k, v in values.items()}
    save_npz(os.path.join(ctx.out_dir, PREDICTIONS_FILE),
             {**arrays, "sources": np.asarray(list(sources))})
    counts = {src: int(len(v["label"] if "label" in v else next(iter(v.values()))))
              for src, v in sources.items() if v}
    m = {"file": PREDICTIONS_FILE, "sources": list(sources), "num_examples": counts,
         "arrays": schema(sources, fam.definitions)}
    md = (f"Per-example outputs in `{PREDICTIONS_FILE}` (`numpy.load`): keys "
          f"`<source>/<name>` for the {split} split and each OOD set, listed in `sources`."
          + (f" Attacked predictions: the first {ev.adversarial_max_examples or 'all'} "
             f"examples of the {split} split, {ev.attack.upper()} as in the adversarial "
             f"evaluator." if attack else "")
          + "\n\n" + md_table(schema_rows(sources, split, fam.definitions),
                              ["array", "shape", "dtype", "meaning"])
          + "\n\n" + md_table([[src, n] for src, n in counts.items()], ["source", "N"]))
    return Section("predictions", m, {}, md)


EVALUATOR = Evaluator("predictions", evaluate, frozenset())
