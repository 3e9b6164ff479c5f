"""Lower a config's train and eval steps for accelerators this machine does not have.

::

    python -m jaxhybrid.tools.lower --config=configs/dhm.py:cifar10 --platforms=cuda,tpu \\
        --devices=8 [--dtypes=float32,bfloat16] [--config.KEY=VALUE ...]

For each compute dtype (``--dtypes``, default the config's ``compute_dtype``) it builds
what training builds, from ABSTRACT inputs only (``jax.ShapeDtypeStruct`` with the
mesh's shardings; nothing is allocated at the config's size):

- ``train``: the trainer's own jitted step (:func:`jaxhybrid.train.make_train_step`, its
  optimiser, schedule and skip rule), on the abstract state
  (:func:`jaxhybrid.experiment.abstract_state`) and a ``data``-sharded global batch;
- ``eval``: the evaluation engine's step (:class:`jaxhybrid.predictor.Predictor`) for
  EVERY output the family serves (the HVAE's ``l_gt_k``, i.e. its L>k / LLR>k scores,
  with its ``model.iwae_samples`` and ``model.score_chunk``), on an eval batch.

Each step is exported with ``jax.export`` for every platform of ``--platforms`` and
refused, as one ``error: step S, platform P: ...`` line naming the offending op, when it
would break there: a host callback (a ``*callback`` primitive in the jaxpr, or a
``*callback`` custom call in the StableHLO), float64 anywhere in the StableHLO, or a
custom call that only exists on the CPU (``lapack_*``, ``ducc_*``, ``cpu_*``). A global
batch that the devices do not divide is the trainer's own error. Then it prints, per
step, the platforms, the devices, XLA's FLOPs and bytes accessed and the temporary
memory of the same jitted step compiled for THIS machine's CPU devices (the per-device
program of the SPMD partitioning; an estimate of the work, not a device timing; a
loop's body, e.g. the HVAE's score chunks, counted as XLA counts it), and the bytes of
the parameters and of the optimiser state. ``--costs=lowered`` takes the cost analysis
of the unoptimised HLO instead (no compilation: seconds at any size; no temp memory).

No data are read. The image shape and the number of classes come from
:data:`jaxhybrid.tools.data_shapes.KNOWN_DATASETS` (keyed by TFDS name, npz file name or ``digits``); an npz file
not in the table is read only for its arrays' headers and its labels. The experiment is
:func:`jaxhybrid.experiment.build_experiment` itself (every config check, the mesh, the
batch checks, the family) with empty splits of those shapes instead of the data
(:func:`jaxhybrid.tools.data_shapes.shape_splits`), so it follows whatever training builds. ``evals.ood_sets`` is
emptied: those data are scored by the same eval step, and would be looked for on disk.
The steps per epoch (they only set the schedule's constants) come from the table's
training-set size.

Run as a module, it makes ``--devices`` CPU devices itself (``XLA_FLAGS=
--xla_force_host_platform_device_count=N`` and ``JAX_PLATFORMS=cpu``, unless already
set) before JAX starts, so it runs on any CPU machine.
"""
from __future__ import annotations

import os
import re
import sys


def force_host_devices(argv) -> None:
    """Give the CPU backend ``--devices=N`` devices (before JAX starts): XLA_FLAGS gets
    ``--xla_force_host_platform_device_count=N`` unless it sets a device count already,
    and JAX_PLATFORMS defaults to cpu."""
    n = None
    for i, a in enumerate(argv):
        m = re.match(r"^--devices(?:=(.*))?$", a)
        if m:
            n = m.group(1) if m.group(1) is not None else (argv[i + 1] if i + 1 < len(argv)
                                                           else None)
    flags_ = os.environ.get("XLA_FLAGS", "")
    if n and n.isdigit() and int(n) > 0 and "xla_force_host_platform_device_count" not in flags_:
        os.environ["XLA_FLAGS"] = f"{flags_} --xla_force_host_platform_device_count={n}".strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


if __name__ == "__main__":     # before jax is imported by anything below
    force_host_devices(sys.argv[1:])

import argparse  # noqa: E402
import dataclasses  # noqa: E402
from typing import Callable  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxhybrid import experiment, parallel, precision  # noqa: E402
from jaxhybrid.optim import make_optimizer, make_schedule  # noqa: E402
from jaxhybrid.predictor import Predictor  # noqa: E402
from jaxhybrid.tools.data_shapes import shape_experiment, steps_per_epoch  # noqa: E402
from jaxhybrid.tools.configfile import call_with_variant, load_config_module, \
    split_config_arg  # noqa: E402
