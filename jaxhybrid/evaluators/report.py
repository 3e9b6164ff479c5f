"""report.md: model, checkpoint, data, every metric in tables, the conventions of the
evaluators that ran, figures.

Each number is printed beside its definition: the family's ``definitions`` for its outputs
and OOD scores (the evaluators put them in their sections), and the conventions below for
the metrics, all written out in docs/metrics.md. Only the evaluators that ran are
described: a skipped one gets its section with the reason and nothing else.
"""
from __future__ import annotations

import time

from etils import epath

from jaxhybrid.evaluators.likelihood import binarised
from jaxhybrid.evaluators.ood import OOD_SCORES_FILE
from jaxhybrid.evaluators.suite import title
from jaxhybrid.models import MODEL_FIELDS


def ran(results) -> set[str]:
    """The names of the evaluators that ran (not skipped)."""
    return {s.name for s in results.sections if "skipped" not in s.metrics}


def conventions(config, results) -> list[str]:
    """One line per convention of an evaluator that ran (docs/metrics.md)."""
    done, ev = ran(results), config.evals
    out = []
    if done & {"classification", "temperature"}:
        out.append("NLL in nats, the mean of −log p(y|x) over the split")
    if done & {"calibration", "temperature"}:
        out.append(f"calibration on the top-label confidence with {ev.num_bins} equal-width "
                   f"bins (lo, hi], confidence 1.0 in the last bin, over the whole split "
                   f"(never averaged over batches)")
    if "temperature" in done:
        out.append("temperature fitted by NLL on the validation split only; reported only "
                   "when the minimum lies inside the search range")
    if "ood" in done:
        out.append("OOD scores higher = more in-distribution; FPR@95 with in-distribution "
                   "positive, FPR@80 with OOD positive; ties as scikit-learn")
    adv = results.metrics.get("adversarial", {})
    if "adversarial" in done:
        clip = adv.get("clip")
        out.append(f"{adv.get('attack', 'attack').upper()} ε in {adv.get('epsilon_units', '?')}"
                   + (f", adversarial inputs clipped to {clip}" if clip else ", no clipping"))
    if "likelihood" in done:
        out.append("bits/dim = −log p(x) bound / (D·ln 2), D = H·W·C of the model input; "
                   "what it means depends on the likelihood (see that section)")
    return out


def _data_line(exp) -> str:
    c, s = exp.config, exp.splits
    line = (f"- **Data:** {s.name}: train {len(s.train)}, validation {len(s.validation)} "
            f"(carved from train), test {len(s.test)}; {s.num_classes} classes"
            + (f"; held-out classes {tuple(c.data.ood_classes)} ({len(s.heldout_test)} test "
               f"images) excluded from training" if s.heldout_test is not None else ""))
    if c.data.train_transforms:
        line += f"; train transforms: {c.data.train_transforms}"
    if binarised(c):
        line += (f". Training binarises the images (a fresh Bernoulli draw each time), so "
                 f"every evaluated split and OOD set was binarised once, with seed "
                 f"evals.seed = {c.evals.seed}")
    return line


def _model_options(config) -> dict:
    """``config.model``; of a network of the classifier's table, only the named network's
    options (the other network's are in the config, but unused)."""
    model = dict(config.model.items())
    name = model.get("name")
    if config.get("family") == "classifier" and name in MODEL_FIELDS:
        return {"name": name, **{k: model[k] for k in MODEL_FIELDS[name] if k in model}}
    return model


def header(exp, metrics: dict, step: int) -> list[str]:
    c = exp.config
    return [
        f"# jaxhybrid evaluation — {exp.splits.name}, {exp.family.label or exp.family.name}",
        "",
        f"- **Checkpoint:** {metrics.get('checkpoint', step)}; written "
        f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
        f"- **Family:** {exp.family.name} {exp.family.describe}",
        f"- **Model:** `{c.model.name}` {_model_options(c)}; input {exp.input_shape} "
        f"(pixel scale [0, 1]; normalisation mean={tuple(c.data.mean) or 'none'}, "
        f"std={tuple(c.data.std) or 'none'} applied inside the model)",
        _data_line(exp),
        f"- **Training:** global batch {c.batch_size}, optimizer {c.optimizer.name}, base lr "
        f"{c.optimizer.learning_rate} ({c.optimizer.lr_scaling} scaling from batch "
        f"{c.optimizer.base_batch_size}), seed {c.seed}; {exp.mesh.devices.size} device(s)",
    ]


def closing(results) -> str:
    done = ran(results)
    extra = []
    if "calibration" in done:
        extra.append("the per-bin statistics of the reliability diagrams")
    if "ood" in done:
        extra.append(f"every per-example OOD score in `{OOD_SCORES_FILE}`")
    return ("All numbers are in `metrics.json` beside this file"
            + (f", with {' and '.join(extra)}" if extra else "") + ".")


def write_report(exp, metrics: dict, results, out_dir, *, step: int) -> epath.Path:
    """``out_dir/report.md`` (any epath location); the caller writes on process 0 only."""
    out_dir = epath.Path(out_dir)
    lines = header(exp, metrics, step)
    found = conventions(exp.config, results)
    if found:
        lines.append("- **Conventions** (docs/metrics.md): " + "; ".join(found) + ".")
    lines.append("")
    for sec in results.sections:
        lines += [f"## {title(sec.name)}", "", sec.markdown, ""]
        for caption, fig in sec.figures:
            if (out_dir / fig).exists():
                lines += [f"![{caption}]({fig})", ""]
    lines += [closing(results), ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
