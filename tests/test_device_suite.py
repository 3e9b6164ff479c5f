"""benchmarks/device_suite.py: the smoke runs every stage on CPU; MFU, peaks, flags, commands;
the --budget_s plan (a pure function, no clock), the install from carried wheels (skipped when
the packages are found; no network), launch/device_wheels.sh (valid bash, its package list).

One smoke run (module fixture, ≈ 50 s on 2 idle cores: the HVAE train + eval subprocesses
beside the six compiled steps) backs the first three tests. Nothing asserted depends on the
clock: the smoke's HVAE trains a step budget (4 steps, no max_train_seconds), and the
subprocess timeouts are safety nets of many minutes (a loaded 2-core machine runs the smoke
several times slower than an idle one).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time

import pytest

from benchmarks import device_suite as ds

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "device_suite.py")


def run_script(args, timeout=1500):
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("device_suite")
    out = tmp / "report" / "suite.md"
    proc = run_script(["--smoke", "--workdir", str(tmp / "work"), "--out", str(out)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"md": out.read_text(), "json": json.loads(out.with_suffix(".json").read_text()),
            "stdout": proc.stdout, "workdir": tmp / "work"}


@pytest.mark.slow_smoke
def test_smoke_table_has_a_row_per_family_and_dtype(smoke):
    rows = ds.parse_step_table(smoke["md"])
    assert sorted((r["family"], r["dtype"]) for r in rows) == sorted(
        (f, d) for f in ds.FAMILIES for d in ds.DTYPES)
    for r in rows:
        median, low, high = map(float, r["step ms median (min–max)"].replace("(", " ")
                                .replace("–", " ").replace(")", " ").split())
        assert 0 < low <= median <= high, r
        assert int(r["batch"]) == 8 and float(r["examples/s"]) > 0 and float(r["GFLOP/step"]) > 0
        assert r["device"] == "cpu" and r["MFU"] == "n/a", r     # no peak for a CPU
    for row in smoke["json"]["steps"]:
        assert row["gflop_per_step"] > 0 and len(row["step_s_all"]) == 2
        assert math.isclose(row["examples_per_s"], 8 / row["step_s"]["median"])


@pytest.mark.slow_smoke
def test_smoke_trained_and_evaluated_the_hvae(smoke):
    hvae = smoke["json"]["hvae"]
    assert hvae["train"]["rc"] == 0 and hvae["eval"]["rc"] == 0
    assert hvae["trained"]["step"] == 4 and hvae["trained"]["stopped"] == "completed"
    assert "--config.num_steps=4" in hvae["train"]["command"]
    assert "max_train_seconds" not in hvae["train"]["command"] + hvae["eval"]["command"]
    assert "--mode=eval --checkpoint=latest" in hvae["eval"]["command"]
    assert "--config.evals.names=likelihood,ood" in hvae["eval"]["command"]
    result = hvae["result"]
    assert os.path.isfile(result["report"]) and result["report"].startswith(str(smoke["workdir"]))
    assert result["in_distribution_examples"] == 64
    assert math.isfinite(result["log_likelihood_nats"]) and result["bits_per_dim"] > 0
    assert result["ood_auroc"], "no OOD set was scored"
    for scores in result["ood_auroc"].values():
        assert all(0 <= scores[s] <= 1 for s in ds.OOD_SCORES), scores
    assert "## HVAE training and evaluation" in smoke["md"] and "AUROC -LLR>1" in smoke["md"]


@pytest.mark.slow_smoke
def test_smoke_recorded_the_device(smoke):
    import jax
    record = smoke["json"]["device"]
    assert record["jax"]["jax"] == jax.__version__ and record["jax"]["jaxlib"]
    assert record["jax"]["device_kind"] == "cpu" and record["jax"]["devices"]
    assert record["jax"]["peak_tflops"] == {"float32": None, "bfloat16": None}
    assert record["host"]["cpu_model"] and "load average" in record["host"]["uptime_start"]
    assert "## Device" in smoke["md"] and "# Device suite (smoke): cpu" in smoke["md"]
    deps = record["host"]["dependencies"]
    assert deps[next(r for r in deps if r.startswith("jax>="))] == jax.__version__
    assert f"- dependencies: jax {jax.__version__}, flax " in smoke["md"]


def test_mfu_arithmetic():
    assert ds.mfu(2e12, 0.01, 400e12) == pytest.approx(0.5)
    assert ds.mfu(1e9, 0.001, None) is None
    assert ds.mfu(float("nan"), 0.001, 1e12) is None
    assert ds.mfu(1e9, 0.0, 1e12) is None
    assert ds.fmt_mfu(0.1234) == "12.3%" and ds.fmt_mfu(None) == "n/a"


def test_peaks_match_device_kinds():
    assert ds.peak_flops("NVIDIA H200", "bfloat16") == pytest.approx(989.4e12)
    assert ds.peak_flops("NVIDIA H100 80GB HBM3", "float32") == pytest.approx(494.7e12)
    assert ds.peak_flops("NVIDIA H100 PCIe", "bfloat16") == pytest.approx(756e12)
    assert ds.peak_flops("NVIDIA H200 NVL", "bfloat16") == pytest.approx(835.5e12)
    assert ds.peak_flops("NVIDIA A100-SXM4-80GB", "float32") == pytest.approx(156e12)
    assert ds.peak_flops("TPU v4", "float32") == pytest.approx(275e12)
    assert ds.peak_flops("TPU v5 lite", "bfloat16") == pytest.approx(197e12)
    assert ds.peak_flops("cpu", "bfloat16") is None
    with pytest.raises(ValueError, match="float16.*valid choices: float32, bfloat16"):
        ds.peak_flops("NVIDIA H200", "float16")


def test_bad_argument_is_an_error_line():
    proc = run_script(["--families", "gffn,resnet"], timeout=600)
    assert proc.returncode == 2
    assert "device_suite.py: error: --families 'gffn,resnet': unknown resnet; valid choices: " \
           "gffn,dhm,hvae" in proc.stderr


@pytest.mark.parametrize("argv, message", [
    (["--smoke", "--install"], "--install with --smoke"),
    (["--smoke", "--dtypes", "float16"], "--dtypes 'float16': unknown float16; valid choices: "
                                         "float32,bfloat16"),
    (["--smoke", "--repeats", "0"], "--repeats 0: must be > 0"),
    (["--smoke", "--eval-max-examples", "-1"], "--eval-max-examples -1: must be >= 0"),
    (["--smoke", "--train-seconds", "30"], "--train-seconds 30 with --smoke: the smoke trains "
                                           "a fixed number of steps"),
    (["--smoke", "--train-steps", "0"], "--train-steps 0 with --smoke"),
    (["--skip-hvae", "--train-steps", "-1"], "--train-steps -1: must be >= 0"),
    (["--skip-hvae", "--train-seconds", "0"], "--train-seconds 0 and --train-steps 0"),
    (["--smoke", "--budget_s", "60"], "--budget_s with --smoke"),
    (["--budget_s", "300", "--train-seconds", "60"], "--budget_s with --train-seconds"),
    (["--budget_s", "300", "--install"], "--budget_s with --install"),
    (["--budget_s", "-5"], "--budget_s -5: must be > 0"),
])
def test_bad_flags(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        ds.parse_flags(argv)
    assert e.value.code == 2 and f"error: {message}" in capsys.readouterr().err


def test_nothing_is_installed_unless_asked(tmp_path):
    flags = ds.parse_flags(["--skip-hvae", "--workdir", str(tmp_path)])
    assert not flags.install and flags.repeats == 5 and flags.steps == 10
    assert ds.install_commands(gpu=False) == [
        [sys.executable, "-m", "pip", "install", "-e", f"{REPO}[test]"]]
    jax_cuda = ds.install_commands(gpu=True)[1][-1]
    assert jax_cuda.startswith("jax[cuda12]>=") and "<" in jax_cuda


def test_smoke_budget_is_steps_and_paper_budget_is_seconds(tmp_path):
    """The smoke trains a fixed number of steps and no wall-clock budget (its step count
    is deterministic); the paper's run keeps --train-seconds, with --train-steps optional."""
    smoke = ds.parse_flags(["--smoke", "--workdir", str(tmp_path)])
    assert (smoke.train_steps, smoke.train_seconds) == (4, 0)
    train, evaluate = ds.hvae_commands(smoke, "/tmp/run")
    assert "--config.num_steps=4" in train and "--config.num_steps=4" in evaluate
    assert not any("max_train_seconds" in a for a in train + evaluate)
    steps = ds.parse_flags(["--smoke", "--train-steps", "6", "--workdir", str(tmp_path)])
    assert "--config.num_steps=6" in ds.hvae_commands(steps, "/tmp/run")[0]
    paper = ds.parse_flags(["--skip-hvae", "--workdir", str(tmp_path)])
    assert (paper.train_steps, paper.train_seconds) == (0, 120.0)
    assert ds.budget_overrides(paper) == ["--config.max_train_seconds=120"]
    both = ds.parse_flags(["--skip-hvae", "--train-steps", "50", "--workdir", str(tmp_path)])
    assert ds.budget_overrides(both) == ["--config.max_train_seconds=120", "--config.num_steps=50"]


