"""``python -m jaxhybrid.tools.roofline > docs/performance.md`` [--costs=compiled|lowered]:
XLA's FLOPs and bytes of each family's paper-size steps (:mod:`jaxhybrid.tools.lower`, ONE
CPU device) against accelerator peaks: bound = max(FLOPs / peak, bytes / bandwidth), the
side that binds, the examples/s needed at the bound. Nothing runs on an accelerator."""
from __future__ import annotations

import os
import sys

if __name__ == "__main__":     # one CPU device, before jax starts
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_force_host_platform_device_count=1").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import collections  # noqa: E402
import datetime  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402

from jaxhybrid.tools import configfile as cf, lower, overrides as ov  # noqa: E402
from jaxhybrid.tools.data_shapes import shape_experiment  # noqa: E402


# dense TFLOP/s (bf16; fp32 at JAX's DEFAULT matmul precision) and HBM bytes/s
Device = collections.namedtuple("Device", "name bf16 fp32 bw fp32_note")
# samples > 0: the HVAE's scoring step with S = samples; overrides ((key, value), ...)
Spec = collections.namedtuple("Spec", "name config overrides samples", defaults=((), 0))
DEVICES = (   # the same peaks as device_suite.py's MFU (its PEAKS table)
    Device("H100 SXM", 989.4, 494.7, 3.35e12, "TF32 tensor cores (67 TFLOP/s without)"),
    Device("A100 SXM", 312.0, 156.0, 2.039e12, "TF32 tensor cores (19.5 TFLOP/s without)"),
    Device("TPU v5e", 197.0, 197.0, 0.819e12, "one bf16 pass (HIGHEST: 6 passes, ≈ 33)"))
STEPS = (Spec("GFFN train", "configs/gffn.py:cifar10"),
         Spec("DHM train", "configs/dhm.py:cifar10", (("batch_size", "400"),)),
         Spec("HVAE train", "configs/hvae.py:fashion_mnist_paper_npz"),
         Spec("HVAE scoring", "configs/hvae.py:fashion_mnist_paper_npz", samples=1000))
DTYPES = ("float32", "bfloat16")
# benchmarks/input_pipeline.py's examples/s, recorded (no JSON of it is committed), ONE CPU
# device: (data set, global batch) -> (host iterate, device gather), medians of 3 repeats
PIPELINE_RUN = ("`python benchmarks/input_pipeline.py --repeats 3 --batch_sizes 128,1024 --rows "
                "10000` (synthetic uint8 sets; jax 0.10.2; this 2-core VM, shared, load 4–6; "
                "2026-12-08; medians of 3, the CIFAR-sized host iterate at B=1024 35–315k)")
PIPELINE = {("mnist", 128): (117e3, 258e3), ("mnist", 1024): (246e3, 654e3),
            ("cifar_synthetic", 128): (123e3, 259e3), ("cifar_synthetic", 1024): (44e3, 781e3)}
PAIRED = {"GFFN": "cifar_synthetic", "DHM": "cifar_synthetic", "HVAE": "mnist"}


def experiment_for(spec: Spec, dtype: str, overrides=None):
    """The shapes-only experiment of ``spec`` at ``dtype`` on one device."""
    path, variant = cf.split_config_arg(spec.config)
    config = cf.call_with_variant(cf.load_config_module(path).get_config, variant)
    extra = {**lower.NOT_LOWERED, **dict(spec.overrides), "compute_dtype": dtype,
             "num_devices": "1", **(overrides or {})}
    return shape_experiment(ov.apply_overrides(ov.copy_config(config), extra))


def train_costs(spec: Spec, dtype: str, how: str) -> dict:
    """XLA's costs of the trainer's step; refused if it holds a loop (counted once)."""
    exp = experiment_for(spec, dtype)
    step = lower.train_step(exp)
    prims = {e.primitive.name for e in lower._eqns(step.fn.trace(*step.args).jaxpr.jaxpr)}
    if {"while", "scan"} & prims:
        raise ValueError(f"{spec.name}: the train step holds a loop, whose body XLA's cost "
                         f"analysis counts once (gradient accumulation?)")
    return {**lower.cpu_costs(step.fn, step.args, how), "batch": exp.config.batch_size,
            "detail": step.detail}


