"""GFFN (joint likelihood) and its FFN baseline (``--config.objective.joint_weight=0``).

Variants (``--config=configs/gffn.py:VARIANT``):

* ``digits`` (default) — sklearn digits 8×8, offline, CPU::

      python -m jaxhybrid.main --config=configs/gffn.py:digits --workdir=runs/gffn_digits
      python -m jaxhybrid.main --config=configs/gffn.py:digits --workdir=runs/ffn_digits \\
          --config.objective.joint_weight=0

  Classes 8 and 9 are held out as a near-OOD set. Expect ≥ 95% test accuracy on
  the 8 remaining classes for both λ = 0 and λ = 1.
* ``mnist_npz`` — the shared MNIST file (../shared/data/mnist.npz or
  $JAXHYBRID_MNIST_NPZ), 28×28 padded to 32×32, thesis CNN, Adam, batch 128,
  10 epochs: ≈ 99% test accuracy; meant for a GPU (benchmarks/gffn_overhead.py times
  a step on the machine at hand).
* ``fashion_mnist_npz`` — the same on the shared Fashion-MNIST file
  (../shared/data/fashion_mnist.npz or $JAXHYBRID_FASHION_MNIST_NPZ); OOD sets: the
  shared MNIST test split (``mnist``), noise, constant and inverted images. The
  "train longer" study (docs/results/gffn_train_longer.md) runs it and mnist_npz: with a
  4,000-image subset, width 8 and 40 epochs, FFN 86.5 % / GFFN 87.1 % test accuracy at the
  best validation checkpoint (batch 32), ECE 0.100 / 0.043 after 40 epochs.
* ``mnist``, ``fashion_mnist``, ``cifar10``, ``svhn`` — TFDS (prepared offline with
  ``python -m jaxhybrid.data.tfds_prepare`` or by ``tfds build``), thesis settings:
  32×32 frame, Adam lr 1e-3 at batch 128 with square-root scaling. Expected
  (single GPU/TPU host, 30 epochs): MNIST ≈ 99%, Fashion-MNIST ≈ 91–92%,
  SVHN ≈ 93%, CIFAR-10 ≈ 75–80% with this plain CNN.
* ``smoke`` — a few steps on digits for tests and CI.

Any variant can be shrunk for a CPU check with ``--config.num_steps=20``.

The batch-size study (FFN vs GFFN over ≥ 256× of batch size, 3 seeds; ``get_sweep``)::

    python -m jaxhybrid.tools.sweep --config=configs/gffn.py:digits --workdir=runs/bs
"""
from __future__ import annotations

from jaxhybrid.config_defaults import (CIFAR_MEAN, CIFAR_STD, FASHION_MNIST_NPZ, MNIST_NPZ,
                                       base_config, check_variant)

VARIANTS = ("digits", "smoke", "mnist_npz", "fashion_mnist_npz", "mnist", "fashion_mnist", "cifar10",
            "svhn")



def get_config(variant: str = "digits"):
    variant = check_variant(variant, VARIANTS, "configs/gffn.py")
    c = base_config()
    c.optimizer.lr_scaling = "sqrt"
    c.optimizer.base_batch_size = 128
    if variant in ("digits", "smoke"):
        c.data.source = "digits"
        c.data.ood_classes = (8, 9)
        c.data.validation_size = 0.15
        c.model.width = 16
        c.model.hidden = (128,)
        c.batch_size = 64
        c.eval_batch_size = 256
        c.num_epochs = 30.0
        c.log_every = 50
        c.evals.ood_sets = "heldout,uniform_noise,gaussian_noise,constant,inverted"
        c.evals.adversarial_max_examples = 0
        if variant == "smoke":
            c.num_epochs = 2.0
            c.log_every = 5
            c.evals.adversarial_max_examples = 64
    elif variant in ("mnist_npz", "fashion_mnist_npz"):
        c.data.source = "npz"
        c.data.npz_path = MNIST_NPZ
        c.data.validation_size = 5000
        c.data.frame = 32
        c.evals.ood_sets = "digits,uniform_noise,gaussian_noise,constant,inverted"
        if variant == "fashion_mnist_npz":
            c.data.npz_path = FASHION_MNIST_NPZ
            c.evals.ood_sets = f"mnist=npz:{MNIST_NPZ},uniform_noise,gaussian_noise,constant," \
                               f"inverted"
        c.num_epochs = 10.0
        c.log_every = 100
    else:
        c.data.source = "tfds"
        c.data.name = {"mnist": "mnist", "fashion_mnist": "fashion_mnist",
                       "cifar10": "cifar10", "svhn": "svhn_cropped"}[variant]
        c.data.validation_size = 5000
        c.data.frame = 32
        c.num_epochs = 30.0
        c.log_every = 200
        if variant in ("mnist", "fashion_mnist"):
            other = "tfds:fashion_mnist" if variant == "mnist" else "tfds:mnist"
            c.evals.ood_sets = f"{other},uniform_noise,gaussian_noise,constant,inverted"
        elif variant == "cifar10":
            c.data.mean, c.data.std = CIFAR_MEAN, CIFAR_STD
            c.evals.ood_sets = "tfds:svhn_cropped,uniform_noise,gaussian_noise,constant"
        else:
            c.data.mean, c.data.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
            c.evals.ood_sets = "tfds:cifar10,uniform_noise,gaussian_noise,constant"
    return c


def get_sweep(variant: str = "digits"):
    """The batch-size study (docs/results/run_study.sh): FFN vs GFFN, ≥ 256× of batch,
    and how ``jaxhybrid.tools.aggregate`` presents it (the figures of docs/results/)."""
    batch = {"digits": [4, 16, 64, 256, 1024], "smoke": [8, 16]}.get(
        variant, [16, 64, 256, 1024, 4096])
    return {
        "batch_size": batch, "objective.joint_weight": [0.0, 1.0], "seeds": 3,
        "x": "batch_size", "x_label": "global batch size", "x_scale": "log2",
        "titles": {"batch_size": "batch", "objective.joint_weight": "λ"},
        "labels": {"objective.joint_weight": {0.0: "FFN (λ=0)", 1.0: "GFFN (λ=1)"}},
        "plots": [
            {"file": "accuracy_vs_batch_size.png", "metrics": ["accuracy"],
             "ylabel": "test accuracy", "panel_size": [5.0, 3.8],
             "title": "Test accuracy vs batch size (mean ± std over seeds)"},
            {"file": "ece_vs_batch_size.png", "metrics": ["ece", "ece_after_ts"],
             "panels": "metric", "ylabel": "ECE", "ylim": [0, None],
             "panel_titles": {"ece": "ECE (15 equal-width bins)",
                              "ece_after_ts": "ECE after temperature scaling"}},
            # the thesis' two OOD scores: a panel per OOD set, max_softmax solid, log_px dashed
            {"file": "ood_auroc_vs_batch_size.png", "title": "OOD: {}",
             "metrics": ["ood/*/max_softmax/auroc", "ood/*/log_px/auroc"],
             "ylabel": "AUROC", "ylim": [0, 1.02], "hline": {"y": 0.5, "label": "chance"},
             "panel_size": [4.4, 3.6], "legend_panels": "shared",
             "legend": {"fontsize": 6, "frameon": True, "framealpha": 0.8, "loc": "best"}},
            {"kind": "reliability", "file": "reliability_largest_batch.png",
             "title": "Reliability at the largest global batch, {x}"},
        ],
    }
