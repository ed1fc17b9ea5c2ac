"""The yardstick (benchmarks/quality.py): the Pareto front, the table, the plot, the settings and the CLI, and a
tiny run of the whole thing on the shipped model. Its bootstrap intervals are tested in
tests/runtime/test_bootstrap.py.
"""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from benchmarks import quality
from benchmarks.frontier import merge, pareto_front, plot_frontier
from benchmarks.quality import Setting
from dit_ref import DiTError
from runtime.tuning.reference import CONVERGED


def test_pareto_front():
    # (s/image, accuracy): c is slower and worse than b; d is the fastest; a ties b's speed but is better.
    costs, accuracies = [1.0, 1.0, 2.0, 0.1, 3.0], [0.9, 0.8, 0.7, 0.5, 0.95]
    assert pareto_front(costs, accuracies) == [True, False, False, True, True]
    distances = [50.0, 60.0, 70.0, 90.0, 40.0]  # lower is better: the same front
    assert pareto_front(costs, distances, higher_is_better=False) == [True, False, False, True, True]
    assert pareto_front([1.0, 1.0], [0.5, 0.5]) == [True, True]  # equal points do not dominate each other


def row(name, seconds, accuracy, distance, n=1000):
    return {"name": name, "backend": "onnxruntime", "precision": "fp16", "sampler": "ddim", "steps": 25,
            "cfg_scale": 4.0, "load_options": {}, "options": {}, "n": n, "class_accuracy": accuracy,
            "class_accuracy_interval": (accuracy - 0.02, accuracy + 0.018), "frechet_distance": distance,
            "frechet_distance_interval": (distance - 3.0, distance + 4.0), "seconds_per_image": seconds}


def test_table_line_reads_estimate_and_interval():
    line = quality.table_line({**row("onnxruntime-fp16-ddim25", 0.1084, 0.915, 50.76),
                               "class_accuracy_interval": (0.896, 0.933), "options": {"cache": "none"}})
    print(line)
    assert line == ("| onnxruntime-fp16-ddim25 | onnxruntime | FP16 | ddim | 25 | 4 | cache=none | 1000 | "
                    "91.5% [89.6, 93.3] | 50.8 [47.8, 54.8] | 0.108 | - | - | - |")
    assert quality.table([row("a", 1, 0.5, 9)]).splitlines()[0] == quality.HEADER[0]
    paired = quality.table_line(with_paired(row("b", 0.1, 0.9, 50.0), "onnxruntime-ddim25", 43.21))
    print(paired)
    assert paired.endswith("| 0.100 | onnxruntime-ddim25 | 43.2 [42.2, 44.7], 38.9 | 0.995 [0.994, 0.996], 0.990 |")
    assert paired.count("|") == quality.HEADER[1].count("|")


def with_paired(row: dict, reference: str, psnr: float) -> dict:
    """row with a paired fidelity against reference, as benchmarks.paired.paired_scores makes it."""
    return {**row, "paired": {"reference": reference, "kind": "trajectory", "n": row["n"], "at_ceiling": 0,
                              "psnr": {"mean": psnr, "interval": (psnr - 1.0, psnr + 1.5), "p10": psnr - 4.3},
                              "ssim": {"mean": 0.995, "interval": (0.994, 0.996), "p10": 0.99}}}


def test_each_row_gets_the_reference_the_rule_picks_and_missing_ones_are_added_first():
    from benchmarks.paired import with_references

    chosen = quality.select_settings("openvino-ddim50-fora3,onnxruntime-fp16-ddim50,openvino-ddpm250,"
                                     "onnxruntime-fp16-ddpm50,onnxruntime-ddim50")
    ordered, references = with_references(chosen, list(quality.SETTINGS.values()))
    converged = f"onnxruntime-{CONVERGED[0]}{CONVERGED[1]}"
    print([setting.name for setting in ordered], references)
    assert references == {
        "openvino-ddim50-fora3": ("onnxruntime-ddim50", "trajectory"),  # the run's FP32 row, though on another backend
        "onnxruntime-fp16-ddim50": ("onnxruntime-ddim50", "trajectory"),
        "onnxruntime-fp16-ddpm50": ("onnxruntime-ddpm50", "trajectory"),  # a new plain setting
        "onnxruntime-ddim50": (converged, "converged"),  # new too
    }  # openvino-ddpm250 (a plain DDPM row) has none
    names = [setting.name for setting in ordered]
    assert names == ["openvino-ddpm250", "onnxruntime-ddpm50", converged, "onnxruntime-fp16-ddpm50",
                     "onnxruntime-ddim50", "openvino-ddim50-fora3", "onnxruntime-fp16-ddim50"]  # references first
    alone, _ = with_references(quality.select_settings("openvino-ddim50-fora3"), list(quality.SETTINGS.values()))
    assert [setting.name for setting in alone] == [f"openvino-{CONVERGED[0]}{CONVERGED[1]}", "openvino-ddim50",
                                                   "openvino-ddim50-fora3"]  # from SETTINGS, on its own backend
    added = ordered[names.index("onnxruntime-ddpm50")]
    assert (added.backend, added.precision, added.sampler, added.steps, added.cfg_scale, added.options) == (
        "onnxruntime", "fp32", "ddpm", 50, 4.0, {})


