"""One train step of a config, as the trainer runs it, against the XLA floor of its convs.

The machinery of ``benchmarks/dhm_step.py`` and ``benchmarks/hvae_step.py`` (each a thin
script: its flags, its config and its synthetic npz; run those, not this module).

The step: the config's model and optimizer built by the trainer's own code
(``build_experiment``, ``TrainBatches``, ``create_state``, ``make_train_step``: jitted,
state donated, loss in ``jax.shard_map``) on ONE device, fed from a temporary npz of
random uint8 images (``data.source=npz``), so nothing is downloaded. The jitted step is
lowered and compiled once (``step.trace(...).lower().compile()``, the executable ``jit``
itself would run); that compiled step is what is timed, and its ``cost_analysis()``
gives the FLOPs.

The floor: every ``conv_general_dilated`` of the step's jaxpr (forward, loss, backward
and optimizer; nested jaxprs of pjit/shard_map/custom rules walked; transposed convs are
``conv_general_dilated`` with ``lhs_dilation``, weight-normalised ones a plain conv of
the normalised kernel), i.e. exactly the convolutions the step computes: each forward
conv, the filter gradient (dw) of each, and the input gradient (dx) of every conv whose
input depends on the parameters. Any other primitive whose name contains "conv" (but
not "convert") is reported as a WARNING: it would be missing from the floor.
Equal ops (shapes, dtypes, strides, padding, dilations, dimension numbers, groups,
precision) are grouped; each distinct op is compiled ALONE with the same primitive and
parameters and timed; floor = Σ count × time. The optimized HLO's ``convolution`` count
is printed as a check.

Timing: one warm-up step after compilation, then ``--repeats`` rounds; each round times
``--steps`` steps of every dtype and every distinct conv (round-robin, the start
rotating), so machine noise hits the step and its floor alike; step/floor is taken per
round. Results are median (min–max).

Caveats: alone, a conv gets its own layout transposes/copies (XLA:CPU canonicalises
every conv to b01f_01io->b01f with transposes around it) and no fusion with its
neighbours; in the step XLA may fuse those copies with other ops, pick other layouts, or
rewrite a conv (it turns 1×1 stride-1 convs into dots, in the step and alone alike: the
table marks them), so the floor estimates the conv work rather than bounding it
strictly. Each call of a conv alone also pays a dispatch (tens of µs), which inflates
the floor at toy sizes only. The dx of a stride-2 conv is a conv of the 2×-dilated
output gradient (as JAX transposes it), timed as such. ``bfloat16`` sets
``config.compute_dtype = "bfloat16"`` (:mod:`jaxhybrid.precision`); the dtype the step's
convs run in is printed, with a NOTE if the policy is not wired into the family.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import re
import shutil
import sys
import tempfile
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)   # measure this checkout, whatever the environment has installed
from benchmarks import common  # noqa: E402
from benchmarks.common import fmt_range, run_steps, summary  # noqa: E402
from jaxhybrid.data.pipeline import TrainBatches  # noqa: E402
from jaxhybrid.experiment import abstract_state, build_experiment, create_state  # noqa: E402
from jaxhybrid.optim import make_optimizer, make_schedule  # noqa: E402
from jaxhybrid.precision import COMPUTE_DTYPES  # noqa: E402
from jaxhybrid.train import make_train_step, training_plan  # noqa: E402

# --smoke: a tiny model (the script's own sizes) and 1 round; the floor's convs alone included
SMOKE = {"repeats": 1, "conv_block_seconds": 0.0, "max_convs": 3}


@dataclasses.dataclass
class Reference:
    """The original PyTorch code's train step on this 2-core CPU."""
    seconds: float        # median s/step
    gflop: float
    gflops: float         # its achieved GFLOP/s (approximate)


@dataclasses.dataclass
class Bench:
    """What a script supplies: its name, sizes, synthetic data, config and description."""
    name: str                              # "DHM", "HVAE": notes and the temp dir's name
    batch: int                             # global batch (examples/s)
    sizes: dict                            # the script's size flags, for the JSON
    write_npz: Callable[[str], str]        # tmpdir -> path of the synthetic npz
    make_config: Callable[[str, str], object]   # (npz path, compute dtype) -> config
    describe: Callable[[object], str]      # config -> one line about the model
    reference: Reference


