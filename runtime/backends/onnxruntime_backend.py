"""The ONNX Runtime denoiser: the exported guided graph (FP32 or FP16) on the CUDA or CPU provider.

On CPU, inputs go in as numpy views of the torch tensors and outputs come back as torch views of
numpy arrays (no copies). On a GPU, I/O binding hands ONNX Runtime the torch CUDA tensors' device
pointers, so nothing crosses to the host inside the sampling loop (this CUDA path is tested with the
onnxruntime_cuda marker and has not run on a GPU of ours yet; the CPU path runs in every test).
A CUDA session loads the CUDA libraries of the onnxruntime-gpu wheels first, and is refused when
ONNX Runtime fell back to CPU (it does so without an error when its CUDA provider cannot load).
"""

from pathlib import Path

import numpy as np
import torch

from dit_ref.contract import IO_DTYPES, Manifest, check_io_shapes
from dit_ref.errors import DiTError
from dit_ref.machine.cpu import physical_cores
from dit_ref.machine.onnxruntime_stack import cuda_provider_load_error, import_onnxruntime, preload_cuda_libraries
from dit_ref.machine.tensorrt_stack import GPU_SET_UP, precision_unsupported_reason
from runtime.denoiser import Denoiser, Provenance

CUDA_PROVIDER = "CUDAExecutionProvider"


def create_session(graph_path: Path, device: torch.device, threads: int | None = None):
    """An InferenceSession for the graph; DiTError (one line) if the file is not a loadable graph."""
    ort = import_onnxruntime()

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the FP16 graph's casts make CPU-provider warnings
    if device.type == "cpu":
        options.intra_op_num_threads = threads or physical_cores()
        options.inter_op_num_threads = 1  # the graph is one chain of ops: parallelism is intra-op
        # No spinning between ops: idle workers that spin hold the cores from the next session's run (cached
        # steps alternate a refresh and a reuse session) and from other processes. Measured on this 2-core
        # CPU, fashion graph at batch 8, 2 threads, with other work on the machine: plain 41.5 -> 23.4 ms, a
        # refresh alternating with a reuse 72.3 -> 25.4 ms and 11.5 -> 3.9 ms.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
    else:
        preload_cuda_libraries(ort)
        providers = [(CUDA_PROVIDER, {"device_id": device.index or 0}), "CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(str(graph_path), sess_options=options, providers=providers)
    except Exception as error:  # onnxruntime raises its own pybind types (InvalidProtobuf, Fail, ...)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DiTError(f"cannot load the ONNX graph {graph_path}: {reason[:300]}; re-export it with dit-export") from None
    if device.type == "cuda":
        check_first_provider(session, Path(graph_path).name)
    return session


def check_first_provider(session, graph_name: str) -> None:
    """DiTError (one line) unless CUDA is the session's first provider.

    When its CUDA provider cannot load, ONNX Runtime makes the session on CPU without an error; the
    I/O binding to CUDA memory then fails with an unrelated message, so refuse it here with the reason.
    """
    providers = list(session.get_providers())
    if providers and providers[0] == CUDA_PROVIDER:
        return
    why = cuda_provider_load_error(import_onnxruntime()) or "ONNX Runtime's log above says why"
    raise DiTError(f"ONNX Runtime could not start its CUDA provider for {graph_name}, so the session would run "
                   f"on {', '.join(providers) or 'no provider'} ({why}); set up the GPU stack of your CUDA "
                   f"flavour ({GPU_SET_UP}) or use --device cpu")


def default_device() -> torch.device:
    """cuda when torch sees a GPU and onnxruntime has its CUDA provider, else cpu."""
    ort = import_onnxruntime()

    cuda = torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers()
    return torch.device("cuda" if cuda else "cpu")


class OnnxRuntimeDenoiser(Denoiser):
    """The guided graph in ONNX Runtime: (x, t, y, cfg_scale) -> (eps, var_values or None) on `device`."""

    def __init__(self, graph_path, manifest: Manifest, device=None, threads: int | None = None):
        ort = import_onnxruntime()

        self.graph_path = Path(graph_path)
        self.manifest = manifest
        self.device = torch.device(device) if device is not None else default_device()
        if self.device.type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise DiTError(f"onnxruntime {ort.__version__} has no CUDA provider (the CPU package); set up the GPU "
                           f"stack of your CUDA flavour ({GPU_SET_UP}) or use --device cpu")
        if self.device.type not in ("cpu", "cuda"):
            raise DiTError(f"the ONNX Runtime backend runs on cpu or cuda, not {self.device}")
        if self.device.type == "cuda" and self.device.index is None:  # one GPU for the session and the binding
            self.device = torch.device("cuda", torch.cuda.current_device())
        check_precision(manifest.precision, self.device, self.graph_path.name)
        self.session = create_session(self.graph_path, self.device, threads)
        check_graph_io(self.session, self.graph_path, manifest)
        self.provenance = Provenance.from_manifest(manifest)
        self.batch_range = manifest.batch
        self.output_names = list(manifest.output_names)
        emulated = " (emulated)" if manifest.precision == "fp8" and self.device.type == "cpu" else ""
        self.name = f"onnxruntime-{self.device.type} {manifest.precision}{emulated}"

    def close(self) -> None:
        self.session = None

    def run_named(self, inputs: dict) -> dict:
        # On this device, in the contract's dtypes: a caller's int32 labels or CPU latents still work.
        inputs = {name: value.to(self.device, IO_DTYPES[name]).contiguous() for name, value in inputs.items()}
        if self.device.type == "cpu":
            return self._run_cpu(inputs)
        return self._run_cuda(inputs)

    def _run_cpu(self, inputs: dict) -> dict:
        feeds = {name: value.numpy() for name, value in inputs.items()}
        outputs = self.session.run(self.output_names, feeds)  # numpy (B, C, L, L) each
        return {name: torch.from_numpy(output) for name, output in zip(self.output_names, outputs)}

    def _run_cuda(self, inputs: dict) -> dict:
        """I/O binding on torch CUDA tensors (not run on a GPU of ours yet)."""
        outputs = {name: torch.empty(shape, dtype=IO_DTYPES[name], device=self.device)
                   for name, shape in self.output_shapes(inputs).items()}
        binding = self.session.io_binding()
        for name, value in {**inputs, **outputs}.items():
            bind = binding.bind_input if name in inputs else binding.bind_output
            bind(name, "cuda", self.device.index, _numpy_dtype(value.dtype), tuple(value.shape), value.data_ptr())
        # ONNX Runtime runs on its own stream: finish torch's pending writes to x first; run() then
        # synchronises its own stream before returning, so torch may read the outputs.
        torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)
        return outputs


