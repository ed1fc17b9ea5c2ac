"""ONNX Runtime: a graph on its CPU provider (numpy views in, torch views out, no copies) or its CUDA provider (I/O
binding on torch CUDA tensors, on a torch stream).

A CUDA session loads the CUDA libraries of the onnxruntime-gpu wheels first, runs on the torch stream current when it
is opened (a stream of its own when that is the legacy default stream, which ONNX Runtime does not take), and is
refused when its compute runs on the CPU: ONNX Runtime falls back to the CPU without an error when its CUDA provider
cannot load, and puts on the CPU any node its CUDA provider has no kernel for.
"""

from pathlib import Path

import numpy as np
import torch

from dit_ref.errors import DiTError
from dit_ref.machine.cpu import physical_cores
from dit_ref.machine.onnxruntime_stack import cuda_provider_load_error, import_onnxruntime, preload_cuda_libraries
from dit_ref.machine.tensorrt_stack import GPU_SET_UP, precision_unsupported_reason
from dit_ref.runners.base import Runner

CUDA_PROVIDER = "CUDAExecutionProvider"
OPTIMIZATIONS = {"all": "ORT_ENABLE_ALL", "basic": "ORT_ENABLE_BASIC"}  # basic: the checks run the graph as written
DTYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(bfloat16)": torch.bfloat16,
          "tensor(double)": torch.float64, "tensor(int64)": torch.int64, "tensor(int32)": torch.int32,
          "tensor(int8)": torch.int8, "tensor(uint8)": torch.uint8, "tensor(bool)": torch.bool}
NUMPY_DTYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.float64: np.float64, torch.int64: np.int64,
                torch.int32: np.int32, torch.int8: np.int8, torch.uint8: np.uint8, torch.bool: np.bool_}
# Nodes that carry a graph's compute: on the CPU in a CUDA session, the GPU waits on the host at every step. ONNX
# Runtime also puts small shape computations (Shape -> Squeeze -> Range, ...) on the CPU by design; those stay.
COMPUTE_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose", "Einsum", "Attention", "MultiHeadAttention",
               "LayerNormalization", "GroupNormalization", "InstanceNormalization", "Softmax", "Resize")


def session_settings(device: torch.device, threads: int | None = None, optimization: str = "all") -> dict:
    """What a session on `device` is opened with: SessionOptions attributes, and session config entries."""
    settings = {"graph_optimization_level": OPTIMIZATIONS[optimization], "config": {}}
    if device.type == "cpu":
        settings["log_severity_level"] = 3  # errors only: the FP16 graph's casts make CPU-provider warnings
        settings["intra_op_num_threads"] = threads or physical_cores()
        settings["inter_op_num_threads"] = 1  # the graph is one chain of ops: parallelism is intra-op
        # No spinning between ops: idle workers that spin hold the cores from the next session's run (cached steps
        # alternate a refresh and a reuse session) and from other processes (docs/benchmarks.md gives the figures).
        settings["config"]["session.intra_op.allow_spinning"] = "0"
    else:  # warnings stay on: ONNX Runtime says there which nodes it placed on the CPU
        settings["config"]["session.record_ep_graph_assignment_info"] = "1"  # read by cpu_compute_nodes
    return settings


def cuda_provider(device_index: int, stream_handle: int) -> tuple[str, dict]:
    """The CUDA provider on a device, computing on the given CUDA stream (a torch stream's handle, not 0)."""
    return CUDA_PROVIDER, {"device_id": device_index, "user_compute_stream": str(stream_handle),
                           "has_user_compute_stream": "1"}


