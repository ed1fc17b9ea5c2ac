"""The TensorRT path on CPU (dit_ref.runners.tensorrt_runner and its pure parts, the TensorRT backend): the
manifest/machine check, dtype table, I/O and input checks, bound addresses, shared device memory, stream order.

Running an engine needs a GPU and TensorRT: tests/gpu/test_tensorrt_gpu.py.
"""

import enum
import sys
from types import SimpleNamespace

import pytest
import torch

from dit_ref.errors import DiTError
from dit_ref.contract import IO_DTYPES, BatchRange, Checkpoint, EngineRecord, GraphRecord, Manifest, input_names, output_names
from dit_ref.machine.tensorrt_stack import engine_unavailable_reason
from dit_ref.runners import tensorrt_binding as binding
from dit_ref.runners import tensorrt_runner as backend
from dit_ref.runners.checks import check_io_tensors
from runtime.backends.graph import check_inputs
from testing_utils import max_rel_error

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
    dtypes = binding.torch_dtypes(SimpleNamespace(DataType=DataType))
    assert dtypes == {DataType.FLOAT: torch.float32, DataType.HALF: torch.float16,
                      DataType.INT32: torch.int32, DataType.INT64: torch.int64}
    Full = enum.IntEnum("DataType", {name: i for i, name in enumerate(binding.TORCH_DTYPES)})
    full = binding.torch_dtypes(SimpleNamespace(DataType=Full))
    assert full[Full.BF16] is torch.bfloat16 and full[Full.FP8] is torch.float8_e4m3fn
    assert full[Full.E8M0] is torch.float8_e8m0fnu  # TensorRT 10.8+ / 11: one byte an element, as torch's


def test_packed_four_bit_types_have_no_torch_dtype_and_are_refused_at_io():
    # INT4 and FP4 pack two values a byte; torch.int4 takes a byte an element: binding them would misread memory.
    Full = enum.IntEnum("DataType", {name: i for i, name in enumerate(binding.TORCH_DTYPES)})
    table = binding.torch_dtypes(SimpleNamespace(DataType=Full))
    assert table[Full.INT4] is None and table[Full.FP4] is None
    assert binding.io_dtype(Full.INT4, table) == "INT4" and binding.io_dtype(Full.FLOAT, table) is torch.float32
    with pytest.raises(DiTError) as caught:
        check_io_tensors(_io(x=(True, binding.io_dtype(Full.FP4, table))))
    print(caught.value)
    assert "x is input FP4 (no torch type), expected input float32" in str(caught.value)


def _io(**changes) -> dict:
    names = (*input_names(True), *output_names(True))  # the guided graph's I/O
    io = {name: (name in ("x", "t", "y", "cfg_scale", "guided"), IO_DTYPES[name]) for name in names}
    io.update(changes)
    return io


def test_io_contract_accepts_the_graph_contract():
    check_io_tensors(_io())  # no error


@pytest.mark.parametrize("changes, shown", [
    ({"x": (True, torch.float16)}, "x is input float16, expected input float32"),  # FP16 I/O: not the contract
    ({"t": (True, torch.int32)}, "t is input int32, expected input int64"),
    ({"eps": (True, torch.float32)}, "eps is input float32, expected output float32"),
    ({"extra": (False, torch.float32)}, "extra is output float32, expected absent"),
])
def test_io_contract_rejects_other_engines(changes, shown):
    with pytest.raises(DiTError) as caught:
        check_io_tensors(_io(**changes))
    print(caught.value)
    assert shown in str(caught.value)


def test_io_contract_rejects_a_missing_output():
    io = _io()
    del io["var_values"]
    with pytest.raises(DiTError, match="var_values is absent, expected output float32"):
        check_io_tensors(io)


def _inputs(batch, latent=32, labels=None):
    labels = batch if labels is None else labels
    return (torch.zeros(batch, 4, latent, latent), torch.zeros(labels, dtype=torch.int64),
            torch.zeros(labels, dtype=torch.int64), torch.ones(batch))


def test_inputs_in_range_give_the_batch():
    assert check_inputs(*_inputs(3), latent_shape=(4, 32, 32), batch_range=BatchRange(1, 8, 8)) == 3


@pytest.mark.parametrize("inputs, match", [
    (_inputs(9), "outside the engine's range 1..8"),
    (_inputs(2, latent=64), r"expected x \(B, 4, 32, 32\)"),
    (_inputs(2, labels=3), "expected x"),
])
def test_bad_inputs_are_refused(inputs, match):
    with pytest.raises(DiTError, match=match):
        check_inputs(*inputs, latent_shape=(4, 32, 32), batch_range=BatchRange(1, 8, 8))


