"""Run directories: finding them, and reading the evaluation each one names.

Two layouts are read:

* ``eval/<step>/<eval_id>/metrics.json`` (``eval_id``: 8 hex characters naming the
  evaluation settings), with ``final_metrics.json``'s ``eval_dir`` relative to the run
  directory (``eval/208/1a2b3c4d``);
* the older ``eval/<step>/metrics.json``, with ``final_metrics.json``'s ``eval_dir``
  absolute and ``evaluated_step``.

:func:`select_evaluation` picks one: ``best`` is the evaluation ``final_metrics.json``
names (the run's selected checkpoint), ``latest`` the highest evaluated step, or a step
number. Every path is an ``etils.epath.Path`` (:func:`jaxhybrid.checkpointing.run_path`),
so a run on gs:// reads like a local one.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re

from etils import epath

from jaxhybrid.checkpointing import run_path
from jaxhybrid.config_keys import flatten

log = logging.getLogger("jaxhybrid.tools")

FINAL_FILE = "final_metrics.json"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
SKIP_DIRS = {"checkpoints", "eval", "jax_cache", "aggregate", "__pycache__"}
CHECKPOINT_CHOICES = "best, latest or a step number"
_EVAL_ID = re.compile(r"^[0-9a-f]{8}$")


def read_json(path: epath.Path) -> dict:
    """The JSON file ``path``; a bad file is a ValueError naming it."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


@dataclasses.dataclass
class Evaluation:
    """One evaluation of a run: ``eval/<step>[/<eval_id>]``."""
    run: epath.Path
    step: int
    eval_id: str | None          # None in the old layout
    selected_by: str = ""        # best | latest | step N
    metrics: dict = dataclasses.field(default_factory=dict)

    @property
    def relative(self) -> str:
        """'eval/208/1a2b3c4d' (new layout) or 'eval/208' (old)."""
        return f"eval/{self.step}" + (f"/{self.eval_id}" if self.eval_id else "")

    @property
    def directory(self) -> epath.Path:
        return self.run / self.relative

    @property
    def label(self) -> str:
        """'step 208, eval 1a2b3c4d' or 'step 208'."""
        return f"step {self.step}" + (f", eval {self.eval_id}" if self.eval_id else "")


def check_run_dir(run_dir) -> epath.Path:
    """``run_dir`` as an epath.Path; an error naming it when it is not a directory."""
    run = run_path(run_dir)
    if not run.exists():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    if not run.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} is not a directory")
    return run


def list_evaluations(run: epath.Path) -> list[Evaluation]:
    """Every evaluation under ``run/eval``, in both layouts, sorted by (step, eval_id)."""
    root = run / "eval"
    if not root.is_dir():
        return []
    found = []
    for step_dir in root.iterdir():
        if not step_dir.name.isdigit() or not step_dir.is_dir():
            continue
        step = int(step_dir.name)
        if (step_dir / METRICS_FILE).exists():
            found.append(Evaluation(run, step, None))
        for sub in step_dir.iterdir():
            if _EVAL_ID.match(sub.name) and (sub / METRICS_FILE).exists():
                found.append(Evaluation(run, step, sub.name))
    return sorted(found, key=lambda e: (e.step, e.eval_id or ""))


def parse_checkpoint(text) -> str | int:
    """'best', 'latest' or a step number (an int); anything else is an error."""
    text = str(text).strip()
    if text in ("best", "latest"):
        return text
    if text.isdigit():
        return int(text)
    raise ValueError(f"--checkpoint {text!r}; valid choices: {CHECKPOINT_CHOICES}")


def _listing(evaluations: list[Evaluation]) -> str:
    return ", ".join(e.relative for e in evaluations) or "none"


def _relative_eval_dir(eval_dir: str) -> str:
    """final_metrics.json's eval_dir relative to its run: kept when relative; the part
    from its last 'eval/' when absolute (the old layout, or a moved run)."""
    text = str(eval_dir).rstrip("/")
    if not text.startswith("/") and "://" not in text:
        return text
    i = text.rfind("/eval/")
    return text[i + 1:] if i >= 0 else text


