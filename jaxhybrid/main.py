"""Command line: ``python -m jaxhybrid.main --config=configs/gffn.py:digits --workdir=DIR``.

Flags only; the work is done by :func:`jaxhybrid.train.train_and_evaluate` and
:func:`jaxhybrid.evaluate.evaluate`, which return the final metrics.
"""
from __future__ import annotations

import json
import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/gffn.py:digits.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, reports).")
flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (resumes if possible) or eval.")
flags.DEFINE_string("checkpoint", "", "eval mode: 'best', 'latest' or a step number "
                    "(default: the config's evals.checkpoint, 'best').")
flags.DEFINE_string("coordinator_address", None, "Multi-process start-up: process 0's "
                    "HOST:PORT, the same on every process (default: JAX_COORDINATOR_ADDRESS, "
                    "else auto-detected on Cloud TPU VMs and under SLURM with "
                    "JAXHYBRID_DISTRIBUTED=1).")
flags.DEFINE_integer("num_processes", None, "Multi-process start-up: the number of processes "
                     "(default: JAX_NUM_PROCESSES, else auto-detected).")
flags.DEFINE_integer("process_id", None, "Multi-process start-up: this process's id, "
                     "0..num_processes-1 (default: JAX_PROCESS_ID, else auto-detected).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(message)s", force=True)
    logging.getLogger("absl").setLevel(logging.WARNING)
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    from jaxhybrid.parallel import maybe_initialize_distributed
    try:
        # DistributedStartupError (a ValueError) for any start-up failure: error: ..., exit 1
        maybe_initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                     FLAGS.process_id)
        if FLAGS.mode == "train":
            from jaxhybrid.train import train_and_evaluate
            metrics = train_and_evaluate(FLAGS.config, FLAGS.workdir)
        else:
            from jaxhybrid.evaluate import evaluate
            metrics = evaluate(FLAGS.config, FLAGS.workdir, FLAGS.checkpoint)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        # Bad input (config, data, checkpoint) or a diverged run: the message says what to
        # do; the traceback only with JAXHYBRID_DEBUG=1.
        if os.environ.get("JAXHYBRID_DEBUG"):
            raise
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
    print("FINAL METRICS " + json.dumps(metrics, sort_keys=True, default=str))


def parse_flags(argv):
    """absl's flag parsing, where any bad flag or config (an unknown ``--config.a.b`` key, a
    value of the wrong type, an unknown variant) is ``error: ...`` and exit status 1, like
    every other bad input; the traceback only with JAXHYBRID_DEBUG=1."""
    try:
        argv = FLAGS(argv)
        FLAGS.config.keys()   # a config file that could not be read raises here
        return argv
    except Exception as e:  # noqa: BLE001 - whatever fails while parsing is bad input
        if os.environ.get("JAXHYBRID_DEBUG"):
            raise
        from jaxhybrid.config_check import flag_error_message
        print(f"error: {flag_error_message(e, argv)}", file=sys.stderr)
        sys.exit(1)


def run():
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
