"""Shared defaults for every jaxhybrid config (configs/*.py build on these).

Every field exists here, so that the locked config refuses a misspelt key
(``--config.batchsize=...`` is an error naming the valid keys). The fields every family
shares are here; a family's own sections, ``model`` and ``objective``, come from its tables
(:class:`jaxhybrid.families.base.FamilyBase`: ``MODEL``, ``OBJECTIVE``), so that a field of
one family is never a key of another's config.
"""
from __future__ import annotations

import os

import ml_collections

from jaxhybrid.families import FAMILIES


def shared_npz(name: str, env: str) -> str:
    """``$env`` if set, else ``<checkout>/../shared/data/<name>`` (the offline copies that
    sit beside a project checkout; never committed, never required)."""
    return os.environ.get(env, os.path.normpath(os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", name)))


MNIST_NPZ = shared_npz("mnist.npz", "JAXHYBRID_MNIST_NPZ")
FASHION_MNIST_NPZ = shared_npz("fashion_mnist.npz", "JAXHYBRID_FASHION_MNIST_NPZ")


# CIFAR-10 per-channel statistics of the training set (the GFFN configs' normalisation)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
# the statistics b-turan/hybrid_robustness normalises CIFAR-10 with (the DHM's cifar10
# variant, with CIFAR_MEAN): a std about 1.2-1.3× smaller than the training set's
DHM_CIFAR_STD = (0.2023, 0.1994, 0.2010)


def check_variant(variant: str, variants, config_file: str) -> str:
    """The variant name ('' = the first), or an error naming the valid choices."""
    variant = variant or variants[0]
    if variant not in variants:
        raise ValueError(f"Unknown variant {variant!r} of {config_file}; valid choices: "
                         f"{', '.join(variants)}")
    return variant


def data_config(**overrides) -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict({
        "source": "digits",          # digits | npz | tfds
        "name": "",                  # TFDS name (tfds) e.g. mnist, cifar10, svhn_cropped
        "data_dir": "",              # TFDS data_dir ('' = $TFDS_DATA_DIR or ~/tensorflow_datasets)
        "npz_path": "",              # npz with x_train, y_train, x_test, y_test
        "label_key": "label",        # TFDS label feature (e.g. coarse_label for cifar100)
        "digits_test_fraction": 0.2,  # digits: the stratified test fraction (0.2: 1,438/359)
        "validation_size": 0.1,      # int count or fraction of TRAIN (never test)
        "seed": 0,                   # split seed (fixed across training seeds)
        "ood_classes": (),           # classes removed from training; their test images = near-OOD set
        "train_subset": 0,           # cap on training examples (0 = all)
        "frame": 0,                  # zero-pad images to frame×frame (0 = keep size); thesis: 32
        "mean": (),                  # per-channel normalisation inside the model ((): none)
        "std": (),
        # on-device train-time transforms, comma-separated: binarize (dynamic Bernoulli;
        # eval: one fixed seeded binarisation), dequantize ((255x+u)/256), crop, flip
        "train_transforms": "",
        "crop_padding": 4,           # zero padding of the random crop
        # where the training split lives: auto (device when it fits the device memory
        # budget, else host) | host (batches read on the host, sent each step) | device
        # (uint8 on the devices once, batches gathered there; jaxhybrid/data/resident.py)
        "placement": "auto",
    })
    d.update(overrides)
    return d


def optimizer_config(**overrides) -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict({
        "name": "adam",              # adam | adamw | sgd | momentum
        "learning_rate": 1e-3,       # base learning rate at base_batch_size
        "lr_scaling": "none",        # none | sqrt | linear (from base_batch_size; Hoffer et al. 2017: sqrt)
        "base_batch_size": 128,
        "schedule": "constant",      # constant | cosine | step
        "warmup_steps": 0,
        "decay_factor": 0.1,         # step schedule: multiply by this ...
        "decay_every_epochs": 0,     # ... every this many epochs (0 = never)
        "momentum": 0.9,             # sgd momentum / adam b1
        "b2": 0.999,
        "weight_decay": 0.0,         # adamw only
        "grad_clip_norm": 0.0,       # 0 = no clipping
        "skip_nonfinite": False,     # skip (do not apply) an update whose loss or gradient
                                     # norm is NaN/inf, instead of stopping the run
        "skip_grad_norm": 0.0,       # skip an update whose gradient norm exceeds this (0 = off;
                                     # VDVAE's skip_threshold)
        "max_consecutive_skips": 10,  # this many skipped updates in a row stop the run (NaN stop)
    })
    d.update(overrides)
    return d


# evals.names by default: every evaluator, each run where the family serves what it needs
# (the report lists the others as skipped). A list given instead may name only evaluators
# the family serves (config_check.check_family_data).
DEFAULT_EVALUATORS = "classification,calibration,temperature,ood,adversarial,likelihood"


def evals_config(**overrides) -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict({
        # comma-separated evaluator plug-ins, run at eval_every and at the end of training
        # (the default: each where the family serves it; DEFAULT_EVALUATORS)
        "names": DEFAULT_EVALUATORS,
        "checkpoint": "best",        # evaluated after training and by --mode=eval: best | latest
        "seed": 0,                   # fixed key of evaluation randomness (binarisation, samples)
        "split": "test",             # the split the evaluators report on
        "num_bins": 15,              # calibration bins (docs/metrics.md)
        # OOD sets: heldout (data.ood_classes), digits (sklearn digits resized), uniform_noise,
        # gaussian_noise, constant, inverted, and datasets "tfds:NAME[:split]" / "npz:PATH"
        "ood_sets": "uniform_noise,gaussian_noise,constant,inverted",
        "ood_max_examples": 0,       # cap per OOD set (0 = all)
        "max_examples": 0,           # cap on each split the evaluators read: first N (0 = all)
        # train: OOD sets pass through the model's normalisation (data.mean/std) as they are;
        # own: each OOD set is standardised with its own per-channel mean/std (the original
        # DHM's protocol), as a pixel transform the model's normalisation then undoes
        "ood_normalization": "train",
        "attack": "fgsm",            # fgsm | pgd
        "epsilons": "default",       # default {0,1,2,4,8,16}/255 | dhm {0,.02..,.08} | "0.03" | "0,0.01,..."
        # pixel: ε on the [0, 1] pixel scale, x' clipped to [0, 1]; normalized: ε in units of
        # the normalised input (ε·data.std per channel in pixels), no clipping (the original DHM)
        "epsilon_space": "pixel",
        "pgd_steps": 10,
        "pgd_step_size": 0.0,        # 0 = 2.5·ε/steps
        "pgd_random_start": False,
        "adversarial_max_examples": 1000,  # attacked examples (first N of the split; 0 = all)
    })
    d.update(overrides)
    return d


def base_config(family: str = "classifier") -> ml_collections.ConfigDict:
    """Every shared field at its default, and ``family``'s ``model`` and ``objective``
    sections at theirs (empty for a family outside the library, ``package.module:factory``:
    its config file sets them)."""
    c = ml_collections.ConfigDict()
    c.family = family
    spec = FAMILIES.get(family)
    c.model = spec.default_model() if spec else ml_collections.ConfigDict()
    c.objective = spec.OBJECTIVE.defaults() if spec else ml_collections.ConfigDict()
    c.seed = 0                       # init + shuffling seed
    c.data = data_config()
    c.batch_size = 128               # GLOBAL batch over all devices and hosts
    c.accumulation_steps = 1         # gradient accumulation: each step's global batch is this
                                     # many micro-batches of batch_size / accumulation_steps,
                                     # taken one after the other (memory of one micro-batch);
                                     # the GFFN partition stays the whole global batch's
    c.eval_batch_size = 512          # GLOBAL
    c.num_epochs = 10.0
    c.num_steps = 0                  # > 0 overrides num_epochs
    c.drop_remainder = False         # drop each epoch's last partial batch (constant B)
    c.max_train_seconds = 0.0        # wall-clock budget per run (0 = none); checkpoints and stops
    c.early_stopping_patience = 0    # stop when the family's validation metric (accuracy for
                                     # classifiers) has not improved for this many validations
                                     # (one per checkpoint); 0 = off ("until plateau")
    c.optimizer = optimizer_config()
    c.log_every = 50
    c.tensorboard = True             # also write metrics.jsonl's records as TensorBoard scalars
                                     # (event file in the run directory; jaxhybrid/tblog.py)
    c.checkpoint_every = 0           # steps; 0 = once per epoch
    c.keep_checkpoints = 2           # latest N kept (the best by the family's metric too)
    c.eval_every = 0                 # run the evaluators every N steps (0 = only at the end)
    c.num_devices = 0                # 0 = all devices
    c.compute_dtype = "float32"      # float32 | bfloat16: matmuls/convs in bf16, params, optimiser
                                     # state and losses float32 (jaxhybrid/precision.py)
    c.evals = evals_config()
    return c
