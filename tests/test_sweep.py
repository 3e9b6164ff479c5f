"""Sweeps and their aggregation: grid, names, values parsed by ml_collections, skipping,
failures, lr rules, means/stds, declared and command-line presentation over fabricated
runs, and one real two-point sweep through subprocesses."""
import csv
import json
import math
import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

from configs import dhm, gffn
from jaxhybrid.config_keys import flatten
from jaxhybrid.evaluators import canvas, suite
from jaxhybrid.evaluators.adversarial import attack_accuracy
from jaxhybrid.evaluators.calibration import ECE
from jaxhybrid.evaluators.classification import ACCURACY, BRIER, NLL
from jaxhybrid.evaluators.ood import ood_auroc
from jaxhybrid.evaluators.temperature import ECE_AFTER_TS
from jaxhybrid.evaluators.calibration import calibration_metrics
from jaxhybrid.optim import scaled_learning_rate
from jaxhybrid.tools import aggregate as agg
from jaxhybrid.tools import (compare, configfile, figures, grid, overrides, presentation, runs,
                             sweep)
from tests.helpers import REPO, apply_overrides


def _config():
    return gffn.get_config("smoke")


# -- grid and names ----------------------------------------------------------------------
def test_grid_expands_to_the_product_with_stable_names(tmp_path):
    c = _config()
    swept = grid.parse_sweep(c, ["objective.joint_weight=0,1", "batch_size=16,64,256"])
    points = grid.expand_grid(c, swept, [0, 1, 2], str(tmp_path))
    assert len(points) == 2 * 3 * 3
    names = [p.name for p in points]
    assert len(set(names)) == len(names)
    assert "batch_size=16,objective.joint_weight=0,seed=0" in names
    assert "batch_size=256,objective.joint_weight=1,seed=2" in names
    # the order of --sweep flags and the spelling of a value do not change the names
    again = grid.expand_grid(
        c, grid.parse_sweep(c, ["batch_size=16,64,256", "objective.joint_weight=0.0,1.0"]),
        [0, 1, 2],
        str(tmp_path))
    assert sorted(p.name for p in again) == sorted(names)
    p = next(p for p in points if p.name == "batch_size=64,objective.joint_weight=1,seed=2")
    assert p.workdir == os.path.join(str(tmp_path), p.name)
    assert p.config.batch_size == 64 and p.config.seed == 2
    lam = p.config.objective.joint_weight
    assert lam == 1.0 and isinstance(lam, float)
    assert c.batch_size == 64 and c.seed == 0        # the base config is untouched
    # the command: the config file plus exactly the fields that differ from it
    argv = grid.point_argv("configs/gffn.py:smoke", p, _config())
    assert argv[1:3] == ["-m", "jaxhybrid.main"]
    assert argv[3] == f"--config={os.path.abspath('configs/gffn.py')}:smoke"
    assert argv[4] == f"--workdir={p.workdir}"
    assert argv[5:] == ["--config.batch_size=64", "--config.objective.joint_weight=1.0", "--config.seed=2"]
    c.num_steps = 7                                  # a fixed override (--set / --config.*)
    (p,) = grid.expand_grid(c, grid.parse_sweep(c, ["batch_size=16"]), [0], str(tmp_path))
    assert grid.point_argv("configs/gffn.py:smoke", p, _config())[5:] == [
        "--config.batch_size=16", "--config.num_steps=7", "--config.seed=0"]


def test_explicit_seed_axis_and_errors(tmp_path):
    c = _config()
    pts = grid.expand_grid(c, grid.parse_sweep(c, ["seed=3,5", "model.hidden=(16,),(8, 4)"]),
                            None, str(tmp_path))
    assert sorted(p.name for p in pts) == sorted([
        "model.hidden=(16),seed=3", "model.hidden=(16),seed=5",
        "model.hidden=(8-4),seed=3", "model.hidden=(8-4),seed=5"])
    assert {p.config.model.hidden for p in pts} == {(16,), (8, 4)}
    c.seed = 7                                   # no --seeds: the config's own seed
    (p,) = grid.expand_grid(c, grid.parse_sweep(c, ["batch_size=16"]), None, str(tmp_path))
    assert p.name == "batch_size=16,seed=7" and p.config.seed == 7
    with pytest.raises(ValueError, match="not both"):
        grid.expand_grid(c, grid.parse_sweep(c, ["seed=0,1"]), [0], str(tmp_path))
    with pytest.raises(ValueError, match="repeats"):
        grid.expand_grid(c, grid.parse_sweep(c, ["objective.joint_weight=0,0.0"]), [0], str(tmp_path))
    with pytest.raises(KeyError, match="batch_size"):
        grid.parse_sweep(c, ["batchsize=16"])
    with pytest.raises(KeyError, match="section"):
        grid.parse_sweep(c, ["optimizer=1"])


def _main_config(assignments):
    """The config jaxhybrid.main builds from --config=configs/gffn.py:smoke --config.K=V ..."""
    from absl import flags
    from ml_collections import config_flags
    argv = ["main", f"--config={REPO}/configs/gffn.py:smoke", *assignments]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=flag_values, sys_argv=argv)
    with warnings.catch_warnings():     # ml_collections' own loader uses load_module()
        warnings.simplefilter("ignore", DeprecationWarning)
        flag_values(argv)
    return flag_values.config