def parser(doc: str) -> argparse.ArgumentParser:
    """The flags every step benchmark has (:func:`benchmarks.common.parser` and timing)."""
    p = common.parser(doc, repeats=5)
    p.add_argument("--steps", type=int, default=1, help="steps per timed block")
    p.add_argument("--dtypes", default="float32,bfloat16",
                   help="config.compute_dtype values to time, comma-separated")
    p.add_argument("--skip-floor", "--skip_floor", dest="skip_floor", action="store_true",
                   help="do not measure the XLA floor of the convolutions")
    p.add_argument("--conv-block-seconds", "--conv_block_seconds", dest="conv_block_seconds",
                   type=float, default=0.1, help="minimum duration of one timed block of a "
                   "conv alone (calls per block chosen from the warm-up)")
    p.add_argument("--max-convs", "--max_convs", dest="max_convs", type=int, default=0,
                   help="time only the first N distinct convs: a partial floor, for the "
                        "smoke (0: all)")
    return p


def parse(p: argparse.ArgumentParser, argv, smoke: dict) -> argparse.Namespace:
    """Parse (``--smoke``: :data:`SMOKE` and the script's ``smoke`` sizes); ``--dtypes``
    split and checked."""
    args = common.parse(p, argv, smoke={**SMOKE, **smoke})
    args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    bad = [d for d in args.dtypes if d not in COMPUTE_DTYPES]
    if bad or not args.dtypes:
        p.error(f"--dtypes {','.join(bad)}: valid: {','.join(COMPUTE_DTYPES)}")
    return args


# -- the step --------------------------------------------------------------------------
@dataclasses.dataclass
class Setup:
    dtype: str
    step: object          # the compiled step: (state, batch) -> (state, metrics), donated
    state: object
    batches: list         # a few device batches, cycled
    flops: float          # XLA cost analysis of the compiled step
    compile_s: float
    convs: collections.Counter   # ConvOp key -> count in the step
    hlo_convs: tuple      # (convolutions, dots made from convs) in the optimized HLO
    n_params: int
    times: list = dataclasses.field(default_factory=list)
    cursor: int = 0


def xla_flops(compiled) -> float:
    ca = compiled.cost_analysis()
    if isinstance(ca, (list, tuple)):   # older JAX: one dict per computation
        ca = ca[0] if ca else {}
    return float((ca or {}).get("flops", float("nan")))


def hlo_conv_counts(text: str) -> tuple:
    """(convolution instructions, dot instructions XLA made from a conv) in optimized HLO."""
    convs = len(re.findall(r"\bconvolution\(", text))
    dots = sum(1 for line in text.splitlines() if re.search(r"\bdot\(", line)
               and re.search(r'op_name="[^"]*conv_general_dilated"', line))
    return convs, dots


def build_setup(config, initial_state, ops: dict) -> Setup:
    """The trainer's construction (train._Run) for ``config``; compiles the step once.
    ``initial_state``: another dtype's initial state, copied when its shapes match."""
    exp = build_experiment(config)
    batches = TrainBatches(exp.splits.train, config.batch_size, seed=config.seed,
                           mesh=exp.mesh, preprocess=exp.preprocess)
    plan = training_plan(config, batches.steps_per_epoch)
    schedule = make_schedule(config.optimizer, config.batch_size, plan["total_steps"],
                             plan["steps_per_epoch"])
    optimizer = make_optimizer(config.optimizer, schedule)
    shapes = lambda t: jax.tree.map(lambda a: (a.shape, a.dtype), t)  # noqa: E731
    if initial_state is not None and shapes(initial_state) == shapes(
            abstract_state(exp, optimizer, config.seed)):
        state = jax.tree.map(jnp.copy, initial_state)   # every step donates its own
    else:
        state = create_state(exp, optimizer, config.seed, batches.batch(0))
    device_batches = [batches.batch(s) for s in range(4)]
    t0 = time.perf_counter()
    traced = make_train_step(exp, optimizer, schedule, plan["steps_per_epoch"]).trace(
        state, device_batches[0])
    compiled = traced.lower().compile()
    compile_s = time.perf_counter() - t0
    hlo = hlo_conv_counts(compiled.as_text())
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state["params"]))
    return Setup(config.compute_dtype, compiled, state, device_batches, xla_flops(compiled),
                 compile_s, collect_convs(traced.jaxpr, ops), hlo, n_params)


