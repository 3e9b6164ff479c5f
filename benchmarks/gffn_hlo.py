"""Where the GFFN joint objective's per-step cost goes: timing, optimized HLO, profile.

Run (from the repository root; about 1–3 minutes on a 2-core CPU):

    python benchmarks/gffn_hlo.py                       # timing + HLO summary
    python benchmarks/gffn_hlo.py --profile             # + per-op (thunk) times from a trace
    python benchmarks/gffn_hlo.py --dump_dir=/tmp/hlo   # + the full optimized HLO texts
    python benchmarks/gffn_hlo.py --config.model.width=16 --batch_size=1024

Unlike ``benchmarks/gffn_overhead.py`` this builds the steps standalone, from the
library's model (``jaxhybrid.models.build_model``), optimizer (``jaxhybrid.optim``)
and objectives (``jaxhybrid.objectives``), not through the trainer, so that only the
loss differs between the variants:

- ``ce_only``: plain cross-entropy (+ the accuracy the trainer logs);
- ``lambda0``: the FFN as the classifier family trains it (cross-entropy; the joint
  term computed for logging under ``stop_gradient``);
- ``lambda1``: the GFFN (joint loss; cross-entropy logged under ``stop_gradient``).

Each step is the trainer's: one jitted, state-donating function; the loss inside a
``jax.shard_map`` over a 1-D ``data`` mesh (collectives included even on 1 device);
the gradient taken outside it; Adam; grad norm and learning rate as metrics.

Timing: after compilation and warm-up, ``--repeats`` rounds; in each round every
variant runs ``--steps`` consecutive steps (ended by ``block_until_ready``), in an
order that rotates between rounds. Reported per variant: wall ms/step, median
(min–max) over rounds; per variant against the first: the ratio of the two wall
times *within each round*, median (min–max), and the same for process CPU time
(less sensitive to other jobs on a shared machine). The load average is printed
before and after.

HLO (``--hlo``, on by default): the optimized HLO of each step
(``jit(step).lower(...).compile().as_text()``), summarised as (a) counts of
operations and (b) the multiset of "heavy" instructions anywhere in the module
(convolution, dot, copy, transpose, custom-call, all-reduce, with their result
shapes and layouts, convolution dim_labels), compared between variants, and (c) a
diff of the entry computations' instruction signatures (fusions as their kind and
the operations inside).

Measured (2-core AMD EPYC VM shared with other jobs, load average 1.6–4; jax 0.10.2;
1 device; thesis CNN width 32, 2×2 convs, hidden 256, 32×32×1; MNIST; B = 128):
- HLO: the 11 convolutions, 6 dots, 33 copies and 14 transposes of ``lambda1`` and
  ``ce_only`` are identical (shapes, layouts, dim_labels), and so is the gradients'
  all-reduce; ``lambda1`` adds only ~20 scalar or [B]-sized loop fusions and 3 scalar
  collective operands. The profile puts all ops under 0.2 ms at ~1 ms per step in
  *both* steps; the joint head's value-and-gradient alone takes ~20 µs.
- lambda1 / ce_only per round, 40 rounds × 2 steps: wall 0.997–1.057 (medians of four
  runs; single rounds 0.36–1.68 from the load), CPU time 0.987–1.008. At B = 1024
  (8 rounds × 1 step): wall 1.007, CPU 0.982. The wall ratio's run-to-run spread
  (±3–5 %) is the machine's, not the objective's: compare CPU ratios, or repeat.
"""
from __future__ import annotations

import argparse
import collections
import difflib
import glob
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)   # measure this checkout, whatever the environment has installed
from benchmarks import common  # noqa: E402
from benchmarks.common import SHARED_MNIST, fmt_range, ratio, summary  # noqa: E402
from jaxhybrid.models import build_model, network_config  # noqa: E402
from jaxhybrid.objectives.conditional import conditional_nll  # noqa: E402
from jaxhybrid.objectives.joint import joint_nll  # noqa: E402
from jaxhybrid.optim import make_optimizer, make_schedule  # noqa: E402

VARIANTS = ("ce_only", "lambda0", "lambda1")
SMOKE = {"batch_size": 8, "repeats": 1, "steps": 1, "warmup": 1, "profile_steps": 1}


