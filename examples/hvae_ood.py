"""An HVAE: load a trained run, score your own arrays by likelihood and likelihood ratio.

    python -m jaxhybrid.main --config=configs/hvae.py:digits --workdir=runs/hvae
    python examples/hvae_ood.py --workdir=runs/hvae --out=runs/hvae/example

Prints the scores the reports use: L (the ELBO), L>k and LLR>k (the
likelihood ratio of Havtorn et al. 2021, higher = more in-distribution), with their
AUROC against uniform noise; writes the histograms of LLR>1.
"""
import numpy as np

from _common import args, arrays, auroc, histogram
from jaxhybrid import load_run

a = args(__doc__)
run = load_run(a.workdir, checkpoint=a.checkpoint)
data = arrays(run)
out = {name: run.predict(x) for name, x in data.items()}
print(f"{run}: mean log-likelihood bound on the test images "
      f"{np.mean(out['test']['log_likelihood']):.2f} nats")
for score in [k for k in out["test"] if k.startswith(("L", "-L"))]:
    s = {name: o[score] for name, o in out.items()}
    print(f"  {score}: AUROC test vs uniform noise {auroc(s['test'], s['uniform noise']):.4f}")
llr = next(k for k in out["test"] if "LLR" in k)
print(f"  histograms of {llr} -> {histogram({n: o[llr] for n, o in out.items()}, llr, a.out)}")
