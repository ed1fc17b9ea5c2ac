"""The TensorRT denoiser: a .plan bound to torch CUDA tensors, optionally replayed as CUDA graphs.

Written against TensorRT's documented API (10.12+ and 11.x), not run on a GPU here. The engine runs
on the current torch stream, or, when that is the legacy default stream (where TensorRT adds host
syncs), on the denoiser's own stream ordered with it by wait_stream both ways; with torch-allocated I/O (set_input_shape, set_tensor_address,
execute_async_v3): no host copies in the sampling loop. tensorrt is imported when a denoiser is made.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from dit_ref.contract import (
    GUIDED, INPUT_NAMES, IO_DTYPES, BatchRange, Manifest, check_io_shapes, input_names, output_names, read_manifest,
)
from dit_ref.errors import DiTError
from dit_ref.machine.tensorrt_stack import (
    GPU_SET_UP, compute_capability_text, engine_unavailable_reason, precision_unsupported_reason, start_tensorrt,
    tensorrt_release,
)
from runtime.denoiser import Denoiser, Provenance

log = logging.getLogger(__name__)


# TensorRT DataType member name -> torch dtype. An explicit table: trt.nptype has no BF16 or FP8.
TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16,
                "INT8": torch.int8, "UINT8": torch.uint8, "INT32": torch.int32, "INT64": torch.int64,
                "BOOL": torch.bool, "FP8": torch.float8_e4m3fn}


def torch_dtypes(trt) -> dict:
    """trt.DataType member -> torch dtype, for the members this TensorRT has (names are stable, values not)."""
    return {getattr(trt.DataType, name): dtype for name, dtype in TORCH_DTYPES.items()
            if hasattr(trt.DataType, name)}


def graph_name(manifest: Manifest, plan_path: Path) -> str:
    """The graph an engine is built from: the manifest's record, else the .onnx beside the plan."""
    return manifest.graph.file if manifest.graph else Path(plan_path).with_suffix(".onnx").name


def same_gpu_model(built: str, running: str) -> bool:
    """Whether two GPU names (torch.cuda.get_device_name) are one model, ignoring case and spacing."""
    return " ".join(built.split()).casefold() == " ".join(running.split()).casefold()


def check_engine_fits(manifest: Manifest, plan_path: Path, tensorrt_version: str, capability: tuple[int, int],
                      gpu_name: str | None = None):
    """DiTError unless the manifest's engine was built by this TensorRT release for this GPU.

    The GPU must be the same model (gpu_name, when given), not only the same compute capability:
    TensorRT promises nothing for another model of one architecture (A100 and A30, L4 and L40S).
    """
    plan, graph = Path(plan_path).name, graph_name(manifest, plan_path)
    rebuild = f"rebuild it on this machine with: dit-export build {graph}"
    engine = manifest.engine
    if not engine:
        raise DiTError(f"the manifest of {plan} has no engine; build one with dit-export build {graph}")
    built, running = str(engine.tensorrt), str(tensorrt_version)
    if tensorrt_release(built) != tensorrt_release(running):
        raise DiTError(f"{plan} was built with TensorRT {built} but this machine has TensorRT {running} "
                       f"(an engine loads only in the release that built it); {rebuild}")
    here = compute_capability_text(capability)
    if str(engine.compute_capability) != here:
        raise DiTError(f"{plan} was built for GPU compute capability {engine.compute_capability} "
                       f"({engine.gpu}) but this GPU has {here}; {rebuild}")
    reason = precision_unsupported_reason(manifest.precision, capability, gpu_name or "this GPU")
    if reason:
        raise DiTError(f"cannot run {plan}: {reason}")
    if gpu_name is not None and engine.gpu and not same_gpu_model(str(engine.gpu), gpu_name):
        raise DiTError(f"{plan} was built on the GPU model {engine.gpu} but this GPU is {gpu_name} (compute "
                       f"capability {here} both, but TensorRT promises an engine only on the model that built it); "
                       f"{rebuild}")


def _describe(entry) -> str:
    """(is_input, dtype) -> "input float32"; None -> "absent"."""
    if entry is None:
        return "absent"
    is_input, dtype = entry
    return f"{'input' if is_input else 'output'} {str(dtype).removeprefix('torch.')}"


