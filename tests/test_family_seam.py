"""The family seam: a stateful stochastic family on 1 vs 8 devices, and an unsupervised
family (no labels at all) trained, resumed and evaluated through the CLI."""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from sklearn.datasets import load_digits

from jaxhybrid import parallel
from jaxhybrid.checkpointing import Checkpointer
from tests.helpers import evaluation_metrics, run_cli
from tests.toy_families import make_bn_classifier

B, K = 16, 3


def _batch(pad_value=0.0):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(B, 4, 4, 1)).astype(np.float32)
    mask = np.arange(B) < B - 3                 # 3 padding rows: device 7 holds only padding
    image[~mask] = pad_value
    return {"image": image, "label": rng.integers(0, K, B).astype(np.int32), "mask": mask,
            "id": np.where(mask, np.arange(B) + 100, -1).astype(np.int32)}


def _step(n_devices, batch, key=0):
    """loss, aux, grads and new batch stats of the toy BN+dropout family on n devices."""
    fam = make_bn_classifier(ml_collections.ConfigDict({"model": {"hidden": 8}}), K)
    mesh = parallel.make_mesh(n_devices)
    variables = fam.init(jax.random.PRNGKey(1), {k: jnp.asarray(v) for k, v in batch.items()})
    params = variables.pop("params")
    loss = jax.jit(parallel.shard_loss(fam.loss, mesh))
    sharded = {k: jax.device_put(v, parallel.data_sharded(mesh)) for k, v in batch.items()}
    progress = {"step": jnp.int32(0), "epoch": jnp.float32(0)}

    def objective(p):
        return loss({"params": p, **variables}, sharded, jax.random.PRNGKey(key), progress)

    (value, (state, aux)), grads = jax.value_and_grad(objective, has_aux=True)(params)
    return jax.tree.map(np.asarray, (value, aux, grads, state, params))


def test_bn_dropout_family_is_device_count_invariant_on_a_padded_batch():
    batch = _batch()
    one = _step(1, batch)
    eight = _step(8, batch)
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(eight)):
        assert np.all(np.isfinite(a))
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # the running mean is (1 − 0.9)·(batch mean of the valid rows' Dense outputs)
    value, aux, grads, state, params = one
    flat = batch["image"].reshape(B, -1)[batch["mask"]]
    h = flat @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"]
    np.testing.assert_allclose(state["batch_stats"]["BatchNorm_0"]["mean"],
                               0.1 * h.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state["batch_stats"]["BatchNorm_0"]["var"],
                               0.9 + 0.1 * h.var(0), rtol=1e-5, atol=1e-6)
    # padding rows change nothing, even extreme ones; dropout does depend on the step key
    padded = _step(8, _batch(pad_value=1e4))
    for a, b in zip(jax.tree.leaves(eight), jax.tree.leaves(padded)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    other_key = _step(8, batch, key=5)
    assert abs(float(other_key[0]) - float(value)) > 1e-4


def _unlabeled_digits_npz(path):
    x = (load_digits().images * (255 / 16)).round().astype(np.uint8)
    np.savez(path, x_train=x[:1500], x_test=x[1500:])   # images only: no labels anywhere
    return str(path)


def _toy_cli(workdir, npz, *extra):
    return run_cli(["--config=tests/configs/toy_vae.py", f"--workdir={workdir}",
                    "--config.data.source=npz", f"--config.data.npz_path={npz}", *extra])


def _restore(workdir):
    ckpt = Checkpointer(workdir, read_only=True)
    step = ckpt.latest_step()
    meta = ckpt.manager.item_metadata(step)["model"]
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), meta)
    out = ckpt.restore_model(step, abstract)
    ckpt.close()
    return step, jax.tree.map(np.asarray, out)


def test_unsupervised_family_trains_resumes_and_evaluates_through_the_cli(tmp_path):
    npz = _unlabeled_digits_npz(tmp_path / "digits_images.npz")
    straight, split = tmp_path / "straight", tmp_path / "split"
    r = _toy_cli(straight, npz)
    assert r.returncode == 0, r.stderr[-3000:]
    r = _toy_cli(split, npz, "--config.num_steps=6")          # stop half way ...
    assert r.returncode == 0, r.stderr[-3000:]
    r = _toy_cli(split, npz, "--allow_config_change")          # ... and resume to 12
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from checkpoint step 6" in r.stdout
    (s1, a), (s2, b) = _restore(str(straight)), _restore(str(split))
    assert s1 == s2 == 12
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):   # binarisation replayed exactly
        np.testing.assert_array_equal(x, y)

    r = _toy_cli(straight, npz, "--mode=eval", "--checkpoint=best")
    assert r.returncode == 0, r.stderr[-3000:]
    records = [json.loads(l) for l in open(straight / "metrics.jsonl")]
    val = {r["step"]: r["val_elbo"] for r in records if r["kind"] == "validation"}
    best = max(val, key=val.get)
    m = evaluation_metrics(straight, best, seed=0)
    out = straight / "eval" / str(best) / m["eval_id"]
    assert m["checkpoint"].startswith(f"best (step {best},")
    lik = m["likelihood"]
    assert lik["num_examples"] == 297 and lik["dims"] == 64
    assert lik["bits_per_dim"] == pytest.approx(-lik["log_likelihood_nats"] / (64 * np.log(2)))
    assert 0.0 < lik["bits_per_dim"] < 1.0        # binary pixels: below 1 bit each
    assert "classification" not in m
    report = open(out / "report.md").read()
    assert "bits/dim" in report
    # an evaluator the family cannot serve is refused before anything is evaluated
    r = _toy_cli(straight, npz, "--mode=eval", "--checkpoint=best",
                 "--config.evals.names=classification,likelihood")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "cannot serve the evaluator(s) classification" in r.stderr, r.stderr
    assert "it serves ood, likelihood, predictions" in r.stderr, r.stderr
    assert m["ood"]["sets"]["uniform_noise"]["scores"]["elbo"]["auroc"] > 0.5
    # evals.seed fixes the evaluation randomness (binarisation, IWAE samples): another
    # seed gives another, equally valid estimate
    r = _toy_cli(straight, npz, "--mode=eval", "--checkpoint=best", "--config.evals.seed=1",
                 "--config.evals.names=likelihood")
    assert r.returncode == 0, r.stderr[-3000:]
    other = evaluation_metrics(straight, best, seed=1)["likelihood"]
    assert other["log_likelihood_nats"] != lik["log_likelihood_nats"]
    assert abs(other["bits_per_dim"] - lik["bits_per_dim"]) < 0.1


