"""HVAE LLR>k scoring with S importance samples: vectorised + chunked vs S sequential passes.

Run (from the repository root; the full size takes ~30 min on the 2-core CPU):

    python benchmarks/hvae_scoring.py [--examples 4] [--samples 1000] [--chunk 1,100]
        [--chunks 10,50,100,250,1000] [--repeats 3] [--json results.json]
    python benchmarks/hvae_scoring.py --examples 2 --samples 20 --chunk 1,10 \\
        --chunks 5,10,20 --repeats 2 --channels 8          # a quick check (~2 min)

The model: ``configs/hvae.py:fashion_mnist`` (L = 3 latents, 64-channel ResBlocks,
Bernoulli; ``--channels`` overrides every block's channels, for quick checks; ``--variant``
scores another variant with 3 latents, ``--smoke``: ``digits``, 4 channels, S = 4), its
variables from the family's data-dependent init on a batch of 128 (the config's batch
size; timing does not depend on training). The data: random uint8 28×28×1 images,
binarised once with a fixed seed (as evaluation does); the first ``--examples`` of them
are scored in ONE call (batch B = --examples).

Timed, interleaved (the order rotating each round), ``--repeats`` rounds after one
untimed warm-up call of each:

- vectorised c=<chunk>, for each chunk of ``--chunk``: the library's scoring,
  ``family.predict(..., ("log_likelihood", "l_gt_k"))`` with ``model.iwae_samples = S``
  and ``model.score_chunk = chunk``, jitted (lowered and compiled once): ``lax.map``
  over S/chunk chunks, each chunk's K = L passes (L, L>1, L>2) one batch of K·chunk·B
  rows, the first stage's inference once per call, log-mean-exp at the end;
- sequential: the original's method (hvae-oodd scripts/ood-llr.py): a Python loop of S
  calls of ONE jitted single-sample function that runs the K passes (skip = 0, 1, 2:
  K separate ``module.apply`` calls on the B examples) with sample s's noise (the
  library's ``posterior_noise``, so both see the same ε) and returns the log-weights
  [B, K]; then log-mean-exp over the S stacked results. Calls are dispatched
  asynchronously; the round blocks on the final result.

Printed: seconds per call, examples/s and ms per sample·example, median (min–max) over
rounds; the speed-up sequential / method per round (target ≥ 5×); max |Δ| between each
method's L and L>k and the sequential one's (same ε: float rounding only).

Memory vs chunk size, for each chunk of ``--chunks`` (samples per chunk; rows per
chunk = K·chunk·B): (1) XLA's ``compiled.memory_analysis()`` of the vectorised
predict: argument, output and temp (scratch) bytes, estimated peak = argument + output
+ temp − alias (a static buffer assignment, no run); (2) unless ``--no-rss``, the max
RSS (``getrusage``) of a fresh subprocess that builds the model, compiles, notes its
current RSS, then scores the batch once with S' = min(S, 2·chunk) samples (the buffers
of a chunk do not depend on S; the loop runs at least twice where S allows) and
reports its max RSS and that call's wall time. The subprocess is skipped when XLA's
estimate exceeds half of MemAvailable. The sequential method's single call is shown
for comparison.

Caveats: max RSS includes the Python/JAX runtime and compilation (see the "before"
column: current RSS after compiling, before scoring); XLA's estimate covers the
executable's buffers only. Timing on a shared machine: compare the per-round ratio.
On this 2-core CPU both methods are compute-bound (XLA:CPU convs at ~100 GFLOP/s
whatever the batch), so batching samples cannot buy much here; the vectorised path's
gain is a single call per batch (no per-sample dispatch), the first stage's inference
shared by all samples, and on accelerators, large batches.

Duration at the full size (B = 4, S = 1000): a call scores B·S = 4,000 sample·examples
of K = 3 passes (~3–4.5 GFLOP, ~35 ms on this CPU): ~2.5 min per call; 3 methods × (1
warm-up + 3 rounds) ≈ 28 min; then ~10 s of compilation per chunk size and the RSS
subprocesses (S' = 20 + 100 + 200 + 500 samples; chunk 1000, ~11 GiB, is skipped when
memory is short): ~3 min. ``--examples 2 --repeats 2`` takes about a third of that.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)   # measure this checkout, whatever the environment has installed
from benchmarks import common  # noqa: E402
from benchmarks.common import fmt_range, summary  # noqa: E402

FLAGS = argparse.Namespace()   # filled by parse_flags()
SMOKE = {"examples": 2, "samples": 4, "chunk": "2", "chunks": "2", "repeats": 1,
         "channels": 4, "rss": False, "variant": "digits"}
OUTPUTS = ("log_likelihood", "l_gt_k")
MB = 2.0 ** 20
INIT_BATCH = 128   # the config's batch size
K = 3              # passes per sample: L, L>1, L>2 (the config's 3 latents)


def parse_flags(argv=None) -> argparse.Namespace:
    p = common.parser(__doc__, repeats=3)
    p.add_argument("--examples", type=int, default=4, help="examples scored (one batch)")
    p.add_argument("--samples", type=int, default=1000, help="S, importance samples")
    p.add_argument("--chunk", default="1,100",
                   help="score_chunk values of the timed vectorised runs, comma-separated")
    p.add_argument("--chunks", default="10,50,100,250,1000",
                   help="score_chunk values of the memory table, comma-separated")
    p.add_argument("--channels", type=int, default=64,
                   help="out_channels of every deterministic block (64 in the config)")
    p.add_argument("--variant", default="fashion_mnist",
                   help="the configs/hvae.py variant whose model is scored (its 3 latents)")
    p.add_argument("--no-rss", "--no_rss", dest="rss", action="store_false",
                   help="skip the max-RSS subprocess per chunk size")
    p.add_argument("--rss-child", type=int, default=0, help=argparse.SUPPRESS)
    args = common.parse(p, argv, smoke=SMOKE)
    args.chunk, args.chunks = common.csv_ints(args.chunk), common.csv_ints(args.chunks)
    vars(FLAGS).update(vars(args))
    return args


# -- model, data, the two methods ------------------------------------------------------
def make_family(samples: int, chunk: int):
    """configs/hvae.py:--variant's family with S = samples, score_chunk = chunk."""
    from configs.hvae import get_config
    from jaxhybrid.families import make_family as make
    c = get_config(FLAGS.variant)
    c.model.iwae_samples, c.model.score_chunk = samples, chunk
    c.model.config_deterministic = tuple(
        tuple({**b, "out_channels": FLAGS.channels} for b in stage)
        for stage in c.model.config_deterministic)
    return make(c, 0), c


