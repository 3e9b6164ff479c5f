"""DHM: a ResNet-18 classifier and a β-VAE trained jointly (docs/methods/dhm.md).

Variants (``--config=configs/dhm.py:VARIANT``):

* ``digits`` (default) — sklearn digits 8×8, offline, CPU, a tiny DHM (width 8, one
  block per stage, latent 16), the original's loss (``recon=mse_mean``, c = 0.1,
  α = β = 1)::

      python -m jaxhybrid.main --config=configs/dhm.py:digits --workdir=runs/dhm_digits

  Classes 8 and 9 are held out as a near-OOD set. Measured (2-core CPU, one device,
  240 steps, about 45 s of training): 97.9% test accuracy on the 8 remaining classes
  (best validation checkpoint), ECE 0.030, FGSM accuracy 0.75 at ε = 0.08, IWAE-8 bound
  −66.9 nats (1.51 bits/dim of a density: a Gaussian of scale 1 on the pixels,
  ``recon_scale``).
* ``mnist_npz`` — the shared MNIST file (../shared/data/mnist.npz or
  $JAXHYBRID_MNIST_NPZ), 28×28×1 zero-padded to 32×32 (the decoder's sizes are
  multiples of 8), the default-size DHM, 10 epochs.
  Hours on a 2-core CPU; minutes on one GPU.
* ``fashion_mnist_npz`` — the shared Fashion-MNIST file (../shared/data/fashion_mnist.npz
  or $JAXHYBRID_FASHION_MNIST_NPZ), 28×28 zero-padded to 32×32, normalised with its
  training statistics (mean 0.2860, std 0.3530), a CPU-sized DHM (width 8, latent 32,
  head 64; the original's two-blocks-per-stage ResNet-18s), 5 epochs; OOD: the shared
  MNIST test split (near), uniform and Gaussian noise (far). The β study of
  docs/results/dhm_beta.md sweeps it (6,000-image subset, 2 epochs, 2 seeds, about 2.5
  min a point on an idle 2-core CPU): 79.5 ± 0.6 % test accuracy at β = 0, 79.5 ± 0.8 %
  at β = 1, 78.1 ± 0.4 % at β = 10⁴.
* ``svhn``, ``cifar10`` — TFDS (prepared offline with ``python -m
  jaxhybrid.data.tfds_prepare`` or ``tfds build``), the original's settings: two
  ResNet-18s (width 64, latent 256), BatchNorm, Adam 1e-3 ×0.1 every 50 epochs,
  150 epochs, batch 400, α = β = 1, c = 0.1, mse_mean, PyTorch's initialisation
  (``model.init=pytorch``; the other variants keep flax's); the best-validation-accuracy
  checkpoint is evaluated, FGSM on the DHM ε grid {0.02, …, 0.08}.
  SVHN: 58,605 / 14,652 train/validation split, mean = std = 0.5; OOD: CIFAR-10,
  CIFAR-100. CIFAR-10: 42,000 / 8,000, random crop (padding 4) + flip, CIFAR
  mean/std; OOD: SVHN, CIFAR-100. A GPU/TPU job.

Any variant can be shrunk for a CPU check with ``--config.num_steps=20``. The TPU/GPU
precision policy is ``--config.compute_dtype=bfloat16`` (bf16 convolutions, float32
parameters, optimiser state and losses); on digits it lands within 1.5 points of float32
(tests/test_dhm.py: 97.9 % float32, 99.0 % bfloat16 with this variant: 3 of the 288 test
examples; one run's binomial standard error there is 0.8 points). Other likelihoods:
``--config.model.recon=gaussian_learned`` (a per-pixel σ ≥ ``recon_scale_min``),
``bernoulli``, ``discretized_logistic``, ``discretized_mix_logistic`` (nats; c = 1 makes
the generative term −ELBO: ``--config.objective.kl_coef=1``), and the IWAE-K training bound
``--config.objective.train_samples=K``.

The β sweep (the original went up to 1e5; ``get_sweep``)::

    python -m jaxhybrid.tools.sweep --config=configs/dhm.py:digits --workdir=runs/dhm_beta
"""
from __future__ import annotations

from jaxhybrid.config_defaults import (CIFAR_MEAN, DHM_CIFAR_STD, FASHION_MNIST_NPZ, MNIST_NPZ,
                                      base_config, check_variant)

VARIANTS = ("digits", "mnist_npz", "fashion_mnist_npz", "svhn", "cifar10")


# Fashion-MNIST training-set pixel statistics (72.94/255 and its std), the original's recipe
# of normalising with the training set's own statistics
FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530