def test_paper_hvae_eval_describes_the_trained_run():
    """The eval command differs from the training's config in free fields only, so the
    run directory accepts it (jaxhybrid.rundir); both are the paper variant with S."""
    from configs.hvae import get_config
    from jaxhybrid.rundir import FREE_FIELDS, _within, config_dict, flatten
    from jaxhybrid.tools.overrides import apply_overrides
    flags = argparse.Namespace(smoke=False, train_seconds=120.0, train_steps=0, eval_samples=16,
                               eval_max_examples=2000)
    configs = []
    for cmd in ds.hvae_commands(flags, "/tmp/run"):
        assert f"--config={ds.PAPER_HVAE}" in cmd and "--config.model.iwae_samples=16" in cmd
        overrides = dict(a[len("--config."):].split("=", 1) for a in cmd
                         if a.startswith("--config."))
        c = apply_overrides(get_config("fashion_mnist_paper_npz"), overrides)
        configs.append(flatten(config_dict(c)))
    train, evaluate = configs
    assert train["max_train_seconds"] == 120.0 and train["evals.names"] == ""
    assert train["num_steps"] == 0          # the paper's run: a wall-clock budget only
    assert evaluate["evals.names"] == "likelihood,ood" and evaluate["evals.max_examples"] == 2000
    changed = [k for k in train if train[k] != evaluate[k]]
    assert changed and all(_within(k, FREE_FIELDS) for k in changed), changed


