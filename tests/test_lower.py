"""jaxhybrid.tools.lower: every family's train and eval steps lowered for cuda and tpu on
this CPU (tiny shapes), and the checks that refuse what would break on a device."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxhybrid.tools import data_shapes, lower
from tests.helpers import REPO

PLATFORMS = ("cuda", "tpu")
LINE = re.compile(r"^step (train|eval) \[(\w+)\] .*platforms (.*?); (\d+) devices; XLA:CPU "
                  r"per device \((?:compiled|lowered)\): FLOPs ([0-9.e+-]+), bytes accessed "
                  r"([0-9.e+-]+)")
BLOCK = "{'out_channels': 4, 'kernel_size': 3, 'stride': 2}"
TINY_HVAE = [   # tests/test_hvae.py's TINY: two stages of one 4-channel block
    f"--config.model.config_deterministic=(({BLOCK},), ({BLOCK},))",
    "--config.model.config_stochastic=({'block': 'GaussianConv2d', 'latent_features': 2},"
    " {'block': 'GaussianDense', 'latent_features': 3})",
    "--config.model.iwae_samples=4", "--config.model.score_chunk=2"]   # 2 chunks of scores
TINY = {
    "configs/dhm.py:digits": ["--config.model.width=2", "--config.model.latent=4",
                              "--config.model.head_hidden=8", "--config.model.iwae_samples=2"],
    "configs/hvae.py:digits": TINY_HVAE,
}
EVAL_OUTPUTS = {   # the HVAE's l_gt_k: its L>k and LLR>k scores
    "configs/dhm.py:digits": "outputs logits+neg_loss_sampled+neg_loss_at_mean+elbo+"
                             "log_likelihood, iwae_samples 2",
    "configs/hvae.py:digits": "outputs elbo+log_likelihood+l_gt_k, iwae_samples 4, "
                              "score_chunk 2",
}
BATCHES = ["--config.batch_size=16", "--config.eval_batch_size=16"]


def _steps(text: str) -> list[tuple]:
    """(step, dtype, platforms text, devices, flops, bytes) of each step line of ``text``."""
    return [(m[1], m[2], m[3], int(m[4]), float(m[5]), float(m[6]))
            for m in map(LINE.match, text.splitlines()) if m]


def _check_output(text: str, dtypes=("float32",)) -> None:
    steps = _steps(text)
    assert [(s[0], s[1]) for s in steps] == [(n, d) for d in dtypes for n in ("train", "eval")], \
        text
    for name, _, platforms, devices, flops, nbytes in steps:
        assert devices == 8, text
        for p in PLATFORMS:
            assert re.search(rf"\b{p} ok \(\d+ KiB StableHLO\)", platforms), (name, text)
        assert flops > 0 and nbytes > 0, (name, text)


@pytest.mark.parametrize("config", sorted(TINY))
def test_family_steps_lower_for_cuda_and_tpu(config, capsys):
    """DHM and HVAE (its eval step: the L>k scores, 4 samples in chunks of 2) in-process;
    the costs of the unoptimised HLO (compiling the DHM's step for the CPU takes 20 s)."""
    records = lower.run([f"--config={config}", "--platforms=cuda,tpu", "--devices=8",
                         "--costs=lowered", *TINY[config], *BATCHES])
    out = capsys.readouterr().out
    _check_output(out)
    train = next(r for r in records if r["step"] == "train")
    assert train["opt_state_bytes"] > train["param_bytes"] > 0     # Adam: two moments
    assert EVAL_OUTPUTS[config] in out, out    # the eval step serves every output


def test_cli_makes_its_own_devices_and_lowers_both_dtypes():
    """``python -m`` on a plain CPU (no XLA_FLAGS): the GFFN at float32 and bfloat16."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    r = subprocess.run(
        [sys.executable, "-m", "jaxhybrid.tools.lower", "--config=configs/gffn.py:smoke",
         "--platforms=cuda,tpu", "--devices=8", "--dtypes=float32,bfloat16",
         "--config.model.width=2", "--config.model.hidden=(8,)", *BATCHES],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "on 8 of 8 cpu devices" in r.stdout, r.stdout
    _check_output(r.stdout, dtypes=("float32", "bfloat16"))
    assert r.stdout.count("per device (compiled)") == 4 and "temp -" not in r.stdout, r.stdout


def _refused(fn, args, platform, *, x64=False) -> str:
    with jax.enable_x64(x64), pytest.raises(lower.LowerError) as e:
        lower.check_lowering(jax.jit(fn), args, "probe", [platform])
    return str(e.value)


def test_host_callback_and_float64_are_refused():
    x = jax.ShapeDtypeStruct((4,), jnp.float32)

    def with_callback(v):            # deep inside the step: in the body of a loop
        def body(e):
            jax.debug.callback(lambda s: None, e)
            return e * 2
        return jax.lax.map(body, v)

    msg = _refused(with_callback, (x,), "cuda")
    assert msg.startswith("step probe, platform cuda: host callback") and "debug_callback" in \
        msg, msg
    msg = _refused(lambda v: (v.astype(jnp.float64) * 2).astype(jnp.float32), (x,), "tpu",
                   x64=True)
    assert msg.startswith("step probe, platform tpu: stablehlo.convert: float64 (jit(<lambda>)"
                          "/convert_element_type at test_lower.py:"), msg
    # the same function without float64 passes
    sizes = lower.check_lowering(jax.jit(lambda v: v * 2), (x,), "probe", ["cuda", "tpu"])
    assert list(sizes) == ["cuda", "tpu"] and min(sizes.values()) > 0


def test_cpu_only_custom_calls_are_refused_for_devices():
    """A matrix inverse is lapack on the CPU (refused for cuda), cusolver for cuda (fine)."""
    a = jax.ShapeDtypeStruct((4, 4), jnp.float32)
    inv = jax.jit(jnp.linalg.inv)
    cpu_text = jax.export.export(inv, platforms=("cpu",))(a).mlir_module()
    problems = lower.stablehlo_problems(cpu_text, "cuda")
    assert problems and all("lapack_" in p and "CPU-only" in p for p in problems), problems
    assert lower.stablehlo_problems(cpu_text, "cpu") == []
    assert lower.check_lowering(inv, (a,), "probe", ["cuda"])["cuda"] > 0


@pytest.mark.parametrize("args, words", [
    (["--config.batch_size=12"], ["batch_size = 12", "8 devices"]),
    (["--config.eval_batch_size=250"], ["eval_batch_size = 250", "8 devices"]),
    (["--platforms=cuda,gpu"], ["gpu", "valid choices: cuda, rocm, tpu, cpu"]),
    (["--dtypes=float16"], ["float16", "valid choices: float32, bfloat16"]),
    (["--costs=exact"], ["exact", "valid choices: compiled, lowered"]),
    (["--config.model.widht=2"], ["model.widht", "model.width"]),
    (["--frobnicate"], ["--frobnicate", "--platforms"]),
    (["--devices=16"], ["--devices=16", "only 8"]),
    (["--config.data.source=tfds", "--config.data.name=imagenet2012"],
     ["imagenet2012", "known datasets: digits, mnist"]),
])
def test_bad_input_is_one_error_line(args, words, capsys):
    """Caught before anything is lowered: one ``error:`` line naming the thing, exit 1."""
    code = lower.main(["--config=configs/gffn.py:smoke", "--devices=8", *args])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1, err
    assert all(w in err for w in words), err


def test_force_host_devices_respects_a_given_count(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    lower.force_host_devices(["--config=x.py", "--devices", "4"])
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=4"
    assert os.environ["JAX_PLATFORMS"] == "cpu"
    lower.force_host_devices(["--devices=2"])                  # a count already set wins
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=4"


def test_an_npz_file_gives_its_shapes_from_its_headers(tmp_path):
    """An npz not in the table: image shape from the header, classes from the labels."""
    path = tmp_path / "tiles.npz"
    np.savez(path, x_train=np.zeros((5, 6, 7), np.uint8), y_train=np.array([0, 2, 1, 0, 2]),
             x_test=np.zeros((2, 6, 7), np.uint8), y_test=np.array([1, 3]))
    data = ml_collections.ConfigDict({"source": "npz", "npz_path": str(path), "name": ""})
    assert data_shapes.dataset_shape(data) == ("tiles", (6, 7, 1), 4, 5)