def test_plot_frontier_writes_a_png(tmp_path):
    rows = [row("slow-good", 1.0, 0.92, 50.0), row("fast-bad", 0.1, 0.85, 60.0), row("dominated", 0.5, 0.80, 70.0)]
    report = {"model": "fashion", "machine": "test CPU", "date": "2026-12-02", "note": quality.SPEED_NOTE, "rows": rows}
    path, paired = tmp_path / "frontier.png", tmp_path / "paired.png"
    plot_frontier(report, path)
    plot_frontier({**report, "rows": [rows[0], *(with_paired(r, "slow-good", 40.0) for r in rows[1:])]}, paired)
    print(f"{path.stat().st_size} bytes; with a paired panel {paired.stat().st_size} bytes")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000
    assert paired.stat().st_size > 1.2 * path.stat().st_size  # a third panel
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frontier.png", "paired.png"]  # no temporary left beside


def test_runs_merge_into_one_frontier_and_foreign_runs_are_refused():
    base = {"model": "fashion", "machine": "test CPU", "date": "2026-12-02", "note": quality.SPEED_NOTE,
            "per_class": 100, "seed": 0, "versions": {"torch": "2.13.0"}}
    first = {**base, "rows": [row("a", 1.0, 0.9, 50.0)]}
    second = {**base, "rows": [row("b", 0.5, 0.8, 60.0), row("c", 0.2, 0.7, 70.0)]}
    merged = merge([first, second])
    print(merged["note"])
    assert [(r["name"], r["run"]) for r in merged["rows"]] == [("a", 1), ("b", 2), ("c", 2)]
    assert merged["runs"] == 2 and "2 runs" in merged["note"]
    with pytest.raises(ValueError, match="differ in machine"):
        merge([first, {**second, "machine": "another CPU"}])


def test_default_settings_have_unique_names_and_are_valid():
    names = [setting.name for setting in quality.SETTINGS.values()]
    assert len(set(names)) == len(names) == 41 and list(quality.SETTINGS) == names
    for setting in quality.SETTINGS.values():
        quality.check_setting(setting)
    assert quality.select_settings(None) == list(quality.SETTINGS.values())
    assert [s.name for s in quality.select_settings("onnxruntime-fp16-ddim25, torch-ddpm250")] == [
        "onnxruntime-fp16-ddim25", "torch-ddpm250"]
    with pytest.raises(DiTError, match="unknown setting nope; choose from torch-ddpm250"):
        quality.select_settings("torch-ddpm250,nope")


@pytest.mark.parametrize("setting, message", [
    (Setting("x", "torch", "fp32", "ddim", 5, 4.0, load_options={"cuda_graphs": True}), "takes no option 'cuda_graphs'"),
    (Setting("x", "torch", "fp32", "ddim", 5, 4.0, options={"seed": 3}), "'seed' is fixed by the run"),
    (Setting("x", "torch", "fp32", "ddim", 5, 4.0, options={"cache_policy": "x"}), "generate\\(\\) takes no option"),
    (Setting("x", "no-such-backend", "int8", "ddim", 5, 4.0), "unknown backend .no-such-backend."),
    (Setting("x", "torch", "fp32", "no-such-sampler", 5, 4.0), "no-such-sampler"),
])
def test_check_setting_refuses_what_would_fail_later(setting, message):
    with pytest.raises(DiTError, match=message):
        quality.check_setting(setting)


TINY = Setting("tiny-torch-ddim4", "torch", "fp32", "ddim", 4, 4.0)
TINY_INTERVAL = Setting("tiny-torch-ddim4-gi0-600", "torch", "fp32", "ddim", 4, 4.0,
                        options={"guidance_interval": "0:600"})


@pytest.fixture(scope="module")
def reference():
    from runtime.backends import load_denoiser

    return load_denoiser(None, "torch", model="fashion", ckpt="auto", device="cpu", threads=1)


def test_samples_do_not_depend_on_the_batch_and_options_reach_generate(reference):
    from runtime.sampling import sampler_from_name

    labels, sampler = quality.balanced_labels(1), sampler_from_name("ddim", 4)
    whole, _ = quality.sample(reference, labels, sampler, 4.0, seed=0)
    in_threes, seconds = quality.sample(reference, labels, sampler, 4.0, seed=0, options={"batch_size": 3})
    print(f"10 samples, DDIM 4, batches of 3: {seconds:.2f} s; max difference {np.abs(whole - in_threes).max():.2e}")
    assert whole.shape == (10, 1, 28, 28)
    np.testing.assert_allclose(whole, in_threes, atol=2e-4)  # the same noise; batched kernels round apart (3e-5)
    other_seed, _ = quality.sample(reference, labels, sampler, 4.0, seed=1)
    assert np.abs(whole - other_seed).max() > 0.5
    estimates, with_intervals = quality.score_samples(whole, labels, None), quality.score_samples(whole, labels, 200)
    print(f"estimates alone: {estimates}")
    assert set(estimates) == {"n", "class_accuracy", "frechet_distance"}
    assert with_intervals == {**with_intervals, **estimates}  # the same estimates, intervals added