@pytest.mark.parametrize("assignment", [
    "optimizer.learning_rate=3e-4", "optimizer.learning_rate=1", "objective.joint_weight=0",
    "model.hidden=16", "model.hidden=(64, 32)", "model.hidden=[8, 4]",
    "data.ood_classes=(8, 9)", "evals.pgd_random_start=true", "evals.pgd_random_start=1",
    "evals.pgd_random_start=False", "optimizer.lr_scaling=linear", "batch_size=16"])
def test_values_are_parsed_exactly_as_config_flags_parses_them(assignment):
    key, text = assignment.split("=", 1)
    want = overrides.get_field(_main_config([f"--config.{assignment}"]), key)
    got = overrides.parse_value(_config(), key, text)
    assert got == want and type(got) is type(want), (got, want)
    # --sweep and --set go through the same parser; so do the tests' apply_overrides
    (values,) = grid.parse_sweep(_config(), [assignment]).values()
    assert values == [want] and type(values[0]) is type(want)
    c = apply_overrides(_config(), {key: text})
    assert overrides.get_field(c, key) == want and type(overrides.get_field(c, key)) is type(want)


@pytest.mark.parametrize("assignment", [
    "batch_size=1e3", "batch_size=1.5", "seed=2.0", "objective.joint_weight=heavy",
    "evals.pgd_random_start=yes", "evals.pgd_random_start=maybe"])
def test_values_config_flags_rejects_are_rejected_naming_the_key(assignment):
    key, text = assignment.split("=", 1)
    with pytest.raises(Exception):
        _main_config([f"--config.{assignment}"])
    with pytest.raises(ValueError, match=f"{key}.*{text}|{text}.*{key}"):
        overrides.parse_value(_config(), key, text)


def test_python_values_and_point_commands_round_trip_through_config_flags(tmp_path):
    c = _config()
    # Python values (a get_sweep's) are written as flag text, then parsed the same way
    assert overrides.parse_value(c, "objective.joint_weight", 1) == 1.0
    assert overrides.parse_value(c, "model.hidden", [8]) == (8,)
    assert overrides.parse_value(c, "evals.pgd_random_start", True) is True
    assert c.objective.joint_weight == 1.0 and c.model.hidden == (128,)      # c is unchanged
    with pytest.raises(ValueError, match="batch_size"):
        overrides.parse_value(c, "batch_size", 16.5)
    assert overrides.format_value(0.0) == "0" and overrides.format_value(1e-3) == "0.001"
    assert overrides.format_value(True) == "true"
    assert overrides.flag_value((16,)) == "(16,)" and overrides.flag_value(0.0) == "0.0"
    assert overrides.split_values("(16,),(32, 8),4") == ["(16,)", "(32, 8)", "4"]
    # every point's command line gives jaxhybrid.main exactly the point's config
    apply_overrides(c, {"evals.pgd_random_start": "true", "data.ood_classes": (7, 8, 9),
                        "evals.attack": "pgd"})          # fixed overrides (--set)
    swept = grid.parse_sweep(c, ["optimizer.learning_rate=1e-3,3e-3", "model.hidden=(16,),(8, 4)"])
    points = grid.expand_grid(c, swept, [1], str(tmp_path))
    assert len(points) == 4
    assert "model.hidden=(8-4),optimizer.learning_rate=0.003,seed=1" in [p.name for p in points]
    for p in points:
        argv = grid.point_argv("configs/gffn.py:smoke", p, _config())
        parsed = _main_config([a for a in argv if a.startswith("--config.")])
        assert flatten(parsed) == flatten(p.config), p.name


def test_bad_keys_name_the_valid_ones():
    c = _config()
    with pytest.raises(KeyError, match=r"Did you mean optimizer.learning_rate.*Valid keys: "
                                       r".*batch_size"):
        grid.parse_sweep(c, ["optimizer.learning_rat=1e-3"])
    with pytest.raises(KeyError, match="Valid keys: .*model.width"):
        apply_overrides(c, {"model.widht": 8})
    with pytest.raises(KeyError, match="section.*learning_rate"):
        overrides.parse_value(c, "optimizer", "1")