def test_data_dependent_init_uses_the_first_global_batch_on_any_device_count():
    """The toy VAE initialises its first bias from the first training batch as step 0
    sees it (binarised), over the global batch: the same state on 1 and 8 devices, and
    equal to a direct computation."""
    from jaxhybrid.data.pipeline import TrainBatches
    from jaxhybrid.experiment import augment, build_experiment, create_state
    from jaxhybrid import rng as rnglib
    from configs import gffn  # noqa: F401  (the configs package is importable)
    import importlib.util
    spec = importlib.util.spec_from_file_location("toy_vae_cfg", "tests/configs/toy_vae.py")
    cfg_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cfg_mod)
    states, firsts = [], []
    for n in (1, 8):
        c = cfg_mod.get_config()
        c.num_devices = n
        exp = build_experiment(c)
        batches = TrainBatches(exp.splits.train, c.batch_size, seed=c.seed, mesh=exp.mesh,
                               preprocess=exp.preprocess)
        first = batches.batch(0)
        states.append(jax.tree.map(np.asarray, create_state(exp, None, c.seed, first)))
        firsts.append((exp, first))
    for a, b in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    exp, first = firsts[0]
    seen = augment(exp, {k: jnp.asarray(v) for k, v in first.items()},
                   rnglib.step_key(jnp.asarray(states[0]["rng"]), 0))["image"]
    assert set(np.unique(np.asarray(seen))) <= {0.0, 1.0}       # binarised, as step 0 sees it
    layer = states[0]["params"]["DataInitDense_0"]
    y = np.asarray(seen).reshape(len(seen), -1) @ layer["kernel"]
    np.testing.assert_allclose(layer["bias"], -y.mean(0), rtol=1e-4, atol=1e-5)


def test_config_page_is_every_sections_table():
    """docs/config.md is what `python -m jaxhybrid.config_page` writes from the tables now,
    every section's field by field."""
    from jaxhybrid.config_page import config_page
    from jaxhybrid.config_defaults import base_config
    from jaxhybrid.config_keys import flatten
    from tests.helpers import REPO, run_python
    page = open(os.path.join(REPO, "docs", "config.md")).read()
    assert page == config_page(), "rerun: python -m jaxhybrid.config_page > docs/config.md"
    printed = run_python("import runpy; runpy.run_module('jaxhybrid.config_page', "
                         "run_name='__main__')", devices=1)
    assert printed.returncode == 0 and printed.stdout == page, printed.stderr[-2000:]
    for family in ("classifier", "dhm", "hvae"):      # every key of every base config
        for key in flatten(base_config(family)):
            assert f"| `{key}` |" in page, (family, key)


def test_schema_builds_checks_and_reads_a_section():
    """A table: defaults, every bad field at once, a misplaced field named where it lives,
    rules only once each field is valid, numbers read as floats and lists as tuples."""
    import ml_collections

    from jaxhybrid.schema import Schema, choice, count, num
    objective = Schema("objective", {"beta": num(1.0, "weight", 0),
                                     "mode": choice("a", ("a", "b"), "which")},
                       rules=[lambda o: [("beta", "must be 0 in mode b")]
                              if o["mode"] == "b" and o["beta"] else []])
    model = Schema("model", {"width": count(8, "channels"), "hidden": count(4, "units")})
    assert dict(objective.defaults(beta=2.0)) == {"beta": 2.0, "mode": "a"}
    bad = ml_collections.ConfigDict({"beta": -1, "mode": "c", "width": 3})
    found = objective.problems(bad, [model])
    assert found[0].startswith("unknown config field(s) objective.width (did you mean "
                               "model.width?)"), found
    assert "config field objective.beta = -1: must be a number >= 0" in found
    assert "config field objective.mode = 'c': must be one of a, b" in found
    assert objective.problems({"mode": "b"}) == [
        "config field objective.beta = 1.0: must be 0 in mode b"]
    o = objective.read({"beta": 0})
    assert o == {"beta": 0.0, "mode": "a"} and isinstance(o["beta"], float)
    assert model.read({"width": 2}) == {"width": 2, "hidden": 4}
    with pytest.raises(ValueError, match="model.hidden = 0: must be an int >= 1"):
        model.read({"hidden": 0})
