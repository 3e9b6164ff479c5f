"""jaxhybrid.tools.compare over run directories written by hand in both layouts (eval/<step>/
and eval/<step>/<eval_id>/): which evaluation each column is, ε rows matched exactly, one
row per score definition, why a number is missing, md/csv/json, errors instead of
tracebacks, and gs:// run directories through etils.epath (mocked onto a local folder)."""
import csv
import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from etils import epath
from etils.epath import testing as epath_testing

from configs import gffn
from jaxhybrid.checkpointing import run_path
from jaxhybrid.evaluators import suite
from jaxhybrid.evaluators.calibration import calibration_metrics
from jaxhybrid.tools import aggregate, compare, grid, identity, runs
from tests.helpers import REPO

MAX_SOFTMAX = "max_y p(y|x), the classifier's confidence"
_rng = np.random.default_rng(0)
CALIBRATION = calibration_metrics(_rng.dirichlet(np.ones(4), size=100), _rng.integers(0, 4, 100),
                                  num_bins=15)
LOG_Z = "log Z(x) = logsumexp_y f_y(x), the classifier's unnormalised log-density"
DHM_LOG_PX = "-(reconstruction + c·KL(q(z|x) || p(z))): the β-VAE's bound on log p(x), c = 1"


def _metrics(accuracy, *, eps=(0.0, 8 / 255), adv=(0.98, 0.6), log_px=0.984,
             temperature=None, family=None, definitions=None):
    """A metrics.json as the evaluators write it (the parts the tables read)."""
    m = {"classification": {"accuracy": accuracy, "nll": 0.2, "brier": 0.05},
         "calibration": {"equal_width": CALIBRATION},
         "temperature": temperature if temperature is not None
         else {"identifiable": True, "temperature": 1.3, "ece_after": 0.02, "nll_after": 0.19},
         "ood": {"sets": {"heldout": {"scores": {"max_softmax": {"auroc": 0.81},
                                                 "log_px": {"auroc": log_px}}}}},
         "adversarial": {"attack": "fgsm", "epsilons": list(eps), "accuracy": list(adv)}}
    if temperature == "absent":
        del m["temperature"]
    if family:
        m["family"] = family
    if definitions:
        m["definitions"] = definitions
    return m


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _run(root, name, evals: dict, *, selected, layout="new", family="classifier"):
    """A run directory: ``evals`` {step or (step, eval_id): metrics}; final_metrics.json
    names ``selected`` as the trainer does in ``layout`` (None: an unfinished run)."""
    d = root / name
    for where, m in evals.items():
        step, eval_id = where if isinstance(where, tuple) else (where, "1a2b3c4d")
        sub = d / "eval" / str(step) / (eval_id if layout == "new" else "")
        _write(sub / "metrics.json", {"step": step, **m})
    _write(d / "config.json", {"family": family, "seed": 0})
    if selected is not None:
        step, eval_id = selected if isinstance(selected, tuple) else (selected, "1a2b3c4d")
        eval_dir = f"eval/{step}/{eval_id}" if layout == "new" \
            else f"/somewhere/else/{name}/eval/{step}"          # absolute, and moved since
        _write(d / "final_metrics.json", {"step": 480, "evaluated_step": step,
                                          "eval_dir": eval_dir, "checkpoint": "best"})
    return str(d)


