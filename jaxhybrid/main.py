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
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(message)s", force=True)
    logging.getLogger("absl").setLevel(logging.WARNING)
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    from jaxhybrid.parallel import maybe_initialize_distributed
    maybe_initialize_distributed()
    try:
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


def run():
    app.run(main)


if __name__ == "__main__":
    run()