def parse_flags(argv=None):
    p = common.parser(__doc__, repeats=20, config="configs/gffn.py:mnist_npz")
    p.add_argument("--batch_size", type=int, default=128, help="global batch size")
    p.add_argument("--devices", type=int, default=1,
                   help="devices in the data mesh (CPU: fake devices)")
    p.add_argument("--variants", default="ce_only,lambda1", help="variants to compare, the "
                   f"first is the reference; from {','.join(VARIANTS)}")
    p.add_argument("--steps", type=int, default=2, help="consecutive steps per variant per round")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed steps per variant after compilation")
    p.add_argument("--hlo", action=argparse.BooleanOptionalAction, default=True,
                   help="print the optimized-HLO summary and diff")
    p.add_argument("--dump_dir", default="", help="write each variant's optimized HLO here")
    p.add_argument("--profile", action="store_true", help="trace a few steps per variant "
                   "with jax.profiler and print per-op (XLA thunk) times")
    p.add_argument("--profile_steps", type=int, default=4, help="steps per variant profiled")
    args = common.parse(p, argv, smoke=SMOKE, smoke_config=common.SMOKE_CNN)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad or not args.variants:
        p.error(f"--variants: unknown {bad}; valid choices: {', '.join(VARIANTS)}")
    if args.batch_size % args.devices:
        p.error(f"--batch_size={args.batch_size} is not divisible by --devices={args.devices}")
    return args


# ----------------------------------------------------------------------------- steps

def make_loss(variant: str, logits_fn, label_model: str):
    """loss(params, batch, axis_name) -> (loss, aux) for one variant (per device)."""
    def loss_fn(params, batch, axis_name):
        logits = logits_fn(params, batch["image"])
        labels, mask = batch["label"], batch["mask"]
        cond = conditional_nll(logits, labels, label_model=label_model, axis_name=axis_name,
                               mask=mask)
        aux = {}
        if variant == "ce_only":
            loss = cond
        else:  # as the classifier family: both parts computed, one under stop_gradient
            joint = joint_nll(logits, labels, label_model=label_model, axis_name=axis_name,
                              mask=mask)
            if variant == "lambda0":
                loss, joint = cond, lax.stop_gradient(joint)
            else:
                loss, cond = joint, lax.stop_gradient(cond)
            aux["joint_nll"] = joint
        correct = jnp.sum(jnp.where(mask, jnp.argmax(logits, -1) == labels, False)
                          .astype(jnp.float32))
        count = jnp.sum(mask.astype(jnp.float32))
        correct, count = lax.psum((correct, count), axis_name)
        return loss, {**aux, "conditional_nll": cond,
                      "accuracy": lax.stop_gradient(correct / count)}

    return loss_fn


def make_step(loss_fn, mesh, optimizer, schedule):
    """The trainer's step: (state, batch) -> (state, metrics), jitted, state donated."""
    sharded = jax.shard_map(lambda p, b: loss_fn(p, b, "data"), mesh=mesh,
                            in_specs=(P(), P("data")), out_specs=P())

    def step(state, batch):
        rng, _ = jax.random.split(state["rng"])
        (value, aux), grads = jax.value_and_grad(sharded, has_aux=True)(state["params"], batch)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {"loss": value, **aux, "grad_norm": optax.tree.norm(grads),
                   "learning_rate": schedule(state["step"])}
        return {"params": params, "opt_state": opt_state, "step": state["step"] + 1,
                "rng": rng}, metrics

    return jax.jit(step, donate_argnums=0)