from jaxhybrid.tools.overrides import apply_overrides, copy_config  # noqa: E402
from jaxhybrid.train import make_train_step, skip_rule, training_plan  # noqa: E402

PLATFORMS = ("cuda", "rocm", "tpu", "cpu")
# config fields set for lowering: the OOD sets (data files, checked by build_experiment)
# are scored by the same eval step as the test split, so they are not needed here
NOT_LOWERED = {"evals.ood_sets": ""}
CPU_ONLY_TARGETS = ("lapack_", "ducc_", "cpu_", "xla_python_cpu", "xla_ffi_python_cpu")


class LowerError(ValueError):
    """A step that would not run on a target platform (or could not be lowered for it)."""


# ---------------------------------------------------------------- the steps

@dataclasses.dataclass
class Step:
    name: str
    fn: Callable                 # the jitted step
    args: tuple                  # its abstract arguments
    param_bytes: int
    opt_bytes: int | None        # None: the step has no optimiser state
    detail: str = ""


def tree_bytes(tree) -> int:
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
               for x in jax.tree.leaves(tree))


def sharded_batch(exp, global_batch: int) -> dict:
    """The abstract global batch of ``global_batch`` rows, split over the mesh's ``data``."""
    sharding = parallel.data_sharded(exp.mesh)
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding)
            for k, v in experiment.batch_spec(exp, global_batch).items()}


def train_step(exp) -> Step:
    """The trainer's step (its optimiser, schedule and skip rule) on abstract inputs."""
    config, spe = exp.config, steps_per_epoch(exp.config)
    plan = training_plan(config, spe)
    schedule = make_schedule(config.optimizer, config.batch_size, plan["total_steps"], spe)
    optimizer = make_optimizer(config.optimizer, schedule)
    fn = make_train_step(exp, optimizer, schedule, spe, skip=skip_rule(config.optimizer))
    state = experiment.abstract_state(exp, optimizer, config.seed)
    return Step("train", fn, (state, sharded_batch(exp, config.batch_size)),
                tree_bytes(state["params"]), tree_bytes(state["opt_state"]),
                f"batch {config.batch_size}")


def eval_step(exp) -> Step:
    """The Predictor's step for every output the family serves, on abstract inputs."""
    names = tuple(exp.family.outputs)
    fn = Predictor(exp)._predict_fn(names)  # noqa: SLF001 - the engine's own jitted step
    model = experiment.abstract_model(exp)
    variables = {"params": model["params"], **model["model_state"]}
    sampling = [f"{k} {exp.config.model[k]}" for k in ("iwae_samples", "score_chunk")
                if k in exp.config.model]
    detail = ", ".join([f"batch {exp.config.eval_batch_size}", "outputs " + "+".join(names),
                        *sampling])
    return Step("eval", fn, (variables, sharded_batch(exp, exp.config.eval_batch_size)),
                tree_bytes(model["params"]), None, detail)


# ---------------------------------------------------------------- the checks

