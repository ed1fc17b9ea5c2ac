"""ONNX Runtime on CUDA, the parts a CPU shows: the CUDA libraries preloaded, the session's settings and torch stream,
a CPU fallback refused, output shapes for I/O binding.

ONNX Runtime makes a session on CPU without an error when its CUDA provider cannot load, and puts nodes its CUDA
provider has no kernel for on the CPU; the I/O binding to CUDA memory then fails with an unrelated message, or the
GPU waits on the host every step. Fakes stand in for the GPU here.
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
from dit_ref.runners import onnxruntime_runner as backend


class FakeSession:
    """Stands in for an InferenceSession; providers: what ONNX Runtime actually registered."""

    providers = ["CPUExecutionProvider"]
    assigned = []  # (provider, [(op_type, name), ...]) as get_provider_graph_assignment_info reports
    made = []

    def __init__(self, path, sess_options=None, providers=None):
        FakeSession.made.append(("session", providers))

    def get_providers(self):
        return list(FakeSession.providers)

    def get_provider_graph_assignment_info(self):
        return [SimpleNamespace(ep_name=provider, get_nodes=lambda nodes=nodes: [
            SimpleNamespace(op_type=op_type, name=name) for op_type, name in nodes]) for provider, nodes in self.assigned]


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
        backend.create_session(tmp_path / "g.onnx", torch.device("cuda", 0), stream_handle=1234)
    message = str(caught.value)
    print(message)
    assert message.startswith("ONNX Runtime could not start its CUDA provider for g.onnx, so the session would run on "
                              "CPUExecutionProvider (")
    assert "--device cpu" in message and "gpu-cu12" in message and "\n" not in message
    assert fake_onnxruntime[0] == "preload"  # the CUDA libraries were loaded before the session was made
    assert fake_onnxruntime[1][1][0] == ("CUDAExecutionProvider", {"device_id": 0, "user_compute_stream": "1234",
                                                                    "has_user_compute_stream": "1"})


def test_a_session_on_cuda_is_kept_and_cpu_sessions_load_nothing(fake_onnxruntime, tmp_path):
    FakeSession.providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    session = backend.create_session(tmp_path / "g.onnx", torch.device("cuda", 0), stream_handle=1234)
    assert session.get_providers()[0] == "CUDAExecutionProvider"
    backend.create_session(tmp_path / "g.onnx", torch.device("cuda", 0), stream_handle=1234)
    assert fake_onnxruntime.count("preload") == 1  # once per process
    fake_onnxruntime.clear()
    FakeSession.providers = ["CPUExecutionProvider"]
    backend.create_session(tmp_path / "g.onnx", torch.device("cpu"), threads=1)  # CPU asked, CPU given: fine
    assert fake_onnxruntime == [("session", ["CPUExecutionProvider"])]


def test_a_cuda_session_computing_on_the_cpu_is_refused(fake_onnxruntime, tmp_path):
    # The shape computations ONNX Runtime puts on the CPU by design stay; compute nodes on the CPU are refused.
    FakeSession.providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    FakeSession.assigned = [("CUDAExecutionProvider", [("MatMul", "node_matmul_0")]),
                            ("CPUExecutionProvider", [("Shape", "node_Shape_1"), ("Range", "node_arange_1")])]
    backend.create_session(tmp_path / "g.onnx", torch.device("cuda", 0), stream_handle=1234)  # fine
    FakeSession.assigned.append(("CPUExecutionProvider", [("LayerNormalization", "node_norm_3"),
                                                          ("MatMul", "node_matmul_7")]))
    with pytest.raises(DiTError) as caught:
        backend.create_session(tmp_path / "g.onnx", torch.device("cuda", 0), stream_handle=1234)
    FakeSession.assigned = []
    message = str(caught.value)
    print(message)
    assert "no kernel for 2 compute nodes of g.onnx (LayerNormalization node_norm_3, MatMul node_matmul_7)" in message
    assert "\n" not in message and "--device cpu" in message


def test_cuda_sessions_keep_warnings_and_record_node_placement():
    cuda, cpu = backend.session_settings(torch.device("cuda", 0)), backend.session_settings(torch.device("cpu"), 2)
    assert "log_severity_level" not in cuda  # ONNX Runtime's warning about nodes on the CPU stays visible
    assert cuda["config"] == {"session.record_ep_graph_assignment_info": "1"}
    assert cpu["log_severity_level"] == 3 and cpu["intra_op_num_threads"] == 2 and cpu["inter_op_num_threads"] == 1
    assert cpu["config"] == {"session.intra_op.allow_spinning": "0"}
    assert backend.session_settings(torch.device("cpu"), optimization="basic")["graph_optimization_level"] == \
        "ORT_ENABLE_BASIC"
    assert backend.cuda_provider(1, 94000) == ("CUDAExecutionProvider", {
        "device_id": 1, "user_compute_stream": "94000", "has_user_compute_stream": "1"})


def test_the_placement_this_onnxruntime_reports_is_read(graphs):
    # A real CPU session with the CUDA settings' record entry: every node is on the CPU, its MatMuls among them.
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    session = ort.InferenceSession(str(graphs["fp32"]), options, providers=["CPUExecutionProvider"])
    if not hasattr(session, "get_provider_graph_assignment_info"):
        pytest.skip(f"onnxruntime {ort.__version__} does not report node placement")
    nodes = backend.cpu_compute_nodes(session)
    print(f"{len(nodes)} compute nodes on the CPU provider, e.g. {nodes[:2]}")
    assert any(node.startswith("MatMul ") for node in nodes) and not any(node.startswith("Shape ") for node in nodes)


def test_output_shapes_follow_the_inputs_symbols(graphs):
    runner = backend.OnnxRuntimeRunner(graphs["fp32"], torch.device("cpu"), threads=1)
    given = {"x": (3, 4, 32, 32), "t": (3,), "y": (3,), "cfg_scale": (3,), "guided": (2,)}
    assert backend.resolve_shapes(runner.shapes, given, runner.output_names) == {
        "eps": (3, 4, 32, 32), "var_values": (3, 4, 32, 32)}
    refresh = {"x": ("batch", 4), "guided": ("guided",), "null_features": ("guided", 12), "eps": ("batch", 4)}
    assert backend.resolve_shapes(refresh, {"x": (5, 4), "guided": (0,)}, ("eps", "null_features")) == {
        "eps": (5, 4), "null_features": (0, 12)}
    with pytest.raises(DiTError, match="cannot tell the shape of output eps"):
        backend.resolve_shapes({"x": ("batch",), "eps": ("other", 4)}, {"x": (2,)}, ("eps",))


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
