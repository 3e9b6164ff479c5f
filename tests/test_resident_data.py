"""Device-resident training data (data.placement=device): the host pipeline's batches,
losses and parameters, bit for bit; the placement choice and its errors."""
import json
import logging

import jax
import numpy as np
import pytest

from jaxhybrid.checkpointing import run_path
from jaxhybrid.data.loading import digits_arrays
from jaxhybrid.data.pipeline import Preprocess, TrainBatches
from jaxhybrid.data.resident import (CPU_RESIDENT_LIMIT_BYTES, DeviceTrainBatches,
                                     choose_placement, device_budget, resident_bytes)
from jaxhybrid.data.sources import ArraySource
from jaxhybrid.parallel import make_mesh, to_host
from jaxhybrid.train import train_and_evaluate
from tests.helpers import restore_params, run_cli, tiny_config


def _assert_same_batches(host: TrainBatches, device: DeviceTrainBatches, steps) -> None:
    for s in steps:
        a, b = host.batch(s), device.batch(s)
        assert sorted(a) == sorted(b), s
        for k in a:
            assert a[k].sharding == b[k].sharding, (s, k)
            x, y = to_host(a[k]), to_host(b[k])
            assert x.dtype == y.dtype and x.shape == y.shape, (s, k)
            np.testing.assert_array_equal(x, y, err_msg=f"step {s} key {k}")


def _pair(source, batch_size: int, mesh, frame=None, **kw):
    kw = dict(seed=5, mesh=mesh, preprocess=Preprocess(frame=frame), **kw)
    return TrainBatches(source, batch_size, **kw), DeviceTrainBatches(source, batch_size, **kw)


