"""export.engine on CPU: the pure parts of the engine build, and its refusal without TensorRT/GPU.

The TensorRT calls themselves run only on a GPU machine (tests/gpu/test_tensorrt_gpu.py).
"""

import enum
import importlib.abc
import logging
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from dit_ref.errors import DiTError
from export import engine
from dit_ref.contract import INPUT_NAMES, BatchRange


def test_modules_import_without_tensorrt():
    code = ("import sys; sys.modules['tensorrt'] = None\n"  # None in sys.modules: import raises ImportError
            "import export.engine as e, runtime.backends.tensorrt_backend\n"
            "print(e.engine_unavailable_reason())")
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                            timeout=120)
    print(result.stdout, result.stderr)
    assert result.returncode == 0
    assert result.stdout.strip() == engine.NOT_INSTALLED


def test_reason_when_tensorrt_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert engine.engine_unavailable_reason() == engine.NOT_INSTALLED


class _BrokenTensorRT(importlib.abc.MetaPathFinder):
    """Makes `import tensorrt` fail the way a broken install does (error raised while importing it)."""

    def __init__(self, error):
        self.error = error

    def find_spec(self, name, path=None, target=None):
        if name == "tensorrt":
            raise self.error


@pytest.mark.parametrize("error, shown", [
    (ImportError("libnvinfer.so.10: cannot open shared object file\nmore detail"), "libnvinfer.so.10"),
    (OSError("libcudart.so.12: cannot open shared object file"), "libcudart.so.12"),
    (ModuleNotFoundError("No module named 'tensorrt_libs'", name="tensorrt_libs"), "no module tensorrt_libs"),
])
def test_reason_when_tensorrt_import_breaks(monkeypatch, error, shown):
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_BrokenTensorRT(error), *sys.meta_path])
    reason = engine.engine_unavailable_reason()
    print(reason)
    assert reason.startswith("TensorRT failed to import") and shown in reason and "\n" not in reason


@pytest.mark.parametrize("version, has_gpu, expected", [
    ("10.12.0.36", True, None),
    ("11.4.0", True, None),
    ("10.11.0.33", True, "TensorRT 10.11.0.33 is too old"),
    ("11.4.0", False, "no CUDA GPU is visible"),
])
def test_reason_from_version_and_gpu(monkeypatch, version, has_gpu, expected):
    monkeypatch.setitem(sys.modules, "tensorrt", SimpleNamespace(__version__=version))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: has_gpu)
    reason = engine.engine_unavailable_reason()
    if expected is None:
        assert reason is None
    else:
        assert reason.startswith(expected) and "\n" not in reason


def test_build_engine_refuses_with_the_reason(tmp_path):
    reason = engine.engine_unavailable_reason()
    if reason is None:
        pytest.skip("TensorRT and a GPU are present; tests/gpu builds real engines")
    with pytest.raises(DiTError) as caught:
        engine.build_engine(tmp_path / "DiT-S-2-256-fp16.onnx", BatchRange(1, 2, 4))
    assert str(caught.value) == reason
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value, flags", [(0, 1), (1, 2)])  # 11.x numbers STRONGLY_TYPED 0, 10.x numbers it 1
def test_network_flags_come_from_the_enum(value, flags):
    Flag = enum.IntEnum("NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": value})
    assert engine.network_flags(SimpleNamespace(NetworkDefinitionCreationFlag=Flag)) == flags


def test_profile_shapes_cover_the_batch_range_of_images():
    shapes = engine.profile_shapes((4, 32, 32), BatchRange(1, 8, 32))
    assert set(shapes) == {*INPUT_NAMES, "guided"}
    assert shapes["x"] == ((1, 4, 32, 32), (8, 4, 32, 32), (32, 4, 32, 32))  # B images; B + U inside the graph
    for name in ("t", "y", "cfg_scale"):
        assert shapes[name] == ((1,), (8,), (32,))
    assert shapes["guided"] == ((0,), (8,), (32,))  # U = 0 (nothing guided) .. every row of the largest batch
    assert set(engine.profile_shapes((4, 32, 32), BatchRange(1, 8, 32), guided_rows=False)) == set(INPUT_NAMES)