def check_io_tensors(found: dict, inputs: tuple[str, ...] = input_names(True),
                     outputs: tuple[str, ...] = output_names(True)) -> None:
    """found: name -> (is_input, torch dtype or None); DiTError unless it is exactly the graph contract's I/O
    (the manifest's input and output names)."""
    expected = {name: (name in inputs, IO_DTYPES[name]) for name in (*inputs, *outputs)}
    wrong = [f"{name} is {_describe(found.get(name))}, expected {_describe(expected.get(name))}"
             for name in sorted(set(found) | set(expected)) if found.get(name) != expected.get(name)]
    if wrong:
        raise DiTError(f"the engine does not have the graph's I/O ({'; '.join(wrong)}); re-export the graph "
                       "and rebuild the engine with this version of dit-deploy")


def check_inputs(x, t, y, cfg_scale, latent_shape: tuple[int, int, int], batch_range: BatchRange) -> int:
    """The batch size B of a call; DiTError unless shapes are (B, C, L, L), (B,), (B,), (B,) in range."""
    batch = x.shape[0] if x.dim() == 4 else -1
    if tuple(x.shape) != (batch, *latent_shape) or any(tuple(v.shape) != (batch,) for v in (t, y, cfg_scale)):
        raise DiTError(f"expected x (B, {', '.join(map(str, latent_shape))}) and t, y, cfg_scale (B,); got "
                       f"{tuple(x.shape)}, {tuple(t.shape)}, {tuple(y.shape)}, {tuple(cfg_scale.shape)}")
    return batch_range.check(batch, "the engine's", "rebuild it with dit-export build --batch MIN:OPT:MAX")


@dataclass
class _Captured:
    """One batch size's own context, persistent I/O tensors and CUDA graph (None: capture failed, run eagerly)."""

    context: object
    tensors: dict
    graph: "torch.cuda.CUDAGraph | None"


ADDRESS_ALIGNMENT = 256  # bytes; set_tensor_address needs it (a fresh torch tensor is, an offset slice may not be)


def aligned(tensor: torch.Tensor) -> torch.Tensor:
    """tensor itself if its data starts on a 256-byte boundary, else an aligned copy (e.g. of labels[3:5])."""
    if tensor.data_ptr() % ADDRESS_ALIGNMENT == 0:
        return tensor
    size = tensor.numel() * tensor.element_size()
    buffer = torch.empty(size + ADDRESS_ALIGNMENT, dtype=torch.uint8, device=tensor.device)
    start = -buffer.data_ptr() % ADDRESS_ALIGNMENT  # bytes to the next boundary
    return buffer[start:start + size].view(tensor.dtype).view(tensor.shape).copy_(tensor)


def bindable(tensor: torch.Tensor, spare: torch.Tensor) -> torch.Tensor:
    """tensor, 256-byte aligned; an empty one (nothing guided: U = 0) as a view of `spare`, a real allocation,
    since set_tensor_address wants a valid address even for an empty tensor."""
    return aligned(tensor) if tensor.numel() else spare[:0]


def _bind(context, tensors: dict, inputs: tuple[str, ...] = (*INPUT_NAMES, GUIDED)) -> None:
    """Set the input shapes and every I/O address (contiguous, 256-byte-aligned torch CUDA tensors)."""
    for name in inputs:
        if name in tensors and not context.set_input_shape(name, tuple(tensors[name].shape)):
            raise DiTError(f"TensorRT refused shape {tuple(tensors[name].shape)} for input {name}")
    for name, tensor in tensors.items():
        if not context.set_tensor_address(name, tensor.data_ptr()):
            raise DiTError(f"TensorRT refused the address of {name}")


