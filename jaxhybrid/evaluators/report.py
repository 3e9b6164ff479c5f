"""report.md: model, checkpoint, data, every metric in tables, conventions, figures."""
from __future__ import annotations

import time

from etils import epath


TITLES = {"ood": "OOD detection", "adversarial": "Adversarial robustness",
          "temperature": "Temperature scaling"}


def write_report(exp, metrics: dict, results, out_dir, *, step: int) -> epath.Path:
    """``out_dir/report.md`` (any epath location); the caller writes on process 0 only."""
    out_dir = epath.Path(out_dir)
    c = exp.config
    s = exp.splits
    lines = [
        f"# jaxhybrid evaluation — {s.name}, {exp.family.label or exp.family.name}",
        "",
        f"- **Checkpoint:** {metrics.get('checkpoint', step)}; written "
        f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
        f"- **Family:** {exp.family.name} {exp.family.describe}",
        f"- **Model:** `{c.model.name}` {dict(c.model.items())}; input {exp.input_shape} "
        f"(pixel scale [0, 1]; normalisation mean={tuple(c.data.mean) or 'none'}, "
        f"std={tuple(c.data.std) or 'none'} applied inside the model)",
        f"- **Data:** {s.name}: train {len(s.train)}, validation {len(s.validation)} (carved "
        f"from train), test {len(s.test)}; {s.num_classes} classes"
        + (f"; held-out classes {tuple(c.data.ood_classes)} ({len(s.heldout_test)} test "
           f"images) excluded from training" if s.heldout_test is not None else ""),
        f"- **Training:** global batch {c.batch_size}, optimizer {c.optimizer.name}, base lr "
        f"{c.optimizer.learning_rate} ({c.optimizer.lr_scaling} scaling from batch "
        f"{c.optimizer.base_batch_size}), seed {c.seed}; {exp.mesh.devices.size} device(s)",
        f"- **Conventions:** docs/metrics.md — calibration on top-label confidence with "
        f"{c.evals.num_bins} equal-width bins (lo, hi], confidence 1.0 in the last bin, "
        f"whole-set (never batch-averaged); OOD scores higher = in-distribution, FPR@95 with "
        f"in-distribution positive, FPR@80 with OOD positive; ε in [0, 1] pixel units, "
        f"adversarial inputs clipped to [0, 1]; NLL in nats.",
        "",
    ]
    for sec in results.sections:
        lines += [f"## {TITLES.get(sec.name, sec.name.capitalize())}", "", sec.markdown, ""]
        for title, fig in sec.figures:
            if (out_dir / fig).exists():
                lines += [f"![{title}]({fig})", ""]
    lines += ["All numbers, with per-bin statistics, are in `metrics.json` beside this file.", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