def make_batch(n: int) -> dict:
    """n random uint8 28×28×1 images in [0, 1], binarised once (a fixed seed)."""
    import jax.numpy as jnp
    import numpy as np
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 28, 28, 1)).astype(np.float32) / 255.0
    image = (rng.uniform(size=x.shape) < x).astype(np.float32)
    return {"image": jnp.asarray(image), "mask": jnp.ones((n,), bool),
            "id": jnp.arange(n, dtype=jnp.int32)}


def setup():
    """({chunk: family}, options, variables, batch, key) of the timed runs."""
    import jax
    from jaxhybrid.families import hvae as famlib
    fams = {c: make_family(FLAGS.samples, c) for c in FLAGS.chunk}
    config = fams[FLAGS.chunk[0]][1]
    variables, batch = init_variables(fams[FLAGS.chunk[0]][0])
    return ({c: f for c, (f, _) in fams.items()}, famlib.HVAEFamily.options(config),
            variables, batch, jax.random.PRNGKey(1))


def init_variables(fam) -> tuple:
    """(variables, the scored batch): the data-dependent init on a training-size batch
    (INIT_BATCH random images; on a few examples its statistics blow the bound up to
    ~1e20 nats), whose first --examples are scored."""
    import jax
    init_batch = make_batch(max(INIT_BATCH, FLAGS.examples))
    variables = jax.jit(fam.init)(jax.random.PRNGKey(0), init_batch)
    return variables, jax.tree.map(lambda a: a[:FLAGS.examples], init_batch)


def compile_vectorised(fam, variables, batch, key):
    import jax
    fn = jax.jit(lambda v, b, k: fam.predict(v, b, k, OUTPUTS))
    return fn.lower(variables, batch, key).compile()


def compile_single_sample(o, variables, batch, key):
    """(variables, image, ids, key, s) -> log-weights [B, K] of sample s: the K passes
    (skip = k) as separate applies, the library's noise for sample index s."""
    import jax
    import jax.numpy as jnp
    from jaxhybrid.families import hvae as famlib
    from jaxhybrid.objectives import elbo as obj
    module = famlib.build_module(o, batch["image"].shape[-1])
    shapes = module.latent_shapes(batch["image"].shape[1:])

    def one(v, image, ids, rng, s):
        eps = famlib.posterior_noise(rng, ids, s[None], shapes)
        cols = []
        for k in range(len(o.model["latents"])):
            out = module.apply(v, image, eps, skip=k)
            cols.append(obj.log_weights(famlib.log_px(o, out["decoded"], image),
                                        out["layers"], k)[0])
        return jnp.stack(cols, axis=-1)
    s0 = jnp.zeros((), jnp.int32)
    return jax.jit(one).lower(variables, batch["image"], batch["id"], key, s0).compile()


