"""A DHM (β-VAE + ResNet classifier): load a trained run, score your own arrays, plot.

    python -m jaxhybrid.main --config=configs/dhm.py:digits --workdir=runs/dhm
    python examples/dhm_scores.py --workdir=runs/dhm --out=runs/dhm/example

Prints the accuracy on the test images and, for each OOD score the family serves (e.g.
max-softmax, the ELBO, neg_loss_sampled), its AUROC against uniform noise; writes the
score histograms.
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
scores = [k for k, v in out["test"].items() if v.ndim == 1 and k != "log_likelihood"]
report(out, scores, a.out)
