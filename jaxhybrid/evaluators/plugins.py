"""The evaluator plug-ins: classification, calibration, temperature, ood, adversarial.

Each takes an :class:`EvalContext` and returns a :class:`Section`. Metrics are
computed over whole splits (outputs gathered from padded, masked batches), never
averaged over batches.
"""
from __future__ import annotations

import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from jaxhybrid import parallel, rng as rnglib
from jaxhybrid.data.transforms import parse_transforms
from jaxhybrid.evaluators import EvalContext, Section, names, plots
from jaxhybrid.evaluators import ood_sets as ood_sets_lib
from jaxhybrid.evaluators.adversarial import ATTACKS, epsilon_grid, epsilon_space, fgsm, pgd
from jaxhybrid.evaluators.calibration import calibration_metrics
from jaxhybrid.evaluators.ood import (FPR80_OOD_CONVENTION, FPR95_CONVENTION, ood_metrics,
                                       roc_curve)
from jaxhybrid.evaluators.temperature import (T_MAX, T_MIN, apply_temperature, log_softmax,
                                               nll, temperature_fit)
from jaxhybrid.models import likelihoods


def _probs(logits) -> np.ndarray:
    """softmax in float64 on the host: [N, K] -> [N, K]."""
    return np.exp(log_softmax(np.asarray(logits, np.float64)))