@pytest.mark.parametrize("batch", [{"min": 4, "opt": 2, "max": 8}, {"min": 0, "opt": 1, "max": 1},
                                   {"min": 1, "max": 8}, {"min": "one", "opt": 2, "max": 4}])
def test_profile_shapes_reject_a_bad_batch_range(batch):
    with pytest.raises(DiTError, match="batch range"):
        engine.profile_shapes((4, 32, 32), BatchRange.from_dict(batch))


@pytest.mark.parametrize("version, release", [("10.12.0.36", (10, 12, 0)), ("11.4.0", (11, 4, 0)),
                                              ("10.12", (10, 12)), ("unknown", ())])
def test_tensorrt_release(version, release):
    assert engine.tensorrt_release(version) == release


def test_timing_cache_is_keyed_by_gpu_and_release(tmp_path):
    a100 = engine.timing_cache_path(tmp_path, "NVIDIA A100-SXM4-80GB", "8.0", "10.12.0.36")
    assert a100 == tmp_path / "timing-nvidia-a100-sxm4-80gb-sm80-trt10.12.0.cache"
    others = {engine.timing_cache_path(tmp_path, "NVIDIA A10", "8.6", "10.12.0.36"),
              engine.timing_cache_path(tmp_path, "NVIDIA A100-SXM4-80GB", "8.0", "11.4.0"),
              engine.timing_cache_path(tmp_path, "NVIDIA A100-PCIE-40GB", "8.0", "10.12.0.36")}
    assert a100 not in others and len(others) == 3
    assert engine.compute_capability_text((8, 6)) == "8.6"


def _parser_error(node, operator, description):
    return SimpleNamespace(node_name=lambda: node, node_operator=lambda: operator, desc=lambda: description)


def test_parser_errors_name_the_nodes():
    errors = [_parser_error(f"/blocks.{i}/attn/MatMul", "MatMul", "unsupported\ntype") for i in range(5)]
    line = engine.format_parser_errors(errors)
    print(line)
    assert "/blocks.0/attn/MatMul (MatMul): unsupported type" in line
    assert "/blocks.3/" not in line and line.endswith("and 2 more") and "\n" not in line


def test_write_bytes_atomic_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "DiT-S-2-256-fp16.plan"
    engine.write_bytes_atomic(path, bytearray(b"plan-1"))
    assert path.read_bytes() == b"plan-1"
    with pytest.raises(TypeError):
        engine.write_bytes_atomic(path, object())  # not a buffer: fails after the temporary was opened
    assert path.read_bytes() == b"plan-1" and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_phase_log_reports_top_level_phases(caplog):
    phases = engine.PhaseLog()
    with caplog.at_level(logging.INFO, logger="export.engine"):
        phases.phase_start("Building engine", None, 3)
        phases.phase_start("Tactic selection", "Building engine", 120)
        phases.phase_finish("Tactic selection")
        phases.phase_finish("Building engine")
    print(caplog.text)
    assert [r.getMessage().split(" (")[0].split(" done")[0] for r in caplog.records] == [
        "TensorRT: Building engine", "TensorRT: Building engine"]
    assert "done in" in caplog.records[1].getMessage()



# --- the build on Polygraphy's loaders, with a stand-in tensorrt (tests/export/tensorrt_fake.py) -------------


@pytest.fixture
def fake_tensorrt(monkeypatch):
    """use(inputs, **options) -> a fake tensorrt in place for this test, with a GPU that torch reports."""
    pytest.importorskip("polygraphy", reason="Polygraphy is in the GPU extras: pip install polygraphy")
    import tensorrt_fake

    def use(inputs, **options):
        trt = tensorrt_fake.make_tensorrt(inputs, **options)
        tensorrt_fake.install(monkeypatch, trt)
        return trt

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: SimpleNamespace(total_memory=2**37))
    monkeypatch.setattr(engine, "build_unavailable_reason", lambda: None)
    yield use
    tensorrt_fake.forget()


@pytest.fixture
def fake_build(monkeypatch):
    """Polygraphy's EngineBytesFromNetwork replaced by one that records its network and config and returns
    b"plan" (or raises `fail`): its own logging walks a real IBuilderConfig."""
    import polygraphy.backend.trt

    built = SimpleNamespace(fail=None, network=None, config=None)

    class EngineBytes:
        def __init__(self, network, config=None):
            built.network, built.config = network, config

        def __call__(self):
            if built.fail:
                raise built.fail
            return b"plan"

    monkeypatch.setattr(polygraphy.backend.trt, "EngineBytesFromNetwork", EngineBytes)
    return built


