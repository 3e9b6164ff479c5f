"""Speed of the whole-set evaluation metrics on 10^6 examples.

Run:  python benchmarks/metrics_speed.py [--n 1000000] [--repeats 7]

Times, on the same synthetic data in the same run:
- calibration_metrics on probs [N, K=10] float32 against a straightforward numpy reference
  (one boolean mask per bin);
- ood_metrics on N/2 in-distribution + N/2 OOD scores against scikit-learn
  roc_auc_score + 2 x average_precision_score (AUROC, AUPR-In, AUPR-Out).
Prints median and min-max seconds, and the ratio reference / ours (> 1: ours is faster).
Target: each of ours under 1 s on a 2-core CPU.

- FGSM throughput (examples/s) of `jaxhybrid.evaluators.adversarial.fgsm` under jax.jit on
  the thesis CNN (width 32, 2 stages, hidden 256, random init) at batch `--fgsm_batch`
  (1024), MNIST-shaped inputs 28x28x1 zero-padded to 32x32, against a plain
  forward+backward in the same run (jax.grad of the summed cross-entropy wrt the input,
  no sign, no clip). The two are timed alternately; fgsm/grad (per-repeat time ratio)
  is the attack's overhead over one gradient evaluation (~1 expected).

Sections are functions returning result rows.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)   # measure this checkout, whatever the environment has installed
from benchmarks import common  # noqa: E402
from jaxhybrid.config_defaults import base_config  # noqa: E402
from jaxhybrid.data.preprocess import pad_to_frame, to_float  # noqa: E402
from jaxhybrid.evaluators import calibration, ood  # noqa: E402
from jaxhybrid.evaluators.adversarial import fgsm  # noqa: E402
from jaxhybrid.models import build_model, network_config  # noqa: E402


def timeit(fn, repeats: int):
    """Calls fn once to warm up, then `repeats` times -> (median, min, max) seconds, result."""
    result = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return (statistics.median(times), min(times), max(times)), result


def reference_calibration(probs, labels, num_bins=15):
    """Straightforward numpy ECE: top-label, then a boolean mask per bin."""
    conf = probs.max(axis=1).astype(np.float64)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    ece = 0.0
    for m in range(num_bins):
        mask = (conf > edges[m]) & (conf <= edges[m + 1])
        if m == 0:
            mask |= conf == 0.0
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return ece


def reference_ood(score_in, score_out):
    from sklearn.metrics import average_precision_score, roc_auc_score

    s = np.concatenate([score_in, score_out])
    is_in = np.concatenate([np.ones(score_in.size, bool), np.zeros(score_out.size, bool)])
    return (roc_auc_score(is_in, s), average_precision_score(is_in, s),
            average_precision_score(~is_in, -s))


def bench_calibration(n: int, repeats: int, rng) -> list[dict]:
    logits = rng.normal(size=(n, 10)).astype(np.float32) * 3.0
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    labels = rng.integers(0, 10, n)
    t_ours, ours = timeit(lambda: calibration.calibration_metrics(probs, labels), repeats)
    t_ref, ref = timeit(lambda: reference_calibration(probs, labels), repeats)
    assert abs(ours["ece"] - ref) < 1e-9, (ours["ece"], ref)
    return [
        {"name": f"calibration_metrics  N={n} K=10", "t": t_ours, "ref_t": t_ref},
        {"name": "  reference: numpy mask per bin", "t": t_ref, "ref_t": None},
    ]


def bench_ood(n: int, repeats: int, rng) -> list[dict]:
    n_in = n // 2
    # float32 scores rounded to 3 decimals: realistic ties between and within the sets.
    score_in = np.round(rng.normal(1.0, 1.0, n_in), 3).astype(np.float32)
    score_out = np.round(rng.normal(0.0, 1.0, n - n_in), 3).astype(np.float32)
    t_ours, ours = timeit(lambda: ood.ood_metrics(score_in, score_out), repeats)
    t_ref, ref = timeit(lambda: reference_ood(score_in, score_out), repeats)
    got = (ours["auroc"], ours["aupr_in"], ours["aupr_out"])
    assert np.allclose(got, ref, rtol=0, atol=1e-10), (got, ref)
    return [
        {"name": f"ood_metrics  {n_in} in + {n - n_in} out", "t": t_ours, "ref_t": t_ref},
        {"name": "  reference: sklearn auroc + 2 x AP", "t": t_ref, "ref_t": None},
    ]


def bench_fgsm(batch: int, repeats: int, seed: int = 0) -> list[dict]:
    """FGSM (eps = 8/255) vs one input gradient of the summed CE, thesis CNN, jitted."""
    module = build_model(network_config(base_config().model), num_classes=10)  # thesis CNN
    rng = np.random.default_rng(seed)
    x = jnp.asarray(pad_to_frame(to_float(rng.integers(0, 256, (batch, 28, 28, 1),
                                                       np.uint8)), 32))
    y = jnp.asarray(rng.integers(0, 10, batch), jnp.int32)
    params = jax.jit(module.init)(jax.random.PRNGKey(seed), x[:1])["params"]

    def logits_fn(p):
        return lambda images: module.apply({"params": p}, images)

    def summed_ce(images, p, labels):  # the reference: forward + backward, nothing else
        logp = jax.nn.log_softmax(logits_fn(p)(images), axis=-1)
        return -jnp.sum(jnp.take_along_axis(logp, labels[:, None], axis=-1))

    attack = jax.jit(lambda p, images, labels, eps: fgsm(logits_fn(p), images, labels, eps))
    grad = jax.jit(jax.grad(summed_ce))
    eps = jnp.float32(8 / 255)
    run_attack = lambda: jax.block_until_ready(attack(params, x, y, eps))
    run_grad = lambda: jax.block_until_ready(grad(x, params, y))
    x_adv = run_attack()  # compile + warm up both
    run_grad()
    assert float(jnp.max(jnp.abs(x_adv - x))) <= 8 / 255 + 1e-6
    t_attack, t_grad = [], []
    for _ in range(repeats):  # alternate, so that machine noise hits both alike
        for fn, times in ((run_attack, t_attack), (run_grad, t_grad)):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    ratios = [a / g for a, g in zip(t_attack, t_grad)]
    summary = lambda v: (statistics.median(v), min(v), max(v))
    r = summary(ratios)
    shape = "x".join(str(d) for d in x.shape[1:])
    return [
        {"name": f"fgsm (jit)  thesis CNN B={batch} {shape}", "t": summary(t_attack),
         "ref_t": None, "examples": batch,
         "note": f"  fgsm/grad = {r[0]:.3f} (min {r[1]:.3f}, max {r[2]:.3f})"},
        {"name": "  reference: grad of summed CE wrt input", "t": summary(t_grad),
         "ref_t": None, "examples": batch},
    ]


def print_rows(rows: list[dict]) -> list[dict]:
    for r in rows:
        med, lo, hi = r["t"]
        ratio = f"  ref/ours = {r['ref_t'][0] / med:5.1f}x" if r["ref_t"] else ""
        if r.get("examples"):  # throughput rows: examples/s at the median, (at max, at min)
            n = r["examples"]
            ratio += f"  {n / med:8.0f} ex/s ({n / hi:.0f}–{n / lo:.0f})"
        ratio += r.get("note", "")
        print(f"{r['name']:<44s} median {med * 1e3:8.1f} ms  (min {lo * 1e3:7.1f}, max "
              f"{hi * 1e3:7.1f}){ratio}")
    return rows


def main(argv=None) -> dict:
    p = common.parser(__doc__, repeats=7)
    p.add_argument("--n", type=int, default=1_000_000, help="examples per metric")
    p.add_argument("--fgsm_batch", type=int, default=1024, help="FGSM batch size (0: skip)")
    args = common.parse(p, argv, smoke={"n": 2000, "repeats": 1, "fgsm_batch": 8})
    rng = np.random.default_rng(0)
    results = {"machine": common.header(), "smoke": args.smoke, "n": args.n}
    print(f"numpy {np.__version__}; {args.repeats} repeats after one warm-up; times in ms")
    results["calibration"] = print_rows(bench_calibration(args.n, args.repeats, rng))
    results["ood"] = print_rows(bench_ood(args.n, args.repeats, rng))
    if args.fgsm_batch > 0:
        results["fgsm"] = print_rows(bench_fgsm(args.fgsm_batch, args.repeats))
    return common.finish(results, args.json)


if __name__ == "__main__":
    main()