# -- the convolutions ------------------------------------------------------------------
@dataclasses.dataclass
class ConvOp:
    """One distinct convolution of the step, compiled alone."""
    primitive: object
    params: dict
    lhs: object           # ShapedArray of the input
    rhs: object           # ShapedArray of the kernel (or, for dw, the output gradient)
    fn: object = None     # compiled (lhs, rhs) -> out
    args: tuple = ()
    flops: float = float("nan")
    calls: int = 1        # calls per timed block
    alone_hlo: tuple = ()  # hlo_conv_counts of the op compiled alone
    times: list = dataclasses.field(default_factory=list)   # seconds per call, per round

    @property
    def kind(self) -> str:
        """fwd | dx (input gradient) | dw (filter gradient), from the dimension numbers of
        flax's NHWC/HWIO convs and of their transposes (a label only)."""
        dn = self.params["dimension_numbers"]
        if dn.lhs_spec[0] != 0:
            return "dw"
        return "fwd" if tuple(dn.rhs_spec[:2]) == (3, 2) else "dx"

    def describe(self) -> str:
        p, dn = self.params, self.params["dimension_numbers"]
        labels = []
        for spec, (b, f) in ((dn.lhs_spec, "bf"), (dn.rhs_spec, "oi"), (dn.out_spec, "bf")):
            s = [""] * len(spec)
            s[spec[0]], s[spec[1]] = b, f
            for i, d in enumerate(spec[2:]):
                s[d] = str(i)
            labels.append("".join(s))
        dims = lambda t: "x".join(map(str, t))  # noqa: E731
        extra = "".join(f" {k}={dims(p[k])}" for k in ("lhs_dilation", "rhs_dilation")
                        if any(v != 1 for v in p[k]))
        groups = "".join(f" {k}={p[k]}" for k in ("feature_group_count", "batch_group_count")
                         if p[k] != 1)
        pad = ",".join(f"{lo}_{hi}" for lo, hi in p["padding"])
        return (f"{dims(self.lhs.shape)} * {dims(self.rhs.shape)} {self.lhs.dtype.name} "
                f"{labels[0]}_{labels[1]}->{labels[2]} stride={dims(p['window_strides'])} "
                f"pad={pad}{extra}{groups}")

    def prepare(self):
        """Compile alone (the same primitive and parameters), random inputs, XLA FLOPs."""
        if self.fn is not None:
            return
        prim, params = self.primitive, self.params
        rng = np.random.default_rng(0)   # numpy: no random kernel to compile per shape
        self.args = tuple(jnp.asarray(rng.standard_normal(a.shape, np.float32), a.dtype)
                          for a in (self.lhs, self.rhs))
        self.fn = jax.jit(lambda l, r: prim.bind(l, r, **params)).lower(*self.args).compile()
        self.flops = xla_flops(self.fn)
        self.alone_hlo = hlo_conv_counts(self.fn.as_text())

    def run(self, n: int) -> float:
        """Seconds per call of n calls."""
        t0 = time.perf_counter()
        for _ in range(n):
            out = self.fn(*self.args)
        jax.block_until_ready(out)
        return (time.perf_counter() - t0) / n


def collect_convs(closed_jaxpr, ops: dict) -> collections.Counter:
    """Count of every conv_general_dilated of the jaxpr, nested jaxprs included (a scan's
    body × its length); new distinct ops are added to ``ops`` (key -> ConvOp). Warns of
    any other primitive named like a convolution (it would be missing from the floor)."""
    found, other = collections.Counter(), collections.Counter()

    def walk(jaxpr, mult, where):
        for eqn in jaxpr.eqns:
            name = eqn.primitive.name
            if name == "conv_general_dilated":
                lhs, rhs = (v.aval for v in eqn.invars)
                key = repr((lhs.shape, lhs.dtype.name, rhs.shape, rhs.dtype.name,
                            sorted(eqn.params.items())))
                ops.setdefault(key, ConvOp(eqn.primitive, dict(eqn.params), lhs, rhs))
                found[key] += mult
                if where:
                    print(f"WARNING: a convolution inside {where}: counted once per call")
            elif "conv" in name and "convert" not in name:
                other[name] += mult
            inner_mult = mult * eqn.params.get("length", 1) if name == "scan" else mult
            inner_where = where or (name if name in ("while", "cond") else "")
            for value in eqn.params.values():
                for sub in value if isinstance(value, (tuple, list)) else (value,):
                    sub = getattr(sub, "jaxpr", sub)          # ClosedJaxpr -> Jaxpr
                    if hasattr(sub, "eqns"):
                        walk(sub, inner_mult, inner_where)

    walk(closed_jaxpr.jaxpr, 1, "")
    for name, n in other.items():
        print(f"WARNING: {n} '{name}' primitive(s) in the step: not in the floor")
    return found


