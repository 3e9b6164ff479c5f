"""TensorBoard event files (jaxhybrid/tblog.py): read back with TensorBoard's own reader,
they hold exactly metrics.jsonl's records, also across resumes; none are written when
``tensorboard=False``."""
from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from jaxhybrid.train import train_and_evaluate
from tests.helpers import tiny_config


def _event_files(run_dir) -> list[str]:
    return sorted(f for f in os.listdir(run_dir) if "tfevents" in f)


def _jsonl_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    """{"<kind>/<field>": [(step, value), ...]}, computed here from metrics.jsonl."""
    out: dict = {}
    for line in open(os.path.join(run_dir, "metrics.jsonl")):
        r = json.loads(line)
        for k, v in r.items():
            if k in ("kind", "step") or isinstance(v, (str, bool)):
                continue
            out.setdefault(f"{r.get('kind', 'train')}/{k}", []).append((r["step"], v))
    return out


def _tb_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})   # 0: keep every event
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def assert_tb_matches_jsonl(run_dir) -> dict:
    """Every (tag, step, value) of the event files is one of metrics.jsonl, and back;
    values equal as float32 (TensorBoard's simple_value), NaN where the record has NaN."""
    want, got = _jsonl_scalars(run_dir), _tb_scalars(run_dir)
    assert sorted(got) == sorted(want)
    for tag, points in want.items():
        assert [s for s, _ in got[tag]] == [s for s, _ in points], tag   # each step once
        for (_, v_tb), (_, v) in zip(got[tag], points):
            expected = float(np.float32(v))
            assert (math.isnan(v_tb) and math.isnan(expected)) or v_tb == expected, (tag, v_tb, v)
    return got


def test_event_files_equal_metrics_jsonl_across_resumes_and_off_writes_none(tmp_path):
    """Segment 1 trains with tensorboard off (no event file), to step 4. Its checkpoint 4
    is then removed (a crash after step 4 was logged): segment 2 resumes at step 2 with
    tensorboard on, to step 6; the event file is rebuilt from metrics.jsonl, so the
    first segment's history is in it and the repeated steps 3-4 and the first final
    record are not. Segment 3 does the same from step 4 with the event file present."""
    wd = str(tmp_path / "run")
    overrides = dict(checkpoint_every=2, log_every=1, keep_checkpoints=3)
    first = train_and_evaluate(tiny_config(num_steps=4, tensorboard=False, **overrides), wd)
    assert first["step"] == 4 and _event_files(wd) == []

    for removed, total in ((4, 6), (6, 6)):
        shutil.rmtree(os.path.join(wd, "checkpoints", str(removed)))
        final = train_and_evaluate(tiny_config(num_steps=total, **overrides), wd,
                                   allow_config_change=True)      # a budget change
        assert final["step"] == 6
        assert len(_event_files(wd)) == 1
        got = assert_tb_matches_jsonl(wd)
        assert [s for s, _ in got["train/loss"]] == [1, 2, 3, 4, 5, 6]
        assert [s for s, _ in got["validation/val_accuracy"]] == [2, 4, 6]
        assert got["final/accuracy"] == [(6, float(np.float32(final["accuracy"])))]
