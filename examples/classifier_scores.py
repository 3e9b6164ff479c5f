"""A GFFN (or its FFN baseline): load a trained run, score your own arrays, plot.

    python -m jaxhybrid.main --config=configs/gffn.py:digits --workdir=runs/gffn
    python examples/classifier_scores.py --workdir=runs/gffn --out=runs/gffn/example

Prints the accuracy on the test images and the AUROC of max-softmax and of log p(x)
(the GFFN's energy, log Σ_k exp f_k(x)) against uniform noise; writes their histograms.
"""
import numpy as np

from _common import args, arrays, report
from jaxhybrid import load_run

a = args(__doc__)
run = load_run(a.workdir, checkpoint=a.checkpoint)
data = arrays(run)
out = {name: run.predict(x) for name, x in data.items()}
labels = run.experiment.splits.test.labels[:len(data["test"])]
print(f"{run}: test accuracy {np.mean(out['test']['probs'].argmax(1) == labels):.4f}")
report(out, ["max_softmax", "log_px"], a.out)