def floor_per_round(setup: Setup, ops: dict) -> list:
    """Σ count × seconds per call, per round."""
    return [sum(n * ops[k].times[r] for k, n in setup.convs.items())
            for r in range(len(setup.times))]


# -- measurement -----------------------------------------------------------------------
def build_all(bench: Bench, flags, npz_path: str):
    """One Setup per dtype (a shared dict of the distinct convs); prints what was built."""
    ops, setups = {}, []
    for dtype in flags.dtypes:
        s = build_setup(bench.make_config(npz_path, dtype),
                        setups[0].state if setups else None, ops)
        setups.append(s)
        kinds = collections.Counter()
        for k, n in s.convs.items():
            kinds[ops[k].kind] += n
        real = {ops[k].lhs.dtype.name for k in s.convs}
        print(f"  {dtype:<9s} compiled in {s.compile_s:5.1f} s; XLA {s.flops / 1e9:9.3f} GFLOP; "
              f"convolutions in the jaxpr: {sum(kinds.values())} = fwd {kinds['fwd']} + dx "
              f"{kinds['dx']} + dw {kinds['dw']} ({len(s.convs)} distinct, "
              f"{','.join(sorted(real))}); optimized HLO: {s.hlo_convs[0]} convolutions + "
              f"{s.hlo_convs[1]} dots made from convs")
        if dtype == "bfloat16" and jnp.dtype(jnp.bfloat16).name not in real:
            print(f"  NOTE: compute_dtype=bfloat16 is not wired into the {bench.name} yet: "
                  f"its step runs its convolutions in float32")
    if flags.max_convs and not flags.skip_floor:
        ops = dict(list(ops.items())[:flags.max_convs])
        for s in setups:
            s.convs = collections.Counter({k: n for k, n in s.convs.items() if k in ops})
        print(f"  --max-convs {flags.max_convs}: a PARTIAL floor of {len(ops)} distinct convs")
    return setups, ops


def warm_up(setups, ops, flags):
    """One untimed step per dtype; compile each distinct conv and choose its calls/block."""
    for s in setups:
        wall, _ = run_steps(s, 1)
        print(f"  {s.dtype:<9s} warm-up step {wall * 1e3:9.1f} ms")
    if flags.skip_floor:
        return
    t0 = time.perf_counter()
    for op in ops.values():
        op.prepare()
        warm = op.run(1)
        op.calls = max(1, min(1000, round(flags.conv_block_seconds / max(warm, 1e-9))))
    print(f"  {len(ops)} distinct convolutions compiled and warmed up in "
          f"{time.perf_counter() - t0:.1f} s")


def run_rounds(setups, ops, flags):
    """``--repeats`` rounds over every step and conv, the start rotating each round."""
    items = list(setups) + ([] if flags.skip_floor else list(ops.values()))

    def one(x, _):
        if isinstance(x, Setup):
            x.times.append(run_steps(x, flags.steps)[0] / flags.steps)
        else:
            x.times.append(x.run(x.calls))
    common.round_robin(items, flags.repeats, one, log=True)


# -- report ----------------------------------------------------------------------------
def report_steps(setups, batch: int, ref: Reference) -> dict:
    print(f"\n{'dtype':<9s} {'ms/step median (min–max)':>32s} {'GFLOP (XLA)':>12s} "
          f"{'GFLOP/s':>8s} {f'step / {ref.seconds:g} s':>13s} {'ex/s':>7s}")
    ratio_key = f"ratio_to_reference_{f'{ref.seconds:g}'.replace('.', '_')}s"
    out = {}
    for s in setups:
        t = summary(s.times)
        gflops = s.flops / 1e9 / t["median"]
        print(f"{s.dtype:<9s} {fmt_range(t, 1e3):>32s} {s.flops / 1e9:12.3f} {gflops:8.1f} "
              f"{t['median'] / ref.seconds:13.4f} {batch / t['median']:7.1f}")
        out[s.dtype] = {"sec_per_step": t, "sec_per_step_all": s.times,
                        "xla_flops": s.flops, "gflop_per_s": gflops,
                        ratio_key: t["median"] / ref.seconds,
                        "compile_s": s.compile_s, "convs_in_jaxpr": sum(s.convs.values()),
                        "distinct_convs": len(s.convs), "convs_in_hlo": s.hlo_convs[0],
                        "dots_from_convs_in_hlo": s.hlo_convs[1]}
    print(f"(reference: the original PyTorch step, {ref.seconds:g} s median, "
          f"{ref.gflop:,.0f} GFLOP, ~{ref.gflops:g} GFLOP/s on this 2-core CPU)")
    return out


