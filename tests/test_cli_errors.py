"""Bad input through the CLI (issue 10): ``error: ...`` naming what is wrong and what is
valid, exit status 1, no traceback, and nothing written to the run directory.

Every case runs the real entry point (``jaxhybrid.main.run``: absl's flag parsing with
ml_collections' config flags, then ``main``) on a real command line. To keep CI fast the
cases share one Python process that imports jax and the library once and forks a child
per case (a few hundredths of a second each; the config checks fail before any device or data work);
two cases also run as ``python -m jaxhybrid.main``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.helpers import REPO, run_cli

BASE = ["--config=configs/gffn.py:smoke", "--config.num_steps=1", "--config.model.width=4"]

# (id, extra args, substrings expected in stderr). "{tmp}" is the test's directory.
CASES = [
    # flag parsing: unknown keys, wrong types, config files and variants
    ("nested_key_typo", ["--config.optimizer.lr=0.1"],
     ["unknown config key 'optimizer.lr'", "valid keys of optimizer:", "learning_rate",
      "lr_scaling"]),
    ("top_level_key_typo", ["--config.batchsize=3"],
     ["unknown config key 'batchsize'", "did you mean batch_size", "valid keys at the top"]),
    ("key_below_a_value", ["--config.optimizer.learning_rate.x=1"],
     ["optimizer.learning_rate is a float", "not a sub-config"]),
    ("unknown_variant", ["--config=configs/gffn.py:nosuchvariant"],
     ["--config=configs/gffn.py:nosuchvariant", "Unknown variant 'nosuchvariant'",
      "valid choices: digits, smoke"]),
    ("missing_config_file", ["--config=configs/nosuch.py"], ["no config file 'configs/nosuch.py'"]),
    ("digits_test_fraction_out_of_range", ["--config.data.digits_test_fraction=1.5"],
     ["data.digits_test_fraction", "(0, 1)"]),
    ("label_key_empty", ["--config.data.label_key="], ["data.label_key", "TFDS feature"]),
    ("float_field_not_a_number", ["--config.optimizer.learning_rate=abc"],
     ["--config.optimizer.learning_rate=abc", "takes a number"]),
    ("int_field_given_a_float", ["--config.num_steps=1.5"], ["num_steps", "takes an int"]),
    ("bool_field", ["--config.drop_remainder=maybe"], ["drop_remainder", "True or False"]),
    ("unknown_mode", ["--mode=fit"], ["--mode=fit", "train|eval"]),
    # config_check: wrong values, before devices, data or run directory are touched
    ("negative_lr", ["--config.optimizer.learning_rate=-0.1"],
     ["config field optimizer.learning_rate = -0.1: must be a number > 0"]),
    ("zero_lr", ["--config.optimizer.learning_rate=0"], ["optimizer.learning_rate = 0.0"]),
    ("zero_epochs", ["--config.num_steps=0", "--config.num_epochs=0"],
     ["config field num_epochs = 0.0: must be > 0 (or set num_steps > 0)"]),
    ("negative_steps", ["--config.num_steps=-5"], ["num_steps = -5: must be an int >= 0"]),
    ("zero_batch", ["--config.batch_size=0"], ["batch_size = 0: must be an int >= 1"]),
    ("negative_eval_batch", ["--config.eval_batch_size=-8"], ["eval_batch_size = -8"]),
    ("epsilon_above_1", ["--config.evals.epsilons=0,1.5"],
     ["config field evals.epsilons = '0,1.5'", "[0, 1]"]),
    ("unknown_optimizer", ["--config.optimizer.name=adamx"],
     ["optimizer.name = 'adamx': must be one of adam, adamw, sgd, momentum"]),
    ("unknown_schedule", ["--config.optimizer.schedule=linear"], ["constant, cosine, step"]),
    ("unknown_lr_scaling", ["--config.optimizer.lr_scaling=cubic"], ["none, sqrt, linear"]),
    ("momentum_above_1", ["--config.optimizer.momentum=1.5"], ["momentum = 1.5", "[0, 1)"]),
    ("unknown_source", ["--config.data.source=csv"], ["data.source = 'csv'", "digits, npz, tfds"]),
    ("validation_fraction_above_1", ["--config.data.validation_size=1.5"],
     ["data.validation_size = 1.5", "fraction in [0, 1) or a count >= 0"]),
    ("negative_ood_class", ["--config.data.ood_classes=(-1,)"],
     ["data.ood_classes = (-1,)", "class ids"]),
    ("zero_std", ["--config.data.std=(0.0,)"], ["data.std = (0.0,)", "> 0"]),
    ("unknown_transform", ["--config.data.train_transforms=blur"],
     ["data.train_transforms = 'blur'", "binarize, dequantize, crop, flip"]),
    ("negative_skip_grad_norm", ["--config.optimizer.skip_grad_norm=-1"],
     ["optimizer.skip_grad_norm = -1.0: must be a number >= 0"]),
    ("zero_consecutive_skips", ["--config.optimizer.max_consecutive_skips=0"],
     ["optimizer.max_consecutive_skips = 0: must be an int >= 1"]),
    ("skip_nonfinite_not_a_bool", ["--config.optimizer.skip_nonfinite=sometimes"],
     ["skip_nonfinite", "True or False"]),
    ("keep_zero_checkpoints", ["--config.keep_checkpoints=0"], ["keep_checkpoints = 0"]),
    ("log_every_zero", ["--config.log_every=0"], ["log_every = 0: must be an int >= 1"]),
    ("negative_patience", ["--config.early_stopping_patience=-1"],
     ["early_stopping_patience = -1"]),
    ("zero_bins", ["--config.evals.num_bins=0"], ["evals.num_bins = 0"]),
    ("unknown_split", ["--config.evals.split=holdout"], ["test, validation, train"]),
    ("unknown_checkpoint", ["--config.evals.checkpoint=first"],
     ["evals.checkpoint = 'first': must be one of best, latest"]),
    ("unknown_evaluator", ["--config.evals.names=classification,foo"],
     ["evals.names", "Unknown evaluator 'foo'"]),
    ("unknown_ood_set", ["--config.evals.ood_sets=heldout,nosuch"], ["unknown OOD set(s) 'nosuch'"]),
    ("ood_label_twice", ["--config.evals.ood_sets=a=inverted,a=constant"],
     ["OOD set 'a' is named twice"]),
    ("ood_label_unknown_set", ["--config.evals.ood_sets=far=nosuch"],
     ["unknown OOD set(s) 'nosuch'", "LABEL=SET"]),
    ("negative_max_examples", ["--config.evals.max_examples=-1"], ["evals.max_examples = -1"]),
    ("ood_set_npz_missing", ["--config.evals.ood_sets=m=npz:/no/such.npz"],
     ["no file '/no/such.npz'"]),
    ("unknown_attack", ["--config.evals.attack=cw"], ["evals.attack = 'cw'", "fgsm, pgd"]),
    ("unknown_family", ["--config.family=vae"], ["family = 'vae'", "classifier"]),
    ("model_width_zero", ["--config.model.width=0"], ["model.width = 0: must be an int >= 1"]),
    ("unknown_compute_dtype", ["--config.compute_dtype=float16"],
     ["compute_dtype = 'float16': must be one of float32, bfloat16"]),
    ("model_dtype_is_not_the_policy", ["--config.model.dtype=bfloat16"],
     ["unknown config key 'model.dtype'"]),
    ("several_at_once", ["--config.optimizer.learning_rate=-1", "--config.batch_size=0"],
     ["optimizer.learning_rate = -1.0", "batch_size = 0"]),
    ("eval_mode_too", ["--mode=eval", "--config.evals.checkpoint=first"],
     ["evals.checkpoint = 'first'"]),
    # checked once the data are loaded (data code, build_experiment) or by the family
    ("ood_class_outside_labels", ["--config.data.ood_classes=(12,)"],
     ["ood_classes [12]", "0..9"]),
    ("frame_smaller_than_image", ["--config.data.frame=4"],
     ["data.frame = 4: smaller than the 8x8 images", ">= 8"]),
    ("npz_is_a_text_file", ["--config.data.source=npz", "--config.data.npz_path={tmp}/notes.npz"],
     ["{tmp}/notes.npz", "is not a valid .npz", "x_train"]),
    ("joint_weight_above_1", ["--config.objective.joint_weight=1.5"],
     ["config field objective.joint_weight = 1.5: must be a number in [0, 1]"]),
    # a family's fields live in its sections: a loss field under model.* (or at the top
    # level, where λ used to be) is named where it lives; the tables check their values
    ("loss_field_under_model", ["--config=configs/dhm.py:digits", "--config.model.beta=2"],
     ["unknown config key 'model.beta' (did you mean objective.beta?)"]),
    ("lambda_at_the_top_level", ["--config.joint_weight=0"],
     ["unknown config key 'joint_weight' (did you mean objective.joint_weight?)"]),
    ("negative_beta", ["--config=configs/dhm.py:digits", "--config.objective.beta=-1"],
     ["config field objective.beta = -1.0: must be a number >= 0"]),
    ("hvae_free_nats_mode", ["--config=configs/hvae.py:digits",
                             "--config.objective.free_nats_mode=global"],
     ["config field objective.free_nats_mode = 'global': must be one of per_element, "
      "per_layer"]),
    ("dhm_iwae_loss_needs_a_likelihood", ["--config=configs/dhm.py:digits",
                                          "--config.objective.train_samples=4"],
     ["config field objective.train_samples = 4: must be 1 with model.recon='mse_mean'"]),
    ("unknown_label_model", ["--config.objective.label_model=probit"], ["softmax, binary"]),
    ("unknown_model", ["--config.model.name=vit"],
     ["config field model.name = 'vit': must be one of cnn, resnet18"]),
    # the classifier's model table: each network's options checked (issue 22)
    ("model_hidden_not_ints", ["--config.model.hidden=abc"],
     ["config field model.hidden = ('abc',): must be a tuple of ints >= 1"]),
    ("resnet18_batch_norm", ["--config.model.name=resnet18", "--config.model.norm=batch"],
     ["config field model.norm = 'batch': must be one of none, group"]),
    # evaluators the family cannot serve, an OOD set that is not there: before training
    ("hvae_adversarial", ["--config=configs/hvae.py:digits",
                          "--config.evals.names=likelihood,adversarial"],
     ["config field evals.names = 'likelihood,adversarial'", "family 'hvae' cannot serve "
      "the evaluator(s) adversarial", "it serves ood, likelihood, predictions"]),
    ("ood_set_tfds_not_prepared", ["--config.evals.ood_sets=far=tfds:nosuch_ds",
                                   "--config.data.data_dir={tmp}/tfds"],
     ["config field evals.ood_sets = 'far=tfds:nosuch_ds'", "OOD set 'tfds:nosuch_ds'",
      "TFDS dataset 'nosuch_ds' is not prepared in data_dir '{tmp}/tfds'",
      "python -m jaxhybrid.data.tfds_prepare"]),
    # npz files that cannot be split: named with the file and the split
    ("npz_labels_and_images_differ",
     ["--config.data.source=npz", "--config.data.npz_path={tmp}/mismatch.npz"],
     ["npz file '{tmp}/mismatch.npz'", "the train split has 20 images (x_train) but 15 "
      "labels (y_train)"]),
    ("npz_negative_labels",
     ["--config.data.source=npz", "--config.data.npz_path={tmp}/negative_labels.npz"],
     ["npz file '{tmp}/negative_labels.npz'", "y_train has 3 label(s) that are not class ids "
      "(-2, -1)", "whole numbers >= 0"]),
    ("npz_fractional_labels",
     ["--config.data.source=npz", "--config.data.npz_path={tmp}/fractional_labels.npz"],
     ["npz file '{tmp}/fractional_labels.npz'", "y_test has 1 label(s) that are not class "
      "ids (2.5)"]),
    ("npz_split_without_examples",
     ["--config.data.source=npz", "--config.data.npz_path={tmp}/empty_train.npz"],
     ["npz file '{tmp}/empty_train.npz'", "the train split has no examples"]),
    # normalisation with one entry for three channels (the reverse is refused too)
    ("one_mean_for_three_channels",
     ["--config.data.source=npz", "--config.data.npz_path={tmp}/rgb.npz",
      "--config.data.mean=(0.5,)"],
     ["config field data.mean = (0.5,): 1 entry for the 3-channel images",
      "one entry per channel (3)"]),
    ("three_stds_for_one_channel", ["--config.data.mean=(0.5, 0.5, 0.5)",
                                    "--config.data.std=(0.5, 0.5, 0.5)"],
     ["config field data.mean = (0.5, 0.5, 0.5): 3 entries for the 1-channel images",
      "config field data.std = (0.5, 0.5, 0.5)"]),
    # a likelihood that does not fit the data: Bernoulli on grey levels
    ("bernoulli_on_grey_pixels", ["--config=configs/hvae.py:digits",
                                  "--config.data.train_transforms="],
     ["config field data.train_transforms = ''", "images of digits are not binary",
      "'bernoulli' likelihood, which needs binary data", "binarize"]),
    ("bernoulli_on_dequantized_pixels", ["--config=configs/hvae.py:digits",
                                         "--config.data.train_transforms=dequantize"],
     ["data.train_transforms = 'dequantize'", "makes the pixels continuous", "binarize"]),
    ("dhm_bernoulli_on_grey_pixels", ["--config=configs/dhm.py:digits",
                                      "--config.model.recon=bernoulli"],
     ["family 'dhm'", "'bernoulli' likelihood, which needs binary data", "binarize"]),
]

# Forks a child per case after the heavy imports; the child runs the real entry point.
DRIVER = textwrap.dedent("""
    import json, os, sys, traceback
    # imported once, shared by the children: the library, the evaluators' plotting, sklearn
    import jaxhybrid.main, jaxhybrid.train, jaxhybrid.evaluate, jaxhybrid.config_check
    import jaxhybrid.evaluators.suite, sklearn.datasets
    cases = json.load(open(sys.argv[1]))
    codes = {}
    for case in cases:
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                os.dup2(os.open(case["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
                os.dup2(os.open(case["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
                sys.argv = ["jaxhybrid.main", *case["argv"]]
                try:
                    jaxhybrid.main.run()
                    code = 0
                except SystemExit as e:
                    if isinstance(e.code, str):
                        print(e.code, file=sys.stderr)
                    code = e.code if isinstance(e.code, int) else int(e.code is not None)
            except BaseException:
                traceback.print_exc()
                code = 71
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        codes[case["id"]] = os.waitstatus_to_exitcode(status)
    print(json.dumps(codes))
""")


def run_driver(cases: list[dict], root: str) -> dict[str, int]:
    """Run each case ({id, argv, stdout, stderr}) through :data:`DRIVER` (one process that
    imported the library, a forked child per case); {id: exit code}."""
    path = os.path.join(root, "cases.json")
    with open(path, "w") as f:
        json.dump(cases, f)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO,
               XLA_FLAGS="--xla_force_host_platform_device_count=8")
    env.pop("JAXHYBRID_DEBUG", None)
    proc = subprocess.run([sys.executable, "-c", DRIVER, path], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _argv(extra: list[str], workdir: str, tmp: str) -> list[str]:
    """BASE's config and overrides, or a case's own config file with num_steps=1 only
    (another family's config has no model.width)."""
    extra = [a.replace("{tmp}", tmp) for a in extra]
    config = [a for a in extra if a.startswith("--config=")]
    base = BASE[1:2] if config and not config[-1].startswith(BASE[0].split(":")[0]) else BASE[1:]
    rest = [a for a in base + extra if not a.startswith("--config=")]
    return [*(config or BASE[:1]), *rest, f"--workdir={workdir}"]


def _npz_files(root: str) -> None:
    """The bad npz files of the cases: labels that do not match the images, labels that
    are not class ids, a split without examples, and 3-channel images (for a 1-entry
    data.mean)."""
    rng = np.random.default_rng(0)
    img = lambda n, *c: rng.integers(0, 256, (n, 8, 8, *c), dtype=np.uint8)  # noqa: E731
    labels = lambda n: np.arange(n) % 10                                      # noqa: E731
    negative, fractional = labels(40), labels(20).astype(float)
    negative[[3, 5, 7]] = (-1, -2, -1)
    fractional[4] = 2.5
    files = {"mismatch": (img(20), labels(15), img(10), labels(10)),
             "negative_labels": (img(40), negative, img(20), labels(20)),
             "fractional_labels": (img(40), labels(40), img(20), fractional),
             "empty_train": (img(0), labels(0), img(10), labels(10)),
             "rgb": (img(40, 3), labels(40), img(20, 3), labels(20))}
    for name, (xtr, ytr, xte, yte) in files.items():
        np.savez(os.path.join(root, f"{name}.npz"), x_train=xtr, y_train=ytr, x_test=xte,
                 y_test=yte)


def _workdir(root, case_id: str) -> str:
    """An existing run directory with one file: a bad command must leave it as it is."""
    wd = os.path.join(root, case_id, "run")
    os.makedirs(wd)
    with open(os.path.join(wd, "keep.txt"), "w") as f:
        f.write("earlier run\n")
    return wd


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cli_errors"))
    with open(os.path.join(root, "notes.npz"), "w") as f:
        f.write("not an npz: plain text\n")
    _npz_files(root)
    cases = [{"id": cid, "argv": _argv(extra, _workdir(root, cid), root),
              "stdout": os.path.join(root, cid, "stdout"),
              "stderr": os.path.join(root, cid, "stderr")} for cid, extra, _ in CASES]
    codes = run_driver(cases, root)
    out = {}
    for case in cases:
        with open(case["stderr"]) as f:
            out[case["id"]] = (codes[case["id"]], f.read(),
                               os.path.join(root, case["id"], "run"))
    return root, out


@pytest.mark.parametrize("case_id,extra,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_a_clear_error(results, case_id, extra, expected):
    root, out = results
    code, stderr, workdir = out[case_id]
    assert code == 1, stderr
    assert "Traceback" not in stderr and "FATAL" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert errors, stderr
    for want in expected:
        assert want.replace("{tmp}", root) in stderr, (want, stderr)
    assert "allow_pickle" not in stderr        # never suggest unpickling a file
    # nothing lost or created: the run directory holds what it held
    assert sorted(os.listdir(workdir)) == ["keep.txt"], os.listdir(workdir)
    assert open(os.path.join(workdir, "keep.txt")).read() == "earlier run\n"


@pytest.mark.parametrize("config", ["configs/nosuch.py", "nosuch_dir/x.py:variant",
                                    "/tmp/jaxhybrid_missing_config.py"])
def test_a_missing_config_file_is_named_as_given(tmp_path, config):
    """``python -m jaxhybrid.main`` (absl reads the flag as the process starts): the file
    given, never absl's internal name for the flag (``config_config``)."""
    wd = str(tmp_path / "run")
    r = run_cli([f"--config={config}", f"--workdir={wd}"], devices=1)
    path = config.split(":")[0]
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip() == f"error: --config={config}: no config file {path!r}", r.stderr
    assert not os.path.exists(wd)


def test_as_a_real_command(tmp_path):
    """``python -m jaxhybrid.main``: one case from flag parsing, one from the config checks;
    JAXHYBRID_DEBUG=1 shows the traceback."""
    wd = str(tmp_path / "run")
    r = run_cli([*BASE, f"--workdir={wd}", "--config.optimizer.lr=0.1"], devices=1)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: unknown config key 'optimizer.lr'"), r.stderr
    r = run_cli([*BASE, f"--workdir={wd}", "--config.optimizer.learning_rate=-0.1"], devices=1)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "error: ValueError: config field optimizer.learning_rate = -0.1" in r.stderr
    assert not os.path.exists(wd)
    env = dict(os.environ, JAXHYBRID_DEBUG="1")
    r = subprocess.run([sys.executable, "-m", "jaxhybrid.main", *BASE, f"--workdir={wd}",
                        "--config.optimizer.lr=0.1"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode != 0 and "Traceback" in r.stderr