# -- --budget_s ---------------------------------------------------------------------------------
ESTIMATES = (("host", 5.0), ("hvae", 150.0), ("jax", 20.0), ("steps_gffn", 40.0),
             ("steps_dhm", 90.0), ("steps_hvae", 40.0), ("report", 5.0))


def test_plan_gives_the_hvae_what_the_fixed_stages_leave():
    plan = ds.plan_budget(420, ESTIMATES, elapsed_s=10, reserve_s=15, min_train_s=30)
    assert plan.run == tuple(n for n, _ in ESTIMATES) and plan.skipped == ()
    assert plan.train_seconds == pytest.approx(420 - 10 - 15 - sum(s for _, s in ESTIMATES))
    # tight: the HVAE at its minimum training, then the stages that still fit, in order
    plan = ds.plan_budget(250, ESTIMATES, elapsed_s=0, reserve_s=15, min_train_s=30)
    assert plan.run == ("host", "hvae", "jax", "report")
    assert [n for n, _ in plan.skipped] == ["steps_gffn", "steps_dhm", "steps_hvae"]
    assert "needs ~40 s, 25 s left" in dict(plan.skipped)["steps_gffn"]
    assert plan.train_seconds == pytest.approx(30 + 250 - 15 - 5 - 180 - 20 - 5)
    # the HVAE does not fit with 30 s of training: skipped, later smaller stages run
    plan = ds.plan_budget(100, ESTIMATES, elapsed_s=0, reserve_s=15, min_train_s=30)
    assert plan.run == ("host", "jax", "steps_gffn", "report") and plan.train_seconds == 0
    assert dict(plan.skipped)["hvae"] == "needs ~180 s, 75 s left"


def test_plan_never_exceeds_the_budget():
    for budget in range(30, 1001, 7):
        for elapsed in (0.0, 12.5):
            plan = ds.plan_budget(budget, ESTIMATES, elapsed_s=elapsed, reserve_s=15,
                                  min_train_s=30)
            used = sum(s for n, s in ESTIMATES if n in plan.run) + plan.train_seconds
            # host and report (10 s) always run, into the reserve when nothing else fits
            assert used <= max(budget - elapsed - 15, 10) + 1e-9, (budget, elapsed, plan)
            assert plan.train_seconds == 0 or plan.train_seconds >= 30
            assert plan.run[0] == "host" and plan.run[-1] == "report"
            assert set(plan.run) | {n for n, _ in plan.skipped} == {n for n, _ in ESTIMATES}