def report_floor(s: Setup, ops: dict) -> dict:
    """The per-shape table and step/floor of one dtype."""
    floor = floor_per_round(s, ops)
    ratio = summary([t / f for t, f in zip(s.times, floor)])
    fsum = summary(floor)
    conv_flops = sum(n * ops[k].flops for k, n in s.convs.items())
    print(f"\nXLA floor, {s.dtype} step: Σ count × (conv alone) = {fmt_range(fsum, 1e3)} ms; "
          f"step/floor {fmt_range(ratio, 1, '.2f')} (per round); conv FLOPs "
          f"{conv_flops / 1e9:.3f} GFLOP = {conv_flops / s.flops:.0%} of the step's; "
          f"floor GFLOP/s {conv_flops / 1e9 / fsum['median']:.1f}")
    rows = sorted(s.convs.items(), key=lambda kv: -kv[1] * summary(ops[kv[0]].times)["median"])
    print(f"{'kind':<4s} {'count':>5s} {'ms each':>9s} {'GFLOP':>8s} {'GFLOP/s':>8s} "
          f"{'ms total':>9s} {'share':>6s}  convolution (lhs * rhs, dims, stride, padding)")
    table = []
    for key, n in rows:
        op = ops[key]
        ms = summary(op.times)["median"] * 1e3
        print(f"{op.kind:<4s} {n:5d} {ms:9.3f} {op.flops / 1e9:8.4f} "
              f"{op.flops / 1e6 / ms:8.1f} {n * ms:9.2f} {n * ms / 1e3 / fsum['median']:6.1%}"
              f"  {op.describe()}{' [alone: a dot]' if op.alone_hlo[1] else ''}")
        table.append({"kind": op.kind, "conv": op.describe(), "count": n,
                      "alone_hlo_convs_dots": op.alone_hlo,
                      "sec_each": summary(op.times), "sec_each_all": op.times,
                      "calls_per_block": op.calls, "xla_flops_each": op.flops})
    return {"floor_sec": fsum, "floor_sec_all": floor, "ratio_step_over_floor": ratio,
            "conv_flops": conv_flops, "table": table}


def measure(bench: Bench, flags):
    """Build, warm up and time (prints as it goes) -> (setups, ops)."""
    tmpdir = tempfile.mkdtemp(prefix=f"{bench.name.lower()}_step_")
    try:
        npz = bench.write_npz(tmpdir)
        print(bench.describe(bench.make_config(npz, flags.dtypes[0])))
        print("building (trainer construction, compile):")
        setups, ops = build_all(bench, flags, npz)
        print(f"parameters: {setups[0].n_params:,}")
        warm_up(setups, ops, flags)
        print(f"timing: {flags.repeats} rounds of {flags.steps} step(s) per dtype"
              + ("" if flags.skip_floor else f" + {len(ops)} convs alone") + ", round-robin")
        run_rounds(setups, ops, flags)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return setups, ops


def main(bench: Bench, flags) -> dict:
    """The whole benchmark: header (uptime, CPU), measurement, reports, JSON (``--json``)."""
    machine = common.header()
    setups, ops = measure(bench, flags)
    ref = bench.reference
    results = {"machine": machine, "sizes": bench.sizes, "smoke": flags.smoke,
               "repeats": flags.repeats, "steps_per_block": flags.steps,
               "parameters": setups[0].n_params,
               "reference": {"sec_per_step": ref.seconds, "gflop": ref.gflop},
               "steps": report_steps(setups, bench.batch, ref)}
    if not flags.skip_floor:
        results["floor"] = {s.dtype: report_floor(s, ops) for s in setups}
    return common.finish(results, flags.json)
