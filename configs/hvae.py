"""HVAE: the hierarchical VAE of hvae-oodd and its LLR>k OOD scores (docs/methods/hvae.md).

Variants (``--config=configs/hvae.py:VARIANT``):

* ``digits`` (default) — sklearn digits 8×8, offline, CPU: three tiny stages (16
  channels; z1 conv 4 @ 4×4, z2 dense 8, z3 dense 4), Bernoulli on dynamically
  binarised images, the original's objective with its schedules shortened (warm-up 10
  epochs, 2 free nats for 10 epochs then cooled to 0 over 10), 40 epochs::

      python -m jaxhybrid.main --config=configs/hvae.py:digits --workdir=runs/hvae_digits

  Measured (one device, 800 steps, 38,546 parameters): test L = −25.12 nats with
  S = 64, 0.566 bits/dim of the binarised 8×8 images (a mass over {0, 1}^64: not
  comparable with bits/dim of 8-bit data); best validation ELBO −26.17 (the last
  checkpoint). z2 and z3 collapse once the free nats
  cool (0 active units; z1: 55 of 64), so LLR>2 ≈ LLR>1 here. OOD AUROC of
  L / −LLR>1: inverted 1.000 / 1.000, uniform noise 1.000 / 0.948, Gaussian noise
  1.000 / 0.938, constant images 0.987 / 0.919 (these easy sets are no test of LLR>k).
* ``mnist_npz`` — the shared MNIST file (../shared/data/mnist.npz or
  $JAXHYBRID_MNIST_NPZ; 5,000 training images held out for validation), binarised, the
  Fashion-MNIST latents (conv 8 @ 14×14, dense 16, dense 8) behind the digits variant's
  16-channel stages, Adam 1e-3, warm-up 3 epochs, free nats 2 for 3 epochs then 3 of
  cooling, 10 epochs, S = 8; OOD: sklearn digits resized to 28×28, inverted MNIST, uniform noise,
  constant images. Not run to the end here.
* ``fashion_mnist_npz`` — the paper's headline pair offline: the shared Fashion-MNIST
  file (../shared/data/fashion_mnist.npz or $JAXHYBRID_FASHION_MNIST_NPZ; 10,000 training
  images held out for validation, as the original), binarised, scored against the MNIST
  test split (``npz:`` the shared MNIST file) as the OOD set. The mnist_npz model (16-channel
  stages, 136,674 parameters) and a CPU-sized schedule: 24 epochs, warm-up 5, free nats 2
  for 5 then cooled over 5 (the paper's 200/200/200 of 1000, scaled), Adam 1e-3, S = 8.
  docs/results/hvae_fashion_mnist.md gives the command, the result and every difference
  from the paper::

      python -m jaxhybrid.main --config=configs/hvae.py:fashion_mnist_npz --workdir=runs/hvae_fmnist

  Measured (2026-12-03, 56 min on a shared 2-core CPU; the best checkpoint is the last,
  step 9,384): test 0.462 bits/dim at S = 1 (0.453 at S = 8), MNIST 0.321; AUROC against
  MNIST of L 0.194, L>1 0.329, L>2 0.430, LLR>1 0.904, LLR>2 0.826 at S = 1, and LLR>1
  0.979 at S = 250 on 1,000 + 1,000 images (the paper: 0.268, 0.593, 0.712, 0.964, 0.984).
* ``fashion_mnist`` — the original's (README: ``dvae_run.py --epochs 1000 --batch_size
  128 --free_nats 2 --free_nats_epochs 400 --warmup_epochs 200``): three stages of three
  64-channel ResBlocks (kernels 5, 3, 3; strides 1, 1, 2 | 1, 1, 2 | 1, 1, 1), z1 conv 8 @
  14×14, z2 dense 16, z3 dense 8 (2,588,898 parameters: the original's 2.62 M less its
  unused inference projection of z3), Bernoulli on dynamically binarised
  TFDS fashion_mnist, Adam 3e-4, batch 128, 1000 epochs; validation (the best-ELBO
  checkpoint) carved from train, never test; OOD: TFDS mnist. The paper: L AUROC 0.268,
  LLR>1 0.964 (S = 1), 0.984 (S = 250: ``--config.model.iwae_samples=250``); 0.420
  bits/dim on the test set. A GPU job.
* ``fashion_mnist_paper_npz`` — ``fashion_mnist`` read from the shared npz files (the
  OOD set: the shared MNIST test split): the paper's model and schedule without TFDS,
  for an accelerator (benchmarks/device_suite.py trains it for a fixed wall-clock budget).
* ``cifar10`` — 256 channels, downsampling at the end of each stage (32 → 16 → 8 → 4),
  z1 conv 128 @ 16×16, z2 conv 64 @ 8×8, z3 dense 32 (36.9 M parameters); a discretized
  logistic mixture (10 components, 1×1 conv) on dequantised images; 2000 epochs; OOD:
  TFDS svhn_cropped. The paper: L AUROC 0.083, LLR>2 0.811 (S = 1000); 3.74 bits/dim.

TFDS datasets are prepared offline (``python -m jaxhybrid.data.tfds_prepare`` or ``tfds
build``). Scores (evaluator ``ood``): ``L``, ``L>k`` and ``-LLR>k`` (higher =
in-distribution); ``likelihood`` reports L in nats and bits/dim.
"""
from __future__ import annotations

