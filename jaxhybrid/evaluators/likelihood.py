"""The ``likelihood`` evaluator: the family's bound on log p(x), in nats per example and
bits per dimension, with its further bounds (e.g. the HVAE's L>k) likewise.

bpd = −L / (D·ln 2), D = H·W·C of the model input (docs/metrics.md §Likelihoods).
Headline names (:data:`LOG_LIKELIHOOD`, :data:`BITS_PER_DIM`): the section's
``log_likelihood_nats`` and ``bits_per_dim``.
"""
from __future__ import annotations

import numpy as np

from jaxhybrid.data.transforms import parse_transforms
from jaxhybrid.evaluators import EvalContext, Evaluator, Section, definition, md_table
from jaxhybrid.models import likelihoods

LOG_LIKELIHOOD = "log_likelihood"
BITS_PER_DIM = "bits_per_dim"
_HEADLINE_FIELDS = ((LOG_LIKELIHOOD, "log_likelihood_nats"), (BITS_PER_DIM, "bits_per_dim"))


def headline(section: dict) -> dict:
    """{log_likelihood, bits_per_dim} from the section's ``log_likelihood_nats`` and
    ``bits_per_dim`` (those it holds)."""
    return {name: section[field] for name, field in _HEADLINE_FIELDS if field in section}


def _bound_stats(ll, dims: int) -> dict:
    """Mean L (nats), NLL = −L, bpd = −L/(D·ln 2) and std of L over the examples."""
    ll = np.asarray(ll, np.float64)
    mean = float(np.mean(ll))
    return {"log_likelihood_nats": mean, "nll_nats": -mean,
            "bits_per_dim": -mean / (dims * np.log(2.0)), "std_nats": float(np.std(ll))}


def bits_per_dim_meaning(family) -> str:
    """What a bits/dim of the family's likelihood means (its registry entry's own text)."""
    if not family.likelihood:
        return (f"family {family.name!r} does not name its likelihood, so whether this is "
                f"a probability mass or a density is not stated")
    return likelihoods.get_likelihood(family.likelihood).bits_per_dim


def evaluate(ctx: EvalContext) -> Section:
    """The family's bound on log p(x): nats per example and bits per dimension, and the
    further bounds of its ``bound_fn`` (e.g. the HVAE's L>k) likewise, each with its
    definition and what its bits/dim mean for the family's likelihood.

    bpd = −L / (D·ln 2), D = H·W·C of the model input (docs/metrics.md §Likelihoods).
    """
    fam = ctx.family
    ll = ctx.outputs(names=("log_likelihood",))["log_likelihood"]
    dims = int(np.prod(ctx.exp.input_shape))
    m = {**_bound_stats(ll, dims), "dims": dims, "num_examples": int(len(ll)),
         "split": ctx.config.evals.split,
         "bound": fam.describe.get("log_likelihood", "the family's log_likelihood output"),
         "definition": definition(fam, "log_likelihood"),
         "likelihood": fam.likelihood or None, "bits_per_dim_meaning": bits_per_dim_meaning(fam)}
    cols = ("log_likelihood_nats", "nll_nats", "bits_per_dim", "std_nats")
    rows = [["log_likelihood", *(m[k] for k in cols), m["definition"]]]
    if fam.bound_fn is not None:
        extra = fam.bound_fn(ctx.outputs(names=fam.bound_outputs))
        m["bounds"] = {name: {**_bound_stats(v, dims), "definition": definition(fam, name)}
                       for name, v in extra.items()}
        rows += [[name, *(b[k] for k in cols), b["definition"]] for name, b in m["bounds"].items()]
    lik = f"the {fam.likelihood!r} likelihood" if fam.likelihood else "the likelihood"
    md = (f"Mean over the {m['split']} split ({m['num_examples']} examples), in nats per "
          f"example and bits per dimension (D = {dims}, bpd = −L/(D·ln 2)). Bits/dim of "
          f"{lik}: {m['bits_per_dim_meaning']}.{_binarised_note(ctx)}\n\n"
          + md_table(rows, ["bound", "log p(x) bound (nats)", "NLL (nats)", "bits/dim",
                            "std (nats)", "definition"]))
    return Section("likelihood", m, headline(m), md)


def _binarised_note(ctx: EvalContext) -> str:
    if not binarised(ctx.config):
        return ""
    return (f" The evaluated images were binarised once (a Bernoulli draw per pixel, seed "
            f"evals.seed = {ctx.config.evals.seed}), as training binarises them.")


def binarised(config) -> bool:
    """Whether training binarises the images (so evaluation binarises them once, seeded)."""
    return "binarize" in parse_transforms(config.data.train_transforms)


EVALUATOR = Evaluator("likelihood", evaluate, frozenset({"log_likelihood"}), headline)
