"""Profiles: written and read back, refused for another model or when malformed, a warning when measured on another
machine, and a run with --profile (dit-run, generate(), load_denoiser()) equal to the same run spelled out."""

import json
import logging
import shutil

import numpy as np
import pytest

import runtime.cli as dit_run_cli
from dit_ref.contract import manifest_path_for
from dit_ref.errors import DiTError
from profile_helpers import write_profile_for
from runtime.backends import load_denoiser
from runtime.generate import generate
from runtime.profile import load_point, read_profile
from runtime.sampling import sampler_from_name

POINTS = {"quick": {"sampler": "ddim", "steps": 5, "guidance_interval": "300:700", "cache": "fora:2"},
          "plain": {"sampler": "dpm++", "steps": 4}}


@pytest.fixture
def graph(fashion_cached_graph, tmp_path):
    """The fashion graph and its pair copied into a folder of this test's, with a profile of two points beside."""
    for source in fashion_cached_graph.parent.iterdir():
        shutil.copy(source, tmp_path)
    path = tmp_path / fashion_cached_graph.name
    write_profile_for(path, POINTS)
    return path


def test_a_profile_reads_back_its_points(graph):
    profile, point = load_point("quick", graph)
    assert profile.path.name == "fashion-28.profile.json" and point.graph == graph.name
    assert point.request == {"sampler": "ddim", "steps": 5, "guidance_interval": "300:700", "cache": "fora:2"}
    profile, point = load_point(f"{profile.path}:plain", None)
    assert point.request["sampler"] == "dpm++"
    with pytest.raises(DiTError, match="has no point 'fastest'; it has quick, plain"):
        load_point("fastest", graph)


@pytest.mark.parametrize("edit, words", [
    (lambda record: record.update(format="dit-deploy-profile/0"), "is not a dit-deploy-profile/1 profile"),
    (lambda record: record.pop("points"), "is malformed"),
    (lambda record: record["checkpoint"].update(sha256="0" * 64), "was measured on another model"),
    (lambda record: record.update(image_size=256), "was measured on another model"),
])
def test_a_profile_of_another_model_or_malformed_is_refused_in_one_line(graph, edit, words):
    path = graph.parent / "fashion-28.profile.json"
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))
    with pytest.raises(DiTError, match=words) as refused:
        load_point("quick", graph)
    print(refused.value)
    assert "\n" not in str(refused.value)
    path.write_text("{not json")
    with pytest.raises(DiTError, match="is unreadable"):
        read_profile(path)


def test_a_profile_measured_elsewhere_is_used_with_a_warning(graph, caplog):
    write_profile_for(graph, POINTS, machine={"cpu": "Intel Xeon, 2 cores, avx2", "gpu": None,
                                              "versions": {"openvino": "2025.1.0"}})
    with caplog.at_level(logging.WARNING):
        load_point("quick", graph)
    print(caplog.text)
    assert "was measured elsewhere (cpu Intel Xeon" in caplog.text and "re-tune with: dit-tune" in caplog.text


def run_latents(argv, tmp_path, name) -> np.ndarray:
    out = tmp_path / f"{name}.npy"
    with pytest.raises(SystemExit) as exited:
        dit_run_cli.main([*argv, "--vae", "none", "--threads", "1", "--out", str(out)])
    assert exited.value.code == 0
    return np.load(out)


def test_dit_run_with_a_profile_is_the_run_spelled_out(graph, tmp_path, capsys):
    common = [str(graph), "--class", "1,7", "--seed", "3"]
    profiled = run_latents([*common, "--profile", "quick"], tmp_path, "profiled")
    said = capsys.readouterr().err
    spelled = run_latents([*common, "--backend", "onnxruntime", "--sampler", "ddim", "--steps", "5",
                           "--guidance-interval", "300:700", "--cache", "fora:2"], tmp_path, "spelled")
    print(said)
    assert "profile quick (fashion-28.profile.json)" in said and "profile quick" in said.splitlines()[-1]
    assert np.array_equal(profiled, spelled)
    # an explicit option wins over the point's
    steps3 = run_latents([*common, "--profile", "quick", "--steps", "3"], tmp_path, "steps3")
    assert np.array_equal(steps3, run_latents([*common, "--backend", "onnxruntime", "--sampler", "ddim", "--steps",
                                               "3", "--guidance-interval", "300:700", "--cache", "fora:2"],
                                              tmp_path, "spelled3"))