from jaxhybrid.config_defaults import FASHION_MNIST_NPZ, MNIST_NPZ, base_config, check_variant

VARIANTS = ("digits", "mnist_npz", "fashion_mnist_npz", "fashion_mnist", "fashion_mnist_paper_npz",
            "cifar10")


def blocks(channels: int, kernel: int, strides) -> tuple:
    """One stage: a ResBlock of ``channels`` and ``kernel`` per stride."""
    return tuple({"out_channels": channels, "kernel_size": kernel, "stride": s} for s in strides)


def latent(kind: str, features: int) -> dict:
    return {"block": {"conv": "GaussianConv2d", "dense": "GaussianDense"}[kind],
            "latent_features": features}


def get_config(variant: str = "digits"):
    variant = check_variant(variant, VARIANTS, "configs/hvae.py")
    c = base_config("hvae")         # model.* and objective.*: families/hvae.py's tables
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 3e-4
    c.optimizer.lr_scaling = "none"
    c.batch_size = 128
    c.data.train_transforms = "binarize"
    c.evals.names = "likelihood,ood"
    c.evals.checkpoint = "best"
    if variant == "digits":
        c.data.source = "digits"
        c.data.validation_size = 0.15
        c.model.update(config_deterministic=(blocks(16, 3, (1, 2)), blocks(16, 3, (2,)),
                                             blocks(16, 3, (1,))),
                       config_stochastic=(latent("conv", 4), latent("dense", 8),
                                          latent("dense", 4)),
                       iwae_samples=64, score_chunk=32)
        c.objective.update(warmup_epochs=10.0, free_nats_constant_epochs=10,
                           free_nats_cooldown_epochs=10)
        c.optimizer.learning_rate = 2e-3
        c.batch_size = 64
        c.eval_batch_size = 256
        c.num_epochs = 40.0
        c.log_every = 100
        c.checkpoint_every = 100
        c.evals.ood_sets = "inverted,uniform_noise,gaussian_noise,constant"
    elif variant in ("mnist_npz", "fashion_mnist_npz"):
        c.data.source = "npz"
        c.model.update(config_deterministic=(blocks(16, 3, (1, 2)), blocks(16, 3, (2,)),
                                             blocks(16, 3, (1,))),
                       iwae_samples=8, score_chunk=8)
        c.objective.update(warmup_epochs=3.0, free_nats_constant_epochs=3,
                           free_nats_cooldown_epochs=3)
        c.optimizer.learning_rate = 1e-3
        c.num_epochs = 10.0
        c.log_every = 100
        if variant == "mnist_npz":
            c.data.npz_path = MNIST_NPZ
            c.data.validation_size = 5000
            c.evals.ood_sets = "digits_resized,inverted,uniform_noise,constant"
        else:
            c.data.npz_path = FASHION_MNIST_NPZ
            c.data.validation_size = 10000
            c.objective.update(warmup_epochs=5.0, free_nats_constant_epochs=5,
                               free_nats_cooldown_epochs=5)
            c.num_epochs = 24.0
            c.evals.ood_sets = f"mnist=npz:{MNIST_NPZ}"
    else:   # the original's settings
        c.data.source = "tfds"
        c.eval_batch_size = 250        # × 3 passes × score_chunk 8 ≈ 6,000 rows ≈ 6 GB at any S
        c.log_every = 100
        if variant in ("fashion_mnist", "fashion_mnist_paper_npz"):
            c.data.name = "fashion_mnist"
            c.data.validation_size = 10000         # 60,000 = 50,000 + 10,000
            c.num_epochs = 1000.0
            c.evals.ood_sets = "tfds:mnist"
            if variant == "fashion_mnist_paper_npz":       # the same, from the shared files
                c.data.source, c.data.name = "npz", ""
                c.data.npz_path = FASHION_MNIST_NPZ
                c.evals.ood_sets = f"mnist=npz:{MNIST_NPZ}"
        else:
            c.data.name = "cifar10"
            c.data.validation_size = 5000          # 50,000 = 45,000 + 5,000
            c.data.train_transforms = "dequantize"
            c.model.update(
                config_deterministic=(blocks(256, 5, (1, 1, 2)), blocks(256, 3, (1, 1, 2)),
                                      blocks(256, 3, (1, 1, 2))),
                config_stochastic=(latent("conv", 128), latent("conv", 64),
                                   latent("dense", 32)),
                likelihood="discretized_mix_logistic", likelihood_kernel=1, score_chunk=4)
            c.eval_batch_size = 100    # × 3 × 4 = 1,200 rows of ≈ 5 MiB ≈ 6 GB at any S
            c.num_epochs = 2000.0
            c.evals.ood_sets = "tfds:svhn_cropped"
    return c