def _eqns(jaxpr):
    """Every equation of ``jaxpr`` and of the jaxprs inside it (shard_map, scan, cond...)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for p in eqn.params.values():
            for sub in (p if isinstance(p, (tuple, list)) else (p,)):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _eqns(inner)


def host_callbacks(fn, args) -> list[str]:
    """The callback primitives (debug_callback, pure_callback, io_callback) of ``fn``."""
    names = {e.primitive.name for e in _eqns(fn.trace(*args).jaxpr.jaxpr)}
    return sorted(n for n in names if "callback" in n)


def _locations(text: str) -> Callable[[str], str]:
    """line -> where its op comes from, from the module's location table: the op's JAX
    name and the first source position behind it (``jit(step)/mul at train.py:97``)."""
    table = dict(re.findall(r"^#(loc\d*) = loc\((.*)\)$", text, re.M))

    def source(ref: str, depth: int = 0) -> str:
        body = table.get(ref, "")
        found = next((m for m in re.finditer(r'"([^"]+\.py)":(\d+)', body)
                      if os.path.basename(m[1]) != os.path.basename(__file__)), None)
        if found or depth > 20:
            return f"{os.path.basename(found[1])}:{found[2]}" if found else ""
        return next((s for r in re.findall(r"#(loc\d*)", body) if (s := source(r, depth + 1))),
                    "")

    def where(line: str) -> str:
        ref = re.search(r"loc\(#(loc\d*)\)\s*$", line)
        if not ref:
            return ""
        name = re.match(r'"([^"]*)"', table.get(ref[1], ""))
        return " ".join(filter(None, [name and name[1], source(ref[1]) and f"at {source(ref[1])}"]))
    return where


def _op(line: str) -> str:
    m = re.search(r"(stablehlo|mhlo|func|sdy|chlo)\.[\w.]+", line)
    return m.group(0) if m else line.strip()[:60]


def stablehlo_problems(text: str, platform: str) -> list[str]:
    """What in a step's StableHLO would break on ``platform``: host-callback custom calls,
    float64 values, CPU-only custom calls (none of these for ``cpu``). One line each,
    naming the op and where it comes from."""
    out, where = [], _locations(text)
    for line in text.splitlines():
        target = re.search(r"custom_call\s*@([\w.$-]+)|call_target_name\s*=\s*\"([^\"]+)\"",
                           line)
        name = target and (target.group(1) or target.group(2))
        if name and "callback" in name:
            why = f"custom_call @{name}: a host callback"
        elif name and platform != "cpu" and name.startswith(CPU_ONLY_TARGETS):
            why = f"custom_call @{name}: a CPU-only custom call"
        elif re.search(r"[<x]f64\b", line):
            why = f"{_op(line)}: float64"
        else:
            continue
        out.append(f"{why} ({where(line)})" if where(line) else why)
    # an op named by its primitive (jit(step)/mul) first: it says more than jit(step)
    return sorted(dict.fromkeys(out), key=lambda p: "/" not in p)


def check_lowering(fn, args, step: str, platforms) -> dict[str, int]:
    """Export jitted ``fn`` on abstract ``args`` for each of ``platforms``; LowerError
    (naming the step, the platform and the op) for the first thing that would break
    there. Returns {platform: characters of its StableHLO}."""
    callbacks = host_callbacks(fn, args)
    if callbacks:
        raise LowerError(f"step {step}, platform {platforms[0]}: host callback(s) "
                         f"{', '.join(callbacks)} inside the step (a round trip to Python on "
                         f"every call; remove them)")
    sizes = {}
    for platform in platforms:
        where = f"step {step}, platform {platform}"
        try:
            text = jax.export.export(fn, platforms=(platform,))(*args).mlir_module()
        except Exception as e:  # noqa: BLE001 - any lowering failure is the step's verdict
            first = (str(e).strip().splitlines() or [""])[0]
            raise LowerError(f"{where}: lowering failed: {type(e).__name__}: {first}") from e
        problems = stablehlo_problems(text, platform)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise LowerError(f"{where}: {problems[0]}{more}")
        sizes[platform] = len(text)
    return sizes


COSTS = ("compiled", "lowered")


def _first(cost) -> dict:
    """cost_analysis() is a dict, or a list of one dict, depending on the JAX version."""
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return dict(cost or {})


def cpu_costs(fn, args, how: str = "compiled") -> dict:
    """FLOPs, bytes accessed and temp bytes of ``fn`` for this machine's CPU devices:
    ``compiled``, XLA's analysis of the optimised per-device program (and its memory
    analysis); ``lowered``, of the unoptimised HLO (far faster; no memory figure)."""
    lowered = fn.lower(*args)
    if how == "lowered":
        cost, memory = _first(lowered.cost_analysis()), None
    else:
        compiled = lowered.compile()
        cost = _first(compiled.cost_analysis())
        try:
            memory = compiled.memory_analysis()
        except Exception:  # noqa: BLE001 - not every backend reports it
            memory = None
    return {"flops": float(cost.get("flops", 0.0)),
            "bytes_accessed": float(cost.get("bytes accessed", 0.0)),
            "temp_bytes": getattr(memory, "temp_size_in_bytes", None), "costs": how}


# ---------------------------------------------------------------- the command

def _size(n) -> str:
    """Bytes, readably: 512 B, 3.2 KiB, 120.4 MiB, 1.66 GiB; '-' for None."""
    if n is None:
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.{2 if unit == 'GiB' else 1}f} {unit}"
    return f"{int(n)} B"


def report_line(step: Step, dtype: str, platforms: dict, devices: int, costs: dict) -> str:
    lowered = ", ".join(f"{p} ok ({n / 1024:.0f} KiB StableHLO)" for p, n in platforms.items())
    return (f"step {step.name} [{dtype}] ({step.detail}): platforms {lowered}; {devices} "
            f"devices; XLA:CPU per device ({costs['costs']}): FLOPs {costs['flops']:.4g}, "
            f"bytes accessed {costs['bytes_accessed']:.4g}, temp {_size(costs['temp_bytes'])}; "
            f"params {_size(step.param_bytes)}, optimizer state {_size(step.opt_bytes)}")


def lower_config(config, platforms, devices: int, dtype: str, costs: str = "compiled",
                 out=print) -> list[dict]:
    """Lower and check ``config``'s train and eval steps at ``dtype``; print a line per
    step and return its record."""
    config = apply_overrides(copy_config(config), {**NOT_LOWERED, "compute_dtype": dtype,
                                                   "num_devices": str(devices)})
    exp = shape_experiment(config)
    n_dev = exp.mesh.devices.size
    records = []
    for step in (train_step(exp), eval_step(exp)):
        sizes = check_lowering(step.fn, step.args, step.name, platforms)
        cost = cpu_costs(step.fn, step.args, costs)
        out(report_line(step, dtype, sizes, n_dev, cost))
        records.append({"step": step.name, "dtype": dtype, "platforms": list(sizes),
                        "devices": n_dev, **cost, "param_bytes": step.param_bytes,
                        "opt_state_bytes": step.opt_bytes})
    return records


class _Parser(argparse.ArgumentParser):
    def error(self, message):          # one error line, not usage + exit 2
        raise ValueError(f"{message} (usage: {self.format_usage().strip()})")


def parse_args(argv):
    """(args, {config key: value}) from ``argv``; bad flags raise ValueError."""
    p = _Parser(prog="python -m jaxhybrid.tools.lower", allow_abbrev=False,
                description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="FILE.py[:VARIANT]")
    p.add_argument("--platforms", default="cuda,tpu", help=f"of {', '.join(PLATFORMS)}")
    p.add_argument("--devices", type=int, default=0, help="devices of the mesh (0: all)")
    p.add_argument("--dtypes", default="", help="compute dtypes (default: the config's)")
    p.add_argument("--costs", default="compiled", help=f"of {', '.join(COSTS)}: XLA's cost "
                   f"analysis of the CPU-compiled step (with its temp memory), or of the "
                   f"unoptimised HLO (no compilation: seconds for any size)")
    args, rest = p.parse_known_args(argv)
    overrides = {}
    for a in rest:
        m = re.match(r"^--config\.([^=]+)=(.*)$", a)
        if not m:
            raise ValueError(f"unknown argument {a!r}; valid: --config, --platforms, "
                             f"--devices, --dtypes, --costs, --config.KEY=VALUE")
        overrides[m.group(1)] = m.group(2)
    return args, overrides


def _choices(text: str, valid, flag: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in valid]
    if bad or not names:
        raise ValueError(f"{flag}={text!r}: {', '.join(bad) or 'none given'}; valid "
                         f"choices: {', '.join(valid)}")
    return list(dict.fromkeys(names))


def run(argv) -> list[dict]:
    """Parse ``argv``, build the config, lower it for every dtype; the records."""
    args, overrides = parse_args(argv)
    platforms = _choices(args.platforms, PLATFORMS, "--platforms")
    costs = _choices(args.costs, COSTS, "--costs")[0]
    if args.devices < 0:
        raise ValueError(f"--devices={args.devices}: give a count >= 1 (0: all devices)")
    if args.devices > jax.device_count():
        raise ValueError(f"--devices={args.devices}: only {jax.device_count()} "
                         f"{jax.default_backend()} devices exist (XLA_FLAGS="
                         f"{os.environ.get('XLA_FLAGS', '')!r}); unset XLA_FLAGS and run "
                         f"python -m jaxhybrid.tools.lower, which makes the devices itself")
    path, variant = split_config_arg(args.config)
    config = call_with_variant(load_config_module(path).get_config, variant)
    config = apply_overrides(config, overrides)
    dtypes = _choices(args.dtypes or precision.check_compute_dtype(config.compute_dtype),
                      tuple(precision.COMPUTE_DTYPES), "--dtypes")
    print(f"lowering {args.config} (family {config.family}) for {', '.join(platforms)} on "
          f"{args.devices or jax.device_count()} of {jax.device_count()} "
          f"{jax.default_backend()} devices; abstract inputs, no data read")
    return [r for d in dtypes for r in lower_config(config, platforms, args.devices, d, costs)]


def main(argv=None) -> int:
    """The command: 0, or 1 with one ``error: ...`` line (traceback: JAXHYBRID_DEBUG=1)."""
    try:
        run(sys.argv[1:] if argv is None else argv)
    except (ValueError, OSError, KeyError) as e:
        if os.environ.get("JAXHYBRID_DEBUG"):
            raise
        print(f"error: {type(e).__name__}: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
