"""runtime.backends.tensorrt_backend on CPU: the manifest/machine check, dtype table, I/O and input checks.

Running an engine needs a GPU and TensorRT: tests/gpu/test_tensorrt_gpu.py.
"""

import enum
import sys
from types import SimpleNamespace

import pytest
import torch

from dit_ref.errors import DiTError
from dit_ref.contract import BatchRange, Checkpoint, EngineRecord, GraphRecord, Manifest
from dit_ref.machine.tensorrt_stack import engine_unavailable_reason
from runtime.backends import tensorrt_backend as backend

PLAN = "DiT-S-2-256-fp16.plan"


def _manifest(tensorrt="10.12.0.36", compute_capability="8.6", engine=True) -> Manifest:
    gpu = "NVIDIA A100-SXM4-80GB" if compute_capability == "8.0" else "NVIDIA A10"
    return Manifest(
        model="DiT-S/2", image_size=256, latent_size=32, latent_channels=4, num_classes=1000, learn_sigma=True,
        patch_size=2, decoder="vae", precision="fp16", cfg_channels=3, numerics="official", batch=BatchRange(1, 4, 8),
        opset=18, checkpoint=Checkpoint("random init (seed 0)", None, True), versions={}, created="",
        graph=GraphRecord("DiT-S-2-256-fp16.onnx", "0" * 64, None),
        engine=EngineRecord(PLAN, tensorrt, gpu, compute_capability, 1.0, 3) if engine else None)


def test_engine_fits_the_machine_it_was_built_on():
    backend.check_engine_fits(_manifest(), PLAN, "10.12.0.36", (8, 6))  # no error


def test_other_tensorrt_release_is_refused_naming_both():
    with pytest.raises(DiTError) as caught:
        backend.check_engine_fits(_manifest(tensorrt="10.12.0.36"), PLAN, "11.4.0", (8, 6))
    message = str(caught.value)
    print(message)
    assert "10.12.0.36" in message and "11.4.0" in message
    assert "dit-export build DiT-S-2-256-fp16.onnx" in message and "\n" not in message


def test_patch_releases_differ_too():
    with pytest.raises(DiTError, match="10.12.1"):
        backend.check_engine_fits(_manifest(tensorrt="10.12.0.36"), PLAN, "10.12.1.4", (8, 6))


def test_other_compute_capability_is_refused():
    with pytest.raises(DiTError) as caught:
        backend.check_engine_fits(_manifest(compute_capability="8.0"), PLAN, "10.12.0.36", (8, 6))
    message = str(caught.value)
    print(message)
    assert "8.0" in message and "8.6" in message and "dit-export build DiT-S-2-256-fp16.onnx" in message


def test_manifest_without_engine_is_refused():
    with pytest.raises(DiTError, match="has no engine; build one with dit-export build DiT-S-2-256-fp16.onnx"):
        backend.check_engine_fits(_manifest(engine=False), PLAN, "10.12.0.36", (8, 6))


def test_dtype_table_maps_by_member_not_by_number():
    # 10.x and 11.x number DataType differently, and an older TensorRT may lack BF16 / FP8.
    DataType = enum.IntEnum("DataType", {"INT64": 0, "FLOAT": 1, "HALF": 2, "INT32": 3})
    dtypes = backend.torch_dtypes(SimpleNamespace(DataType=DataType))
    assert dtypes == {DataType.FLOAT: torch.float32, DataType.HALF: torch.float16,
                      DataType.INT32: torch.int32, DataType.INT64: torch.int64}
    Full = enum.IntEnum("DataType", {name: i for i, name in enumerate(backend.TORCH_DTYPES)})
    full = backend.torch_dtypes(SimpleNamespace(DataType=Full))
    assert full[Full.BF16] is torch.bfloat16 and full[Full.FP8] is torch.float8_e4m3fn


def _io(**changes) -> dict:
    names = (*backend.input_names(True), *backend.output_names(True))  # the guided graph's I/O
    io = {name: (name in ("x", "t", "y", "cfg_scale", "guided"), backend.IO_DTYPES[name]) for name in names}
    io.update(changes)
    return io


def test_io_contract_accepts_the_graph_contract():
    backend.check_io_tensors(_io())  # no error


@pytest.mark.parametrize("changes, shown", [
    ({"x": (True, torch.float16)}, "x is input float16, expected input float32"),  # FP16 I/O: not the contract
    ({"t": (True, torch.int32)}, "t is input int32, expected input int64"),
    ({"eps": (True, torch.float32)}, "eps is input float32, expected output float32"),
    ({"extra": (False, torch.float32)}, "extra is output float32, expected absent"),
])
def test_io_contract_rejects_other_engines(changes, shown):
    with pytest.raises(DiTError) as caught:
        backend.check_io_tensors(_io(**changes))
    print(caught.value)
    assert shown in str(caught.value)


def test_io_contract_rejects_a_missing_output():
    io = _io()
    del io["var_values"]
    with pytest.raises(DiTError, match="var_values is absent, expected output float32"):
        backend.check_io_tensors(io)


def _inputs(batch, latent=32, labels=None):
    labels = batch if labels is None else labels
    return (torch.zeros(batch, 4, latent, latent), torch.zeros(labels, dtype=torch.int64),
            torch.zeros(labels, dtype=torch.int64), torch.ones(batch))