def check_precision(precision: str, device: torch.device, name: str) -> None:
    """DiTError for a graph precision ONNX Runtime cannot run on this device: bf16 on a CPU (no bfloat16
    MatMul, Conv or Gemm kernels there) or on a GPU older than Ampere."""
    if precision == "bf16" and device.type == "cpu":
        raise DiTError(f"{name} is a bf16 graph, and ONNX Runtime has no bfloat16 CPU kernels for its MatMul, "
                       f"Conv and Gemm: run it with --backend openvino (auto picks it on a CPU)")
    if device.type == "cuda":
        reason = precision_unsupported_reason(precision, torch.cuda.get_device_capability(device),
                                              torch.cuda.get_device_name(device))
        if reason:
            raise DiTError(f"cannot run {name}: {reason}")


def _numpy_dtype(dtype: torch.dtype):
    return {torch.float32: np.float32, torch.int64: np.int64}[dtype]


def check_graph_io(session, graph_path: Path, manifest: Manifest) -> None:
    """DiTError unless the graph has the guided contract's inputs and outputs, of the manifest's shapes."""
    inputs = [node.name for node in session.get_inputs()]
    outputs = [node.name for node in session.get_outputs()]
    if sorted(inputs) != sorted(manifest.input_names) or not outputs or outputs[0] != "eps":
        raise DiTError(
            f"{graph_path} is not a guided DiT graph (inputs {inputs}, outputs {outputs}; expected "
            f"{list(manifest.input_names)} -> {list(manifest.output_names)}); export it with dit-export"
        )
    shapes = {node.name: tuple(node.shape) for node in [*session.get_inputs(), *session.get_outputs()]}
    check_io_shapes(manifest, shapes, graph_path)


def load(path, manifest, expected, device=None, threads=None) -> OnnxRuntimeDenoiser:
    return OnnxRuntimeDenoiser(path, manifest, device, threads)