def test_runner_refuses_with_the_reason_without_tensorrt(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as on a machine without TensorRT
    reason = engine_unavailable_reason()
    with pytest.raises(DiTError) as caught:
        backend.TensorRTRunner(tmp_path / PLAN, _manifest())
    assert str(caught.value) == reason


def test_offset_slices_are_copied_to_an_aligned_address():
    labels = torch.arange(64, dtype=torch.int64)
    for window in (labels[3:5], labels[1:], torch.rand(9, dtype=torch.float32)[1:]):
        fixed = binding.aligned(window)
        print(f"address mod 256: {window.data_ptr() % 256} -> {fixed.data_ptr() % 256}")
        assert fixed.data_ptr() % 256 == 0 and fixed.dtype == window.dtype and torch.equal(fixed, window)
    start = binding.aligned(labels[3:5])
    assert binding.aligned(start) is start  # already aligned: no copy


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
    """An execution context stand-in: logs runs and the device memory it is given; infers output shapes as a DiT
    engine does (eps (B, ...), null_features (U, ...)); `refuse` names the call that returns False."""

    def __init__(self, log, refuse=None):
        self.log, self.refuse, self.shapes, self.addresses = log, refuse, {}, {}

    def execute_async_v3(self, handle):
        self.log.append(("execute", handle))
        return True

    def set_device_memory(self, address, size):
        self.log.append(("memory", address, size))

    def set_input_shape(self, name, shape):
        self.shapes[name] = shape
        return self.refuse != "set_input_shape"

    def get_tensor_shape(self, name):
        rows = self.shapes["guided" if name == "null_features" else "x"][0]
        return (rows, 2, 3) if name in ("features", "null_features") else (-1 if self.refuse == "shape" else rows, 4)

    def set_tensor_address(self, name, address):
        self.addresses[name] = address
        return self.refuse != "set_tensor_address"


def _bare_runner(outputs=("eps",)):
    """A TensorRTRunner on the CPU without an engine: only what binding, _execute and the capture use."""
    runner = object.__new__(backend.TensorRTRunner)
    runner.device, runner.path, runner._last_stream = torch.device("cpu"), backend.Path(PLAN), None
    runner.output_names, runner.dtypes = outputs, {name: torch.float32 for name in outputs}
    runner._spare = binding.aligned_buffer(binding.ADDRESS_ALIGNMENT, "cpu")
    return runner


def test_a_new_stream_waits_for_the_last_run_of_any_context():
    # Every context of a runner shares one device memory: a run on another stream than the runner's last run
    # (of any context) waits for it first.
    log = []
    runner, context, other = _bare_runner(), FakeContext(log), FakeContext(log)
    first, second = FakeStream(11, log), FakeStream(22, log)
    runner._execute(context, first)
    runner._execute(context, first)  # the same stream: CUDA keeps the order
    runner._execute(context, second)  # the caller switched streams
    runner._execute(context, second)
    assert log == [("execute", 11), ("execute", 11), ("wait", 22, 11), ("execute", 22), ("execute", 22)]
    log.clear()
    runner._execute(other, first)  # another context, the same memory: it waits for the last run too
    assert log == [("wait", 11, 22), ("execute", 11)]


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
    assert _bare_runner()._capture_graph(FakeContext(log), key=(("x", (3, 4)),)) == "graph"
    print(log)
    assert log == [("wait", 99, 7),  # the I/O tensors written on the caller's stream
                   ("execute", 99), ("synchronize", 99),  # warm-up on the capture stream itself, finished
                   ("capture begins", 99), ("execute", 99), ("capture ends", 99), ("set stream", 7)]


def test_every_io_tensor_is_bound_at_an_aligned_non_null_address():
    # A refresh engine with no row guided: guided and null_features are empty, whose own address may be null.
    runner = _bare_runner(("eps", "features", "null_features"))
    context = FakeContext([])
    feeds = {"x": torch.rand(3, 4)[1:], "guided": torch.zeros(0, dtype=torch.int64)}  # x at an offset: unaligned
    feeds = {name: binding.aligned(value) for name, value in feeds.items()}
    outputs = runner._bind(context, feeds)
    print({name: address % 256 for name, address in context.addresses.items()})
    assert set(context.addresses) == {"x", "guided", "eps", "features", "null_features"}
    assert all(address and address % 256 == 0 for address in context.addresses.values())
    assert outputs["null_features"].shape == (0, 2, 3) and outputs["features"].shape == (2, 2, 3)
    assert outputs["eps"].shape == (2, 4) and outputs["null_features"].dtype == torch.float32


@pytest.mark.parametrize("refuse, words", [("set_input_shape", "refused shape"),
                                           ("set_tensor_address", "refused the address of"),
                                           ("shape", "could not infer the shape of output eps")])
def test_every_tensorrt_result_is_checked(refuse, words):
    runner = _bare_runner()
    with pytest.raises(DiTError, match=words):
        runner._bind(FakeContext([], refuse), {"x": torch.zeros(2, 4)})


def test_empty_tensors_are_bound_at_a_real_allocation():
    spare = binding.aligned_buffer(binding.ADDRESS_ALIGNMENT, "cpu")
    for empty in (torch.zeros(0, dtype=torch.int64), torch.empty(0, 12, 2, 16, 384), torch.empty(3, 0)):
        assert empty.data_ptr() == 0  # torch's data pointer of an empty tensor: what TensorRT refuses
        assert binding.address(empty, spare) == spare.data_ptr() != 0 and spare.data_ptr() % 256 == 0
    full = binding.aligned(torch.arange(5))
    assert binding.address(full, spare) == full.data_ptr()
    assert binding.aligned_buffer(1000, "cpu").data_ptr() % 256 == 0 and binding.aligned_buffer(0, "cpu").numel() == 1


def test_contexts_share_one_device_memory(monkeypatch):
    log = []
    strategies = SimpleNamespace(USER_MANAGED="user-managed")
    monkeypatch.setitem(sys.modules, "tensorrt", SimpleNamespace(ExecutionContextAllocationStrategy=strategies))
    runner = _bare_runner()
    runner._memory = binding.aligned_buffer(4096, "cpu")
    runner.engine = SimpleNamespace(create_execution_context=lambda strategy: log.append(strategy) or FakeContext(log))
    runner._new_context(), runner._new_context()
    address = runner._memory.data_ptr()
    assert log == ["user-managed", ("memory", address, 4096)] * 2 and address % 256 == 0


def test_capture_keys_are_the_input_shapes():
    def feeds(batch, guided):
        return {"x": torch.zeros(batch, 4, 8, 8), "t": torch.zeros(batch), "guided": torch.arange(guided)}

    keys = [binding.capture_key(feeds(batch, guided)) for batch, guided in ((3, 3), (8, 8), (3, 3), (3, 0))]
    assert keys[0] == keys[2] and len(set(keys)) == 3
    assert keys[3] == (("x", (3, 4, 8, 8)), ("t", (3,)), ("guided", (0,)))


def test_memory_plan_of_one_allocation_against_one_a_context():
    # cuda_graphs over batch 1..32 with guided rows: a context per (B, U), U = 0..B: 32 * 33 / 2 + 32 = 560.
    contexts = binding.graph_pairs(BatchRange(1, 8, 32), guided_rows=True)
    plan = binding.memory_plan(300 * 2**20, contexts)
    print(f"{contexts} contexts of 300 MiB: {plan['unshared_bytes'] / 2**30:.0f} GiB one each, "
          f"{plan['shared_bytes'] / 2**20:.0f} MiB shared")
    assert contexts == 560 and binding.graph_pairs(BatchRange(1, 8, 32), guided_rows=False) == 32
    assert plan == {"contexts": 560, "shared_bytes": 300 * 2**20, "unshared_bytes": 560 * 300 * 2**20}
    assert binding.memory_plan(10, 0)["shared_bytes"] == 0


def test_the_gpu_tests_onnxruntime_and_reference_halves_agree_on_the_cpu(graphs):
    # tests/gpu/test_tensorrt_gpu.py compares an engine with these two; a feed without `guided` fails here.
    from testing_utils import engine_case_inputs, graph_feeds, onnxruntime_outputs, reference_outputs

    from dit_ref.contract import read_manifest

    for batch in (1, 3):
        inputs = engine_case_inputs("S/8", 256, batch, seed=batch)
        feeds = graph_feeds(read_manifest(graphs["fp32"]), *inputs)
        error = max_rel_error(onnxruntime_outputs(graphs["fp32"], *inputs), reference_outputs("S/8", 256, *inputs))
        print(f"batch {batch}: guided rows {feeds['guided'].tolist()}, ONNX Runtime vs torch {error:.2e} (limit 1e-4)")
        assert feeds["guided"].tolist() == list(range(1, batch)) and error < 1e-4


def test_the_gpu_tests_expected_capture_keys():
    from testing_utils import capture_keys, engine_case_inputs

    calls = [engine_case_inputs("S/8", 256, batch, seed=100 + step) for step, batch in enumerate([3, 8, 3, 3])]
    keys = capture_keys(_manifest().replace(guided_rows=True), calls)
    print(keys)
    assert [(dict(key)["x"][0], dict(key)["guided"][0]) for key in keys] == [(3, 2), (8, 7)]