def test_inputs_in_range_give_the_batch():
    assert backend.check_inputs(*_inputs(3), latent_shape=(4, 32, 32), batch_range=BatchRange(1, 8, 8)) == 3


@pytest.mark.parametrize("inputs, match", [
    (_inputs(9), "outside the engine's range 1..8"),
    (_inputs(2, latent=64), r"expected x \(B, 4, 32, 32\)"),
    (_inputs(2, labels=3), "expected x"),
])
def test_bad_inputs_are_refused(inputs, match):
    with pytest.raises(DiTError, match=match):
        backend.check_inputs(*inputs, latent_shape=(4, 32, 32), batch_range=BatchRange(1, 8, 8))


def test_denoiser_refuses_with_the_reason_without_tensorrt(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as on a machine without TensorRT
    reason = engine_unavailable_reason()
    with pytest.raises(DiTError) as caught:
        backend.TensorRTDenoiser(tmp_path / PLAN, _manifest())
    assert str(caught.value) == reason


def test_offset_slices_are_copied_to_an_aligned_address():
    labels = torch.arange(64, dtype=torch.int64)
    for window in (labels[3:5], labels[1:], torch.rand(9, dtype=torch.float32)[1:]):
        fixed = backend.aligned(window)
        print(f"address mod 256: {window.data_ptr() % 256} -> {fixed.data_ptr() % 256}")
        assert fixed.data_ptr() % 256 == 0 and fixed.dtype == window.dtype and torch.equal(fixed, window)
    start = backend.aligned(labels[3:5])
    assert backend.aligned(start) is start  # already aligned: no copy


def test_another_gpu_model_of_the_same_architecture_is_refused_naming_both():
    manifest = _manifest()  # built on an NVIDIA A10, compute capability 8.6
    backend.check_engine_fits(manifest, PLAN, "10.12.0.36", (8, 6), "NVIDIA A10")  # the same model: no error
    backend.check_engine_fits(manifest, PLAN, "10.12.0.36", (8, 6), " nvidia  a10")  # spacing and case
    with pytest.raises(DiTError) as caught:
        backend.check_engine_fits(manifest, PLAN, "10.12.0.36", (8, 6), "NVIDIA A40")  # also sm 8.6
    message = str(caught.value)
    print(message)
    assert "NVIDIA A10 " in message and "NVIDIA A40" in message and "\n" not in message
    assert message.endswith("rebuild it on this machine with: dit-export build DiT-S-2-256-fp16.onnx")


class FakeStream:
    """A torch.cuda.Stream stand-in that logs what is done to it into a shared list."""

    def __init__(self, handle, log):
        self.cuda_stream, self.log = handle, log

    def wait_stream(self, other):
        self.log.append(("wait", self.cuda_stream, other.cuda_stream))

    def synchronize(self):
        self.log.append(("synchronize", self.cuda_stream))


class FakeContext:
    def __init__(self, log):
        self.log = log

    def execute_async_v3(self, handle):
        self.log.append(("execute", handle))
        return True


def _bare_denoiser():
    """A TensorRTDenoiser without an engine: only what _execute and the capture use."""
    denoiser = object.__new__(backend.TensorRTDenoiser)
    denoiser.device, denoiser.plan_path, denoiser._last_streams = torch.device("cuda", 0), backend.Path(PLAN), {}
    return denoiser


def test_one_context_on_a_new_stream_waits_for_its_last_stream():
    log = []
    denoiser, context = _bare_denoiser(), FakeContext(log)
    first, second = FakeStream(11, log), FakeStream(22, log)
    denoiser._execute(context, first)
    denoiser._execute(context, first)  # the same stream: CUDA keeps the order
    denoiser._execute(context, second)  # the caller switched streams
    denoiser._execute(context, second)
    assert log == [("execute", 11), ("execute", 11), ("wait", 22, 11), ("execute", 22), ("execute", 22)]
    log.clear()
    denoiser._execute(FakeContext(log), first)  # another context has its own history
    assert log == [("execute", 11)]


def test_warm_up_runs_on_the_capture_stream_and_finishes_before_the_capture(monkeypatch):
    import contextlib

    log = []
    caller, capture = FakeStream(7, log), FakeStream(99, log)

    @contextlib.contextmanager
    def graph(cuda_graph, stream, capture_error_mode):
        log.append(("capture begins", stream.cuda_stream))
        yield
        log.append(("capture ends", stream.cuda_stream))

    monkeypatch.setattr(torch.cuda, "Stream", lambda device: capture)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: caller)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: "graph")
    monkeypatch.setattr(torch.cuda, "graph", graph)
    monkeypatch.setattr(torch.cuda, "set_stream", lambda stream: log.append(("set stream", stream.cuda_stream)))
    assert _bare_denoiser()._capture_graph(FakeContext(log), batch=3) == "graph"
    print(log)
    assert log == [("wait", 99, 7),  # the I/O tensors written on the caller's stream
                   ("execute", 99), ("synchronize", 99),  # warm-up on the capture stream itself, finished
                   ("capture begins", 99), ("execute", 99), ("capture ends", 99), ("set stream", 7)]
