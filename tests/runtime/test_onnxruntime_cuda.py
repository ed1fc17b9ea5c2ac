"""ONNX Runtime on CUDA, the parts a CPU shows: the CUDA libraries preloaded, a CPU fallback refused.

ONNX Runtime makes a session on CPU without an error when its CUDA provider cannot load; the I/O
binding to CUDA memory then fails with an unrelated message. Fakes stand in for the GPU here.
"""

import logging
import sys
from types import ModuleType, SimpleNamespace

import onnxruntime
import pytest
import torch

from dit_ref.errors import DiTError
from dit_ref.machine.onnxruntime_stack import NOT_INSTALLED, import_onnxruntime
from dit_ref.machine import onnxruntime_stack as stack
from runtime.backends import onnxruntime_backend as backend


class FakeSession:
    """Stands in for an InferenceSession; providers: what ONNX Runtime actually registered."""

    providers = ["CPUExecutionProvider"]
    made = []

    def __init__(self, path, sess_options=None, providers=None):
        FakeSession.made.append(("session", providers))

    def get_providers(self):
        return list(FakeSession.providers)


@pytest.fixture
def fake_onnxruntime(monkeypatch):
    """onnxruntime with a recording preload_dlls and FakeSession; the preload cache cleared around it."""
    calls = FakeSession.made = []
    monkeypatch.setattr(onnxruntime, "preload_dlls", lambda *a, **k: calls.append("preload"), raising=False)
    monkeypatch.setattr(onnxruntime, "InferenceSession", FakeSession)
    backend.preload_cuda_libraries.cache_clear()
    yield calls
    backend.preload_cuda_libraries.cache_clear()


def test_a_session_asked_for_cuda_that_fell_back_to_cpu_is_refused(fake_onnxruntime, tmp_path):
    FakeSession.providers = ["CPUExecutionProvider"]
    with pytest.raises(DiTError) as caught:
        backend.create_session(tmp_path / "g.onnx", torch.device("cuda", 0))
    message = str(caught.value)
    print(message)
    assert message.startswith("ONNX Runtime could not start its CUDA provider for g.onnx, so the session would run on "
                              "CPUExecutionProvider (")
    assert "--device cpu" in message and "gpu-cu12" in message and "\n" not in message
    assert fake_onnxruntime[0] == "preload"  # the CUDA libraries were loaded before the session was made
    assert fake_onnxruntime[1][1][0] == ("CUDAExecutionProvider", {"device_id": 0})


def test_a_session_on_cuda_is_kept_and_cpu_sessions_load_nothing(fake_onnxruntime, tmp_path):
    FakeSession.providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    session = backend.create_session(tmp_path / "g.onnx", torch.device("cuda", 0))
    assert session.get_providers()[0] == "CUDAExecutionProvider"
    backend.create_session(tmp_path / "g.onnx", torch.device("cuda", 0))
    assert fake_onnxruntime.count("preload") == 1  # once per process
    fake_onnxruntime.clear()
    FakeSession.providers = ["CPUExecutionProvider"]
    backend.create_session(tmp_path / "g.onnx", torch.device("cpu"), threads=1)  # CPU asked, CPU given: fine
    assert fake_onnxruntime == [("session", ["CPUExecutionProvider"])]


def test_preload_is_skipped_before_1_21_and_its_failure_is_a_warning(caplog):
    backend.preload_cuda_libraries(ModuleType("onnxruntime"))  # onnxruntime < 1.21: no preload_dlls

    def broken():
        raise RuntimeError("Invalid parameter of directory=x. The directory does not exist!")

    failing = ModuleType("onnxruntime")
    failing.preload_dlls = broken
    with caplog.at_level(logging.WARNING):
        backend.preload_cuda_libraries(failing)
    assert "relying on the system's CUDA libraries" in caplog.text


def test_the_provider_library_error_names_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(stack.platform, "system", lambda: "Linux")
    fake = SimpleNamespace(__file__=str(tmp_path / "onnxruntime" / "__init__.py"))
    capi = tmp_path / "onnxruntime" / "capi"
    capi.mkdir(parents=True)
    assert "libonnxruntime_providers_shared.so is not in" in stack.cuda_provider_load_error(fake)
    for name in ("libonnxruntime_providers_shared.so", "libonnxruntime_providers_cuda.so"):
        (capi / name).write_bytes(b"not a shared library")
    error = stack.cuda_provider_load_error(fake)
    print(error)
    assert "libonnxruntime_providers_shared.so" in error and "\n" not in error  # the loader's own words


def test_the_cpu_package_has_no_cuda_provider_library():
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this is onnxruntime-gpu")
    assert "libonnxruntime_providers_cuda.so is not in" in stack.cuda_provider_load_error(onnxruntime)


def test_a_missing_onnxruntime_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(DiTError) as caught:
        import_onnxruntime()
    assert str(caught.value) == NOT_INSTALLED and "'.[cpu]'" in NOT_INSTALLED
