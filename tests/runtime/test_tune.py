"""dit-tune end to end on the shipped fashion model, in a short budget: a profile with the exact point, its
measurements kept and a second run resuming from them, the frontier, and one-line refusals."""

import json
import shutil

import pytest

import runtime.tuning.cli as tune_cli
from dit_ref.errors import DiTError
from runtime.profile import read_profile

pytestmark = pytest.mark.slow
QUICK = ["--time", "75s", "--pairs", "4:8", "--population", "100", "--batch", "8", "--threads", "1"]


def dit_tune(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        tune_cli.main(argv)
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


@pytest.fixture
def graph(fashion_cached_graph, tmp_path):
    for source in fashion_cached_graph.parent.iterdir():
        shutil.copy(source, tmp_path)
    return tmp_path / fashion_cached_graph.name


def test_a_short_run_writes_a_profile_and_a_second_one_resumes(graph, capsys):
    code, table, said = dit_tune([str(graph), *QUICK], capsys)
    print(said[-3000:])
    assert code == 0 and "| exact |" in table
    profile = read_profile(graph.parent / "fashion-28.profile.json")
    exact = profile.record["points"]["exact"]
    assert exact["settings"] == {"graph": graph.name, "backend": exact["settings"]["backend"], "load": {},
                                 "sampler": "ddim", "steps": 50, "guidance_interval": None, "cache": None}
    assert exact["quality"]["n"] == 100 and exact["seconds_per_image"] > 0 and profile.record["frontier"]
    assert profile.record["backends"][graph.name] in ("onnxruntime", "openvino")
    kept = json.loads((graph.parent / "fashion-28.profile.tune" / "records.json").read_text())
    code, _, again = dit_tune([str(graph), *QUICK], capsys)
    assert code == 0
    resumed = json.loads((graph.parent / "fashion-28.profile.tune" / "records.json").read_text())
    assert resumed["costs"] == kept["costs"]  # timed once
    assert resumed["population"][next(iter(kept["population"]))] == kept["population"][next(iter(kept["population"]))]
    assert (graph.parent / "fashion-28.profile.png").is_file()
    hand_picked_are_measured_against_the_profile(graph.parent / "fashion-28.profile.json")


def hand_picked_are_measured_against_the_profile(path):
    """benchmarks/hand_picked.py on the profile just written: each former recommendation against exact's kept
    pictures, marked on the frontier."""
    from benchmarks import hand_picked
    from runtime.tuning.report import plot_frontier

    result, record = hand_picked.run(path, None, echo=print)
    rows = {row["name"]: row for row in result["rows"]}
    print(hand_picked.table(result["rows"]))
    assert set(rows) == set(hand_picked.HAND_PICKED) and result["pairs"] == 8
    assert all(row["seconds_per_image"] > 0 and 0 < row["fidelity"]["psnr"]["mean"] < 100 for row in rows.values())
    assert rows["interval 0:600"]["settings"]["guidance_interval"] == "0:600"
    assert plot_frontier(record, path.with_name("marked.png"), marked=result["rows"])


@pytest.mark.parametrize("argv, words", [
    (["--time", "5 minutes"], "give a duration such as 90s"),
    (["--pairs", "64:16"], "need 4 <= SCREEN <= CONFIRM"),
    (["--sampler", "nope"], "unknown sampler 'nope'"),
    (["--sampler", "ddpm", "--steps", "50"], "--sampler ddpm is stochastic"),
    (["--out", "tuned.json"], "a profile's name ends in .profile.json"),
    (["--time", "20s"], "leaves no time to measure"),
])
def test_bad_options_are_one_line(graph, capsys, argv, words):
    code, _, said = dit_tune([str(graph), *argv], capsys)
    assert code != 0 and words in said and "Traceback" not in said


def test_a_file_that_is_not_a_graph_is_one_line(tmp_path, capsys):
    code, _, said = dit_tune([str(tmp_path / "missing.onnx")], capsys)
    assert code == 1 and "not found; pass an engine (.plan) or graph (.onnx)" in said


def test_kept_measurements_of_other_conditions_are_forgotten_and_a_corrupt_record_is_one_line(tmp_path, capsys):
    from runtime.tuning.tuner import Store

    store = Store(tmp_path, {"seed": 0}, echo=print)
    store.put("costs", "engine", {"ms": 1})
    pictures, theirs = store.samples_path("a setting"), tmp_path / "abc.npy"  # the store's, and a user's own file
    pictures.write_bytes(b"kept")
    theirs.write_bytes(b"the user's")
    assert Store(tmp_path, {"seed": 0}).get("costs", "engine") == {"ms": 1}  # same conditions: resumed
    assert Store(tmp_path, {"seed": 1}).get("costs", "engine") is None  # another seed: afresh
    said = capsys.readouterr().out
    print(said)
    assert "measuring afresh" in said and not pictures.exists() and theirs.exists()
    (tmp_path / "records.json").write_text("{not json")
    with pytest.raises(DiTError, match="is not a dit-tune record .* run again with --fresh"):
        Store(tmp_path, {"seed": 1})
    pictures.write_bytes(b"kept")
    left = tmp_path / f".{pictures.name}.x1y2z3w4.tmp.npy"  # atomic_path's temporary, left by a killed run
    left.write_bytes(b"half")
    assert Store(tmp_path, {"seed": 1}, fresh=True).records == {"conditions": {"seed": 1}}  # --fresh: its own only
    assert not pictures.exists() and not left.exists() and theirs.exists()
