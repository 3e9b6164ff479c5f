"""jaxhybrid.tools.roofline: the generator's code path on tiny shapes (one device), the
page's structure, and its arithmetic against an independent computation."""
from __future__ import annotations

import re

import jax
import pytest

from jaxhybrid.tools import lower, roofline

# datasheet figures, written out again: (bf16 TFLOP/s, fp32 TFLOP/s, HBM bytes/s)
PEAKS = {"H100 SXM": (989.4, 494.7, 3.35e12), "A100 SXM": (312.0, 156.0, 2.039e12),
         "TPU v5e": (197.0, 197.0, 0.819e12)}
BLOCK = "{'out_channels': 4, 'kernel_size': 3, 'stride': 2}"
TINY_HVAE = (("model.config_deterministic", f"(({BLOCK},), ({BLOCK},))"),
             ("model.config_stochastic", "({'block': 'GaussianConv2d', 'latent_features': 2},"
                                         " {'block': 'GaussianDense', 'latent_features': 3})"),
             ("batch_size", "16"), ("eval_batch_size", "16"), ("model.score_chunk", "2"))
SPECS = (roofline.Spec("GFFN train", "configs/gffn.py:smoke", (("model.hidden", "(16,)"),)),
         roofline.Spec("HVAE scoring", "configs/hvae.py:digits", TINY_HVAE, samples=8))


@pytest.fixture(scope="module")
def records():
    return roofline.collect(SPECS, ("float32", "bfloat16"), how="lowered")


def _table(page: str, heading: str) -> list[list[str]]:
    """The body rows of the first table under ``## heading``, as cells."""
    section = page.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]


def _num(cell: str) -> float:
    return float(cell.replace(",", ""))


def test_records_one_device(records):
    assert [(r["step"], r["dtype"]) for r in records] == [
        (s.name, d) for s in SPECS for d in ("float32", "bfloat16")]
    for r in records:
        assert r["flops"] > 0 and r["bytes_accessed"] > 0 and r["costs"] == "lowered"
    gffn, score = records[0], records[2]
    assert gffn["batch"] == 64 and gffn["detail"] == "batch 64"
    assert score["batch"] == 16 and score["chunks"] == 4
    assert "S 8 in 4 chunks of 2" in score["detail"]


def test_scoring_extrapolation_matches_one_vectorised_chunk(records):
    """4 chunks of 2 samples, extrapolated from one chunk of 2 and one of 4, against the
    same S = 8 scored as ONE chunk of 8 (no loop to under-count): the FLOPs agree."""
    spec = SPECS[1]
    exp = roofline.experiment_for(spec, "float32", {"model.iwae_samples": "8",
                                                    "model.score_chunk": "8"})
    assert exp.mesh.devices.size == 1
    step = lower.eval_step(exp)
    whole = lower.cpu_costs(step.fn, step.args, "lowered")["flops"]
    assert records[2]["flops"] == pytest.approx(whole, rel=0.005)


def test_bound_arithmetic():
    dev = roofline.DEVICES[0]
    mem = {"dtype": "bfloat16", "flops": 1e12, "bytes_accessed": 1e10, "batch": 100}
    b = roofline.bound(mem, dev)        # 1.01 ms of compute, 2.99 ms of memory traffic
    assert b["binds"] == "memory" and b["bound_s"] == pytest.approx(1e10 / 3.35e12)
    assert b["rate"] == pytest.approx(100 / (1e10 / 3.35e12))
    comp = {**mem, "dtype": "float32", "bytes_accessed": 1e9}
    b = roofline.bound(comp, dev)
    assert b["binds"] == "compute" and b["bound_s"] == pytest.approx(1e12 / 494.7e12)


def test_page_structure_and_arithmetic(records):
    page = roofline.render(records, "lowered", 1.0)
    assert "No accelerator measured anything" in page and f"jax {jax.__version__}" in page
    assert re.search(r"\d{4}-\d\d-\d\d", page)
    for heading in ("What is counted", "Costs per step", "Lower bounds on step time",
                    "Input rate", "Reading it"):
        assert f"\n## {heading}\n" in page
    costs = _table(page, "Costs per step")
    assert [(c[0], c[1]) for c in costs] == [(r["step"], r["dtype"]) for r in records]
    for cells, r in zip(costs, records):
        assert _num(cells[3]) == pytest.approx(r["flops"] / 1e9, rel=1e-3)
        assert _num(cells[4]) == pytest.approx(r["bytes_accessed"] / 1e9, rel=1e-3)
        assert _num(cells[5]) == pytest.approx(r["flops"] / r["bytes_accessed"], abs=0.051)
    rows = _table(page, "Lower bounds on step time")
    assert len(rows) == len(records) * len(PEAKS)
    for cells, (r, dev) in zip(rows, [(r, d) for r in records for d in PEAKS]):
        assert len(cells) == 10 and cells[:3] == [r["step"], r["dtype"], dev]
        bf16, fp32, bw = PEAKS[dev]
        peak = (bf16 if r["dtype"] == "bfloat16" else fp32) * 1e12
        compute, memory = r["flops"] / peak, r["bytes_accessed"] / bw
        assert _num(cells[3]) == pytest.approx(peak / 1e12, abs=0.051)
        assert _num(cells[5]) == pytest.approx(compute * 1e3, rel=1e-3)
        assert _num(cells[6]) == pytest.approx(memory * 1e3, rel=1e-3)
        assert _num(cells[7]) == pytest.approx(max(compute, memory) * 1e3, rel=1e-3)
        assert cells[8] == ("compute" if compute >= memory else "memory")
        assert _num(cells[9]) == pytest.approx(r["batch"] / max(compute, memory), rel=1e-3)
    inputs = _table(page, "Input rate")       # train steps, bf16, one row per device
    assert [(c[0], c[1]) for c in inputs] == [("GFFN train", d) for d in PEAKS]
    assert inputs[0][4] == "cifar_synthetic"


def test_refuses_several_devices(capsys):
    assert jax.device_count() == 8 and roofline.main([]) == 1
    assert "one device, not 8" in capsys.readouterr().err