def test_config_module_can_declare_its_sweep_and_presentation(tmp_path):
    path = tmp_path / "cfg.py"
    path.write_text(
        "from configs import gffn\n"
        "def get_config(variant='digits'):\n    return gffn.get_config(variant)\n"
        "def get_sweep(variant):\n"
        "    return {'optimizer.learning_rate': [1e-3, 3e-3], 'model.width': [4, 8],\n"
        "            'seeds': 2, 'x': 'optimizer.learning_rate', 'x_scale': 'log10',\n"
        "            'titles': {'optimizer.learning_rate': 'lr'},\n"
        "            'labels': {'model.width': {4: 'narrow', 8: 'wide'}},\n"
        "            'plots': [{'metrics': 'accuracy'}, {'kind': 'reliability'}]}\n")
    module = configfile.load_config_module(str(path))
    declared = configfile.declared_sweep(module, "smoke")
    assert declared.grid == {"optimizer.learning_rate": [1e-3, 3e-3], "model.width": [4, 8]}
    assert declared.seeds == 2
    assert declared.presentation["x"] == "optimizer.learning_rate"
    assert declared.presentation["labels"] == {"model.width": [[4, "narrow"], [8, "wide"]]}
    assert [p["kind"] for p in declared.presentation["plots"]] == ["curve", "reliability"]
    assert declared.presentation["plots"][0]["metrics"] == ["accuracy"]
    json.dumps(declared.presentation)                  # recorded in sweep_status.json
    configfile.check_presentation_keys(_config(), declared.presentation)
    points = grid.expand_grid(_config(), declared.grid, list(range(declared.seeds)),
                               str(tmp_path))
    assert len(points) == 8 and all(isinstance(p.config.model.width, int) for p in points)
    assert configfile.declared_sweep(gffn, "smoke").grid == {"batch_size": [8, 16],
                                                        "objective.joint_weight": [0.0, 1.0]}
    assert configfile.split_config_arg("configs/gffn.py:smoke") == ("configs/gffn.py", "smoke")
    assert configfile.split_config_arg("configs/gffn.py") == ("configs/gffn.py", None)
    # mistakes are errors that name the valid choices
    with pytest.raises(KeyError, match="Valid keys"):
        configfile.check_presentation_keys(_config(), {"x": "optimizer.lr"})
    with pytest.raises(ValueError, match="valid fields: kind, metrics"):
        presentation.check_presentation({"plots": [{"metric": ["accuracy"]}]})
    with pytest.raises(ValueError, match="valid choices: linear, log2, log10, categorical"):
        presentation.check_presentation({"x_scale": "log"})


def test_categorical_x_places_zero_and_powers_of_ten_evenly():
    """x_scale=categorical (a β grid with 0, which no log axis can show): the values in
    order at 0, 1, 2, ...; linear keeps the values themselves."""
    from jaxhybrid.tools import figures
    rows = [{"group": {"objective.beta": b}} for b in (100.0, 0.0, 1.0, 0.01, 10000.0, 1.0)]
    view = presentation.View(x="objective.beta", x_scale="categorical")
    pos, ticks, labels = figures._x_positions(rows, view)
    assert ticks == [0, 1, 2, 3, 4] and labels == ["0", "0.01", "1", "100", "10000"]
    assert pos[json.dumps(100.0)] == 3
    _, ticks, _ = figures._x_positions(rows, presentation.View(x="objective.beta"))
    assert ticks == [0.0, 0.01, 1.0, 100.0, 10000.0]
    with pytest.raises(ValueError, match="valid: x, x_label"):
        presentation.check_presentation({"xlabel": "lr"})


# -- running: skip finished, survive failures ----------------------------------------------
def _fake_finish(point):
    os.makedirs(point.workdir, exist_ok=True)
    with open(os.path.join(point.workdir, "final_metrics.json"), "w") as f:
        json.dump({"step": 1}, f)


def test_finished_points_are_skipped_and_failures_do_not_stop_the_sweep(tmp_path):
    c = _config()
    points = grid.expand_grid(c, grid.parse_sweep(c, ["batch_size=16,32,64"]), [0],
                               str(tmp_path))
    for p in points:
        p.argv = grid.point_argv("configs/gffn.py:smoke", p, _config())
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
    points = grid.expand_grid(c, grid.parse_sweep(c, ["batch_size=16,32,64"]), [0, 1],
                               str(tmp_path))
    calls = []
    result = sweep.run_sweep(points, str(tmp_path), jobs=3,
                             runner=lambda p: calls.append(p.name) or _fake_finish(p) or 0)
    assert sorted(calls) == sorted(p.name for p in points)
    assert result["counts"] == {"finished": 6}


def test_a_point_dir_with_another_config_is_refused(tmp_path):
    c = _config()
    (p,) = grid.expand_grid(c, grid.parse_sweep(c, ["batch_size=16"]), [0], str(tmp_path))
    _fake_finish(p)
    other = overrides.copy_config(p.config)
    other.num_steps = 99
    with open(os.path.join(p.workdir, "config.json"), "w") as f:
        f.write(other.to_json_best_effort())
    with pytest.raises(ValueError, match=f"{p.name}: config differs: num_steps"):
        sweep.run_sweep([p], str(tmp_path), runner=lambda q: pytest.fail("ran"))
    assert not (tmp_path / sweep.STATUS_FILE).exists()            # nothing written


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
            "ece_after_ts": 0.02 + 0.001 * seed,
            "heldout/max_softmax": 0.8 + 0.01 * seed, "heldout/log_px": 0.5 - lam * 0.1,
            "uniform_noise/max_softmax": 0.7, "uniform_noise/log_px": 0.9 + 0.03 * seed,
            "fgsm0": 0.9, "fgsm8": 0.4 + 0.1 * lam + 0.02 * seed}


