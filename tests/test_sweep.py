"""Sweeps and their aggregation: grid, names, value types, skipping, failures, lr rules,
means/stds over fabricated runs, and one real two-point sweep through subprocesses."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import gffn
from jaxhybrid import aggregate as agg
from jaxhybrid import sweep
from jaxhybrid.evaluators.calibration import calibration_metrics
from jaxhybrid.optim import scaled_learning_rate
from tests.helpers import REPO


def _config():
    return gffn.get_config("smoke")


# -- grid and names ----------------------------------------------------------------------
def test_grid_expands_to_the_product_with_stable_names(tmp_path):
    c = _config()
    grid = sweep.parse_sweep(c, ["joint_weight=0,1", "batch_size=16,64,256"])
    points = sweep.expand_grid(c, grid, [0, 1, 2], str(tmp_path))
    assert len(points) == 2 * 3 * 3
    names = [p.name for p in points]
    assert len(set(names)) == len(names)
    assert "batch_size=16,joint_weight=0,seed=0" in names
    assert "batch_size=256,joint_weight=1,seed=2" in names
    # the order of --sweep flags and the spelling of a value do not change the names
    again = sweep.expand_grid(
        c, sweep.parse_sweep(c, ["batch_size=16,64,256", "joint_weight=0.0,1.0"]), [0, 1, 2],
        str(tmp_path))
    assert sorted(p.name for p in again) == sorted(names)
    p = next(p for p in points if p.name == "batch_size=64,joint_weight=1,seed=2")
    assert p.workdir == os.path.join(str(tmp_path), p.name)
    assert p.config.batch_size == 64 and p.config.seed == 2
    assert p.config.joint_weight == 1.0 and isinstance(p.config.joint_weight, float)
    assert c.batch_size == 64 and c.seed == 0        # the base config is untouched
    # the command: the config file plus exactly the fields that differ from it
    argv = sweep.point_argv("configs/gffn.py:smoke", p, _config())
    assert argv[1:3] == ["-m", "jaxhybrid.main"]
    assert argv[3] == f"--config={os.path.abspath('configs/gffn.py')}:smoke"
    assert argv[4] == f"--workdir={p.workdir}"
    assert argv[5:] == ["--config.batch_size=64", "--config.joint_weight=1.0", "--config.seed=2"]
    c.num_steps = 7                                  # a fixed override (--set / --config.*)
    (p,) = sweep.expand_grid(c, sweep.parse_sweep(c, ["batch_size=16"]), [0], str(tmp_path))
    assert sweep.point_argv("configs/gffn.py:smoke", p, _config())[5:] == [
        "--config.batch_size=16", "--config.num_steps=7", "--config.seed=0"]


def test_explicit_seed_axis_and_errors(tmp_path):
    c = _config()
    pts = sweep.expand_grid(c, sweep.parse_sweep(c, ["seed=3,5", "model.hidden=(16,),(8, 4)"]),
                            None, str(tmp_path))
    assert sorted(p.name for p in pts) == sorted([
        "model.hidden=(16),seed=3", "model.hidden=(16),seed=5",
        "model.hidden=(8-4),seed=3", "model.hidden=(8-4),seed=5"])
    assert {p.config.model.hidden for p in pts} == {(16,), (8, 4)}
    c.seed = 7                                   # no --seeds: the config's own seed
    (p,) = sweep.expand_grid(c, sweep.parse_sweep(c, ["batch_size=16"]), None, str(tmp_path))
    assert p.name == "batch_size=16,seed=7" and p.config.seed == 7
    with pytest.raises(ValueError, match="not both"):
        sweep.expand_grid(c, sweep.parse_sweep(c, ["seed=0,1"]), [0], str(tmp_path))
    with pytest.raises(ValueError, match="repeats"):
        sweep.expand_grid(c, sweep.parse_sweep(c, ["joint_weight=0,0.0"]), [0], str(tmp_path))
    with pytest.raises(KeyError, match="batch_size"):
        sweep.parse_sweep(c, ["batchsize=16"])
    with pytest.raises(KeyError, match="section"):
        sweep.parse_sweep(c, ["optimizer=1"])


def test_values_are_parsed_by_field_type():
    c = _config()
    parse = lambda key, text: sweep.coerce_value(key, text, sweep.get_field(c, key))
    assert parse("batch_size", "16") == 16 and type(parse("batch_size", "16")) is int
    assert parse("batch_size", "1e3") == 1000
    assert parse("joint_weight", "0") == 0.0 and type(parse("joint_weight", "0")) is float
    assert parse("optimizer.learning_rate", "3e-4") == 3e-4
    assert parse("evals.pgd_random_start", "true") is True
    assert parse("evals.pgd_random_start", "False") is False
    assert parse("optimizer.lr_scaling", "linear") == "linear"
    assert parse("model.hidden", "(64, 32)") == (64, 32)
    assert parse("model.hidden", "16") == (16,)
    assert sweep.split_values("(16,),(32, 8),4") == ["(16,)", "(32, 8)", "4"]
    for key, bad in [("batch_size", "1.5"), ("batch_size", "big"),
                     ("joint_weight", "heavy"), ("evals.pgd_random_start", "maybe")]:
        with pytest.raises(ValueError, match=key):
            parse(key, bad)
    # Python values from a config's get_sweep() are coerced the same way
    assert sweep.coerce_value("joint_weight", 1, 0.0) == 1.0
    assert sweep.format_value(0.0) == "0" and sweep.format_value(1e-3) == "0.001"
    assert sweep.format_value(True) == "true"
    assert sweep.flag_value((16,)) == "(16,)" and sweep.flag_value(0.0) == "0.0"


def test_config_module_can_declare_its_sweep(tmp_path):
    path = tmp_path / "cfg.py"
    path.write_text(
        "from configs import gffn\n"
        "def get_config(variant='digits'):\n    return gffn.get_config(variant)\n"
        "def get_sweep(variant):\n"
        "    return {'batch_size': [16, 32], 'joint_weight': [0, 1], 'seeds': 2}\n")
    module = sweep.load_config_module(str(path))
    grid, seeds = sweep.declared_sweep(module, "smoke")
    assert grid == {"batch_size": [16, 32], "joint_weight": [0, 1]} and seeds == 2
    points = sweep.expand_grid(_config(), grid, list(range(seeds)), str(tmp_path))
    assert len(points) == 8 and all(isinstance(p.config.joint_weight, float) for p in points)
    assert sweep.split_config_arg("configs/gffn.py:smoke") == ("configs/gffn.py", "smoke")
    assert sweep.split_config_arg("configs/gffn.py") == ("configs/gffn.py", None)


# -- running: skip finished, survive failures ----------------------------------------------
def _fake_finish(point):
    os.makedirs(point.workdir, exist_ok=True)
    with open(os.path.join(point.workdir, "final_metrics.json"), "w") as f:
        json.dump({"step": 1}, f)


def test_finished_points_are_skipped_and_failures_do_not_stop_the_sweep(tmp_path):
    c = _config()
    points = sweep.expand_grid(c, sweep.parse_sweep(c, ["batch_size=16,32,64"]), [0],
                               str(tmp_path))
    for p in points:
        p.argv = sweep.point_argv("configs/gffn.py:smoke", p, _config())
    done, failing = points[0], points[1]
    _fake_finish(done)
    calls = []

    def runner(point):
        calls.append(point.name)
        if point is failing:
            with open(point.log_path, "a") as f:
                f.write("Traceback (most recent call last):\n  ...\n"
                        "ValueError: something broke in this point\n")
            return 1
        _fake_finish(point)
        return 0

    result = sweep.run_sweep(points, str(tmp_path), runner=runner)
    assert calls == [failing.name, points[2].name]           # no run for the finished point
    st = result["points"]
    assert st[done.name]["status"] == "skipped"
    assert st[failing.name]["status"] == "failed"
    assert "exit status 1" in st[failing.name]["error"]
    assert "something broke" in st[failing.name]["error"]
    assert st[points[2].name]["status"] == "finished"
    assert sweep.failed_points(result) == [failing.name]
    on_disk = json.load(open(tmp_path / sweep.STATUS_FILE))
    assert on_disk["points"] == json.loads(json.dumps(st, default=str))
    assert on_disk["points"][points[2].name]["learning_rate"] == pytest.approx(
        1e-3 * math.sqrt(64 / 128))
    assert "--config.batch_size=32" in on_disk["points"][failing.name]["command"]

    # a runner that raises, or "succeeds" without final_metrics.json, is a failure too
    def bad_runner(point):
        if point is failing:
            raise RuntimeError("runner exploded")
        return 0
    (tmp_path / points[2].name / "final_metrics.json").unlink()
    result = sweep.run_sweep(points, str(tmp_path), runner=bad_runner)
    assert "RuntimeError: runner exploded" in result["points"][failing.name]["error"]
    assert "no final_metrics.json" in result["points"][points[2].name]["error"]
    assert result["points"][done.name]["status"] == "skipped"


def test_parallel_jobs_run_every_point_once(tmp_path):
    c = _config()
    points = sweep.expand_grid(c, sweep.parse_sweep(c, ["batch_size=16,32,64"]), [0, 1],
                               str(tmp_path))
    calls = []
    result = sweep.run_sweep(points, str(tmp_path), jobs=3,
                             runner=lambda p: calls.append(p.name) or _fake_finish(p) or 0)
    assert sorted(calls) == sorted(p.name for p in points)
    assert result["counts"] == {"finished": 6}


def test_a_point_dir_with_another_config_is_refused(tmp_path):
    c = _config()
    (p,) = sweep.expand_grid(c, sweep.parse_sweep(c, ["batch_size=16"]), [0], str(tmp_path))
    _fake_finish(p)
    other = sweep.copy_config(p.config)
    other.num_steps = 99
    with open(os.path.join(p.workdir, "config.json"), "w") as f:
        f.write(other.to_json_best_effort())
    result = sweep.run_sweep([p], str(tmp_path), runner=lambda q: pytest.fail("ran"))
    assert result["points"][p.name]["status"] == "failed"
    assert "num_steps" in result["points"][p.name]["error"]


# -- learning-rate rules -------------------------------------------------------------------
@pytest.mark.parametrize("rule, expected", [("sqrt", 2e-3), ("linear", 4e-3), ("none", 1e-3)])
def test_learning_rate_rules(rule, expected):
    c = _config()
    c.optimizer.learning_rate = 1e-3
    c.optimizer.base_batch_size = 128
    c.optimizer.lr_scaling = rule
    assert scaled_learning_rate(c.optimizer, 512) == pytest.approx(expected, rel=1e-12)
    assert scaled_learning_rate(c.optimizer, 128) == pytest.approx(1e-3, rel=1e-12)


# -- aggregation -----------------------------------------------------------------------------
BATCHES, LAMBDAS, SEEDS = (16, 256), (0.0, 1.0), (0, 1, 2)


def _known(bs, lam, seed):
    """Fabricated numbers: seed effects 0, 0.01, 0.02 -> mean +0.01, std 0.01 (ddof=1)."""
    return {"accuracy": 0.9 - 0.0001 * bs + 0.02 * lam + 0.01 * seed,
            "nll": 0.3 + 0.1 * seed, "ece": 0.05 + 0.0001 * bs - 0.02 * lam + 0.01 * seed,
            "ece_ts": 0.02 + 0.001 * seed,
            "heldout/max_softmax": 0.8 + 0.01 * seed, "heldout/log_px": 0.5 - lam * 0.1,
            "uniform_noise/max_softmax": 0.7, "uniform_noise/log_px": 0.9 + 0.03 * seed,
            "fgsm0": 0.9, "fgsm8": 0.4 + 0.1 * lam + 0.02 * seed}


def _fabricate_run(root, bs, lam, seed):
    c = gffn.get_config("smoke")
    c.batch_size, c.joint_weight, c.seed = bs, lam, seed
    d = root / f"batch_size={bs},joint_weight={lam:g},seed={seed}"
    k = _known(bs, lam, seed)
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(4), size=200)
    cal = calibration_metrics(probs, rng.integers(0, 4, 200), num_bins=15)
    cal["ece"] = k["ece"]
    ood = {s: {"scores": {score: {"auroc": k[f"{s}/{score}"]}
                          for score in ("max_softmax", "log_px")}}
           for s in ("heldout", "uniform_noise")}
    metrics = {"classification": {"accuracy": k["accuracy"], "nll": k["nll"], "brier": 0.1},
               "calibration": {"equal_width": cal},
               "temperature": {"temperature": 1.3, "ece_after": k["ece_ts"]},
               "ood": {"sets": ood},
               "adversarial": {"attack": "fgsm", "epsilons": [0.0, 8 / 255],
                               "accuracy": [k["fgsm0"], k["fgsm8"]]}}
    stale = {"classification": {"accuracy": -1.0, "nll": 99.0}}   # an earlier eval step
    for step, m in ((5, stale), (40, metrics)):
        os.makedirs(d / "eval" / str(step))
        (d / "eval" / str(step) / "metrics.json").write_text(json.dumps(m))
    (d / "config.json").write_text(c.to_json_best_effort())
    (d / "final_metrics.json").write_text(json.dumps({"step": 40, "train_seconds": 2.0 + seed}))


def test_aggregate_fabricated_runs_means_stds_tables_and_figures(tmp_path):
    for bs in BATCHES:
        for lam in LAMBDAS:
            for seed in SEEDS:
                _fabricate_run(tmp_path, bs, lam, seed)
    (tmp_path / "unfinished").mkdir()                    # no final_metrics.json: ignored
    rows = agg.aggregate(str(tmp_path))
    assert len(rows) == 4
    assert [tuple(r["group"].items()) for r in rows] == [
        (("batch_size", bs), ("joint_weight", lam)) for bs in BATCHES for lam in LAMBDAS]
    for r in rows:
        bs, lam = r["group"]["batch_size"], r["group"]["joint_weight"]
        assert r["n"] == 3 and r["seeds"] == [0, 1, 2]
        m = r["metrics"]
        vals = {key: [_known(bs, lam, s)[key] for s in SEEDS] for key in _known(bs, lam, 0)}
        expect = {"accuracy": "accuracy", "nll": "nll", "ece": "ece", "ece_ts": "ece_ts",
                  "ood/heldout/max_softmax/auroc": "heldout/max_softmax",
                  "ood/heldout/log_px/auroc": "heldout/log_px",
                  "ood/uniform_noise/log_px/auroc": "uniform_noise/log_px",
                  "fgsm/eps=0/accuracy": "fgsm0", "fgsm/eps=0.03137/accuracy": "fgsm8"}
        for name, key in expect.items():
            assert m[name]["mean"] == pytest.approx(np.mean(vals[key]), abs=1e-12), name
            assert m[name]["std"] == pytest.approx(np.std(vals[key], ddof=1), abs=1e-12), name
            assert m[name]["n"] == 3
        assert m["accuracy"]["mean"] == pytest.approx(0.9 - 0.0001 * bs + 0.02 * lam + 0.01)
        assert m["accuracy"]["std"] == pytest.approx(0.01)
        assert m["ood/heldout/log_px/auroc"]["std"] == pytest.approx(0.0, abs=1e-12)
        assert m["steps"]["mean"] == 40
        assert r["learning_rate"] == pytest.approx(1e-3 * math.sqrt(bs / 128))

    out = agg.write_outputs(str(tmp_path), str(tmp_path / "out"))
    names = {os.path.basename(p) for p in out["figures"]}
    assert names == {"accuracy_vs_batch_size.png", "ece_vs_batch_size.png",
                     "ood_auroc_vs_batch_size.png", "reliability_largest_batch.png"}
    for p in out["figures"]:
        assert os.path.getsize(p) > 1000
    md = open(out["markdown"]).read()
    first = rows[0]["metrics"]["accuracy"]
    assert f"{first['mean']:.4f} ± {first['std']:.4f}" in md
    assert "heldout / log_px" in md and "FGSM ε=8/255" in md
    import csv
    table = list(csv.DictReader(open(out["csv"])))
    assert len(table) == 4 and table[0]["n"] == "3"
    assert float(table[0]["accuracy_mean"]) == pytest.approx(first["mean"])
    assert float(table[0]["accuracy_std"]) == pytest.approx(first["std"])


def test_single_seed_std_is_zero(tmp_path):
    _fabricate_run(tmp_path, 16, 0.0, 0)
    _fabricate_run(tmp_path, 16, 1.0, 0)
    rows = agg.aggregate(str(tmp_path))
    assert [r["n"] for r in rows] == [1, 1]
    assert all(r["metrics"]["accuracy"]["std"] == 0.0 for r in rows)
    assert [list(r["group"]) for r in rows] == [["joint_weight"]] * 2


# -- the command line ---------------------------------------------------------------------------
def test_dry_run_lists_points_and_runs_nothing(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "jaxhybrid.sweep", "--config=configs/gffn.py:smoke",
         f"--workdir={tmp_path / 'dry'}", "--sweep", "batch_size=16,32",
         "--sweep", "joint_weight=0,1", "--seeds", "2", "--set", "model.hidden=(16,)",
         "--dry_run"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[8/8] batch_size=32,joint_weight=1,seed=1 (new, peak lr 0.0005)" in r.stdout
    assert "'--config.model.hidden=(16,)'" in r.stdout         # shell-quoted commands
    assert not (tmp_path / "dry").exists()


# -- one real sweep --------------------------------------------------------------------------
def test_real_two_point_sweep_then_aggregate(tmp_path):
    root = tmp_path / "sweep"
    args = [sys.executable, "-m", "jaxhybrid.sweep", "--config=configs/gffn.py:smoke",
            f"--workdir={root}", "--sweep", "batch_size=16,32", "--config.num_steps=3",
            "--config.model.width=4", "--config.evals.names=classification",
            "--set", "model.hidden=(16,)", "--config.model.stages=1"]
    r = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    status = json.load(open(root / sweep.STATUS_FILE))
    assert status["counts"] == {"finished": 2}
    for name in ("batch_size=16,seed=0", "batch_size=32,seed=0"):
        assert (root / name / "final_metrics.json").exists()
        assert "FINAL METRICS" in (root / name / "train.log").read_text()
        saved = json.load(open(root / name / "config.json"))
        assert saved["model"]["width"] == 4 and saved["model"]["hidden"] == [16]
    assert "peak lr 0.0003536" in r.stdout      # 1e-3·sqrt(16/128), logged per point
    rows = agg.aggregate(str(root))
    assert [(r["group"], r["n"]) for r in rows] == [({"batch_size": 16}, 1),
                                                    ({"batch_size": 32}, 1)]
    assert os.path.getsize(root / "aggregate" / "accuracy_vs_batch_size.png") > 1000

    # resume: finished points are skipped; a point that fails (12 is not divisible by the
    # 8 devices) is reported, and the exit status says so
    assert args[5:7] == ["--sweep", "batch_size=16,32"]
    r = subprocess.run(args[:6] + ["batch_size=16,32,12"] + args[7:], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    assert "1 point(s) failed: batch_size=12,seed=0" in r.stdout
    status = json.load(open(root / sweep.STATUS_FILE))
    assert status["counts"] == {"skipped": 2, "failed": 1}
    assert "not divisible" in status["points"]["batch_size=12,seed=0"]["error"]