def run_sequential(single, variables, batch, key, samples: int):
    """S single-sample calls, then log-mean-exp: {"log_likelihood": [B], "l_gt_k": [B, K]}."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jaxhybrid.mathops import log_mean_exp
    log_w = [single(variables, batch["image"], batch["id"], key, np.int32(s))
             for s in range(samples)]
    bounds = jax.jit(log_mean_exp)(jnp.stack(log_w))
    return {"log_likelihood": bounds[:, 0], "l_gt_k": bounds}


# -- timing ----------------------------------------------------------------------------
def timed(fn) -> tuple:
    import jax
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - t0, out


def time_methods(methods: dict) -> tuple:
    """One warm-up call each, then --repeats rounds, the order rotating -> (name ->
    seconds per round, name -> the warm-up call's outputs)."""
    times = {name: [] for name in methods}
    outs = {name: timed(fn)[1] for name, fn in methods.items()}
    for name in methods:
        print(f"  warm-up {name} done")
    names = list(methods)
    for r in range(FLAGS.repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(timed(methods[name])[0])
        print(f"  round {r + 1}/{FLAGS.repeats}: " + ", ".join(
            f"{n} {times[n][-1]:.2f} s" for n in names))
    return times, outs


def report_speed(times: dict, outs: dict) -> dict:
    import numpy as np
    b = FLAGS.examples
    print(f"\n{'method':<18s} {'s/call median (min–max)':>28s} {'examples/s':>11s} "
          f"{'ms per sample·example':>22s} {'speed-up vs sequential':>26s}")
    q = np.asarray(outs["sequential"]["l_gt_k"], np.float64)
    res, diffs = {}, []
    for name, t in times.items():
        s = summary(t)
        up = summary([a / v for a, v in zip(times["sequential"], t)])
        print(f"{name:<18s} {fmt_range(s, 1, '.3f'):>28s} {b / s['median']:11.3f} "
              f"{s['median'] / (b * FLAGS.samples) * 1e3:22.4f} "
              f"{fmt_range(up, 1, '.2f'):>25s}×")
        res[name] = {"sec_per_call": s, "sec_per_call_all": t, "examples_per_s":
                     b / s["median"], "speedup_over_sequential_per_round": up}
        diffs.append(np.abs(np.asarray(outs[name]["l_gt_k"], np.float64) - q))
    diff, rel = float(np.max(diffs)), float(np.max(np.asarray(diffs) / np.abs(q)))
    print(f"(speed-up: sequential / method, per round; target ≥ 5×)\nmax |Δ| of L, L>1, "
          f"L>2 against the sequential method: {diff:.3g} nats (relative {rel:.2g}); L of "
          f"the first examples: {np.round(q[:3, 0], 2).tolist()}")
    res.update(max_abs_diff_nats=diff, max_rel_diff=rel)
    return res


# -- memory ----------------------------------------------------------------------------
def memory_of(compiled) -> dict:
    m = compiled.memory_analysis()
    out = {k: int(getattr(m, f"{k}_size_in_bytes", 0))
           for k in ("argument", "output", "temp", "alias", "generated_code")}
    out["peak_estimate"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    return out


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def rss_now() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def rss_child(chunk: int) -> None:
    """The subprocess: compile, note RSS, score once with min(S, 2·chunk) samples."""
    import jax
    fam, _ = make_family(min(FLAGS.samples, 2 * chunk), chunk)
    variables, batch = jax.block_until_ready(init_variables(fam))
    fn = compile_vectorised(fam, variables, batch, jax.random.PRNGKey(1))
    before, peak_before = rss_now(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    wall, _ = timed(lambda: fn(variables, batch, jax.random.PRNGKey(1)))
    print("RSS_CHILD " + json.dumps({
        "rss_before": before, "max_rss_before": peak_before, "wall_s": wall,
        "samples": min(FLAGS.samples, 2 * chunk),
        "max_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def run_rss_child(chunk: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--rss-child", str(chunk),
           "--examples", str(FLAGS.examples), "--samples", str(FLAGS.samples),
           "--channels", str(FLAGS.channels), "--variant", FLAGS.variant]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RSS_CHILD "):
            return json.loads(line[len("RSS_CHILD "):])
    return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1],
            "returncode": proc.returncode}


def memory_row(chunk: int, variables, batch, key, compiled=None) -> dict:
    """XLA's memory analysis of the vectorised call with ``chunk`` (``compiled``: that
    call's executable, already compiled by the timing: not compiled again)."""
    t0, reused = time.perf_counter(), compiled is not None
    if compiled is None:
        compiled = compile_vectorised(make_family(FLAGS.samples, chunk)[0], variables,
                                      batch, key)
    row = {"chunk": chunk, **memory_of(compiled)}
    row["compile_s"] = None if reused else time.perf_counter() - t0   # None: the timing's
    if FLAGS.rss and row["peak_estimate"] > mem_available() / 2:
        row["rss"] = {"skipped": "XLA's estimate exceeds half of MemAvailable"}
    elif FLAGS.rss:
        row["rss"] = run_rss_child(chunk)
    return row


def print_memory_row(label: str, rows: int, m: dict) -> None:
    rss = m.get("rss", {})
    if "max_rss" in rss:
        extra = (f"{rss['max_rss'] / MB:9.0f} {rss['rss_before'] / MB:8.0f} "
                 f"{rss['wall_s'] / (rss['samples'] * FLAGS.examples) * 1e3:10.2f}")
    else:
        extra = "  " + (rss.get("skipped") or rss.get("error") or "-")
    print(f"{label:<12s} {rows:>8d} {m['argument'] / MB:8.1f} {m['output'] / MB:7.2f} "
          f"{m['temp'] / MB:9.1f} {m['temp'] / 1024 / rows:9.1f} "
          f"{m['peak_estimate'] / MB:9.1f} {extra}")


def report_memory(rows: list, single_mem: dict) -> None:
    k, b = K, FLAGS.examples
    print(f"\nmemory vs chunk size (B = {b}, K = {k}; MiB; XLA memory_analysis of the "
          f"compiled call" + ("; max RSS of a subprocess per chunk" if FLAGS.rss else "")
          + ")")
    print(f"{'chunk':<12s} {'rows':>8s} {'args':>8s} {'output':>7s} {'temp':>9s} "
          f"{'KiB/row':>9s} {'XLA peak':>9s} {'max RSS':>9s} {'before':>8s} {'ms/(s·ex)':>10s}")
    for r in rows:
        print_memory_row(str(r["chunk"]), k * min(r["chunk"], FLAGS.samples) * b, r)
    print_memory_row("sequential", b, single_mem)
    print("(rows: samples·examples per pass batch, K passes of a chunk together; max RSS: "
          "process peak incl. runtime and compilation; before: RSS after compiling; "
          "ms/(s·ex): that subprocess's single call, no warm-up, / (its S' · B): "
          "indicative only)")


# -- main ------------------------------------------------------------------------------
def measure() -> dict:
    fams, o, variables, batch, key = setup()
    t0 = time.perf_counter()
    methods, compiled = {}, {}
    for c, fam in fams.items():
        fn = compiled[c] = compile_vectorised(fam, variables, batch, key)
        methods[f"vectorised c={c}"] = lambda fn=fn: fn(variables, batch, key)
    single = compile_single_sample(o, variables, batch, key)
    methods["sequential"] = lambda: run_sequential(single, variables, batch, key, FLAGS.samples)
    print(f"compiled {len(methods)} methods in {time.perf_counter() - t0:.1f} s")
    times, outs = time_methods(methods)
    results = {"speed": report_speed(times, outs)}
    rows = [memory_row(c, variables, batch, key, compiled.get(c)) for c in FLAGS.chunks]
    results["memory"] = {"chunks": rows, "sequential_single_call": memory_of(single)}
    report_memory(rows, results["memory"]["sequential_single_call"])
    return results


def main(argv=None) -> dict:
    parse_flags(argv)
    if FLAGS.rss_child:
        return rss_child(FLAGS.rss_child)
    machine = common.header()
    print(f"HVAE (configs/hvae.py:{FLAGS.variant}, {FLAGS.channels} channels) LLR>k scoring: "
          f"B = {FLAGS.examples} examples, S = {FLAGS.samples} samples, K = {K} passes "
          f"(L, L>1, L>2); vectorised chunks {FLAGS.chunk}; {FLAGS.repeats} rounds")
    results = {"machine": machine, "smoke": FLAGS.smoke,
               "sizes": {k: getattr(FLAGS, k) for k in
                         ("variant", "examples", "samples", "chunk", "chunks", "channels",
                          "repeats")},
               **measure()}
    return common.finish(results, FLAGS.json)


if __name__ == "__main__":
    main()