def _table(rows: list[list], header: list[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4f}"
        return str(v).replace("|", "\\|")   # a '|' inside a cell (q(z|x)) would split it
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


# -- classification ----------------------------------------------------------------------
def classification(ctx: EvalContext) -> Section:
    """accuracy, NLL (nats), Brier score (Σ_k (p_k − y_k)², mean over examples)."""
    out = ctx.outputs()
    logits, labels = out["logits"], out["label"]
    p = _probs(logits)
    onehot = np.eye(p.shape[1])[labels]
    m = {"accuracy": float(np.mean(p.argmax(-1) == labels)),
         "nll": nll(logits, labels),
         "brier": float(np.mean(np.sum((p - onehot) ** 2, -1))),
         "num_examples": int(len(labels)), "split": ctx.config.evals.split}
    m["definitions"] = {"logits": definition(ctx.family, "logits")}
    md = (f"Predictions from logits = {m['definitions']['logits']}. NLL = mean −log p(y|x) "
          f"(nats); Brier = mean Σ_k (p_k − y_k)².\n\n"
          + _table([[m["split"], m["num_examples"], m["accuracy"], m["nll"], m["brier"]]],
                   ["split", "examples", "accuracy", "NLL (nats)", "Brier"]))
    return Section("classification", m, {names.ACCURACY: m["accuracy"], names.NLL: m["nll"],
                                         names.BRIER: m["brier"]}, md)


# -- calibration -------------------------------------------------------------------------
def calibration(ctx: EvalContext) -> Section:
    out = ctx.outputs()
    p, labels = _probs(out["logits"]), out["label"]
    bins = int(ctx.config.evals.num_bins)
    cal = calibration_metrics(p, labels, num_bins=bins)
    cal_mass = calibration_metrics(p, labels, num_bins=bins, binning="equal_mass")
    fig = "reliability.png"
    plots.reliability_diagram(cal, os.path.join(ctx.out_dir, fig),
                              title=ctx.family.label or ctx.family.name)
    m = {"equal_width": cal, "equal_mass": {k: cal_mass[k] for k in ("ece", "mce", "rms_ce")}}
    md = (f"Top-label confidence, {bins} equal-width bins (lo, hi], confidence 1.0 in the "
          f"last bin, computed over the whole split.\n\n"
          + _table([["equal-width", cal["ece"], cal["mce"], cal["rms_ce"]],
                    ["equal-mass", cal_mass["ece"], cal_mass["mce"], cal_mass["rms_ce"]]],
                   ["binning", "ECE", "MCE", "RMS-CE"]))
    return Section("calibration", m, {names.ECE: cal["ece"], names.MCE: cal["mce"],
                                      names.RMS_CE: cal["rms_ce"]}, md,
                   [("Reliability diagram", fig)])


# -- temperature scaling -----------------------------------------------------------------
def temperature_scaling(ctx: EvalContext) -> Section:
    """Fit T on the validation split (NLL), report ECE/NLL before and after on the eval split.

    A degenerate fit is reported as such, never as a result. T is fitted on the
    validation split only: never on the split reported on (that would fit the answer),
    and the training split is no alternative (the model fits it at least as closely).
    When the validation NLL has no minimiser strictly inside [T_MIN, T_MAX]
    (:func:`~jaxhybrid.evaluators.temperature.temperature_fit`: a perfectly classified
    validation split, whose NLL falls all the way to T -> 0; logits no better than
    uniform; a minimum outside the range), metrics.json says ``identifiable: false`` with
    ``temperature: null``, the ``bound`` the NLL runs towards and the ``reason``, and has
    no ``ece_after``/``nll_after`` and no headline ``temperature``/``ece_after_ts``/
    ``nll_after_ts``: the "after" numbers of a T clamped to the bound are those of an
    arbitrary sharpening (digits: NLL 0.036 -> 0.495 at T = 0.05), not a calibration.
    The report says why and shows the unscaled numbers only.
    """
    if len(ctx.exp.splits.validation) == 0:
        return Section("temperature", {"skipped": "empty validation split"}, {},
                       "Skipped: the validation split is empty (data.validation_size=0).")
    val = ctx.outputs("validation")
    fit = temperature_fit(val["logits"], val["label"])
    out = ctx.outputs()
    logits, labels = out["logits"], out["label"]
    bins = int(ctx.config.evals.num_bins)
    before = calibration_metrics(_probs(logits), labels, num_bins=bins)
    split = ctx.config.evals.split
    m = {"identifiable": fit.identifiable, "temperature": fit.temperature,
         "fitted_on": "validation", "num_fit_examples": fit.num_examples,
         "fit_accuracy": fit.accuracy, "search_range": [T_MIN, T_MAX], "reported_on": split,
         "ece_before": before["ece"], "nll_before": nll(logits, labels)}
    if not fit.identifiable:
        m.update(bound=fit.bound, reason=fit.reason)
        bound = f" (here {fit.bound})" if fit.bound is not None else ""
        md = (f"**Not identifiable:** {fit.reason}. T was searched in [{T_MIN}, {T_MAX}] by "
              f"minimising NLL on the validation split ({fit.num_examples} examples, accuracy "
              f"{fit.accuracy:.4f}). No temperature and no "
              f"\"after\" numbers are reported: a T clamped to the search bound{bound} is "
              f"not a calibrated temperature. The {split} split, unscaled:\n\n"
              + _table([["unscaled", m["ece_before"], m["nll_before"]]], ["", "ECE", "NLL"]))
        return Section("temperature", m, {}, md)
    t = fit.temperature
    scaled = np.asarray(apply_temperature(logits, t))
    after = calibration_metrics(_probs(scaled), labels, num_bins=bins)
    fig = "reliability_temperature_scaled.png"
    plots.reliability_diagram(after, os.path.join(ctx.out_dir, fig), title=f"after T={t:.3f}")
    m.update(ece_after=after["ece"], nll_after=nll(scaled, labels), reliability_after=after)
    md = (f"T = {t:.4f}, fitted by minimising NLL on the validation split ({fit.num_examples} "
          f"examples, accuracy {fit.accuracy:.4f}; the minimum lies inside the search range "
          f"[{T_MIN}, {T_MAX}]); reported on the {split} split.\n\n"
          + _table([["before", m["ece_before"], m["nll_before"]],
                    [f"after (T={t:.3f})", m["ece_after"], m["nll_after"]]],
                   ["", "ECE", "NLL"]))
    return Section("temperature", m, {names.TEMPERATURE: t, names.ECE_AFTER_TS: m["ece_after"],
                                      names.NLL_AFTER_TS: m["nll_after"]}, md,
                   [("Reliability after temperature scaling", fig)])


# -- OOD detection -----------------------------------------------------------------------
OOD_SCORES_FILE = "ood_scores.npz"


def file_safe(name: str) -> str:
    """A score name as a portable file-name part: ">" -> "gt", anything but [A-Za-z0-9_.]
    -> "_" ("-LLR>1" -> "_LLRgt1")."""
    return re.sub(r"[^A-Za-z0-9_.]", "_", name.replace(">", "gt"))


def save_scores(path: str, split: str, in_scores: dict, out_scores: dict) -> None:
    """Every per-example score, for analysis: npz keys ``"<split>/<score>"`` for the
    in-distribution split and ``"<OOD set>/<score>"`` for each OOD set (float64 arrays)."""
    arrays = {f"{split}/{k}": np.asarray(v, np.float64) for k, v in in_scores.items()}
    for set_name, scores in out_scores.items():
        arrays.update({f"{set_name}/{k}": np.asarray(v, np.float64) for k, v in scores.items()})
    np.savez_compressed(path, **arrays)


def definition(family, name: str) -> str:
    """The family's one-line definition of output or score ``name`` (or says it has none)."""
    return family.definitions.get(name, f"(family {family.name!r} gives no definition)")


def _ood_figures(ctx: EvalContext, in_scores: dict, out_scores: dict, m: dict) -> list:
    """Per score: the histograms of every set and the ROC curves; -> [(title, file)]."""
    figures = []
    for score_name, s_in in in_scores.items():
        if not out_scores:
            break
        hist = f"ood_hist_{file_safe(score_name)}.png"
        plots.score_histograms(s_in, {n: v[score_name] for n, v in out_scores.items()},
                               os.path.join(ctx.out_dir, hist), score_name,
                               title=f"{ctx.family.label or ctx.family.name}: {score_name} "
                                     f"({ctx.config.evals.split} split vs OOD sets)",
                               unit=_score_unit(ctx.family, score_name))
        curves = {}
        for n, v in out_scores.items():
            fpr, tpr = roc_curve(s_in, v[score_name])
            curves[n] = (fpr, tpr, m["sets"][n]["scores"][score_name]["auroc"])
        roc = f"ood_roc_{file_safe(score_name)}.png"
        plots.roc_curves(curves, os.path.join(ctx.out_dir, roc), title=f"ROC: {score_name}")
        figures += [(f"Score histograms: {score_name}", hist), (f"ROC curves: {score_name}", roc)]
    return figures


def _score_unit(family, score_name: str) -> str:
    """The unit of a score, read from its definition: 'nats' when it says so, else ''."""
    return "nats" if "nats" in family.definitions.get(score_name, "") else ""


def _ood_markdown(ctx: EvalContext, m: dict, sets) -> str:
    """The OOD section: the conventions, the sets, then per score its definition and a
    table of every set."""
    split = ctx.config.evals.split
    desc = "\n".join(f"- **{s.name}**: {s.description} ({len(s.source)} examples)"
                      for s in sets)
    header = ["OOD set", "AUROC", "AUPR-In", "AUPR-Out", "FPR@95", "FPR@80 (OOD+)", "# in",
              "# OOD"]
    parts = [f"In-distribution: the {split} split ({m['in_distribution']['num_examples']} "
             f"examples). Every score is higher = more in-distribution. AUROC, AUPR-In "
             f"(in-distribution positive) and AUPR-Out (OOD positive) as scikit-learn "
             f"computes them.\n\n- {FPR95_CONVENTION};\n- {FPR80_OOD_CONVENTION} "
             f"(the column FPR@80 (OOD+)).", desc]
    for score, text in m["definitions"].items():
        rows = [[n, *(r[k] for k in ("auroc", "aupr_in", "aupr_out", "fpr95", "fpr80_ood",
                                     "num_in", "num_out"))]
                for n, r in ((n, v["scores"][score]) for n, v in m["sets"].items())]
        parts += [f"### {score}\n\n{score} = {text}", _table(rows, header)]
    return "\n\n".join(parts)


def ood(ctx: EvalContext) -> Section:
    """Every OOD set of evals.ood_sets × every score of the family (higher = in-dist)."""
    fam = ctx.family
    in_scores = ctx.ood_scores(ctx.outputs(names=fam.ood_outputs))
    sets = ood_sets_lib.build_ood_sets(ctx.exp, ctx.config.evals.ood_sets,
                                       max_examples=ctx.config.evals.ood_max_examples)
    m: dict = {"convention": {"score": "higher = more in-distribution",
                              "fpr95": FPR95_CONVENTION, "fpr80_ood": FPR80_OOD_CONVENTION},
        "definitions": {name: definition(fam, name) for name in in_scores},
        "in_distribution": {"split": ctx.config.evals.split,
                            "num_examples": int(len(next(iter(in_scores.values()))))},
        "sets": {}}
    headline = {}
    out_scores: dict[str, dict[str, np.ndarray]] = {}
    for s in sets:
        fn, normalization = ood_sets_lib.normalized_predict_fn(ctx, s.source, fam.ood_outputs)
        scores = ctx.ood_scores(ctx.predictor.outputs(ctx.variables, s.source, fam.ood_outputs,
                                                      fn=fn))
        out_scores[s.name] = scores
        m["sets"][s.name] = {"description": s.description, "num_examples": int(len(s.source)),
                             **normalization, "scores": {}}
        for score_name, s_in in in_scores.items():
            r = ood_metrics(s_in, scores[score_name])
            m["sets"][s.name]["scores"][score_name] = r
            headline[names.ood_auroc(s.name, score_name)] = r["auroc"]
    save_scores(os.path.join(ctx.out_dir, OOD_SCORES_FILE), ctx.config.evals.split,
                in_scores, out_scores)
    m["per_example_scores"] = OOD_SCORES_FILE
    figures = _ood_figures(ctx, in_scores, out_scores, m)
    return Section("ood", m, headline, _ood_markdown(ctx, m, sets), figures)


# -- adversarial robustness --------------------------------------------------------------
def attacked_predictions_fn(ctx: EvalContext, epsilons, scale, clip):
    """Jitted, sharded: batch -> {'prediction_<i>': [B] int32}, the class predicted for the
    attacked input at each ε of the grid (pixel step ε·scale per channel, clipped to
    ``clip``; :func:`~jaxhybrid.evaluators.adversarial.epsilon_space`). The attack of the
    adversarial and predictions evaluators, written once.

    The family's ``logits`` output in eval mode is attacked (dropout off, batch norm on
    its running averages, no sampling). PGD's random starts are drawn per example from
    the PGD_START stream of the fixed evaluation key, member i for the i-th ε, then the
    example's id (:mod:`jaxhybrid.rng`): the same on any device count."""
    ev = ctx.config.evals
    predictor, family = ctx.predictor, ctx.family
    attack = ev.attack
    if attack not in ATTACKS:
        raise ValueError(f"Unknown evals.attack {attack!r}; valid choices: "
                         f"{', '.join(ATTACKS)}")

    def per_device(variables, batch):
        batch = predictor.eval_view(batch)
        f = lambda z: family.predict(variables, {**batch, "image": z}, predictor.model_key(),
                                     ("logits",))["logits"]
        x, y = batch["image"], batch["label"]
        out = {}
        for i, eps in enumerate(epsilons):
            step = (ev.pgd_step_size or 2.5 * eps / max(ev.pgd_steps, 1)) * jnp.asarray(scale)
            eps = eps * jnp.asarray(scale)
            if attack == "fgsm":
                x_adv = fgsm(f, x, y, eps, *clip)
            else:
                keys = rnglib.example_keys(rnglib.stream(predictor.key, rnglib.PGD_START, i),
                                           batch["id"])
                x_adv = pgd(f, x, y, eps, steps=int(ev.pgd_steps), step_size=step,
                            example_keys=keys, random_start=bool(ev.pgd_random_start),
                            clip_min=clip[0], clip_max=clip[1])
            out[f"prediction_{i}"] = jnp.argmax(f(x_adv), -1).astype(jnp.int32)
        return out

    return jax.jit(parallel.shard_outputs(per_device, ctx.exp.mesh))


def adversarial(ctx: EvalContext) -> Section:
    """Accuracy under FGSM (or PGD) at each ε, in ``evals.epsilon_space`` units (pixel: the
    [0, 1] scale, clipped to [0, 1]; normalized: the model's normalised input, unclipped)."""
    ev = ctx.config.evals
    epsilons = epsilon_grid(ev.epsilons)
    scale, clip, units = epsilon_space(ev.epsilon_space, ctx.config.data.std,
                                       ctx.exp.input_shape[-1])
    fn = attacked_predictions_fn(ctx, epsilons, scale, clip)
    out = ctx.predictor.outputs(ctx.variables, ctx.split_source(), fn=fn,
                                max_examples=int(ev.adversarial_max_examples))
    acc = [float(np.mean(out[f"prediction_{i}"] == out["label"]))
           for i in range(len(epsilons))]
    n = int(len(out["label"]))
    fig = "robustness.png"
    plots.accuracy_vs_epsilon({ctx.family.label or ctx.family.name: (list(epsilons), acc)}, os.path.join(ctx.out_dir, fig),
                              title=f"{ev.attack.upper()} accuracy")
    m = {"attack": ev.attack, "epsilons": list(epsilons), "accuracy": acc, "num_examples": n,
         "epsilon_space": ev.epsilon_space, "epsilon_units": units,
         "clip": [float(c) for c in clip] if np.isfinite(clip[0]) else None}
    if ev.attack == "pgd":
        m.update(pgd_steps=int(ev.pgd_steps), pgd_step_size=ev.pgd_step_size or "2.5·ε/steps",
                 pgd_random_start=bool(ev.pgd_random_start))
    attack = names.attack_name(ev.attack, ev.epsilon_space)
    headline = {names.attack_accuracy(attack, e): a for e, a in zip(epsilons, acc)}
    clipped = "x' clipped to [0, 1]" if m["clip"] else "x' not clipped"
    md = (f"Untargeted {ev.attack.upper()} on the true label, ε in units of the {units} "
          f"(evals.epsilon_space = {ev.epsilon_space}; normalisation happens inside the "
          f"model), {clipped}, sign(0) = 0, per-example gradients; {n} examples of the "
          f"{ev.split} split.\n\n"
          + _table([[f"{e:.4f} ({e * 255:.1f}/255)" if m["clip"] else f"{e:.4f}", a]
                    for e, a in zip(epsilons, acc)], ["ε", "accuracy"]))
    return Section("adversarial", m, headline, md, [(f"Accuracy vs ε ({ev.attack})", fig)])


# -- likelihood --------------------------------------------------------------------------
def _bound_stats(ll, dims: int) -> dict:
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


def likelihood(ctx: EvalContext) -> Section:
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
          + _table(rows, ["bound", "log p(x) bound (nats)", "NLL (nats)", "bits/dim",
                          "std (nats)", "definition"]))
    return Section("likelihood", m, {names.LOG_LIKELIHOOD: m["log_likelihood_nats"],
                                     names.BITS_PER_DIM: m["bits_per_dim"]}, md)


def _binarised_note(ctx: EvalContext) -> str:
    if not binarised(ctx.config):
        return ""
    return (f" The evaluated images were binarised once (a Bernoulli draw per pixel, seed "
            f"evals.seed = {ctx.config.evals.seed}), as training binarises them.")


def binarised(config) -> bool:
    """Whether training binarises the images (so evaluation binarises them once, seeded)."""
    return "binarize" in parse_transforms(config.data.train_transforms)