def scoring_costs(spec: Spec, dtype: str, how: str) -> dict:
    """S = ``spec.samples`` in n chunks of c: XLA counts the chunk loop's body once, so the
    step at S = c plus n − 1 times (the step at S = 2c − at S = c, plus a parameter read)."""
    c = int(experiment_for(spec, dtype).config.model.score_chunk)
    exps = [experiment_for(spec, dtype, {"model.iwae_samples": str(k), "model.score_chunk":
                                         str(k)}) for k in (c, 2 * c)]
    steps = [lower.eval_step(e) for e in exps]
    (e1, e2), n = [lower.cpu_costs(s.fn, s.args, how) for s in steps], -(-spec.samples // c)
    more = lambda key, extra=0: e1[key] + (n - 1) * (e2[key] - e1[key] + extra)  # noqa: E731
    outputs = steps[0].detail.split("outputs ")[1].split(",")[0]
    return {**e1, "flops": more("flops"), "chunks": n,
            "bytes_accessed": more("bytes_accessed", steps[0].param_bytes),
            "batch": exps[0].config.eval_batch_size,
            "detail": f"eval batch {exps[0].config.eval_batch_size}, S {spec.samples} in {n} "
                      f"chunks of {c}, outputs {outputs}"}


def collect(specs=STEPS, dtypes=DTYPES, how: str = "compiled") -> list[dict]:
    """One record per (spec, dtype): step, dtype, batch, flops, bytes_accessed, ..."""
    records = []
    for spec in specs:
        for dtype in dtypes:
            t0 = time.perf_counter()
            cost = (scoring_costs if spec.samples else train_costs)(spec, dtype, how)
            records.append({"step": spec.name, "dtype": dtype, **cost, "seconds":
                            time.perf_counter() - t0, "ai": cost["flops"] / cost["bytes_accessed"]})
    return records


def bound(rec: dict, dev: Device) -> dict:
    """One step on one device: compute and memory seconds, their max, the binding side."""
    peak = (dev.bf16 if rec["dtype"] == "bfloat16" else dev.fp32) * 1e12
    compute, memory = rec["flops"] / peak, rec["bytes_accessed"] / dev.bw
    t = max(compute, memory)
    return {"peak": peak, "compute_s": compute, "memory_s": memory, "bound_s": t,
            "binds": "compute" if compute >= memory else "memory", "rate": rec["batch"] / t}


def table(header: str, align: str, rows) -> str:
    """A markdown table: ``header`` and ``rows`` as lists of cells, ``align`` l/r each."""
    line = lambda cells: "| " + " | ".join(map(str, cells)) + " |"  # noqa: E731
    return "\n".join([line(header.split("|")), line("---" if a == "l" else "---:" for a in align),
                      *map(line, rows)])


def cost_table(records) -> str:
    return table("step|dtype|what|GFLOP/step|GB accessed/step|FLOP/byte|CPU temp|costed in",
                 "lllrrrrr", ([r["step"], r["dtype"], r["detail"], f"{r['flops'] / 1e9:.4g}",
                               f"{r['bytes_accessed'] / 1e9:.4g}", f"{r['ai']:.1f}",
                               lower._size(r["temp_bytes"]), f"{r['seconds']:.1f} s"]
                              for r in records))


def bound_table(records, devices=DEVICES) -> str:
    rows = []
    for r in records:
        for dev in devices:
            b = bound(r, dev)
            rows.append([r["step"], r["dtype"], dev.name, f"{b['peak'] / 1e12:.1f}",
                         f"{b['peak'] / dev.bw:.0f}", *(f"{b[k] * 1e3:.4g}" for k in
                                                         ("compute_s", "memory_s", "bound_s")),
                         b["binds"], f"{b['rate']:,.0f}"])
    return table("step|dtype|device|peak TFLOP/s|ridge FLOP/byte|compute ms|memory ms|bound ms|"
                 "binds|examples/s needed", "lllrrrrrlr", rows)


def input_table(records, devices=DEVICES, pipeline=None) -> str:
    """Train steps, bf16: examples/s needed per device vs. the recorded pipeline rates."""
    pipeline, rows = PIPELINE if pipeline is None else pipeline, []
    for r in (r for r in records if r["dtype"] == "bfloat16" and "train" in r["step"]):
        data = PAIRED.get(r["step"].split()[0], "")
        cells = [" / ".join(f"{pipeline[(data, b)][m]:,.0f}" if (data, b) in pipeline else
                            "not measured" for b in (128, 1024)) for m in (0, 1)]
        rows += [[r["step"], d.name, f"{bound(r, d)['rate']:,.0f}",
                  f"{r['batch'] / bound(r, d)['compute_s']:,.0f}", data or "-", *cells]
                 for d in devices]
    return table("step|device|needed at the bound|needed at the compute side|data set|"
                 "host iterate B=128 / 1024|device gather (CPU) B=128 / 1024", "llrrlrr", rows)


def machine() -> str:
    info = "/proc/cpuinfo"
    lines = pathlib.Path(info).read_text().splitlines() if os.path.exists(info) else []
    cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")),
               platform.processor() or platform.machine())
    return (f"{cpu}, {os.cpu_count()} cores, {platform.system()}; jax {jax.__version__}, "
            f"jaxlib {jax.lib.__version__}; python {platform.python_version()}")