def graph_inputs(manifest, batch_dim=-1) -> dict:
    """The inputs a parsed DiT graph has: batch dimensions dynamic (-1) unless batch_dim says otherwise."""
    latent = (manifest.latent_channels, manifest.latent_size, manifest.latent_size)
    return {"x": (batch_dim, *latent), **{name: (batch_dim,) for name in ("t", "y", "cfg_scale", "guided")}}


def test_create_config_gets_the_profile_level_workspace_and_no_tf32(fake_tensorrt):
    from polygraphy.backend.trt import CreateConfig

    shapes = engine.profile_shapes((4, 32, 32), BatchRange(1, 8, 32))
    trt = fake_tensorrt({name: (-1, *low[1:]) for name, (low, _, _) in shapes.items()})
    builder = trt.Builder(None)
    network = builder.create_network(engine.network_flags(trt))
    monitor = engine._progress_monitor(trt)
    config = CreateConfig(**engine.config_arguments(trt, shapes, 1, 2**30, monitor))(builder, network)
    profile = config.profiles[0]
    assert profile.shapes == shapes and len(config.profiles) == 1
    assert ("builder_optimization_level", 1) in trt.calls and ("progress_monitor", monitor) in trt.calls
    assert ("set_memory_pool_limit", trt.MemoryPoolType.WORKSPACE, 2**30) in trt.calls
    assert trt.BuilderFlag.TF32 not in config.flags and config.get_timing_cache().data == b""  # an empty cache to fill


@pytest.mark.parametrize("saved, used, warned", [(b"", b"", False), (b"sm90-cache", b"sm90-cache", False),
                                                 (b"corrupt", b"", True), (b"other-gpu", b"", True)])
def test_a_timing_cache_that_does_not_fit_is_replaced_by_an_empty_one(fake_tensorrt, caplog, saved, used, warned):
    trt = fake_tensorrt({})
    config = trt.Builder(None).create_builder_config()
    config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)  # as CreateConfig leaves it
    engine.use_timing_cache(config, saved)
    assert config.get_timing_cache().data == used
    assert ("does not fit this GPU" in caplog.text) == warned


@pytest.mark.parametrize("inputs, words", [
    ({"x": (-1, 4, 32, 32), "t": (-1,), "y": (-1,), "cfg_scale": (-1,), "guided": (-1,)}, None),
    ({"x": (-1, 4, 32, 32), "t": (-1,), "y": (-1,), "cfg_scale": (-1,)},
     "the graph's inputs are x, t, y, cfg_scale but its manifest describes x, t, y, cfg_scale, guided"),
    ({"x": (1, 4, 32, 32), "t": (1,), "y": (1,), "cfg_scale": (1,), "guided": (-1,)},
     "input x is (1, 4, 32, 32) in the graph, but its opt shape is (8, 4, 32, 32)"),
    ({"x": (-1, 4, 64, 64), "t": (-1,), "y": (-1,), "cfg_scale": (-1,), "guided": (-1,)},
     "input x is (?, 4, 64, 64) in the graph, but its min shape is (1, 4, 32, 32)"),
    ({"x": (-1, 4, 32), "t": (-1,), "y": (-1,), "cfg_scale": (-1,), "guided": (-1,)},
     "input x is (?, 4, 32) in the graph, but its min shape is (1, 4, 32, 32)"),
])
def test_profile_mismatch_names_the_input(inputs, words):
    mismatch = engine.profile_mismatch(inputs, engine.profile_shapes((4, 32, 32), BatchRange(1, 8, 32)))
    print(mismatch)
    assert mismatch == words