def test_generate_and_load_denoiser_take_a_profile(graph):
    with load_denoiser(graph, profile="quick", threads=1) as denoiser:
        assert denoiser.name.startswith("onnxruntime")
        (profiled,) = generate(denoiser, [2, 4], seed=1, seeding="per-sample", profile="quick")
        (spelled,) = generate(denoiser, [2, 4], sampler_from_name("ddim", 5), seed=1, seeding="per-sample",
                              guidance_interval="300:700", cache="fora:2")
    assert np.array_equal(profiled.samples, spelled.samples)
    with load_denoiser(graph, "openvino", threads=1) as other:
        with pytest.raises(DiTError, match="profile quick runs .* on onnxruntime"):
            next(generate(other, [1], profile="quick"))


def test_a_profile_whose_graph_is_gone_is_refused(graph):
    (graph.parent / "fashion-28.profile.json").write_text((graph.parent / "fashion-28.profile.json").read_text()
                                                          .replace(graph.name, "fashion-28-int8.onnx"))
    assert not manifest_path_for(graph.parent / "fashion-28-int8.onnx").exists()
    with pytest.raises(DiTError, match="runs fashion-28-int8.onnx, which is not beside it"):
        load_point("quick", graph)


def test_a_calibrated_list_goes_with_its_steps_and_backend_options_with_their_backend(graph):
    from runtime.profile import Point

    point = Point("fast", graph.name, "openvino", {"dtype": "bfloat16"},
                  {"sampler": "ddim", "steps": 5, "guidance_interval": None, "cache": "refresh:0,1,3,4"}, {})
    assert point.request_for(set()) == {"sampler": "ddim", "steps": 5, "cache": "refresh:0,1,3,4"}
    assert point.request_for({"steps"}) == {"sampler": "ddim"}  # the list fits 5 DDIM steps only
    assert point.request_for({"sampler"}) == {"steps": 5}
    assert point.request_for({"cfg_scale"})["cache"] == "refresh:0,1,3,4"
    fora = Point("quick", graph.name, "openvino", {}, {**point.request, "cache": "fora:2"}, {})
    assert fora.request_for({"steps"}) == {"sampler": "ddim", "cache": "fora:2"}  # a rule fits any steps
    assert point.load_for("openvino") == point.load_for("auto") == point.load_for(None) == {"dtype": "bfloat16"}
    assert point.load_for("onnxruntime") == {}  # another backend: the point's options are not its


def test_generate_with_a_profile_and_other_steps_drops_the_calibrated_list(graph):
    write_profile_for(graph, {"listed": {"sampler": "ddim", "steps": 5, "cache": "refresh:0,1,3,4"}})
    with load_denoiser(graph, profile="listed", threads=1) as denoiser:
        (profiled,) = generate(denoiser, [2, 4], seed=1, seeding="per-sample", profile="listed", steps=8)
        (spelled,) = generate(denoiser, [2, 4], sampler_from_name("ddim", 8), seed=1, seeding="per-sample")
    assert np.array_equal(profiled.samples, spelled.samples)


def test_an_option_given_as_none_leaves_the_profiles_value(graph):
    write_profile_for(graph, {"gi": {"sampler": "ddim", "steps": 4, "guidance_interval": "300:700"}})
    with load_denoiser(graph, profile="gi", threads=1) as denoiser:
        (profiled,) = generate(denoiser, [2, 4], seed=1, seeding="per-sample", profile="gi", guidance_interval=None)
        (spelled,) = generate(denoiser, [2, 4], sampler_from_name("ddim", 4), seed=1, seeding="per-sample",
                              guidance_interval="300:700")
    assert np.array_equal(profiled.samples, spelled.samples)


def test_a_served_profile_of_another_model_refuses_its_points_in_one_line(graph):
    from runtime.service.api import served_points
    from runtime.service.cli import prepare

    path = write_profile_for(graph, {"quick": {"sampler": "ddim", "steps": 4}})
    settings, _ = prepare(str(graph), 2, "auto", "onnxruntime")
    assert dict(settings.points)["quick"].request["steps"] == 4  # read once, before Ray: the replicas get these
    record = json.loads(path.read_text())
    record["checkpoint"]["sha256"] = "0" * 64
    path.write_text(json.dumps(record))
    reason = served_points(settings)["quick"]
    print(reason)
    assert isinstance(reason, str) and "measured on another model" in reason and "dit-tune" in reason