def test_plan_skips_the_steps_without_jax():
    plan = ds.plan_budget(30, (("host", 5), ("jax", 20), ("steps_gffn", 1), ("report", 5)),
                          reserve_s=15)
    assert plan.run == ("host", "report")
    assert dict(plan.skipped) == {"jax": "needs ~20 s, 5 s left",
                                  "steps_gffn": "the jax stage did not run"}


def test_budget_flags_plan_the_stages_asked_for(tmp_path):
    flags = ds.parse_flags(["--budget_s=420", "--workdir", str(tmp_path), "--families",
                            "gffn,hvae", "--dtypes", "bfloat16"])   # no data check before
    assert flags.budget_s == 420 and flags.train_seconds == 120   # the plan replaces it
    est = dict(ds.stage_estimates(flags))
    assert list(est) == ["host", "hvae", "jax", "steps_gffn", "steps_hvae", "report"]
    assert est["steps_gffn"] == dict(ds.STAGE_ESTIMATES)["steps_gffn"]   # one dtype
    flags = ds.parse_flags(["--budget-s", "300", "--skip-hvae", "--skip-steps",
                            "--workdir", str(tmp_path)])
    assert [n for n, _ in ds.stage_estimates(flags)] == ["host", "jax", "report"]


def test_budget_skips_at_run_time_what_the_clock_has_no_room_for(capsys):
    plan = ds.plan_budget(420, ESTIMATES, elapsed_s=0)
    late = ds.Budget(420, ESTIMATES, plan, t0=time.perf_counter() - 400)   # 20 s left
    assert late.may_run("host") and late.may_run("report")       # never skipped
    assert not late.may_run("jax") and not late.may_run("steps_dhm")
    assert "skip: jax: needs ~20 s" in capsys.readouterr().out
    fresh = ds.Budget(420, ESTIMATES, plan, t0=time.perf_counter())
    assert fresh.estimates["hvae"] == 150 + plan.train_seconds
    assert fresh.may_run("hvae") and fresh.share("hvae") > fresh.estimates["hvae"]
    assert fresh.may_run("jax") and "hvae" in fresh.seconds    # one stage ends, the next starts
    summary = fresh.summary()
    assert summary["train_seconds"] == plan.train_seconds and summary["skipped"] == {}


def test_report_of_a_run_stopped_by_the_budget(tmp_path):
    """What the watchdog writes when the budget ends mid-run: no steps, the HVAE unfinished."""
    flags = ds.parse_flags(["--budget_s=60", "--workdir", str(tmp_path), "--skip-hvae"])
    flags.argv = ["--budget_s=60"]
    plan = ds.plan_budget(60, ESTIMATES)
    record = {"host": {"cpus": 2, "cpu_model": "cpu", "platform": "linux", "python": "3.12",
                       "uptime_start": "load average: 0", "nvidia_smi": None},
              "budget": ds.Budget(60, ESTIMATES, plan).summary()}
    ds.write_report(flags, record, [], {"run_dir": str(tmp_path / "hvae_x")})
    md = open(flags.out).read()
    assert "**stopped before its evaluation**" in md and "## Budget" in md
    assert "| hvae | 150 | — | skipped: needs ~180 s, 35 s left |" in md


def test_dependencies_missing_or_out_of_range_are_named():
    assert ds.stages.out_of_range({"flax>=0.12.8,<0.13": "0.13.1", "numpy>=2.0,<3": "2.5.2",
                                   "ml-collections>=1.1,<2": None}) == [
        "flax 0.13.1, pyproject: <0.13,>=0.12.8", "ml-collections missing, pyproject: <2,>=1.1"]
    assert ds.stages.out_of_range(ds.stages.dependencies()) == []   # this environment


# -- installing from the carried wheels (no network) ---------------------------------------
def _no_pip(cmd, **kwargs):
    raise AssertionError(f"pip ran: {cmd}")


