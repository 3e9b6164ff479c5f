"""Every benchmark's ``--smoke`` (its real code path on tiny shapes, 1 round) runs in-process
and returns results of the expected structure. Nothing here reads the clock: timings are
only checked to be positive numbers. benchmarks/device_suite.py: tests/test_device_suite.py.

XLA compiles with most optimisations off (``jax_disable_most_optimizations``, the smoke of
device_suite uses the same): about half the compile time, which is most of a smoke.
"""
from __future__ import annotations

import json
import math

import jax
import pytest

from benchmarks import (accumulation, dhm_step, gffn_hlo, gffn_overhead, hvae_scoring,
                        hvae_step, input_pipeline, metrics_speed, seam_overhead)


# `make test` runs them; `make test-newest` leaves them out (CI's 30 minutes): the package
# APIs they call are exercised at the newest end by the package's own tests
pytestmark = pytest.mark.slow_smoke


@pytest.fixture(autouse=True, scope="module")
def fast_compiles():
    before = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


def run(module, tmp_path, *argv, json_flag="--json"):
    path = tmp_path / "out.json"
    results = module.main(["--smoke", json_flag, str(path), *argv])
    assert json.loads(path.read_text()).keys() == results.keys()
    machine = results["machine"]
    assert machine["cpu_model"] and "load average" in machine["uptime_start"]
    assert "load average" in machine["uptime_end"] and results["smoke"] is True
    return results


def is_range(s) -> bool:
    return 0 < s["min"] <= s["median"] <= s["max"] and math.isfinite(s["max"])


@pytest.mark.parametrize("module, sizes", [
    (hvae_step, {"batch": 4, "channels": 4, "image": 28}),
    (dhm_step, {"batch": 4, "width": 4, "latent": 8, "image": 8}),
])
def test_step_and_floor(module, sizes, tmp_path):
    r = run(module, tmp_path)
    assert r["sizes"] == sizes and r["repeats"] == 1 and r["parameters"] > 0
    step = r["steps"]["float32"]
    assert is_range(step["sec_per_step"]) and len(step["sec_per_step_all"]) == 1
    assert step["xla_flops"] > 0 and step["convs_in_jaxpr"] > 0
    floor = r["floor"]["float32"]
    assert 1 <= len(floor["table"]) <= 3         # --max-convs 3: a partial floor
    assert {row["kind"] for row in floor["table"]} <= {"fwd", "dx", "dw"}
    assert is_range(floor["floor_sec"]) and is_range(floor["ratio_step_over_floor"])


def test_hvae_scoring(tmp_path):
    r = run(hvae_scoring, tmp_path)
    speed = r["speed"]
    assert set(speed) >= {"vectorised c=2", "sequential", "max_abs_diff_nats"}
    assert speed["max_rel_diff"] < 1e-3            # the same ε: float rounding only
    assert is_range(speed["sequential"]["sec_per_call"])
    (row,) = r["memory"]["chunks"]
    assert row["chunk"] == 2 and row["peak_estimate"] > 0 and "rss" not in row


def test_metrics_speed(tmp_path):
    r = run(metrics_speed, tmp_path)
    assert r["n"] == 2000 and len(r["calibration"]) == 2 and len(r["ood"]) == 2
    fgsm, grad = r["fgsm"]
    assert fgsm["examples"] == 8 and "fgsm/grad" in fgsm["note"] and grad["t"][0] > 0


def test_accumulation(tmp_path):
    r = run(accumulation, tmp_path, json_flag="--out")
    assert r["batch_size"] == 8 and set(r["results"]) == {"1", "4"}
    for k in ("1", "4"):
        assert is_range(r["results"][k]["sec_per_step"])
        assert is_range(r["results"][k]["ratio_to_first"])
    assert r["results"]["1"]["ratio_to_first"]["median"] == 1.0


def test_gffn_overhead(tmp_path):
    r = run(gffn_overhead, tmp_path, json_flag="--out")
    b = r["batch_sizes"]["8"]
    assert r["config"]["model"]["width"] == 4
    for v in ("lambda0", "lambda1", "ce_only"):
        assert is_range(b[v]["sec_per_step"])
    assert is_range(b["ratio_lambda1_over_ce_only"]) and b["pipeline"]["iterate"]["median"] > 0


def test_gffn_hlo(tmp_path):
    r = run(gffn_hlo, tmp_path, "--config.model.hidden=(16,)")
    assert set(r["variants"]) == {"ce_only", "lambda1"} and r["batch_size"] == 8
    assert is_range(r["variants"]["lambda1"]["wall_ratio_to_reference"])
    hlo = r["hlo"]
    assert hlo["ce_only"]["counts"]["convolution"] == hlo["lambda1"]["counts"]["convolution"]
    assert hlo["lambda1"]["heavy_identical"] > 0


def test_gffn_hlo_bad_variant(capsys):
    with pytest.raises(SystemExit):
        gffn_hlo.parse_flags(["--variants", "ce_only,resnet"])
    assert "valid choices: ce_only, lambda0, lambda1" in capsys.readouterr().err


def test_seam_overhead(tmp_path):
    """The reference trainer (86269a1, extracted with git) is built from its own config,
    today's fields mapped to it, and takes step 0 exactly as today's trainer does."""
    r = run(seam_overhead, tmp_path, json_flag="--out")
    assert r["versions"]["ref"]["package"] == "jaxhybrid_ref"
    assert r["ref_config"]["not_in_ref"] == {} and r["ref_config"]["ref_defaults"] == []
    (check,) = r["step0_check"].values()
    assert check["same_loss"] and check["same_own_batch0"]
    assert check["params_max_abs_diff"] == 0.0
    assert set(r["ratio_new_over_ref"]) == {"B=8 lambda=1", "B=8 lambda=1 cpu"}
    assert all(is_range(x) for x in r["ratio_new_over_ref"].values())
    assert set(r["sec_per_step"]) == {"B=8 λ=1 ref", "B=8 λ=1 new"}


def test_input_pipeline(tmp_path):
    r = run(input_pipeline, tmp_path)
    assert r["datasets"] == ["mnist"] and r["batch_sizes"] == [8] and r["step_batch"] == 8
    assert "SYNTHETIC uint8 64×28×28" in r["data"]["mnist"]
    assert is_range(r["steps"]["mnist"]["examples_per_sec"])
    (row,) = r["pipeline"].values()
    assert set(row) == set(input_pipeline.MEASURES)
    for m in row.values():
        assert is_range(m["examples_per_sec"]) and is_range(m["over_step"])
    assert is_range(r["loop"]["device_over_host_time"])


def test_input_pipeline_bad_dataset(capsys):
    with pytest.raises(SystemExit):
        input_pipeline.parse_flags(["--datasets", "mnist,imagenet"])
    assert "valid choices: digits, mnist, cifar_synthetic" in capsys.readouterr().err