def _fabricate(root, overrides: dict, known: dict, seed: int, layout: str = "old"):
    """A finished run directory as the trainer leaves it, with ``known`` metrics at step 40
    (the selected checkpoint, named by final_metrics.json), a stale evaluation at step 5
    and a later one at step 60 that was not selected; ``layout``: old (eval/<step>/,
    absolute eval_dir) or new (eval/<step>/<eval_id>/, relative eval_dir)."""
    c = apply_overrides(gffn.get_config("smoke"), {**overrides, "seed": seed})
    d = root / grid.point_name({**overrides, "seed": seed})
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(4), size=200)
    cal = calibration_metrics(probs, rng.integers(0, 4, 200), num_bins=15)
    cal["ece"] = known["ece"]
    ood = {s: {"scores": {score: {"auroc": known[f"{s}/{score}"]}
                          for score in ("max_softmax", "log_px")}}
           for s in ("heldout", "uniform_noise")}
    metrics = {"classification": {"accuracy": known["accuracy"], "nll": known["nll"],
                                  "brier": 0.1},
               "calibration": {"equal_width": cal},
               "temperature": {"temperature": 1.3, "ece_after": known["ece_after_ts"]},
               "ood": {"sets": ood},
               "adversarial": {"attack": "fgsm", "epsilons": [0.0, 8 / 255],
                               "accuracy": [known["fgsm0"], known["fgsm8"]]}}
    stale = {"classification": {"accuracy": -1.0, "nll": 99.0}}   # not the selected step
    for step, m in ((5, stale), (40, metrics), (60, stale)):
        sub = d / "eval" / str(step) / ("0badcafe" if layout == "new" else "")
        os.makedirs(sub)
        (sub / "metrics.json").write_text(json.dumps(m))
    (d / "config.json").write_text(c.to_json_best_effort())
    eval_dir = "eval/40/0badcafe" if layout == "new" else str(d / "eval" / "40")
    (d / "final_metrics.json").write_text(json.dumps(
        {"step": 60, "evaluated_step": 40, "eval_dir": eval_dir, "train_seconds": 2.0 + seed}))
    return d


def _fabricate_run(root, bs, lam, seed):
    return _fabricate(root, {"batch_size": bs, "objective.joint_weight": lam},
                      _known(bs, lam, seed), seed,
                      layout=("old", "new")[seed % 2])


def _write_status(root, swept: dict, declared: dict):
    """sweep_status.json as jaxhybrid.tools.sweep writes it (the parts aggregate reads)."""
    (root / sweep.STATUS_FILE).write_text(json.dumps(
        {"spec": {"sweep": swept, "aggregate": presentation.check_presentation(declared)}}))


@pytest.fixture
def drawn_lines(monkeypatch):
    """The (x values, label) of every line the aggregate figures draw, then ("ticks",
    labels) of every x axis."""
    from matplotlib.axes import Axes
    lines, errorbar, ticks = [], Axes.errorbar, Axes.set_xticklabels

    def record(self, x, y, *args, **kwargs):
        lines.append((tuple(float(v) for v in x), kwargs.get("label")))
        return errorbar(self, x, y, *args, **kwargs)

    def record_ticks(self, labels, *args, **kwargs):
        lines.append(("ticks", tuple(labels)))
        return ticks(self, labels, *args, **kwargs)
    monkeypatch.setattr(Axes, "errorbar", record)
    monkeypatch.setattr(Axes, "set_xticklabels", record_ticks)
    return lines


