"""Command line: ``python -m jaxhybrid.main --config=configs/gffn.py:digits --workdir=DIR``.

Flags only; the work is done by :func:`jaxhybrid.train.train_and_evaluate` and
:func:`jaxhybrid.evaluate.evaluate`, which return the final metrics; a short summary
of them is printed at the end (the numbers are in the run directory). Bad input is
``error: ...`` and exit status 1; SIGINT/SIGTERM end with what was kept and how to
resume, and exit status 128 + the signal number.

``--config`` may name a run directory (``RUN`` or ``RUN/config.json``) or be left out:
then the run directory's saved config is used (:mod:`jaxhybrid.saved_config`), so
``--mode=eval --workdir=RUN`` evaluates a run without its original command. One command
at a time per run directory (:mod:`jaxhybrid.runlock`).
"""
from __future__ import annotations

import logging
import os
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from jaxhybrid import logs
from jaxhybrid.flag_errors import parse_flags_or_exit
from jaxhybrid.evaluate import evaluate
from jaxhybrid.evaluators.calibration import ECE
from jaxhybrid.evaluators.classification import ACCURACY, NLL
from jaxhybrid.evaluators.likelihood import BITS_PER_DIM, LOG_LIKELIHOOD
from jaxhybrid.evaluators.temperature import ECE_AFTER_TS
from jaxhybrid.interrupts import Interrupted
from jaxhybrid.parallel import maybe_initialize_distributed
from jaxhybrid.saved_config import with_saved_config
from jaxhybrid.train import train_and_evaluate

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/gffn.py:digits; or a run directory (RUN or "
    "RUN/config.json: its saved config). Without it, --workdir's saved config (to evaluate "
    "or resume a run).", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, reports).")
flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (resumes if possible) or eval.")
flags.DEFINE_string("checkpoint", "", "eval mode: 'best', 'latest' or a step number "
                    "(default: the config's evals.checkpoint, 'best'). Training always "
                    "resumes from the latest checkpoint.")
flags.DEFINE_boolean("allow_config_change", False, "train mode: continue a run whose saved "
                     "config differs in budget fields only (num_epochs, num_steps, "
                     "max_train_seconds, early_stopping_patience, checkpoint_every); the "
                     "change is recorded in config_changes.jsonl.")
flags.DEFINE_boolean("overwrite", False, "eval mode: replace an existing evaluation of the "
                     "same step and settings (eval/<step>/<eval_id>/) instead of reusing it.")
flags.DEFINE_string("log_file", None, "Append the log to this file; the console keeps the "
                    "progress lines (one per log step and evaluator), warnings, errors and "
                    "the final summary. The run directory keeps its own log either way "
                    "(jaxhybrid.log).")
flags.DEFINE_string("coordinator_address", None, "Multi-process start-up: process 0's "
                    "HOST:PORT, the same on every process (default: JAX_COORDINATOR_ADDRESS, "
                    "else auto-detected on Cloud TPU VMs and under SLURM with "
                    "JAXHYBRID_DISTRIBUTED=1).")
flags.DEFINE_integer("num_processes", None, "Multi-process start-up: the number of processes "
                     "(default: JAX_NUM_PROCESSES, else auto-detected).")
flags.DEFINE_integer("process_id", None, "Multi-process start-up: this process's id, "
                     "0..num_processes-1 (default: JAX_PROCESS_ID, else auto-detected).")
flags.mark_flags_as_required(["workdir"])


# the headline numbers of the final summary, where the evaluation has them
SUMMARY = (ACCURACY, NLL, ECE, ECE_AFTER_TS, LOG_LIKELIHOOD, BITS_PER_DIM)


def check_flags() -> None:
    """Flag combinations that cannot work, before anything is done."""
    if FLAGS.mode == "train" and FLAGS.checkpoint:
        raise ValueError(f"--checkpoint={FLAGS.checkpoint} is for --mode=eval: training "
                         f"always resumes from the latest checkpoint of --workdir")
    if FLAGS.mode == "train" and FLAGS.overwrite:
        raise ValueError("--overwrite is for --mode=eval (it replaces an evaluation)")
    if FLAGS.log_file and os.path.isdir(FLAGS.log_file):
        raise ValueError(f"--log_file={FLAGS.log_file} is a directory; give a file path, "
                         f"e.g. --log_file={os.path.join(FLAGS.log_file, 'train.log')}")


def summary(metrics: dict) -> str:
    """A few lines: what ran, where its evaluation is, the headline numbers."""
    workdir = metrics.get("workdir", FLAGS.workdir)
    lines = []
    if "stopped" in metrics:
        lines.append(f"run {workdir}: step {metrics['step']} ({metrics['stopped']})")
    lines.append(f"evaluated {metrics.get('checkpoint')}: {workdir}/{metrics.get('eval_dir')}"
                 f"/report.md")
    heads = [f"{k} {metrics[k]:.4f}" for k in SUMMARY if isinstance(metrics.get(k), float)]
    return "\n".join(lines + (["  " + " | ".join(heads)] if heads else []))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, force=True,
                        format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    try:
        # DistributedStartupError (a ValueError) for any start-up failure: error: ..., exit 1
        check_flags()
        maybe_initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                     FLAGS.process_id)
        logs.setup(FLAGS.log_file)
        if FLAGS.mode == "train":
            metrics = train_and_evaluate(FLAGS.config, FLAGS.workdir,
                                         allow_config_change=FLAGS.allow_config_change)
        else:
            metrics = evaluate(FLAGS.config, FLAGS.workdir, FLAGS.checkpoint,
                               overwrite=FLAGS.overwrite)
    except (ValueError, OSError, FloatingPointError) as e:
        # Bad input (config, data, checkpoint), a diverged run, or a file that cannot be
        # written (a full disk): the message says what to do; the traceback only with
        # JAXHYBRID_DEBUG=1.
        if os.environ.get("JAXHYBRID_DEBUG"):
            raise
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
    except Interrupted as e:
        print(e, file=sys.stderr)
        sys.exit(e.exit_status)
    except KeyboardInterrupt:     # before the handlers of training or evaluation were set
        print("interrupted before training or evaluation began; nothing was written",
              file=sys.stderr)
        sys.exit(130)
    if jax.process_index() == 0:
        print(summary(metrics))


def parse_flags(argv):
    """absl's parsing (:func:`parse_flags_or_exit`) after ``--config=RUN`` or a missing
    ``--config`` has been turned into the run directory's saved config."""
    try:
        argv = with_saved_config(argv)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    return parse_flags_or_exit(argv)


def run():
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