def verdicts(records, devices=DEVICES) -> str:
    """Per step: the binding side (exceptions), FLOP/byte, memory/compute, bf16/fp32 bytes."""
    out = []
    for step in dict.fromkeys(r["step"] for r in records):
        recs = [r for r in records if r["step"] == step]
        by, b = {r["dtype"]: r["bytes_accessed"] for r in recs}, bound(recs[-1], devices[0])
        sides = {(r["dtype"], d.name): bound(r, d)["binds"] for r in recs for d in devices}
        major = collections.Counter(sides.values()).most_common(1)[0][0]
        exc = [f"{v}-bound on {d} in {t}" for (t, d), v in sides.items() if v != major]
        ai = "–".join(sorted({f"{r['ai']:.0f}" for r in recs}, key=float))
        out.append(f"- **{step}** ({ai} FLOP/byte): {major}-bound" + (
            ", except " + ", ".join(exc) if exc else " on every device, both dtypes") +
            f"; on the {devices[0].name} in {recs[-1]['dtype']} the memory side is "
            f"{b['memory_s'] / b['compute_s']:.2g}× the compute side" + (
                f"; bfloat16 moves {by['bfloat16'] / by['float32']:.2f}"
                "× float32's bytes by this count" if len(by) == 2 else "") + ".")
    return "\n".join(out)


def input_bound(records, pipeline=None) -> str:
    """Per bf16 step on devices[0]: examples/s needed vs. the host pipeline (B=128)."""
    pipeline, out, dev = PIPELINE if pipeline is None else pipeline, [], DEVICES[0]
    for r in (r for r in records if r["dtype"] == "bfloat16"):
        b = bound(r, dev)
        host = pipeline.get((PAIRED.get(r["step"].split()[0], ""), 128), (None,))[0]
        out.append(f"- {r['step']}: {b['bound_s']:.3g} s per batch of {r['batch']} on the "
                   f"{dev.name} at the bf16 bound: scoring 20,000 examples (a test split and an "
                   f"OOD split of 10,000) takes at least {2e4 / b['rate']:,.0f} s." if "chunks" in r
                   else f"- {r['step']}: {b['rate']:,.0f} examples/s at the {dev.name} bf16 "
                   "bound, " + ("host pipeline not measured." if host is None else
                               f"{b['rate'] / host:.1f}× the host pipeline's {host:,.0f}: "
                               "INPUT-BOUND from host data." if b["rate"] > host else
                               f"{host / b['rate']:.1f}× below the host pipeline's {host:,.0f}."))
    return "\n".join(out)