def create_session(graph_path: Path, device: torch.device, threads: int | None = None, optimization: str = "all",
                   stream_handle: int | None = None):
    """An InferenceSession for the graph on `device` (a CUDA one on the stream stream_handle); DiTError (one line) if
    the file is not a loadable graph or a CUDA session's compute would run on the CPU."""
    ort = import_onnxruntime()
    settings = session_settings(device, threads, optimization)
    options = ort.SessionOptions()
    for name, value in settings.items():
        if name == "graph_optimization_level":
            options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, value)
        elif name != "config":
            setattr(options, name, value)
    for key, value in settings["config"].items():
        options.add_session_config_entry(key, value)
    if device.type == "cpu":
        providers = ["CPUExecutionProvider"]
    else:
        preload_cuda_libraries(ort)
        providers = [cuda_provider(device.index or 0, stream_handle), "CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(str(graph_path), sess_options=options, providers=providers)
    except Exception as error:  # onnxruntime raises its own pybind types (InvalidProtobuf, Fail, ...)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DiTError(f"cannot load the ONNX graph {graph_path}: {reason[:300]}; re-export it with dit-export") from None
    if device.type == "cuda":
        check_first_provider(session, Path(graph_path).name)
        check_no_cpu_compute(session, Path(graph_path).name)
    return session


def check_first_provider(session, graph_name: str) -> None:
    """DiTError (one line) unless CUDA is the session's first provider (its CUDA provider loaded)."""
    providers = list(session.get_providers())
    if providers and providers[0] == CUDA_PROVIDER:
        return
    why = cuda_provider_load_error(import_onnxruntime()) or "ONNX Runtime's log above says why"
    raise DiTError(f"ONNX Runtime could not start its CUDA provider for {graph_name}, so the session would run "
                   f"on {', '.join(providers) or 'no provider'} ({why}); set up the GPU stack of your CUDA "
                   f"flavour ({GPU_SET_UP}) or use --device cpu")


def cpu_compute_nodes(session) -> list[str]:
    """"MatMul node_matmul_3", ...: the compute nodes ONNX Runtime placed on its CPU provider (empty where this ONNX
    Runtime cannot tell: get_provider_graph_assignment_info is recent)."""
    assignment = getattr(session, "get_provider_graph_assignment_info", None)
    if assignment is None:
        return []
    return [f"{node.op_type} {node.name}" for part in assignment() if part.ep_name == "CPUExecutionProvider"
            for node in part.get_nodes() if node.op_type in COMPUTE_OPS]


def check_no_cpu_compute(session, graph_name: str) -> None:
    """DiTError (one line) when a CUDA session would compute on the CPU (nodes its CUDA provider has no kernel for)."""
    nodes = cpu_compute_nodes(session)
    if nodes:
        raise DiTError(f"ONNX Runtime's CUDA provider has no kernel for {len(nodes)} compute nodes of {graph_name} "
                       f"({', '.join(nodes[:3])}{', ...' if len(nodes) > 3 else ''}), which would run on the CPU; "
                       f"use a TensorRT engine (dit-export build {graph_name}) or --device cpu")


def check_precision(precision: str, device: torch.device, name: str) -> None:
    """DiTError for a graph precision ONNX Runtime cannot run on this device: bf16 on a CPU (no bfloat16
    MatMul, Conv and Gemm kernels there) or on a GPU older than Ampere."""
    if precision == "bf16" and device.type == "cpu":
        raise DiTError(f"{name} is a bf16 graph, and ONNX Runtime has no bfloat16 CPU kernels for its MatMul, "
                       f"Conv and Gemm: run it with --backend openvino (auto picks it on a CPU)")
    if device.type == "cuda":
        reason = precision_unsupported_reason(precision, torch.cuda.get_device_capability(device),
                                              torch.cuda.get_device_name(device))
        if reason:
            raise DiTError(f"cannot run {name}: {reason}")


def resolve_shapes(declared: dict, given: dict, names) -> dict:
    """The shapes of `names` (outputs) whose declared dimensions are numbers or the symbols of the inputs' dimensions
    ("batch", "guided"), for inputs of the given shapes; DiTError for a dimension no input determines."""
    symbols = {}
    for name, shape in given.items():
        for dimension, size in zip(declared[name], shape):
            if isinstance(dimension, str):
                symbols[dimension] = int(size)
    resolved = {}
    for name in names:
        unknown = [dimension for dimension in declared[name] if not isinstance(dimension, int) and dimension not in symbols]
        if unknown:
            raise DiTError(f"cannot tell the shape of output {name} {tuple(declared[name])}: {unknown[0]!r} is no "
                           "input's dimension")
        resolved[name] = tuple(dimension if isinstance(dimension, int) else symbols[dimension]
                               for dimension in declared[name])
    return resolved


def default_device() -> torch.device:
    """cuda when torch sees a GPU and onnxruntime has its CUDA provider, else cpu."""
    ort = import_onnxruntime()
    cuda = torch.cuda.is_available() and CUDA_PROVIDER in ort.get_available_providers()
    return torch.device("cuda" if cuda else "cpu")


def runner_device(device: torch.device | None) -> torch.device:
    """The device asked for (or the default), with its index on a GPU; DiTError for one ONNX Runtime cannot use."""
    ort = import_onnxruntime()
    device = device or default_device()
    if device.type == "cuda" and CUDA_PROVIDER not in ort.get_available_providers():
        raise DiTError(f"onnxruntime {ort.__version__} has no CUDA provider (the CPU package); set up the GPU "
                       f"stack of your CUDA flavour ({GPU_SET_UP}) or use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise DiTError(f"the ONNX Runtime backend runs on cpu or cuda, not {device}")
    if device.type == "cuda" and device.index is None:  # one GPU for the session and the binding
        device = torch.device("cuda", torch.cuda.current_device())
    return device


class OnnxRuntimeRunner(Runner):
    """A graph in ONNX Runtime on the CPU or a CUDA GPU."""

    runtime = "onnxruntime"

    def __init__(self, path: Path, device: torch.device | None = None, threads: int | None = None,
                 optimization: str = "all", precision: str | None = None):
        self.path, self.device = Path(path), runner_device(device)
        if precision is not None:
            check_precision(precision, self.device, self.path.name)
        self.stream = None
        if self.device.type == "cuda":  # the caller's stream, or its own where that is the legacy default stream
            current = torch.cuda.current_stream(self.device)
            self.stream = current if current.cuda_stream != 0 else torch.cuda.Stream(self.device)
        self.session = create_session(self.path, self.device, threads, optimization,
                                      self.stream.cuda_stream if self.stream is not None else None)
        nodes = [*self.session.get_inputs(), *self.session.get_outputs()]
        self.input_names = tuple(node.name for node in self.session.get_inputs())
        self.output_names = tuple(node.name for node in self.session.get_outputs())
        self.shapes = {node.name: tuple(node.shape) for node in nodes}
        self.dtypes = {node.name: DTYPES.get(node.type, node.type) for node in nodes}
        self.name = f"onnxruntime-{self.device.type}"

    def close(self) -> None:
        self.session = None

    def run(self, inputs: dict) -> dict:
        inputs = self.feeds(inputs)
        if self.device.type == "cpu":
            outputs = self.session.run(list(self.output_names), {name: value.numpy() for name, value in inputs.items()})
            return {name: torch.from_numpy(output) for name, output in zip(self.output_names, outputs)}
        return self._run_cuda(inputs)

    def _run_cuda(self, inputs: dict) -> dict:
        """I/O binding on torch CUDA tensors, on the session's stream, ordered after the caller's pending work."""
        shapes = resolve_shapes(self.shapes, {name: value.shape for name, value in inputs.items()}, self.output_names)
        outputs = {name: torch.empty(shape, dtype=self.dtypes[name], device=self.device) for name, shape in shapes.items()}
        binding = self.session.io_binding()
        for name, value in {**inputs, **outputs}.items():
            bind = binding.bind_input if name in inputs else binding.bind_output
            bind(name, "cuda", self.device.index, NUMPY_DTYPES[value.dtype], tuple(value.shape), value.data_ptr())
        caller = torch.cuda.current_stream(self.device)
        if caller.cuda_stream != self.stream.cuda_stream:
            self.stream.wait_stream(caller)  # the inputs are written; no host wait
        self.session.run_with_iobinding(binding)  # returns when its stream has finished the run
        if caller.cuda_stream != self.stream.cuda_stream:
            caller.wait_stream(self.stream)  # the outputs' memory, allocated on the caller's stream, is in use until here
        return outputs


def open_file(path: Path, device: torch.device | None, threads: int | None, manifest=None,
              optimization: str = "all") -> OnnxRuntimeRunner:
    if optimization not in OPTIMIZATIONS:
        raise DiTError(f"ONNX Runtime optimization must be one of {', '.join(OPTIMIZATIONS)}, not {optimization!r}")
    return OnnxRuntimeRunner(path, device, threads, optimization, manifest.precision if manifest else None)
