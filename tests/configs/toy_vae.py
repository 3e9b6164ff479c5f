"""A toy unsupervised family (tests/toy_families.py: make_vae) on digits, through the CLI.

    python -m jaxhybrid.main --config=tests/configs/toy_vae.py --workdir=/tmp/toy_vae

Dynamic binarisation of every training image, a fixed seeded binarisation of the
evaluation splits; the likelihood and OOD evaluators run (the family serves no logits:
a classifier evaluator in evals.names is refused before anything runs).
"""
import ml_collections

from jaxhybrid.config_defaults import base_config


def get_config(variant: str = ""):
    c = base_config("tests.toy_families:make_vae")   # a family outside the library: its
    c.model = ml_collections.ConfigDict({"name": "mlp_vae", "latent": 4, "hidden": 32,  # own
                                         "iwae_samples": 16})                         # sections
    c.objective = ml_collections.ConfigDict({"kl_warmup_epochs": 1.0})
    c.data.train_transforms = "binarize"
    c.data.validation_size = 0.15
    c.batch_size = 64
    c.eval_batch_size = 256
    c.num_steps = 12
    c.checkpoint_every = 6
    c.log_every = 3
    c.evals.names = "likelihood,ood"
    c.evals.ood_sets = "uniform_noise,constant"
    return c