PAGE = """# Performance: a roofline for each family

Generated by `python -m jaxhybrid.tools.roofline > docs/performance.md` (`--costs={how}`) in
{seconds:.0f} s on {machine}, {date}. **No accelerator measured anything on this page**: every
figure is XLA's cost analysis of the real step compiled for this machine's CPU, set against
datasheet peaks ([benchmarks.md](benchmarks.md): `benchmarks/device_suite.py` times devices).

## What is counted

- The trainer's own train step (optimiser, schedule, skip rule) of `configs/gffn.py:cifar10`
  (the thesis CNN), `configs/dhm.py:cifar10` with `--config.batch_size=400` (two ResNet-18s) and
  `configs/hvae.py:fashion_mnist_paper_npz`; the HVAE's scoring step (the Predictor's: `elbo`,
  `log_likelihood`, `l_gt_k`, i.e. L, L>k, LLR>k) with S = 1000 importance samples
  (`--config.model.iwae_samples=1000`) in chunks of `model.score_chunk`, which dominates the
  HVAE's evaluation. Built by `jaxhybrid.tools.lower` from abstract inputs (nothing allocated)
  on ONE device (`num_devices=1`): the cost analysis is of the per-device program of the SPMD
  partitioning, so every figure is per global step on one accelerator.
- {costs_note} XLA:CPU runs bfloat16 arithmetic in float32, so the bfloat16 rows move about
  float32's bytes; on a GPU or TPU bfloat16 activations take half.
- FLOPs are XLA's (a multiply-add is 2, elementwise work included), all at the matrix units'
  peak: the compute side is a true lower bound. XLA:CPU rolls the threefry RNG into a loop it
  counts once (a small under-count). Scoring: the chunk loop's body (`lax.map`) is also counted
  once, so the step is costed at S = c and S = 2c (c = `model.score_chunk`, one chunk each) and
  the difference plus one parameter read is added for each of the other ceil(S/c) − 1 chunks.
- bound = max(FLOPs / peak, bytes / HBM bandwidth); `binds` names the larger side (compute when
  FLOP/byte exceeds the ridge point, peak / bandwidth); examples/s needed = global batch / bound.
  fp32: JAX's DEFAULT matmul precision (jaxhybrid sets no other), as `device_suite.py`'s MFU:

{devices}

## Costs per step

{costs}

## Lower bounds on step time

{bounds}

## Input rate

Pipeline rates, `benchmarks/input_pipeline.py`, recorded: {pipeline_run}. `host iterate`: read,
frame, scale, copy to the device, as the trainer feeds its step; `device gather`: the resident
placement (`data.placement=device`) on the CPU device, on the same 2 cores (on an accelerator an
HBM gather of a few KB per example: far faster, not measured). MNIST is framed to 32×32.

{inputs}

## Reading it

{verdicts}

{input_bound}

The compute side is the firm floor; where memory binds, the ratio above is the traffic the
device's own fusion must save to turn the step compute-bound. A step needing more than the host
pipeline gives is input-bound with host data, not with `data.placement=device` (`auto`'s pick).

## What the device suite should check

`benchmarks/device_suite.py` times each train step above (paper size, both dtypes, one device:
ms/step, examples/s, MFU). On a real GPU it should also: set each measured step time against
this page's bound and compute side for its device (measured / bound < 1: a wrong count or peak);
record XLA's bytes accessed of the step compiled for that device (it replaces the XLA:CPU counts
and settles the binding side); check that bfloat16 gains what the binding side predicts (memory:
the bytes saved, not 2×); time the HVAE scoring step at S = 1000 against its bound; run the
thesis CNN's loop with host and with device-resident data (only the host one should fall short).
"""
COSTS_NOTE = {"compiled": "Costs `compiled`: the CPU-optimised program (after fusion). XLA:GPU/TPU "
              "fuse more (convolution epilogues, normalisations): the memory side is an "
              "estimate, likely high, not a strict lower bound.",
              "lowered": "Costs `lowered`: the UNOPTIMISED HLO (no fusion, every intermediate "
              "written and read back): bytes over-count, 2× and more; the memory side is high."}


def render(records, how: str, seconds: float, pipeline=None) -> str:
    """The page (markdown)."""
    devices = table("device|bf16 TFLOP/s|fp32 TFLOP/s used|float32 runs as|HBM", "lrrlr",
                    ([d.name, f"{d.bf16:g}", f"{d.fp32:g}", d.fp32_note, f"{d.bw / 1e12:g} TB/s"]
                     for d in DEVICES))
    return PAGE.format(
        how=how, seconds=seconds, machine=machine(), date=datetime.date.today().isoformat(),
        costs_note=COSTS_NOTE[how], devices=devices, pipeline_run=PIPELINE_RUN,
        costs=cost_table(records), bounds=bound_table(records),
        inputs=input_table(records, pipeline=pipeline), verdicts=verdicts(records),
        input_bound=input_bound(records, pipeline)).rstrip()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxhybrid.tools.roofline",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--costs", default="compiled", choices=lower.COSTS)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if jax.device_count() != 1:
        print(f"error: run as python -m jaxhybrid.tools.roofline (one device, not "
              f"{jax.device_count()})", file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    print(render(collect(how=args.costs), args.costs, time.perf_counter() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