def test_install_is_skipped_when_the_packages_import(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert ds.stages.ensure_packages(str(tmp_path / "site"), str(tmp_path / "none"),
                                     ("json", "ml_collections"), run=_no_pip) is None
    assert "install: skipped" in capsys.readouterr().out
    assert str(tmp_path / "site") not in sys.path and not (tmp_path / "site").exists()


def test_install_from_the_wheels_when_a_package_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    with pytest.raises(RuntimeError, match="launch/device_wheels.sh"):   # nothing carried
        ds.stages.ensure_packages(str(tmp_path / "site"), str(tmp_path), ("no_such_mod_x",),
                                  run=_no_pip)
    (tmp_path / "no_such_mod_x-1.0-py3-none-any.whl").write_text("")
    ran = []
    with pytest.raises(RuntimeError, match="no_such_mod_x still missing"):
        ds.stages.ensure_packages(str(tmp_path / "site"), str(tmp_path), ("no_such_mod_x",),
                                  run=lambda cmd, **kw: ran.append(cmd))
    cmd = ran[0]
    assert cmd[:4] == [sys.executable, "-m", "pip", "install"] and "--no-index" in cmd
    assert cmd[cmd.index("--find-links") + 1] == str(tmp_path) and "--no-deps" in cmd
    assert cmd[cmd.index("--target") + 1] == str(tmp_path / "site")
    assert cmd[-1] == str(tmp_path / "no_such_mod_x-1.0-py3-none-any.whl")
    assert sys.path[1] == str(tmp_path / "site")      # after the checkout, for this process
    assert os.environ["PYTHONPATH"].split(os.pathsep) == [str(tmp_path / "site"), "/elsewhere"]


def test_carried_data_fill_only_unset_variables(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mnist.npz").write_bytes(b"")
    (tmp_path / "data" / "fashion_mnist.npz").write_bytes(b"")
    monkeypatch.setenv("JAXHYBRID_FASHION_MNIST_NPZ", "/mine.npz")
    monkeypatch.delenv("JAXHYBRID_MNIST_NPZ", raising=False)
    assert ds.stages.use_carried_data(str(tmp_path)) == {
        "JAXHYBRID_MNIST_NPZ": str(tmp_path / "data" / "mnist.npz")}
    assert os.environ["JAXHYBRID_FASHION_MNIST_NPZ"] == "/mine.npz"


# -- launch/device_wheels.sh ------------------------------------------------------------------
WHEELS_SCRIPT = os.path.join(REPO, "launch", "device_wheels.sh")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_device_wheels_script_is_bash_and_carries_what_the_image_lacks():
    """Valid bash; its PACKAGES cover pyproject's dependencies the image lacks (IMAGE_HAS),
    each pinned by .ci/constraints-newest.txt inside pyproject's range; nothing runs."""
    import tomllib
    from packaging.requirements import Requirement
    subprocess.run(["bash", "-n", WHEELS_SCRIPT], check=True)
    text = open(WHEELS_SCRIPT).read()
    packages = {_norm(line.split("#")[0].strip()) for line in
                re.search(r"^PACKAGES=\(\n(.*?)^\)", text, re.S | re.M).group(1).splitlines()
                if line.split("#")[0].strip()}
    image = {_norm(n) for n in re.search(r'^IMAGE_HAS="(.*?)"', text, re.S | re.M).group(1).split()}
    assert {"ml-collections", "tensorflow-datasets", "array-record", "promise"} <= packages
    assert {"jax", "flax", "optax", "orbax-checkpoint", "numpy", "tensorboard"} <= image
    assert not packages & image, packages & image
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        deps = [Requirement(d) for d in tomllib.load(f)["project"]["dependencies"]]
    assert {_norm(d.name) for d in deps} <= packages | image
    with open(os.path.join(REPO, ".ci", "constraints-newest.txt")) as f:
        pins = {_norm(k): v.strip() for k, v in (line.split("==", 1) for line in f
                                                 if "==" in line and not line.startswith("#"))}
    assert packages <= set(pins), packages - set(pins)
    for d in deps:
        if _norm(d.name) in packages:
            assert d.specifier.contains(pins[_norm(d.name)]), (d, pins[_norm(d.name)])
    assert "/.whl/" in open(os.path.join(REPO, ".gitignore")).read().split()


def test_budget_through_the_command_line_skips_what_does_not_fit(tmp_path):
    """``--budget_s`` end to end: a budget too small for any timed stage skips each with
    its reason, and the report still comes, with the plan against the seconds used."""
    out = tmp_path / "suite.md"
    r = run_script(["--budget_s=25", f"--workdir={tmp_path / 'work'}", f"--out={out}"])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "budget: 25 s" in r.stdout
    assert re.search(r"^skip: jax: needs ~\d+ s, \d+ s left$", r.stdout, re.M), r.stdout
    assert re.search(r"^skip: hvae: ", r.stdout, re.M), r.stdout   # no time (or no data here)
    assert "skip: steps_gffn: the jax stage did not run" in r.stdout
    report = out.read_text()
    assert "## Budget" in report and "--budget_s=25" in report and "no HVAE run" in report
    assert json.loads(out.with_suffix(".json").read_text())