class TensorRTDenoiser(Denoiser):
    """(x, t, y, cfg_scale) -> (eps, var_values) with a TensorRT engine, on a CUDA device.

    cuda_graphs=True captures one CUDA graph per batch size, each with its own execution context (the
    graph freezes that context's shapes and addresses; each context holds activation memory for the
    largest batch), and copies every call's inputs into that graph's persistent tensors.
    """

    def __init__(self, plan_path, manifest: Manifest | None = None, device="cuda", cuda_graphs: bool = False):
        reason = engine_unavailable_reason()
        if reason:
            raise DiTError(reason)
        import tensorrt as trt

        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise DiTError(f"the TensorRT backend runs on a CUDA device, not {device}")
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.plan_path = Path(plan_path)
        self.manifest = read_manifest(self.plan_path) if manifest is None else manifest
        check_engine_fits(self.manifest, self.plan_path, trt.__version__,
                          torch.cuda.get_device_capability(self.device), torch.cuda.get_device_name(self.device))
        self.provenance = Provenance.from_manifest(self.manifest)
        self.output_names = self.manifest.output_names
        self.cuda_graphs = cuda_graphs
        self.name = f"tensorrt {self.manifest.precision}" + (" cuda-graphs" if cuda_graphs else "")
        self._captured: dict[int, _Captured] = {}
        self._last_streams: dict[int, torch.cuda.Stream] = {}  # id(context) -> the stream of its last run
        with torch.cuda.device(self.device):
            self._load(trt)
            self.stream = torch.cuda.Stream(self.device)  # used when the caller is on the legacy default stream
            self.context = None if cuda_graphs else self._new_context()

    def _load(self, trt) -> None:
        """Deserialize the plan and check its I/O against the graph contract."""
        try:
            plan = self.plan_path.read_bytes()
        except OSError as error:
            raise DiTError(f"cannot read engine {self.plan_path}: {error.strerror}") from None
        self._runtime = start_tensorrt(trt.Runtime)
        self.engine = self._runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise DiTError(f"TensorRT could not load {self.plan_path.name} (its log above says why); rebuild it "
                           f"on this machine with: dit-export build {graph_name(self.manifest, self.plan_path)}")
        dtypes = torch_dtypes(trt)
        names = [self.engine.get_tensor_name(index) for index in range(self.engine.num_io_tensors)]
        check_io_tensors({name: (self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                                 dtypes.get(self.engine.get_tensor_dtype(name))) for name in names},
                         self.manifest.input_names, self.manifest.output_names)
        self._spare = torch.zeros(1, dtype=torch.int64, device=self.device)  # the address of an empty `guided`
        check_io_shapes(self.manifest, {name: tuple(self.engine.get_tensor_shape(name)) for name in names},
                        self.plan_path)
        low, opt, high = (int(shape[0]) for shape in self.engine.get_tensor_profile_shape("x", 0))
        self.batch_range = BatchRange(low, opt, high)  # the engine's own profile

    def _new_context(self):
        """An execution context (default STATIC allocation: device memory for the largest profile shape)."""
        context = self.engine.create_execution_context()
        if context is None:
            raise DiTError(f"TensorRT could not create an execution context for {self.plan_path.name} "
                           "(out of GPU memory?)")
        return context

    def _execute(self, context, stream) -> None:
        """Enqueue one run of context on a torch CUDA stream, after the context's previous run."""
        self._follow_previous(context, stream)
        if not context.execute_async_v3(stream.cuda_stream):
            raise DiTError(f"TensorRT failed to run {self.plan_path.name} (its log above says why)")

    def _follow_previous(self, context, stream) -> None:
        """Order stream after the stream of this context's last run, if the caller has switched streams.

        One execution context (and its activation memory, and a captured graph's I/O tensors) must
        not be in use on two streams at once; within one stream CUDA keeps the order itself.
        """
        previous = self._last_streams.get(id(context))
        if previous is not None and previous.cuda_stream != stream.cuda_stream:
            stream.wait_stream(previous)  # an event at the end of the previous stream's queued work
        self._last_streams[id(context)] = stream

    def _execute_ordered(self, context) -> None:
        """Run on the caller's current stream; on the legacy default stream (handle 0), where TensorRT
        adds host syncs, run on self.stream after the caller's pending work and make the caller wait."""
        caller = torch.cuda.current_stream(self.device)
        if caller.cuda_stream != 0:
            self._execute(context, caller)
            return
        self.stream.wait_stream(caller)  # inputs written on the caller's stream are ready
        self._execute(context, self.stream)
        caller.wait_stream(self.stream)  # outputs are ready, and the I/O memory is not reused before

    def __call__(self, x, t, y, cfg_scale):
        """Guided (eps, var_values or None), each (B, C, L, L) float32 on self.device, fresh tensors."""
        batch = check_inputs(x, t, y, cfg_scale, self.latent_shape, self.batch_range)
        with torch.cuda.device(self.device):
            inputs = self.graph_inputs(x, t, y, cfg_scale.to(self.device))  # `guided` too, for a format 4 engine
            if self.cuda_graphs:
                return self._replay(batch, inputs)
            # Temporaries and outputs come from torch's caching allocator on the caller's stream, which
            # TensorRT runs on or waits for, so their memory is not reused before the engine is done.
            tensors = {name: bindable(value.to(self.device, IO_DTYPES[name]).contiguous(), self._spare)
                       for name, value in inputs.items()}
            tensors.update(self._empty_outputs(batch))
            _bind(self.context, tensors)
            self._execute_ordered(self.context)
            return tensors["eps"], tensors.get("var_values")

    def run_named(self, inputs: dict) -> dict:
        """Named I/O, run eagerly: what a cached-steps refresh or reuse engine is driven by."""
        with torch.cuda.device(self.device):
            tensors = {name: bindable(value.to(self.device, IO_DTYPES[name]).contiguous(), self._spare)
                       for name, value in inputs.items()}
            outputs = {name: torch.empty(shape, dtype=IO_DTYPES[name], device=self.device)
                       for name, shape in self.output_shapes(inputs).items()}
            self.context = self.context or self._new_context()
            _bind(self.context, {**tensors, **outputs}, self.manifest.input_names)
            self._execute_ordered(self.context)
            return outputs

    def _empty_outputs(self, batch: int) -> dict:
        """Output tensors (B, C, L, L) float32 on the device."""
        shape = (batch, *self.latent_shape)
        return {name: torch.empty(shape, dtype=IO_DTYPES[name], device=self.device) for name in self.output_names}

    def _replay(self, batch: int, inputs: dict):
        """Copy the inputs into this (batch, guided rows) pair's persistent tensors, replay its graph (or run it
        eagerly). One graph per pair: a graph freezes its shapes, and U is a shape."""
        key = (batch, len(inputs[GUIDED]) if GUIDED in inputs else None)
        entry = self._captured.get(key) or self._capture(*key)
        self._follow_previous(entry.context, torch.cuda.current_stream(self.device))  # the last call's stream
        for name, value in inputs.items():
            entry.tensors[name].copy_(value)  # (B, ...) into the addresses the graph was captured with
        if entry.graph is None:
            self._execute_ordered(entry.context)
        else:
            entry.graph.replay()
        var_values = entry.tensors.get("var_values")  # the next call overwrites them: clone
        return entry.tensors["eps"].clone(), None if var_values is None else var_values.clone()

    def _capture(self, batch: int, guided: int | None) -> _Captured:
        """Context and persistent I/O for one batch size (and count of guided rows) and its CUDA graph (None:
        capture failed, stay eager)."""
        tensors = {name: torch.zeros((batch, *self.latent_shape) if name == "x" else (batch,),
                                     dtype=IO_DTYPES[name], device=self.device)
                   for name in INPUT_NAMES}
        tensors["cfg_scale"].fill_(1.0)
        if guided is not None:
            tensors[GUIDED] = bindable(torch.arange(guided, device=self.device), self._spare)  # (U,)
        tensors.update(self._empty_outputs(batch))
        context = self._new_context()
        _bind(context, tensors)  # frozen into the graph: never rebind this context
        self._captured[(batch, guided)] = _Captured(context, tensors, self._capture_graph(context, batch))
        return self._captured[(batch, guided)]

    def _capture_graph(self, context, batch: int) -> "torch.cuda.CUDAGraph | None":
        """One eager run, then the capture, both on one new stream (as trtexec warms up); None on failure.

        The eager run does TensorRT's lazy set-up, which must not be captured, on the stream the
        capture then uses, and is finished (synchronised) before the capture begins.
        """
        capture = torch.cuda.Stream(self.device)  # explicit: torch's shared side stream may be another GPU's
        caller = torch.cuda.current_stream(self.device)
        capture.wait_stream(caller)  # the I/O tensors were written on the caller's stream
        self._execute(context, capture)
        capture.synchronize()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=capture, capture_error_mode="thread_local"):
                if not context.execute_async_v3(capture.cuda_stream):
                    raise RuntimeError("execute_async_v3 returned False while capturing")
        except RuntimeError as error:  # torch.cuda.graph has ended the capture on the way out
            log.warning("CUDA graph capture failed for batch %d (%s); running that batch size eagerly", batch, error)
            graph = None
        finally:
            torch.cuda.set_stream(caller)  # a failing capture_end skips torch.cuda.graph's own stream restore
        return graph


def default_device() -> torch.device:
    """TensorRT runs on the current CUDA device."""
    return torch.device("cuda")


def load(path, manifest, expected, device=None, threads=None, cuda_graphs=False) -> TensorRTDenoiser:
    """The TensorRT denoiser; DiTError pointing to the graph when TensorRT cannot run here."""
    remedy = (f"set up the GPU stack on a CUDA machine ({GPU_SET_UP}), or run the graph "
              f"instead: dit-run {graph_name(manifest, path)}")
    reason = engine_unavailable_reason()
    if reason:
        raise DiTError(f"cannot run {Path(path).name}: {reason}; {remedy}")
    if threads is not None:
        torch.set_num_threads(threads)  # the sampling loop's host work
    return TensorRTDenoiser(path, manifest, device=device or "cuda", cuda_graphs=cuda_graphs)