def test_cli_runs_a_tiny_setting_and_records_it(tmp_path, monkeypatch):
    # TINY is plain: its reference is the converged solution (made cheap here), which the run adds and samples
    # first; TINY_INTERVAL changes the trajectory: its reference is TINY.
    monkeypatch.setattr("runtime.tuning.reference.CONVERGED", ("ddim", 8))
    for setting in (TINY, TINY_INTERVAL):
        monkeypatch.setitem(quality.SETTINGS, setting.name, setting)
    json_path, plot_path = tmp_path / "run.json", tmp_path / "run.png"
    result = CliRunner().invoke(quality.main, ["--settings", f"{TINY.name},{TINY_INTERVAL.name}", "--per-class", "2",
                                               "--resamples", "200", "--threads", "1",
                                               "--work-dir", str(tmp_path / "graphs"),
                                               "--json", str(json_path), "--plot", str(plot_path)])
    print(result.output)
    assert result.exit_code == 0, result.output
    report = json.loads(json_path.read_text())
    converged, only, interval = report["rows"]
    assert report["per_class"] == 2 and report["seeding"] == "per-sample" and report["versions"]["torch"]
    assert only["name"] == TINY.name and only["n"] == 20 and only["seconds_per_image"] > 0
    for key in ("class_accuracy", "frechet_distance"):
        low, high = only[f"{key}_interval"]
        assert low <= only[key] <= high, key
    assert 0.3 <= only["class_accuracy"] <= 1.0  # 4 DDIM steps at cfg 4 already draw most classes
    assert "| tiny-torch-ddim4 | torch | FP32 | ddim | 4 | 4 | - | 20 |" in result.output
    assert "compare it between rows of one run only" in result.output and plot_path.stat().st_size > 20_000
    assert converged["name"] == "torch-ddim8" and converged["added_as_reference"] and converged["paired"] is None
    assert (only["paired"]["reference"], only["paired"]["kind"]) == ("torch-ddim8", "converged")
    assert (interval["paired"]["reference"], interval["paired"]["kind"]) == (TINY.name, "trajectory")
    for row in (only, interval):
        psnr, ssim = row["paired"]["psnr"], row["paired"]["ssim"]
        print(f"{row['name']} against {row['paired']['reference']}: PSNR {psnr}, SSIM {ssim}")
        assert 5 < psnr["p10"] <= psnr["interval"][0] <= psnr["mean"] <= psnr["interval"][1] < 100
        assert 0 < ssim["mean"] < 1 and row["paired"]["n"] == 20
    assert report["paired"]["psnr_ceiling_db"] == 100.0


def test_cli_errors_are_one_line():
    runner = CliRunner()
    result = runner.invoke(quality.main, ["--settings", "nope"])
    print(result.output)
    assert result.exit_code == 1 and result.output.count("\n") == 1 and result.output.startswith("error: unknown setting")
    listed = runner.invoke(quality.main, ["--list-settings"])
    assert listed.exit_code == 0 and all(name in listed.output for name in quality.SETTINGS)
    assert "--per-class" in runner.invoke(quality.main, ["--help"]).output


def test_converged_none_leaves_plain_rows_unpaired_and_parses_as_the_flag_says():
    from benchmarks.paired import with_references

    chosen = quality.select_settings("onnxruntime-ddim50,openvino-ddim50-fora3")
    _, references = with_references(chosen, list(quality.SETTINGS.values()), converged=None)
    print(references)
    assert references == {"openvino-ddim50-fora3": ("onnxruntime-ddim50", "trajectory")}  # the plain row: none
    assert quality.parse_converged("none") is None and quality.parse_converged("auto") == "auto"
    assert quality.parse_converged("dpm++:250") == ("dpm++", 250)
    with pytest.raises(DiTError, match="give SAMPLER:STEPS"):
        quality.parse_converged("ddim")


def test_a_profile_adds_a_row_per_named_point(fashion_graph):
    from profile_helpers import write_profile_for

    path = write_profile_for(fashion_graph, {
        "exact": {"sampler": "ddim", "steps": 50},
        "fast": {"sampler": "unipc", "steps": 8, "cache": "fora:2", "backend": "openvino"}})
    rows = quality.profile_settings(path)
    print(rows)
    assert [(r.name, r.backend, r.precision, r.sampler, r.steps, r.options) for r in rows] == [
        ("profile-exact", "onnxruntime", "fp32", "ddim", 50, {}),
        ("profile-fast", "openvino", "fp32", "unipc", 8, {"cache": "fora:2"})]