def _rows(text_md: str) -> dict[str, list[str]]:
    """{row title: cells} of the markdown table."""
    out = {}
    for line in text_md.splitlines():
        if line.startswith("| ") and not line.startswith("| metric"):
            cells = [c.strip().replace("\\|", "|")
                     for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
            out[re.sub(r"( \[\d+\])+$", "", cells[0])] = cells[1:]    # without note marks
    return out


@pytest.mark.parametrize("layout", ["new", "old"])
def test_each_column_is_the_evaluation_final_metrics_names(tmp_path, layout):
    d = _run(tmp_path, "ffn", {100: _metrics(0.5), 208: _metrics(0.9), 480: _metrics(0.7)},
             selected=208, layout=layout)
    md = compare.compare([d], ["FFN"])
    label = "step 208, eval 1a2b3c4d" if layout == "new" else "step 208"
    assert f"| metric | FFN ({label}) |" in md
    assert _rows(md)["accuracy"] == ["0.9000"]
    assert "the run's selected checkpoint, as final_metrics.json names it" in md
    latest = compare.compare([d], ["FFN"], checkpoint="latest")
    assert _rows(latest)["accuracy"] == ["0.7000"] and "FFN (step 480" in latest
    assert _rows(compare.compare([d], ["FFN"], checkpoint="100"))["accuracy"] == ["0.5000"]
    with pytest.raises(ValueError, match="no evaluation at step 300; evaluated steps: 100, 208, "
                                         "480"):
        compare.compare([d], checkpoint="300")
    with pytest.raises(ValueError, match="valid choices: best, latest or a step number"):
        compare.compare([d], checkpoint="newest")


def test_several_evaluations_at_one_step_need_an_eval_id(tmp_path):
    d = _run(tmp_path, "hvae", {(208, "1a2b3c4d"): _metrics(0.9),
                                (208, "ffff0000"): _metrics(0.8)}, selected=(208, "1a2b3c4d"))
    assert _rows(compare.compare([d]))["accuracy"] == ["0.9000"]      # the named one
    with pytest.raises(ValueError, match=r"step 208 has 2 evaluations \(eval/208/1a2b3c4d, "
                                         r"eval/208/ffff0000\); choose one with --eval_id"):
        compare.compare([d], checkpoint="208")
    md = compare.compare([d], checkpoint="208", eval_id="ffff0000")
    assert _rows(md)["accuracy"] == ["0.8000"] and "step 208, eval ffff0000" in md
    # an unfinished run (no final_metrics.json) has no selected evaluation: say what to do
    u = _run(tmp_path, "unfinished", {40: _metrics(0.6)}, selected=None)
    with pytest.raises(FileNotFoundError, match="no final_metrics.json.*--checkpoint latest"):
        compare.compare([u])
    assert _rows(compare.compare([u], checkpoint="latest"))["accuracy"] == ["0.6000"]


def test_epsilon_rows_match_exactly_and_one_sided_values_get_their_own_rows(tmp_path):
    ffn = _run(tmp_path, "ffn", {208: _metrics(0.9, eps=(0.0, 8 / 255), adv=(0.98, 0.6))},
               selected=208)
    dhm = _run(tmp_path, "dhm", {336: _metrics(0.95, eps=(0.0, 0.03), adv=(0.97, 0.9414))},
               selected=336, family="dhm")
    rows = _rows(compare.compare([ffn, dhm], ["FFN", "DHM"]))
    assert rows["FGSM acc ε=0"] == ["0.9800", "0.9700"]
    assert rows["FGSM acc ε=0.03137 (8/255)"] == ["0.6000", "–"]
    assert rows["FGSM acc ε=0.03"] == ["–", "0.9414"]
    assert identity.epsilon_text(8 / 255) == "0.03137 (8/255)"
    assert identity.epsilon_text(0.0314) == "0.0314" and identity.epsilon_text(0.03) == "0.03"
    # two ε that read the same to 4 digits are still two rows, told apart by the exact ε
    close = _run(tmp_path, "close", {9: _metrics(0.9, eps=(0.1, 0.10000001), adv=(0.5, 0.4))},
                 selected=9)
    rows = _rows(compare.compare([close]))
    assert rows["FGSM acc ε=0.1 [ε = 0.1]"] == ["0.5000"]
    assert rows["FGSM acc ε=0.1 [ε = 0.10000001]"] == ["0.4000"]


def test_a_score_shares_a_row_only_with_a_score_of_the_same_definition(tmp_path):
    ffn = _run(tmp_path, "ffn", {208: _metrics(0.9, log_px=0.984, family="classifier",
                                               definitions={"log_px": LOG_Z,
                                                            "max_softmax": MAX_SOFTMAX})},
               selected=208)
    dhm = _run(tmp_path, "dhm", {336: _metrics(0.95, log_px=0.277, family="dhm",
                                               definitions={"log_px": DHM_LOG_PX,
                                                            "max_softmax": MAX_SOFTMAX})},
               selected=336, family="dhm")
    md = compare.compare([ffn, dhm], ["FFN", "DHM"])
    rows = _rows(md)
    assert "AUROC heldout / log_px" not in rows
    own = {t: c for t, c in rows.items() if t.startswith("AUROC heldout / log_px")}
    assert len(own) == 2
    (ffn_title,) = [t for t in own if LOG_Z in t]
    (dhm_title,) = [t for t in own if DHM_LOG_PX in t]
    assert own[ffn_title] == ["0.9840", "–"] and own[dhm_title] == ["–", "0.2770"]
    assert compare.SHARED_NOTE in md
    assert f"log_px in this row, of FFN: {LOG_Z}" in md
    assert f"log_px in this row, of DHM: {DHM_LOG_PX}" in md
    titles = list(rows)
    assert titles.index(dhm_title) == titles.index(ffn_title) + 1        # side by side
    assert rows["AUROC heldout / max_softmax"] == ["0.8100", "0.8100"]    # one definition
    # without definitions (runs evaluated before they existed) the family stands for one:
    # two classifier runs share the row, a DHM run does not
    old = {208: {k: v for k, v in _metrics(0.9).items()}}
    a = _run(tmp_path / "old", "ffn", old, selected=208, layout="old")
    b = _run(tmp_path / "old", "gffn", old, selected=208, layout="old")
    c = _run(tmp_path / "old", "dhm", old, selected=208, layout="old", family="dhm")
    rows = _rows(compare.compare([a, b, c]))
    assert rows["AUROC heldout / log_px (log_px: as family classifier defines it)"] == [
        "0.9840", "0.9840", "–"]
    assert rows["AUROC heldout / log_px (log_px: as family dhm defines it)"] == [
        "–", "–", "0.9840"]


def test_a_missing_number_says_why(tmp_path):
    flat = {"identifiable": False, "temperature": None, "bound": "T → ∞",
            "reason": "the validation NLL decreases towards T → ∞"}
    dirs = [_run(tmp_path, "fit", {1: _metrics(0.9)}, selected=1),
            _run(tmp_path, "flat", {1: _metrics(0.9, temperature=flat)}, selected=1),
            _run(tmp_path, "skip", {1: _metrics(0.9, temperature={
                "skipped": "empty validation split"})}, selected=1),
            _run(tmp_path, "none", {1: _metrics(0.9, temperature="absent")}, selected=1)]
    md = compare.compare(dirs, ["A", "B", "C", "D"])
    rows = _rows(md)
    (title,) = [t for t in rows if t.startswith("temperature T")]
    assert rows[title] == ["1.3000", "not identifiable", "not run", "not run"]
    (title,) = [t for t in rows if t.startswith("ece after TS")]
    assert rows[title] == ["0.0200", "not identifiable", "not run", "not run"]
    assert "B: not identifiable: the validation NLL decreases towards T → ∞" in md
    assert "C: not run: empty validation split" in md
    assert "D: not run: temperature was not among this evaluation's evals.names" in md
    assert "–" not in "".join(rows[title])


def test_the_config_diff_lists_every_differing_field_of_either_side(tmp_path):
    """Runs of two families: a field only one config has is listed, marked — on the other
    side, beside the shared fields that differ; equal fields are not listed."""
    ffn = _run(tmp_path, "ffn", {208: _metrics(0.9)}, selected=208)
    dhm = _run(tmp_path, "dhm", {336: _metrics(0.95)}, selected=336, family="dhm")
    _write(tmp_path / "ffn" / "config.json",
           {"family": "classifier", "seed": 0, "batch_size": 64,
            "model": {"name": "cnn", "width": 16, "hidden": [128]},
            "objective": {"joint_weight": 1.0}})
    _write(tmp_path / "dhm" / "config.json",
           {"family": "dhm", "seed": 0, "batch_size": 64,
            "model": {"name": "dhm", "latent": 128}, "objective": {"beta": 1.0}})
    md = compare.compare([ffn, dhm], ["FFN", "DHM"])
    diff = md[md.index("## Config differences"):]
    rows = _rows(diff)
    assert rows["family"] == ["classifier", "dhm"] and rows["model.name"] == ["cnn", "dhm"]
    assert rows["model.width"] == ["16", "—"] and rows["model.hidden"] == ["(128)", "—"]
    assert rows["objective.joint_weight"] == ["1", "—"]
    assert rows["model.latent"] == ["—", "128"] and rows["objective.beta"] == ["—", "1"]
    assert "seed" not in rows and "batch_size" not in rows
    data = json.loads(compare.compare([ffn, dhm], ["FFN", "DHM"], fmt="json"))
    by_field = {d["field"]: d["cells"] for d in data["config_differences"]}
    assert by_field["model.latent"] == {"FFN": "—", "DHM": "128"}
    table = list(csv.reader(io.StringIO(compare.compare([ffn, dhm], ["FFN", "DHM"],
                                                        fmt="csv"))))
    assert ["config: objective.beta", "", "—", "1", ""] in table
    assert "## Config differences" not in compare.compare([ffn])     # one run: no diff


def test_csv_and_json_carry_the_same_table(tmp_path):
    ffn = _run(tmp_path, "ffn", {208: _metrics(0.9)}, selected=208)
    dhm = _run(tmp_path, "dhm", {336: _metrics(0.95, eps=(0.0, 0.03), adv=(0.97, 0.9414))},
               selected=336, family="dhm")
    table = list(csv.reader(io.StringIO(compare.compare([ffn, dhm], ["FFN", "DHM"],
                                                        fmt="csv"))))
    assert table[0] == ["metric", "definition", "FFN", "DHM", "notes"]
    by_title = {r[0]: r for r in table}
    assert by_title["evaluation"][2:4] == ["eval/208/1a2b3c4d", "eval/336/1a2b3c4d"]
    assert float(by_title["accuracy"][2]) == 0.9 and float(by_title["accuracy"][3]) == 0.95
    assert by_title["FGSM acc ε=0.03"][2:4] == ["–", "0.9414"]
    data = json.loads(compare.compare([ffn, dhm], ["FFN", "DHM"], fmt="json"))
    assert [(c["name"], c["step"], c["eval_id"], c["selected_by"], c["family"])
            for c in data["columns"]] == [("FFN", 208, "1a2b3c4d", "best", "classifier"),
                                          ("DHM", 336, "1a2b3c4d", "best", "dhm")]
    eps = {r["epsilon"]: r["values"] for r in data["rows"] if r["epsilon"] is not None}
    assert eps == {0.0: {"FFN": 0.98, "DHM": 0.97}, 8 / 255: {"FFN": 0.6, "DHM": None},
                   0.03: {"FFN": None, "DHM": 0.9414}}
    with pytest.raises(ValueError, match="valid choices: md, csv, json"):
        compare.compare([ffn], fmt="xlsx")


def test_bad_input_is_an_error_naming_it(tmp_path, capsys):
    good = _run(tmp_path, "good", {1: _metrics(0.9)}, selected=1)
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [([str(empty)], "error: FileNotFoundError: no evaluation in " + str(empty)),
             ([good, good, "--names", "A"], "--names gives 1 name(s) (A) for 2 run(s)"),
             ([good, str(tmp_path / "nope")], f"run directory {tmp_path / 'nope'} does not "
                                              f"exist"),
             ([good, "--checkpoint", "7"], "no evaluation at step 7; evaluated steps: 1"),
             ([good, "--checkpoint", "1", "--eval_id", "abcdef12"],
              "no evaluation 'abcdef12' at step 1; evaluations: eval/1/1a2b3c4d")]
    for argv, message in cases:
        assert compare.main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, (argv, err)
        assert "Traceback" not in err
    assert compare.main([good, "--checkpoint", "1", "--eval_id", "1a2b3c4d"]) == 0
    assert "| good (step 1, eval 1a2b3c4d) |" in capsys.readouterr().out


def test_command_line_writes_the_chosen_format(tmp_path):
    a = _run(tmp_path, "a", {208: _metrics(0.9)}, selected=208)
    b = _run(tmp_path, "b", {336: _metrics(0.8)}, selected=336, layout="old")
    out = tmp_path / "tables" / "comparison.json"
    r = subprocess.run([sys.executable, "-m", "jaxhybrid.tools.compare", a, b, "--names",
                        "A,B", "--format", "json", "--out", str(out)], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout) == json.loads(out.read_text())
    assert [c["eval_dir"] for c in json.loads(r.stdout)["columns"]] == [
        "eval/208/1a2b3c4d", "eval/336"]


# -- remote run directories ------------------------------------------------------------------
@pytest.fixture
def bucket(tmp_path):
    """gs://bucket/... served by etils.epath from tmp_path/bucket (no network)."""
    local_root = tmp_path / "bucket"
    local_root.mkdir()

    def local(p):
        p = os.fspath(p)
        return str(local_root) + p[len("gs://bucket"):] if p.startswith("gs://bucket") else p

    def one(orig, path, *args, **kwargs):
        return orig(local(path), *args, **kwargs)

    def two(orig, path, dst, *args, **kwargs):
        return orig(local(path), local(dst), *args, **kwargs)

    def walk(orig, top, **kwargs):
        yield from orig(local(top), **kwargs)
    fns = {k: one for k in ("open", "exists", "glob", "isdir", "listdir", "makedirs", "mkdir",
                            "remove", "rmtree", "stat")}
    with epath_testing.mock_epath(**fns, walk=walk, rename=two, replace=two, copy=two):
        yield local_root


def test_paths_keep_their_scheme():
    assert os.fspath(run_path("gs://bucket/sweep")) == "gs://bucket/sweep"
    assert os.fspath(run_path("gs://bucket/sweep") / "a=1,seed=0") == "gs://bucket/sweep/a=1,seed=0"
    assert os.fspath(run_path("runs/x")) == os.path.abspath("runs/x")
    assert runs._relative_eval_dir("gs://bucket/run/eval/208/1a2b3c4d") == "eval/208/1a2b3c4d"
    assert runs._relative_eval_dir("/old/place/run/eval/208") == "eval/208"
    assert runs._relative_eval_dir("eval/208/1a2b3c4d") == "eval/208/1a2b3c4d"


def test_compare_aggregate_and_sweep_points_on_gs(bucket, tmp_path):
    _run(bucket / "sweep", "objective.joint_weight=0,seed=0", {208: _metrics(0.9)}, selected=208)
    _run(bucket / "sweep", "objective.joint_weight=1,seed=0", {336: _metrics(0.8)}, selected=336)
    for name, lam in (("objective.joint_weight=0,seed=0", 0.0), ("objective.joint_weight=1,seed=0", 1.0)):
        c = gffn.get_config("smoke")
        c.objective.joint_weight = lam
        (bucket / "sweep" / name / "config.json").write_text(c.to_json_best_effort())
    a, b = ("gs://bucket/sweep/objective.joint_weight=0,seed=0",
            "gs://bucket/sweep/objective.joint_weight=1,seed=0")
    md = compare.compare([a, b], ["FFN", "GFFN"])
    assert _rows(md)["accuracy"] == ["0.9000", "0.8000"] and f"`{a}`" in md
    out = aggregate.write_outputs("gs://bucket/sweep")
    assert out["dir"] == "gs://bucket/sweep/aggregate"
    assert [(r["group"], r["n"]) for r in out["rows"]] == [
        ({"objective.joint_weight": 0.0}, 1), ({"objective.joint_weight": 1.0}, 1)]
    written = sorted(p.name for p in (bucket / "sweep" / "aggregate").iterdir())
    assert {"aggregate.md", "aggregate.csv", "aggregate.json",
            "accuracy_vs_objective.joint_weight.png"} <= set(written)
    # the sweep's points live under the bucket, and their state is read there
    c = gffn.get_config("smoke")
    points = grid.expand_grid(c, grid.parse_sweep(c, ["objective.joint_weight=0,1"]), [0],
                              "gs://bucket/sweep")
    assert [p.workdir for p in points] == [a, b]
    assert f"--workdir={a}" in grid.point_argv("configs/gffn.py:smoke", points[0], c)
    assert [grid.point_state(p) for p in points] == ["finished", "finished"]
    assert isinstance(points[0].path, epath.Path)


def test_an_epsilon_in_normalised_units_never_shares_a_row_with_a_pixel_one(tmp_path):
    """The same ε in evals.epsilon_space = normalized (the original DHM's attack) is another
    attack than in pixel units: its own rows, and its own headline names."""
    pixel = _run(tmp_path, "pixel", {5: _metrics(0.9, eps=(0.0, 0.03), adv=(0.98, 0.7))},
                 selected=5)
    m = _metrics(0.9, eps=(0.0, 0.03), adv=(0.98, 0.5))
    m["adversarial"]["epsilon_space"] = "normalized"
    normalised = _run(tmp_path, "normalised", {5: m}, selected=5)
    rows = _rows(compare.compare([pixel, normalised], ["P", "N"]))
    assert rows["FGSM acc ε=0.03"] == ["0.7000", "–"]
    assert rows["FGSM (normalised units) acc ε=0.03"] == ["–", "0.5000"]
    assert "fgsm_normalized/eps=0.03/accuracy" in suite.headline(m)