def load_batches(config, batch_size: int, n_batches: int = 4):
    """A few [B, frame, frame, 1] batches in [0, 1]: MNIST (shared npz) or synthetic."""
    n = batch_size * n_batches
    path = config.data.npz_path if os.path.exists(str(config.data.npz_path or "")) else (
        SHARED_MNIST if os.path.exists(SHARED_MNIST) else None)
    if path:
        with np.load(path) as f:
            reps = -(-n // len(f["y_train"]))
            x = np.tile(f["x_train"], (reps, 1, 1))[:n]
            y = np.tile(f["y_train"], reps)[:n]
        source = f"MNIST npz {os.path.abspath(path)}"
    else:
        r = np.random.default_rng(0)
        x = r.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = r.integers(0, 10, n)
        source = "SYNTHETIC uint8 28x28 (MNIST npz not found)"
    frame = int(config.data.frame or x.shape[1])
    lo = (frame - x.shape[1]) // 2
    img = np.zeros((n, frame, frame, 1), np.float32)
    img[:, lo:lo + x.shape[1], lo:lo + x.shape[2], 0] = x / 255.0
    batches = [{"image": img[i * batch_size:(i + 1) * batch_size],
                "label": y[i * batch_size:(i + 1) * batch_size].astype(np.int32),
                "mask": np.ones(batch_size, bool)} for i in range(n_batches)]
    return batches, source


# ----------------------------------------------------------------------------- HLO

_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.+?) ([\w\-]+)\((.*)$")
_HEAVY = ("convolution", "dot", "copy", "transpose", "custom-call", "all-reduce",
          "all-gather", "reduce-scatter", "collective-permute")


def parse_hlo(text: str):
    """{computation: [(name, shape, opcode, rest)]}, entry computation name."""
    comps, cur, entry = {}, None, None
    for line in text.splitlines():
        if line and not line.startswith((" ", "}")) and line.rstrip().endswith("{"):
            m = re.match(r"^(ENTRY )?%?([\w.\-]+)", line)
            if m and not line.startswith("HloModule"):
                cur = m.group(2)
                comps[cur] = []
                entry = cur if m.group(1) else entry
            continue
        if line.startswith("}"):
            cur = None
            continue
        m = _INSTR.match(line) if cur else None
        if m:
            comps[cur].append(m.groups())
    return comps, entry


def heavy_ops(comps) -> collections.Counter:
    """Multiset of heavy instructions anywhere: opcode, result shape with layout, attrs."""
    out = collections.Counter()
    for instrs in comps.values():
        for _, shape, op, rest in instrs:
            if op in _HEAVY:
                attrs = " ".join(re.findall(r"(dim_labels=\S+?|dimensions=\{[\d,]*\}|"
                                            r"lhs_contracting_dims=\{[\d,]*\}|"
                                            r"rhs_contracting_dims=\{[\d,]*\}|"
                                            r"window=\{[^}]*\})", rest))
                if op.startswith("all-"):  # the combiner packs loss scalars into tuples:
                    # count those apart, so that the gradients' all-reduce still matches
                    out["(scalar operands of collectives)"] += len(re.findall(r"\w+\[\]", shape))
                    shape = re.sub(r"\w+\[\](, )?", "", shape).replace(", )", ")")
                    if shape.strip("() ") == "":
                        continue
                out[f"{op} {shape} {attrs}".strip()] += 1
    return out


def entry_signature(comps, entry) -> list[str]:
    """One line per entry instruction; a fusion as its kind and the ops inside it."""
    rows = []
    for _, shape, op, rest in comps[entry]:
        desc = f"{op} {re.sub(r'{[^}]*}', '', shape)}"
        if op == "fusion":
            kind = re.search(r"kind=(\w+)", rest)
            called = re.search(r"calls=%([\w.\-]+)", rest)
            inner = collections.Counter(
                o for _, _, o, _ in comps.get(called.group(1) if called else "", [])
                if o not in ("parameter", "constant", "bitcast", "broadcast"))
            desc += f" {kind.group(1) if kind else '?'}[" + ",".join(
                k + (f"x{v}" if v > 1 else "") for k, v in sorted(inner.items())) + "]"
        rows.append(desc)
    return rows


def hlo_report(texts: dict[str, str]) -> dict:
    names = list(texts)
    parsed = {v: parse_hlo(t) for v, t in texts.items()}
    print("\nOptimized HLO: operation counts")
    keys = ("convolution", "dot", "fusion", "copy", "transpose", "custom-call", "all-reduce",
            "reduce", "exponential", "log")
    counts = {v: collections.Counter(op for instrs in c.values() for _, _, op, _ in instrs)
              for v, (c, _) in parsed.items()}
    print(f"  {'':10s}" + "".join(f"{k:>13s}" for k in keys) + f"{'entry instrs':>14s}")
    out = {}
    for v in names:
        c, e = parsed[v]
        print(f"  {v:10s}" + "".join(f"{counts[v][k]:13d}" for k in keys)
              + f"{len(c[e]):14d}")
        out[v] = {"counts": {k: counts[v][k] for k in keys}, "entry_instructions": len(c[e])}
    ref = names[0]
    ref_heavy = heavy_ops(parsed[ref][0])
    for v in names[1:]:
        heavy = heavy_ops(parsed[v][0])
        only_v, only_ref = heavy - ref_heavy, ref_heavy - heavy
        same = sum((heavy & ref_heavy).values())
        out[v].update(heavy_identical=same, heavy_only_here=sum(only_v.values()),
                      heavy_only_in_reference=sum(only_ref.values()))
        print(f"\n{v} vs {ref}: heavy instructions (conv/dot/copy/transpose/custom-call/"
              f"collectives, shapes + layouts): {same} identical, {sum(only_v.values())} only "
              f"in {v}, {sum(only_ref.values())} only in {ref}")
        for k, n in sorted(only_v.items()):
            print(f"  + {n}× {k[:160]}")
        for k, n in sorted(only_ref.items()):
            print(f"  - {n}× {k[:160]}")
        a, b = entry_signature(*parsed[ref]), entry_signature(*parsed[v])
        diff = [line for line in difflib.unified_diff(a, b, lineterm="", n=0)
                if line[:1] in "+-" and not line.startswith(("+++", "---"))]
        print(f"  entry computation: {len(a)} vs {len(b)} instructions; signature diff "
              f"({sum(d[0] == '-' for d in diff)} removed, {sum(d[0] == '+' for d in diff)} "
              f"added):")
        for line in diff:
            print(f"    {line[:160]}")
    return out


# ----------------------------------------------------------------------------- profile

def profile_report(runners: dict, n_steps: int) -> None:
    """Per-op (XLA:CPU thunk) time per step from a jax.profiler trace."""
    d = tempfile.mkdtemp(prefix="gffn_hlo_trace_")
    with jax.profiler.trace(d):
        for _ in range(n_steps):
            for v, run in runners.items():
                with jax.profiler.TraceAnnotation(f"STEP {v}"):
                    run(1)
    files = glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True)
    if not files:
        print("profile: no trace written")
        return
    pd = jax.profiler.ProfileData.from_file(files[0])
    events = [(e.name, e.start_ns, e.duration_ns) for p in pd.planes if p.name == "/host:CPU"
              for line in p.lines for e in line.events]
    shutil.rmtree(d, ignore_errors=True)
    windows = [(n[5:], s, s + dur) for n, s, dur in events if n.startswith("STEP ")]
    skip = ("STEP ", "end: ", "$", "Thunk", "Threadpool", "Wait", "Pjit", "Python", "Slinky",
            "Parse", "Common", "Handle", "Allocate", "XlaModule", "ExecuteHelper")
    print(f"\nProfile: XLA:CPU per-op time per step (ms, median over {n_steps} steps; ops run "
          f"concurrently, so the sum can exceed the step)")
    per = {}
    for v in runners:
        steps = [(s0, s1) for w, s0, s1 in windows if w == v]
        by_op = collections.defaultdict(list)
        for s0, s1 in steps:
            agg = collections.Counter()
            for n, s, dur in events:
                if s0 <= s <= s1 and not n.startswith(skip):
                    agg[n] += dur / 1e6
            for n, t in agg.items():
                by_op[n].append(t)
        med = {n: statistics.median(t) for n, t in by_op.items()}
        per[v] = med
        big = {n: t for n, t in med.items() if t >= 0.2}
        small = {n: t for n, t in med.items() if t < 0.2}
        print(f"  {v:10s} step {statistics.median([(s1 - s0) / 1e6 for s0, s1 in steps]):7.1f}"
              f"  all ops {sum(med.values()):7.1f} in {len(med)} ops;  ops >= 0.2 ms: "
              f"{sum(big.values()):7.1f} in {len(big)};  ops < 0.2 ms: "
              f"{sum(small.values()):6.2f} in {len(small)}")
    for v, med in per.items():
        top = sorted(med.items(), key=lambda kv: -kv[1])[:8]
        print(f"  {v:10s} top: " + ", ".join(f"{n} {t:.1f}" for n, t in top))