def get_config(variant: str = "digits"):
    variant = check_variant(variant, VARIANTS, "configs/dhm.py")
    c = base_config("dhm")          # model.* and objective.*: families/dhm.py's tables
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.lr_scaling = "none"
    c.evals.checkpoint = "best"
    if variant == "digits":
        c.data.source = "digits"
        c.data.ood_classes = (8, 9)
        c.data.validation_size = 0.15
        c.model.update({"width": 8, "blocks": (1, 1, 1, 1), "latent": 16,
                        "head_hidden": 64, "iwae_samples": 8})
        c.batch_size = 64
        c.eval_batch_size = 256
        c.num_epochs = 15.0
        c.log_every = 50
        c.evals.ood_sets = "heldout,uniform_noise,gaussian_noise,constant,inverted"
        c.evals.adversarial_max_examples = 256
        c.evals.epsilons = "dhm"
    elif variant == "mnist_npz":
        c.data.source = "npz"
        c.data.npz_path = MNIST_NPZ
        c.data.frame = 32                           # the decoder needs multiples of 8
        c.data.validation_size = 5000
        c.batch_size = 128
        c.num_epochs = 10.0
        c.log_every = 100
        c.evals.ood_sets = "digits,uniform_noise,gaussian_noise,constant,inverted"
        c.evals.epsilons = "dhm"
    elif variant == "fashion_mnist_npz":
        c.data.source = "npz"
        c.data.npz_path = FASHION_MNIST_NPZ
        c.data.frame = 32                           # the decoder needs multiples of 8
        c.data.validation_size = 5000
        c.data.mean, c.data.std = (FMNIST_MEAN,), (FMNIST_STD,)
        c.model.update({"width": 8, "latent": 32, "head_hidden": 64})
        c.batch_size = 128
        c.num_epochs = 5.0
        c.log_every = 100
        c.evals.names = "classification,calibration,temperature,ood,adversarial"
        c.evals.ood_sets = f"mnist=npz:{MNIST_NPZ},uniform_noise,gaussian_noise"
        c.evals.epsilons = "dhm"
    else:   # the original's settings
        c.data.source = "tfds"
        c.model.init = "pytorch"                    # the original's initial weights
        c.batch_size = 400
        c.eval_batch_size = 1000
        c.num_epochs = 150.0
        c.optimizer.schedule = "step"
        c.optimizer.decay_factor = 0.1
        c.optimizer.decay_every_epochs = 50
        c.log_every = 100
        c.evals.epsilons = "dhm"
        if variant == "svhn":
            c.data.name = "svhn_cropped"
            c.data.validation_size = 14652          # 73,257 = 58,605 + 14,652
            c.data.mean, c.data.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
            c.evals.ood_sets = "tfds:cifar10,tfds:cifar100"
        else:
            c.data.name = "cifar10"
            c.data.validation_size = 8000           # 50,000 = 42,000 + 8,000
            c.data.train_transforms = "crop,flip"
            c.data.crop_padding = 4
            c.data.mean, c.data.std = CIFAR_MEAN, DHM_CIFAR_STD
            c.evals.ood_sets = "tfds:svhn_cropped,tfds:cifar100"
    return c


def get_sweep(variant: str = "digits"):
    """The β sweep (docs/methods/dhm.md: the original went up to 1e5), one seed per β by default;
    ``jaxhybrid.tools.aggregate`` plots accuracy, ECE, OOD AUROC and FGSM accuracy against β."""
    betas = {"digits": [0.1, 1.0, 10.0, 100.0],            # > 0: the x axis is log10
             "fashion_mnist_npz": [0.0, 0.01, 1.0, 100.0, 10000.0]}.get(  # 0: the plain ResNet
        variant, [0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0])
    return {
        "objective.beta": betas, "seeds": 2 if variant == "fashion_mnist_npz" else 1,
        "x": "objective.beta", "x_label": "β (weight of the VAE term)",
        "x_scale": "categorical" if 0.0 in betas else "log10",
        "titles": {"objective.beta": "β"},
        "plots": [
            {"file": "accuracy_vs_beta.png", "metrics": ["accuracy"],
             "ylabel": "test accuracy", "title": "Test accuracy vs β"},
            {"file": "ece_vs_beta.png", "metrics": ["ece", "ece_after_ts"], "ylabel": "ECE",
             "panels": "metric", "ylim": [0, None],
             "panel_titles": {"ece": "ECE", "ece_after_ts": "ECE after temperature scaling"}},
            {"file": "ood_auroc_vs_beta.png", "title": "OOD: {}",
             "metrics": ["ood/*/max_softmax/auroc", "ood/*/elbo/auroc",
                         "ood/*/neg_loss_sampled/auroc"],
             "ylabel": "AUROC", "ylim": [0, 1.02], "hline": {"y": 0.5, "label": "chance"}},
        ],
    }