def test_aggregate_fabricated_runs_means_stds_tables_and_figures(tmp_path, drawn_lines):
    for bs in BATCHES:
        for lam in LAMBDAS:
            for seed in SEEDS:
                _fabricate_run(tmp_path, bs, lam, seed)
    (tmp_path / "unfinished").mkdir()                    # no final_metrics.json: ignored
    # the GFFN study's presentation, declared by configs/gffn.py's get_sweep
    _write_status(tmp_path, {"batch_size": list(BATCHES),
                             "objective.joint_weight": list(LAMBDAS)},
                  configfile.declared_sweep(gffn, "smoke").presentation)
    rows = agg.aggregate(str(tmp_path))
    assert len(rows) == 4
    assert [tuple(r["group"].items()) for r in rows] == [
        (("batch_size", bs), ("objective.joint_weight", lam)) for bs in BATCHES for lam in LAMBDAS]
    for r in rows:
        bs, lam = r["group"]["batch_size"], r["group"]["objective.joint_weight"]
        assert r["n"] == 3 and r["seeds"] == [0, 1, 2]
        m = r["metrics"]
        vals = {key: [_known(bs, lam, s)[key] for s in SEEDS] for key in _known(bs, lam, 0)}
        expect = {ACCURACY: "accuracy", NLL: "nll", ECE: "ece",
                  ECE_AFTER_TS: "ece_after_ts",
                  ood_auroc("heldout", "max_softmax"): "heldout/max_softmax",
                  ood_auroc("heldout", "log_px"): "heldout/log_px",
                  ood_auroc("uniform_noise", "log_px"): "uniform_noise/log_px",
                  attack_accuracy("fgsm", 0.0): "fgsm0",
                  attack_accuracy("fgsm", 8 / 255): "fgsm8"}
        for name, key in expect.items():
            assert m[name]["mean"] == pytest.approx(np.mean(vals[key]), abs=1e-12), name
            assert m[name]["std"] == pytest.approx(np.std(vals[key], ddof=1), abs=1e-12), name
            assert m[name]["n"] == 3
        assert m["accuracy"]["mean"] == pytest.approx(0.9 - 0.0001 * bs + 0.02 * lam + 0.01)
        assert m["accuracy"]["std"] == pytest.approx(0.01)
        assert m["ood/heldout/log_px/auroc"]["std"] == pytest.approx(0.0, abs=1e-12)
        assert m["steps"]["mean"] == 60     # trained; evaluated at the selected step 40
        assert r["learning_rate"] == pytest.approx(1e-3 * math.sqrt(bs / 128))

    out = agg.write_outputs(str(tmp_path), str(tmp_path / "out"))
    figure_names = {os.path.basename(p) for p in out["figures"]}
    assert figure_names == {"accuracy_vs_batch_size.png", "ece_vs_batch_size.png",
                            "ood_auroc_vs_batch_size.png", "reliability_largest_batch.png"}
    for p in out["figures"]:
        assert os.path.getsize(p) > 1000
    # the declared labels, and one line style per OOD score, against the batch sizes
    labels = {label for _, label in drawn_lines}
    assert {"FFN (λ=0)", "GFFN (λ=1)", "FFN (λ=0): max_softmax", "GFFN (λ=1): log_px"} <= labels
    assert {x for x, _ in drawn_lines} == {tuple(map(float, BATCHES)), "ticks"}
    assert ("ticks", ("16", "256")) in drawn_lines
    md = open(out["markdown"]).read()
    first = rows[0]["metrics"]["accuracy"]
    assert f"{first['mean']:.4f} ± {first['std']:.4f}" in md and "± n/a" not in md
    assert "| batch | λ | n | peak lr | test accuracy |" in md
    assert "heldout / log_px" in md and "FGSM ε=0.03137 (8/255)" in md
    table = list(csv.DictReader(open(out["csv"])))
    assert len(table) == 4 and table[0]["n"] == "3"
    assert float(table[0]["accuracy_mean"]) == pytest.approx(first["mean"])
    assert float(table[0]["accuracy_std"]) == pytest.approx(first["std"])
    assert float(table[0]["ece_after_ts_mean"]) == pytest.approx(0.021)
    # jaxhybrid.tools.compare reads the same headline names
    table = compare.compare([str(_fabricate_run(tmp_path / "c", 16, 1.0, 0))], ["GFFN"])
    assert "| accuracy | 0.9184 |" in table and "| ece after TS | 0.0200 |" in table
    assert "| AUROC heldout / log_px | 0.4000 |" in table
    assert "| FGSM acc ε=0.03137 (8/255) | 0.5000 |" in table and "GFFN (step 40" in table


def _fabricate_lr_width_sweep(root):
    """A non-GFFN sweep: x = a nested key (optimizer.learning_rate), lines by model.width."""
    for lr in (1e-3, 3e-3):
        for width in (4, 16):
            for seed in (0, 1):
                k = {**_known(16, 0.0, seed), "accuracy": 0.5 + 10 * lr + 0.01 * width}
                _fabricate(root, {"optimizer.learning_rate": lr, "model.width": width}, k, seed)
    _write_status(root, {"optimizer.learning_rate": [1e-3, 3e-3], "model.width": [4, 16]},
                  {"x": "optimizer.learning_rate", "titles": {"optimizer.learning_rate": "lr"},
                   "labels": {"model.width": {4: "narrow", 16: "wide"}},
                   "plots": [{"metrics": ["accuracy"], "file": "acc.png"},
                             {"metrics": ["ood/*/max_softmax/auroc"]},
                             {"kind": "reliability", "title": "at the largest {key}, {x}"}]})


def test_a_non_gffn_sweep_aggregates_with_its_declared_x_labels_and_plots(tmp_path,
                                                                           drawn_lines):
    _fabricate_lr_width_sweep(tmp_path)
    out = agg.write_outputs(str(tmp_path), str(tmp_path / "out"))
    keys = ["optimizer.learning_rate", "model.width"]      # the sweep's order, not sorted
    assert [list(r["group"]) for r in out["rows"]] == [keys] * 4
    assert [r["metrics"]["accuracy"]["mean"] for r in out["rows"]] == pytest.approx(
        [0.5 + 10 * lr + 0.01 * w for lr in (1e-3, 3e-3) for w in (4, 16)])
    assert out["view"].x == "optimizer.learning_rate"
    assert {os.path.basename(p) for p in out["figures"]} == {
        "acc.png", "ood_max_softmax_auroc_vs_optimizer.learning_rate.png", "reliability.png"}
    assert {label for x, label in drawn_lines if x != "ticks"} == {"narrow", "wide"}
    assert {x for x, _ in drawn_lines} == {(1e-3, 3e-3), "ticks"}
    assert {t for x, t in drawn_lines if x == "ticks"} == {("0.001", "0.003")}
    md = open(out["markdown"]).read()
    assert "| lr | model.width | n | peak lr | test accuracy |" in md
    assert "| 0.003 | 16 | 2 |" in md
    assert figures.series_label({"model.width": 8}, out["view"]) == "model.width=8"
    assert figures.series_label({"optimizer.learning_rate": 0.01}, out["view"]) == "lr=0.01"


