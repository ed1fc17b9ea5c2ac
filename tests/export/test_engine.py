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