@pytest.mark.parametrize("devices", [1, 8])
def test_digits_batches_are_bit_identical(devices):
    """Labelled (framed 8x8 -> 11x11, an odd margin) and unlabelled, padded last batch
    and drop_remainder, across the epoch boundary."""
    mesh = make_mesh(devices)
    x, y = digits_arrays()["train"]
    host, dev = _pair(ArraySource(x, y), 64, mesh, frame=(11, 11))
    n = host.steps_per_epoch
    assert n == -(-len(x) // 64) and len(x) % 64       # a padded last batch exists
    _assert_same_batches(host, dev, [0, n - 1, n, 2 * n - 1])
    last = to_host(dev.batch(n - 1)["id"])
    assert (last == -1).sum() == 64 * n - len(x)          # padding rows: id -1 ...
    assert not to_host(dev.batch(n - 1)["mask"])[last == -1].any()    # ... masked out
    framed = np.pad(x[host.global_indices(0)], ((0, 0), (1, 2), (1, 2), (0, 0)))
    np.testing.assert_array_equal(                     # the image: to_float's formula
        to_host(dev.batch(0)["image"]), framed.astype(np.float32) * np.float32(1 / 255))
    host, dev = _pair(ArraySource(x), 64, mesh, drop_remainder=True)
    assert "label" not in dev.batch(0) and host.steps_per_epoch == len(x) // 64
    _assert_same_batches(host, dev, [host.steps_per_epoch - 1, host.steps_per_epoch])


@pytest.mark.parametrize("devices", [1, 8])
def test_mnist_sized_batches_are_bit_identical(devices):
    """60000 x 28x28 uint8 framed to 32x32, batch 1024: the last (padded) batch of
    epoch 0, the first of epoch 1, and drop_remainder's last full batch."""
    rng = np.random.default_rng(0)
    source = ArraySource(rng.integers(0, 256, (60000, 28, 28, 1), dtype=np.uint8),
                         rng.integers(0, 10, 60000))
    mesh = make_mesh(devices)
    host, dev = _pair(source, 1024, mesh, frame=(32, 32))
    assert host.steps_per_epoch == 59
    _assert_same_batches(host, dev, [58, 59])
    assert dev.resident["image"].shape == (60000, 32, 32, 1)
    assert dev.resident["image"].dtype == np.uint8
    host, dev = _pair(source, 1024, mesh, frame=(32, 32), drop_remainder=True)
    _assert_same_batches(host, dev, [57, 58])


def test_placement_choice_and_budget():
    gib = 2**30
    gpu = [{"bytes_limit": 80 * gib, "bytes_in_use": 2 * gib},
           {"bytes_limit": 80 * gib, "bytes_in_use": 6 * gib}]
    budget, how = device_budget(gpu, fraction=0.25)
    assert budget == int(74 * gib * 0.25) and "memory stats" in how      # the fullest device
    budget, how = device_budget([None] * 8)
    assert budget == CPU_RESIDENT_LIMIT_BYTES // 8 and "no memory stats" in how
    # MNIST's 54,000 training examples framed to 32x32, with labels
    mnist = ArraySource(np.zeros((54000, 28, 28, 1), np.uint8), np.zeros(54000, np.int32))
    need = resident_bytes(mnist, Preprocess(frame=(32, 32)))
    assert need == 54000 * (32 * 32 + 4)
    assert choose_placement("auto", need, need, "b")[0] == "device"
    place, why = choose_placement("auto", need, need - 1, "b")
    assert place == "host" and "does not fit" in why
    assert choose_placement("host", 1, 10, "b")[0] == "host"
    assert choose_placement("device", need, need, "b")[0] == "device"
    with pytest.raises(ValueError, match=r"data.placement = 'device': the training split does "
                                         r"not fit: 52.9 MiB per device.*data.placement=host"):
        choose_placement("device", need, need // 2, "b")
    with pytest.raises(ValueError, match="does not fit on another process"):
        choose_placement("device", 1, 10, "b", fits_everywhere=False)
    assert choose_placement("auto", 1, 10, "b", fits_everywhere=False)[0] == "host"
    with pytest.raises(ValueError, match=r"data.placement = 'gpu': must be one of auto, host, "
                                         r"device"):
        choose_placement("gpu", 1, 10, "b")


def _losses(workdir) -> list[tuple[int, float]]:
    lines = (run_path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines) if r["kind"] == "train"]


def test_training_is_bit_identical_in_both_placements_and_after_resume(tmp_path, caplog):
    """Two epochs of digits on 8 devices with random crops and flips: host, and device
    interrupted mid-epoch-2 (by num_steps) then resumed, give the same losses and final
    parameters, bit for bit."""
    small = {"model.width": 4, "model.hidden": (16,), "log_every": 2, "num_steps": 32,
             "data.train_transforms": "crop,flip"}    # keyed by the batch's ids
    host = tiny_config(**small, **{"data.placement": "host"})
    with caplog.at_level(logging.INFO, logger="jaxhybrid"):
        train_and_evaluate(host, str(tmp_path / "host"))
        assert "data placement: host (data.placement=host" in caplog.text
        train_and_evaluate(tiny_config(**{**small, "num_steps": 20}, **{"data.placement":
                                                                         "device"}),
                           str(tmp_path / "device"))
        assert "data placement: device (data.placement=device" in caplog.text
    device = tiny_config(**small, **{"data.placement": "device"})
    train_and_evaluate(device, str(tmp_path / "device"),       # resumes from step 20
                       allow_config_change=True)                  # num_steps 20 -> 32
    assert len(_losses(tmp_path / "host")) == 16
    assert _losses(tmp_path / "device") == _losses(tmp_path / "host")
    step_h, params_h = restore_params(host, str(tmp_path / "host"))
    step_d, params_d = restore_params(device, str(tmp_path / "device"))
    assert step_h == step_d == 32
    for a, b in zip(jax.tree.leaves(params_h), jax.tree.leaves(params_d), strict=True):
        np.testing.assert_array_equal(a, b)


def test_unknown_placement_is_a_cli_error_before_any_write(tmp_path):
    wd = tmp_path / "run"
    r = run_cli(["--config=configs/gffn.py:smoke", f"--workdir={wd}",
                 "--config.data.placement=gpu"], timeout=600)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "error: ValueError: config field data.placement = 'gpu': must be one of auto, " \
           "host, device" in r.stderr
    assert not wd.exists()