# ----------------------------------------------------------------------------- main

def build(args):
    """(runners {variant: run(n steps)}, optimized HLO texts, data source): the steps on
    one shared initial state, compiled and warmed up."""
    config, b = args.config, args.batch_size
    host_batches, source = load_batches(config, b)
    mesh = Mesh(np.asarray(jax.devices()[:args.devices]), ("data",))
    batches = [jax.device_put(x, NamedSharding(mesh, P("data"))) for x in host_batches]
    module = build_model(network_config(config.model), 10)
    schedule = make_schedule(config.optimizer, b, 10_000, 500)
    optimizer = make_optimizer(config.optimizer, schedule)

    def init(key, image):   # jitted: one compilation, not one per op of the model's init
        params = module.init(key, image)["params"]
        return {"params": params, "opt_state": optimizer.init(params),
                "step": jnp.zeros((), jnp.int32), "rng": jax.random.PRNGKey(1)}
    state0 = jax.device_put(jax.jit(init)(jax.random.PRNGKey(0), batches[0]["image"][:1]),
                            NamedSharding(mesh, P()))
    logits_fn = lambda p, x: module.apply({"params": p}, x)  # noqa: E731
    runners, texts = {}, {}
    for v in args.variants:
        step = make_step(make_loss(v, logits_fn, config.objective.label_model), mesh,
                         optimizer, schedule)
        setup = common_setup(step, jax.tree.map(jnp.copy, state0), batches)
        runners[v] = lambda n, s=setup: common.run_steps(s, n)
        t0 = time.perf_counter()
        texts[v] = step.lower(setup.state, batches[0]).compile().as_text()
        runners[v](1)
        compile_s = time.perf_counter() - t0
        warm = runners[v](args.warmup)[0] / max(args.warmup, 1) if args.warmup else 0.0
        print(f"  {v:10s} compile + first step {compile_s:5.2f} s; warm step "
              f"{warm * 1e3:7.1f} ms")
        if args.dump_dir:
            os.makedirs(args.dump_dir, exist_ok=True)
            with open(os.path.join(args.dump_dir, f"{v}_B{b}.hlo.txt"), "w") as f:
                f.write(texts[v])
    return runners, texts, source