def named_evaluation(run: epath.Path, found: list[Evaluation]) -> Evaluation:
    """The evaluation ``final_metrics.json`` names: its ``eval_dir``, else the one
    evaluation at its ``evaluated_step``."""
    final_path = run / FINAL_FILE
    if not final_path.exists():
        raise FileNotFoundError(
            f"{run} has no {FINAL_FILE} (training has not finished there), so no selected "
            f"evaluation; choose one with --checkpoint latest or a step number "
            f"(evaluations: {_listing(found)})")
    final = read_json(final_path)
    if final.get("eval_dir"):
        rel = _relative_eval_dir(final["eval_dir"])
        match = [e for e in found if e.relative == rel]
        if match:
            return match[0]
    step = final.get("evaluated_step")
    at_step = [e for e in found if e.step == step]
    if len(at_step) == 1:
        return at_step[0]
    raise FileNotFoundError(
        f"{run}/{FINAL_FILE} names eval_dir {final.get('eval_dir')!r} (step {step}), which "
        f"is not among the evaluations there ({_listing(found)}); choose one with "
        f"--checkpoint and --eval_id")


def select_evaluation(run_dir, checkpoint="best", eval_id: str | None = None) -> Evaluation:
    """The evaluation of ``run_dir`` chosen by ``checkpoint`` (best | latest | STEP) and
    ``eval_id``, with its metrics.json read. Errors name the run and the choices."""
    run = check_run_dir(run_dir)
    found = list_evaluations(run)
    if not found:
        raise FileNotFoundError(
            f"no evaluation in {run_dir}: no eval/<step>/metrics.json; train there or run "
            f"python -m jaxhybrid.main --mode=eval --workdir={run_dir} first")
    which = parse_checkpoint(checkpoint)
    if which == "best" and not eval_id:
        chosen = named_evaluation(run, found)
        chosen.selected_by = "best"
    else:
        chosen = _at_step(run_dir, found, which, eval_id)
    chosen.metrics = read_json(chosen.directory / METRICS_FILE)
    return chosen


def _at_step(run_dir, found: list[Evaluation], which, eval_id: str | None) -> Evaluation:
    if which == "best":
        step = named_evaluation(found[0].run, found).step
    elif which == "latest":
        step = max(e.step for e in found)
    else:
        step = which
    steps = sorted({e.step for e in found})
    at_step = [e for e in found if e.step == step]
    if not at_step:
        raise ValueError(f"{run_dir} has no evaluation at step {step}; evaluated steps: "
                         f"{', '.join(map(str, steps))}")
    if eval_id:
        at_step = [e for e in at_step if e.eval_id == eval_id]
        if not at_step:
            raise ValueError(f"{run_dir} has no evaluation {eval_id!r} at step {step}; "
                             f"evaluations: {_listing([e for e in found if e.step == step])}")
    if len(at_step) > 1:
        raise ValueError(f"{run_dir}: step {step} has {len(at_step)} evaluations "
                         f"({_listing(at_step)}); choose one with --eval_id")
    chosen = at_step[0]
    chosen.selected_by = which if isinstance(which, str) else f"step {which}"
    return chosen


# -- runs of a sweep ----------------------------------------------------------------------
@dataclasses.dataclass
class Run:
    directory: str
    config: dict                 # flat {"a.b": value} of config.json
    raw_config: dict             # config.json as saved
    final: dict                  # final_metrics.json
    evaluation: Evaluation       # the evaluation read (select_evaluation)

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    @property
    def step(self) -> int:
        return self.evaluation.step


def find_runs(run_root) -> list[str]:
    """Every directory under ``run_root`` (itself included) holding final_metrics.json."""
    root = check_run_dir(run_root)
    found, stack = [], [root]
    while stack:
        d = stack.pop()
        if (d / FINAL_FILE).exists():
            found.append(str(d))
            continue
        stack += [c for c in d.iterdir() if c.name not in SKIP_DIRS and c.is_dir()]
    return sorted(found)


def load_run(directory: str, checkpoint="best") -> Run:
    run = check_run_dir(directory)
    final = read_json(run / FINAL_FILE)
    raw = read_json(run / CONFIG_FILE)
    return Run(str(run), flatten(raw, lists_as_tuples=True), raw, final, select_evaluation(run, checkpoint))


def collect_runs(run_root, checkpoint="best") -> list[Run]:
    """The finished runs under ``run_root``; one that cannot be read is skipped, logged."""
    runs = []
    for d in find_runs(run_root):
        try:
            runs.append(load_run(d, checkpoint))
        except (OSError, ValueError) as e:
            log.warning("skipping %s: %s", d, e)
    return runs