def test_command_line_x_and_metrics_choose_the_figures(tmp_path, drawn_lines, capsys):
    _fabricate_lr_width_sweep(tmp_path)
    out_dir = tmp_path / "cli"
    assert agg.main([str(tmp_path), "--out", str(out_dir), "--x", "model.width",
                     "--metrics", "accuracy,ood/*/*/auroc"]) == 0
    assert sorted(p.name for p in out_dir.glob("*.png")) == [
        "accuracy_vs_model.width.png", "ood_auroc_vs_model.width.png", "reliability.png"]
    # lines now by learning rate (its declared title), x = the widths (their declared
    # labels on the ticks); a line style per OOD score
    assert {x for x, _ in drawn_lines} == {(4.0, 16.0), "ticks"}
    assert {t for x, t in drawn_lines if x == "ticks"} == {("narrow", "wide")}
    assert {label for x, label in drawn_lines if x != "ticks"} == {
        "lr=0.001", "lr=0.003", "lr=0.001: max_softmax", "lr=0.001: log_px",
        "lr=0.003: max_softmax", "lr=0.003: log_px"}
    # another x than the declared one, no --metrics: the default figures against it
    assert agg.main([str(tmp_path), "--out", str(tmp_path / "cli2"), "--x", "model.width"]) == 0
    assert sorted(p.name for p in (tmp_path / "cli2").glob("*.png")) == [
        "accuracy_vs_model.width.png", "ece_vs_model.width.png",
        "ood_auroc_vs_model.width.png", "reliability.png"]
    capsys.readouterr()
    assert agg.main([str(tmp_path), "--out", str(out_dir), "--x", "width"]) == 1
    assert "valid choices: optimizer.learning_rate, model.width" in capsys.readouterr().err
    assert agg.main([str(tmp_path), "--out", str(out_dir), "--metrics", "ood/*/nope/auroc"]) == 1
    err = capsys.readouterr().err
    assert "ood/*/nope/auroc" in err and "valid names: accuracy, nll, ece" in err
    # --checkpoint latest: the step-60 evaluation of every run, not the selected one (40);
    # --format json prints what aggregate.json holds
    assert agg.main([str(tmp_path), "--out", str(tmp_path / "latest"), "--checkpoint", "latest",
                     "--format", "json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.load(open(tmp_path / "latest" / "aggregate.json"))
    assert {r["metrics"]["accuracy"]["mean"] for r in printed["rows"]} == {-1.0}
    assert {e for r in printed["rows"] for e in r["evaluations"]} == {"eval/60"}
    assert agg.main([str(tmp_path), "--checkpoint", "newest"]) == 1
    assert "valid choices: best, latest or a step number" in capsys.readouterr().err


def test_every_line_has_its_own_colour_and_every_panel_a_legend(tmp_path, monkeypatch):
    saved, save = {}, canvas.save_figure

    def inspect(fig, path):
        panels = [ax for ax in fig.axes if ax.get_visible()]
        lines = {}
        for ax in panels:
            for handle, label in zip(*ax.get_legend_handles_labels()):
                if hasattr(handle, "lines"):                  # an errorbar's container
                    lines.setdefault(label, set()).add(handle.lines[0].get_color())
        saved[os.path.basename(path)] = {
            "colours": lines, "shared": len(fig.legends),
            "in_panels": [ax.get_legend() is not None for ax in panels]}
        return save(fig, path)
    monkeypatch.setattr(canvas, "save_figure", inspect)
    _fabricate_lr_width_sweep(tmp_path)
    agg.write_outputs(str(tmp_path), str(tmp_path / "out"), metrics=["ood/*/*/auroc"])
    agg.write_outputs(str(tmp_path), str(tmp_path / "out2"))
    ood = saved["ood_auroc_vs_optimizer.learning_rate.png"]
    # a panel per OOD set; 2 widths × 2 scores = 4 lines, 4 colours, one shared legend
    assert sorted(ood["colours"]) == ["narrow: log_px", "narrow: max_softmax",
                                      "wide: log_px", "wide: max_softmax"]
    assert all(len(c) == 1 for c in ood["colours"].values())        # the same in each panel
    assert len(set().union(*ood["colours"].values())) == 4
    assert ood["shared"] == 1 and len(ood["in_panels"]) == 2
    acc = saved["acc.png"]                                           # declared: legend in panel
    assert len(set().union(*acc["colours"].values())) == 2 and acc["in_panels"] == [True]


def test_single_seed_has_no_std(tmp_path):
    _fabricate_run(tmp_path, 16, 0.0, 0)
    _fabricate_run(tmp_path, 16, 1.0, 0)
    out = agg.write_outputs(str(tmp_path))
    rows = out["rows"]
    assert [r["n"] for r in rows] == [1, 1]
    assert all(r["metrics"]["accuracy"]["std"] is None for r in rows)
    assert [list(r["group"]) for r in rows] == [["objective.joint_weight"]] * 2
    acc = rows[0]["metrics"]["accuracy"]["mean"]
    assert f"| {acc:.4f} ± n/a |" in out["text"]["md"] and "± 0.0000" not in out["text"]["md"]
    table = list(csv.DictReader(open(out["csv"])))
    assert table[0]["accuracy_std"] == "" and float(table[0]["accuracy_mean"]) == acc
    assert json.load(open(out["json"]))["rows"][0]["metrics"]["accuracy"]["std"] is None


# -- the command line ---------------------------------------------------------------------------
def _readme_get_sweep() -> str:
    """The get_sweep example of the documentation (README.md and docs/*.md: today
    docs/results_tools.md), as written there; exactly one page shows it."""
    pages = ["README.md"] + sorted(f"docs/{f}" for f in os.listdir(os.path.join(REPO, "docs"))
                                   if f.endswith(".md"))
    text = "".join(open(os.path.join(REPO, page)).read() for page in pages)
    (block,) = re.findall(r"```python\n(def get_sweep\(variant\):\n.*?)```", text, re.S)
    return block


def _changed_point(root):
    """A finished point of 'batch_size=16' made with num_steps=3, the sweep now fixing 5."""
    c = _config()
    c.num_steps = 3
    (p,) = grid.expand_grid(c, grid.parse_sweep(c, ["batch_size=16"]), [0], str(root))
    _fake_finish(p)
    with open(os.path.join(p.workdir, "config.json"), "w") as f:
        f.write(p.config.to_json_best_effort())
    return p


def test_command_line_dry_run_bad_inputs_and_the_readme_example(tmp_path):
    """Each case through ``python -m jaxhybrid.tools.sweep`` (run side by side): the dry run
    lists the points; bad input is ``error: ...`` naming the thing, with nothing written."""
    readme = tmp_path / "readme_config.py"
    readme.write_text("from configs.dhm import get_config\n\n" + _readme_get_sweep())
    changed = _changed_point(tmp_path / "changed")
    fixed5 = ["--config=configs/gffn.py:smoke", f"--workdir={tmp_path / 'changed'}",
              "--sweep", "batch_size=16", "--config.num_steps=5"]
    cases = {   # name: (arguments, exit status, what stdout or stderr says)
        "dry": (["--config=configs/gffn.py:smoke", f"--workdir={tmp_path / 'dry'}", "--sweep",
                 "batch_size=16,32", "--sweep", "objective.joint_weight=0,1", "--seeds", "2", "--set",
                 "model.hidden=(16,)", "--dry_run"], 0,
                "[8/8] batch_size=32,objective.joint_weight=1,seed=1 (new, peak lr 0.0005)"),
        "key": (["--config=configs/dhm.py:digits", f"--workdir={tmp_path / 'key'}",
                 "--sweep", "model.beta=0.1,1"], 1,
                "error: ConfigKeyError: Unknown config key 'model.beta'. Did you mean "
                "objective.beta"),
        "value": (["--config=configs/dhm.py:digits", f"--workdir={tmp_path / 'value'}",
                   "--sweep", "objective.beta=0.1,abc"], 1,
                  "error: ValueError: Bad value 'abc' for config key 'objective.beta'"),
        "changed_dry": (fixed5 + ["--dry_run"], 0,
                        "[1/1] batch_size=16,seed=0 (config differs: num_steps, peak lr"),
        "changed": (fixed5, 1, "batch_size=16,seed=0: config differs: num_steps"),
        "readme": ([f"--config={readme}:digits", f"--workdir={tmp_path / 'readme'}",
                    "--dry_run"], 0, "[9/9] objective.beta=10,seed=2 (new, peak lr"),
    }
    procs = {name: subprocess.Popen([sys.executable, "-m", "jaxhybrid.tools.sweep", *args],
                                    cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True) for name, (args, _, _) in cases.items()}
    out = {name: p.communicate(timeout=900) for name, p in procs.items()}
    for name, (args, code, says) in cases.items():
        stdout, stderr = out[name]
        assert procs[name].returncode == code, (name, stdout[-2000:], stderr[-2000:])
        assert says in (stdout if code == 0 else stderr), (name, stdout[-2000:], stderr[-2000:])
        assert "Traceback" not in stderr, (name, stderr[-3000:])
    assert "'--config.model.hidden=(16,)'" in out["dry"][0]          # shell-quoted commands
    assert "objective.beta=0.1,seed=0 (new" in out["readme"][0]
    for name in ("dry", "key", "value", "readme"):
        assert not (tmp_path / name).exists(), name                  # nothing written
    assert sorted(os.listdir(tmp_path / "changed")) == [changed.name]  # no sweep_status.json
    # the README's presentation names config keys of configs/dhm.py
    declared = configfile.declared_sweep(configfile.load_config_module(str(readme)), "digits")
    configfile.check_presentation_keys(dhm.get_config("digits"), declared.presentation)
    assert declared.grid == {"objective.beta": [0.1, 1.0, 10.0]} and declared.seeds == 3


@pytest.mark.parametrize("sweep_arg, says", [   # the config checks word what is valid
    ("batch_size=0,-1", ["config field batch_size = 0: must be an int >= 1 (point "
                         "batch_size=0,seed=0)", "config field batch_size = -1: must be"]),
    ("model.hidden=16,0", ["config field model.hidden = (0,): must be", "(point "
                           "model.hidden=(0),seed=0)"]),
    ("objective.joint_weight=0,2", ["config field objective.joint_weight = 2.0: must be a "
                                    "number in [0, 1]"]),
    ("optimizer.lr_scaling=sqrt,cubic", ["config field optimizer.lr_scaling = 'cubic': must "
                                         "be one of none, sqrt, linear"]),
    ("model.hidden=16,abc", ["config field model.hidden = ('abc',): must be"]),
])
def test_bad_sweep_values_are_one_error_line_and_nothing_is_written(tmp_path, sweep_arg, says):
    """Every point's config goes through the project's config checks before anything is
    run or written, --dry_run too: one ``error: ...`` line naming the key, the value and
    what is valid; exit status 1; no sweep_status.json, no point directory."""
    runs = {dry: tmp_path / ("dry" if dry else "run") for dry in (True, False)}
    procs = {dry: subprocess.Popen(
        [sys.executable, "-m", "jaxhybrid.tools.sweep", "--config=configs/gffn.py:smoke",
         f"--workdir={root}", "--sweep", sweep_arg] + (["--dry_run"] if dry else []),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for dry, root in runs.items()}
    for dry, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=900)
        context = (sweep_arg, dry, stdout[-2000:], stderr[-2000:])
        assert proc.returncode == 1, context
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), context
        assert all(s in lines[0] for s in says), context
        assert not runs[dry].exists(), context                       # nothing written


# -- one real sweep --------------------------------------------------------------------------
def test_real_two_point_sweep_then_aggregate(tmp_path):
    root = tmp_path / "sweep"
    args = [sys.executable, "-m", "jaxhybrid.tools.sweep", "--config=configs/gffn.py:smoke",
            f"--workdir={root}", "--sweep", "batch_size=16,32", "--config.num_steps=3",
            "--config.model.width=4", "--config.evals.names=classification",
            "--set", "model.hidden=(16,)", "--config.model.stages=1"]
    r = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    status = json.load(open(root / sweep.STATUS_FILE))
    assert status["counts"] == {"finished": 2}
    # get_sweep's presentation is recorded even when --sweep flags give the grid
    assert status["spec"]["aggregate"]["x"] == "batch_size"
    for name in ("batch_size=16,seed=0", "batch_size=32,seed=0"):
        assert (root / name / "final_metrics.json").exists()
        assert "jaxhybrid.main --config=" in (root / name / "train.log").read_text()
        saved = json.load(open(root / name / "config.json"))
        assert saved["model"]["width"] == 4 and saved["model"]["hidden"] == [16]
        # suite.headline rebuilds from metrics.json exactly the evaluators' headline
        final = json.load(open(root / name / "final_metrics.json"))
        rebuilt = suite.headline(runs.select_evaluation(str(root / name)).metrics)
        assert set(rebuilt) >= {ACCURACY, NLL, BRIER}
        assert {k: final[k] for k in rebuilt} == rebuilt
    assert "peak lr 0.0003536" in r.stdout      # 1e-3·sqrt(16/128), logged per point
    rows = agg.aggregate(str(root))
    assert [(r["group"], r["n"]) for r in rows] == [({"batch_size": 16}, 1),
                                                    ({"batch_size": 32}, 1)]
    assert os.path.getsize(root / "aggregate" / "accuracy_vs_batch_size.png") > 1000
    # the two real runs side by side: each column the evaluation final_metrics.json names
    r = subprocess.run([sys.executable, "-m", "jaxhybrid.tools.compare",
                        str(root / "batch_size=16,seed=0"), str(root / "batch_size=32,seed=0"),
                        "--names", "B16,B32", "--format", "csv"], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    table = {row[0]: row for row in csv.reader(r.stdout.splitlines())}
    for i, name in ((2, "batch_size=16,seed=0"), (3, "batch_size=32,seed=0")):
        final = json.load(open(root / name / "final_metrics.json"))
        assert table["evaluation"][i].startswith(f"eval/{final['evaluated_step']}")
        assert float(table["accuracy"][i]) == final["accuracy"]

    # resume: finished points are skipped; a point that fails (12 is not divisible by the
    # 8 devices) is reported, and the exit status says so
    assert args[5:7] == ["--sweep", "batch_size=16,32"]
    r = subprocess.run(args[:6] + ["batch_size=16,32,12"] + args[7:], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    assert "1 point(s) failed: batch_size=12,seed=0" in r.stdout
    status = json.load(open(root / sweep.STATUS_FILE))
    assert status["counts"] == {"skipped": 2, "failed": 1}
    assert "not divisible" in status["points"]["batch_size=12,seed=0"]["error"]