def common_setup(step, state, batches):
    """What :func:`benchmarks.common.run_steps` advances: step, state, batches, cursor."""
    return types.SimpleNamespace(step=step, state=state, batches=batches, cursor=0)


def time_variants(runners: dict, args) -> dict:
    """Interleaved rounds; per variant wall and CPU s/step, and ratios to the first."""
    names = list(runners)
    wall, cpu = {v: [] for v in names}, {v: [] for v in names}

    def one(v, _):
        w, c = runners[v](args.steps)
        wall[v].append(w / args.steps)
        cpu[v].append(c / args.steps)
    common.round_robin(names, args.repeats, one)
    print(f"\nTiming: {args.repeats} rounds × {args.steps} steps per variant, interleaved")
    print(f"  {'variant':10s} {'wall ms/step median (min–max)':>32s} "
          f"{'CPU ms/step median (min–max)':>32s}")
    out = {v: {"wall_sec_per_step": summary(wall[v]), "cpu_sec_per_step": summary(cpu[v]),
               "wall_all": wall[v]} for v in names}
    for v in names:
        print(f"  {v:10s} {fmt_range(summary(wall[v]), 1e3):>32s} "
              f"{fmt_range(summary(cpu[v]), 1e3):>32s}")
    ref = names[0]
    for v in names[1:]:
        rw, rc = ratio(wall[v], wall[ref]), ratio(cpu[v], cpu[ref])
        verdict = "OK" if rw["median"] <= 1.03 else "ABOVE TARGET"
        of_medians = statistics.median(wall[v]) / statistics.median(wall[ref])
        print(f"  {v}/{ref}: wall, per round {fmt_range(rw, 1, '.3f')} [{verdict}; target "
              f"≤ 1.03]; ratio of medians {of_medians:.3f}; CPU, per round "
              f"{fmt_range(rc, 1, '.3f')}")
        out[v].update(wall_ratio_to_reference=rw, cpu_ratio_to_reference=rc)
    return out


def main(argv=None) -> dict:
    args = parse_flags(argv)
    if args.devices > 1:
        jax.config.update("jax_num_cpu_devices", args.devices)
    machine = common.header(args.devices)
    m = args.config.model
    runners, texts, source = build(args)
    print(f"model {m.name} {dict(m)}; frame {args.config.data.frame}; optimizer "
          f"{args.config.optimizer.name}; label model {args.config.objective.label_model}; "
          f"B={args.batch_size}; data: {source}")
    results = {"machine": machine, "smoke": args.smoke, "batch_size": args.batch_size,
               "variants": time_variants(runners, args)}
    if args.hlo:
        results["hlo"] = hlo_report(texts)
    if args.profile:
        profile_report(runners, args.profile_steps)
    return common.finish(results, args.json)


if __name__ == "__main__":
    main()