def test_build_engine_writes_plan_cache_and_manifest_through_polygraphy(fake_tensorrt, fake_build, exported_graph):
    from dit_ref.contract import read_manifest

    graph = exported_graph("S/8", 256, "fp16")
    trt = fake_tensorrt(graph_inputs(read_manifest(graph)))
    plan = engine.build_engine(graph, BatchRange(1, 2, 4), optimization_level=1)
    cache = graph.parent / "timing-nvidia-h200-sm90-trt11.4.0.cache"
    assert plan == graph.with_suffix(".plan") and plan.read_bytes() == b"plan" and cache.read_bytes() == b"cache:"
    record = read_manifest(graph).engine
    assert (record.file, record.tensorrt, record.gpu, record.compute_capability, record.optimization_level) == (
        plan.name, "11.4.0", "NVIDIA H200", "9.0", 1)
    assert read_manifest(graph).batch == BatchRange(1, 2, 4)
    assert ("create_network", 1) in trt.calls and ("parse_from_file", str(graph)) in trt.calls  # strongly typed
    assert ("set_shape", "guided", ((0,), (2,), (4,))) in trt.calls
    assert fake_build.network[1].num_inputs == 5 and fake_build.config is trt.config
    assert ("set_memory_pool_limit", trt.MemoryPoolType.WORKSPACE, 2**36) in trt.calls  # half the GPU's memory
    engine.build_engine(graph, BatchRange(1, 2, 4))  # again: the saved timing cache is loaded
    assert ("set_timing_cache", b"cache:") in trt.calls and cache.read_bytes() == b"cache:cache:"


@pytest.mark.parametrize("case, words", [
    ("parse", "TensorRT could not parse DiT-S-8-256-fp16.onnx: /blocks.0/attn/MatMul (MatMul): unsupported type"),
    ("static batch", "DiT-S-8-256-fp16.onnx does not match its manifest: input x is (1, 4, 32, 32) in the graph, "
                     "but its opt shape is (2, 4, 32, 32); re-export it with dit-export"),
    ("set_shape", "TensorRT failed to build an engine from DiT-S-8-256-fp16.onnx (Shape provided for min is "
                  "inconsistent with other shapes.); TensorRT's log above says why"),
    ("build", "TensorRT failed to build an engine from DiT-S-8-256-fp16.onnx (Invalid Engine. Please ensure the "
              "engine was built correctly); TensorRT's log above says why; out of GPU memory: lower --batch MAX"),
])
def test_every_build_failure_is_one_line_and_writes_nothing(fake_tensorrt, fake_build, exported_graph, tmp_path,
                                                            monkeypatch, case, words):
    import shutil

    import tensorrt_fake
    from polygraphy.exception import PolygraphyException

    from dit_ref.contract import read_manifest

    exported = exported_graph("S/8", 256, "fp16")
    graph = tmp_path / exported.name
    for path in exported.parent.iterdir():
        shutil.copy(path, tmp_path / path.name)
    inputs = graph_inputs(read_manifest(graph), 1 if case == "static batch" else -1)
    errors = [("/blocks.0/attn/MatMul", "MatMul", "unsupported\ntype")] if case == "parse" else ()
    fake_tensorrt(inputs, parse_errors=errors)
    if case == "set_shape":  # TensorRT refusing a shape the check let through: the bindings' bare RuntimeError
        set_shape = tensorrt_fake.Profile.set_shape
        monkeypatch.setattr(tensorrt_fake.Profile, "set_shape", lambda profile, name, *shapes: set_shape(
            profile, name, (2, 1), (1,), (1,)))
    if case == "build":
        fake_build.fail = PolygraphyException("Invalid Engine. Please ensure the engine was built correctly")
    before = sorted(path.name for path in tmp_path.iterdir())
    with pytest.raises(DiTError) as caught:
        engine.build_engine(graph, BatchRange(1, 2, 4))
    print(caught.value)
    assert str(caught.value).startswith(words) and "\n" not in str(caught.value)
    assert sorted(path.name for path in tmp_path.iterdir()) == before


def test_without_polygraphy_no_engine_is_built_and_the_reason_says_so(monkeypatch):
    from dit_ref.machine import tensorrt_stack

    monkeypatch.setattr(tensorrt_stack, "engine_unavailable_reason", lambda: None)
    monkeypatch.setitem(sys.modules, "polygraphy", None)
    reason = tensorrt_stack.build_unavailable_reason()
    assert reason.startswith("Polygraphy is not installed: it builds the TensorRT engines (bash scripts/setup-env.sh")
    monkeypatch.setitem(sys.modules, "polygraphy", SimpleNamespace(__version__="0.49.9"))
    assert tensorrt_stack.build_unavailable_reason().startswith("Polygraphy 0.49.9 is too old for TensorRT 11")
