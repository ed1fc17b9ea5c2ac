"""TensorRT: a .plan bound to torch CUDA tensors, optionally replayed as CUDA graphs; the denoiser's and the decoder's
one TensorRT path. Written against TensorRT's documented API (10.12+ and 11.x); tensorrt is imported when a runner
is opened.

Streams: an engine runs on the caller's current torch stream, or, when that is the legacy default stream (where
TensorRT adds host syncs), on the runner's own stream ordered with it by wait_stream both ways; a run on another
stream than the last run first waits for that stream. Memory: every execution context of the runner (one, or one
per captured CUDA graph) uses one device allocation for the engine's largest profile, which is safe because the
runner's runs are ordered one after another on those streams.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from dit_ref.contract import BatchRange, read_any_manifest
from dit_ref.errors import DiTError
from dit_ref.machine.tensorrt_stack import (
    compute_capability_text, engine_unavailable_reason, precision_unsupported_reason, start_tensorrt, tensorrt_release,
)
from dit_ref.runners.base import Runner
from dit_ref.runners.tensorrt_binding import (
    ADDRESS_ALIGNMENT, address, aligned, aligned_buffer, capture_key, io_dtype, torch_dtypes,
)

log = logging.getLogger(__name__)


def graph_name(manifest, engine_path: Path) -> str:
    """The graph an engine is built from: the manifest's record, else the .onnx beside the engine."""
    return manifest.graph.file if manifest.graph else Path(engine_path).with_suffix(".onnx").name


def same_gpu_model(built: str, running: str) -> bool:
    """Whether two GPU names (torch.cuda.get_device_name) are one model, ignoring case and spacing."""
    return " ".join(built.split()).casefold() == " ".join(running.split()).casefold()


def check_engine_fits(manifest, engine_path: Path, tensorrt_version: str, capability: tuple[int, int],
                      gpu_name: str | None = None):
    """DiTError unless the manifest's engine was built by this TensorRT release for this GPU.

    The GPU must be the same model (gpu_name, when given), not only the same compute capability:
    TensorRT promises nothing for another model of one architecture (A100 and A30, L4 and L40S).
    """
    engine_name, graph = Path(engine_path).name, graph_name(manifest, engine_path)
    rebuild = f"rebuild it on this machine with: dit-export build {graph}"
    engine = manifest.engine
    if not engine:
        raise DiTError(f"the manifest of {engine_name} has no engine; build one with dit-export build {graph}")
    built, running = str(engine.tensorrt), str(tensorrt_version)
    if tensorrt_release(built) != tensorrt_release(running):
        raise DiTError(f"{engine_name} was built with TensorRT {built} but this machine has TensorRT {running} "
                       f"(an engine loads only in the release that built it); {rebuild}")
    here = compute_capability_text(capability)
    if str(engine.compute_capability) != here:
        raise DiTError(f"{engine_name} was built for GPU compute capability {engine.compute_capability} "
                       f"({engine.gpu}) but this GPU has {here}; {rebuild}")
    reason = precision_unsupported_reason(manifest.precision, capability, gpu_name or "this GPU")
    if reason:
        raise DiTError(f"cannot run {engine_name}: {reason}")
    if gpu_name is not None and engine.gpu and not same_gpu_model(str(engine.gpu), gpu_name):
        raise DiTError(f"{engine_name} was built on the GPU model {engine.gpu} but this GPU is {gpu_name} (compute "
                       f"capability {here} both, but TensorRT promises an engine only on the model that built it); "
                       f"{rebuild}")


@dataclass
class _Captured:
    """One set of input shapes' own context, persistent I/O tensors and CUDA graph (None: capture failed, eager)."""

    context: object
    tensors: dict
    graph: "torch.cuda.CUDAGraph | None"


class TensorRTRunner(Runner):
    """A TensorRT engine on a CUDA device. cuda_graphs=True captures one CUDA graph per set of input shapes, each
    with its own execution context (a graph freezes that context's shapes and addresses), and copies every call's
    inputs into that graph's persistent tensors."""

    runtime = "tensorrt"

    def __init__(self, path: Path, manifest, device: torch.device | None = None, cuda_graphs: bool = False):
        reason = engine_unavailable_reason()
        if reason:
            raise DiTError(reason)
        import tensorrt as trt

        self.path, self.manifest, self.cuda_graphs = Path(path), manifest, cuda_graphs
        self.device = device or torch.device("cuda")
        if self.device.type != "cuda":
            raise DiTError(f"the TensorRT backend runs on a CUDA device, not {self.device}")
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        check_engine_fits(manifest, self.path, trt.__version__, torch.cuda.get_device_capability(self.device),
                          torch.cuda.get_device_name(self.device))
        self.name = "tensorrt" + (" (cuda-graphs)" if cuda_graphs else "")
        self._captured: dict[tuple, _Captured] = {}
        self._last_stream = None  # the stream of the last run of any context: they share one device memory
        with torch.cuda.device(self.device):
            self._load(trt)
            self.stream = torch.cuda.Stream(self.device)  # used when the caller is on the legacy default stream
            self.context = None if cuda_graphs else self._new_context()

    def _load(self, trt) -> None:
        """Deserialize the plan; read its I/O; allocate the contexts' shared device memory."""
        try:
            engine_bytes = self.path.read_bytes()
        except OSError as error:
            raise DiTError(f"cannot read engine {self.path}: {error.strerror}") from None
        self._runtime = start_tensorrt(trt.Runtime)
        self.engine = self._runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise DiTError(f"TensorRT could not load {self.path.name} (its log above says why); rebuild it "
                           f"on this machine with: dit-export build {graph_name(self.manifest, self.path)}")
        names = [self.engine.get_tensor_name(index) for index in range(self.engine.num_io_tensors)]
        self.input_names = tuple(name for name in names if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT)
        self.output_names = tuple(name for name in names if name not in self.input_names)
        table = torch_dtypes(trt)
        self.dtypes = {name: io_dtype(self.engine.get_tensor_dtype(name), table) for name in names}
        self.shapes = {name: tuple(self.engine.get_tensor_shape(name)) for name in names}
        low, opt, high = (int(shape[0]) for shape in self.engine.get_tensor_profile_shape(self.input_names[0], 0))
        self.batch_range = BatchRange(low, opt, high)  # the engine's own profile
        self._spare = aligned_buffer(ADDRESS_ALIGNMENT, self.device)  # the address of an empty tensor
        self._memory = aligned_buffer(self.engine.device_memory_size_v2, self.device)  # the largest profile's

    def _new_context(self):
        """An execution context on the runner's shared device memory (user-managed allocation)."""
        import tensorrt as trt

        context = self.engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if context is None:
            raise DiTError(f"TensorRT could not create an execution context for {self.path.name}")
        context.set_device_memory(self._memory.data_ptr(), self._memory.numel())
        return context

    def close(self) -> None:
        self._captured, self.context = {}, None  # the contexts go before their engine, the engine before its runtime
        self.engine = self._runtime = self._memory = None

    def run(self, inputs: dict) -> dict:
        """Named inputs -> named outputs, fresh tensors on self.device."""
        with torch.cuda.device(self.device):
            # Temporaries and outputs come from torch's caching allocator on the caller's stream, which TensorRT
            # runs on or waits for, so their memory is not reused before the engine is done.
            feeds = {name: aligned(value) for name, value in self.feeds(inputs).items()}
            self.batch_range.check(len(feeds[self.input_names[0]]), "the engine's",
                                   "rebuild it with dit-export build --batch MIN:OPT:MAX")
            if self.cuda_graphs:
                return self._replay(feeds)
            outputs = self._bind(self.context, feeds)
            self._execute_ordered(self.context)
            return outputs

    def _bind(self, context, feeds: dict) -> dict:
        """Set the input shapes, then every I/O address (aligned tensors, empty ones at the spare allocation); the
        outputs, of the shapes TensorRT infers from the inputs."""
        for name, value in feeds.items():
            if not context.set_input_shape(name, tuple(value.shape)):
                raise DiTError(f"TensorRT refused shape {tuple(value.shape)} for input {name} of {self.path.name}")
        outputs = {}
        for name in self.output_names:
            shape = tuple(context.get_tensor_shape(name))
            if any(size < 0 for size in shape):
                raise DiTError(f"TensorRT could not infer the shape of output {name} of {self.path.name} ({shape})")
            outputs[name] = aligned(torch.empty(shape, dtype=self.dtypes[name], device=self.device))
        for name, tensor in {**feeds, **outputs}.items():
            if not context.set_tensor_address(name, address(tensor, self._spare)):
                raise DiTError(f"TensorRT refused the address of {name} of {self.path.name}")
        return outputs

    def _execute(self, context, stream) -> None:
        """Enqueue one run of context on a torch CUDA stream, after the runner's previous run."""
        self._follow_previous(stream)
        if not context.execute_async_v3(stream.cuda_stream):
            raise DiTError(f"TensorRT failed to run {self.path.name} (its log above says why)")

    def _follow_previous(self, stream) -> None:
        """Order stream after the stream of the runner's last run, if the caller has switched streams.

        The contexts share one device memory (and one context its I/O tensors): none may be in use on two streams
        at once; within one stream CUDA keeps the order itself.
        """
        previous = self._last_stream
        if previous is not None and previous.cuda_stream != stream.cuda_stream:
            stream.wait_stream(previous)  # an event at the end of the previous stream's queued work
        self._last_stream = stream

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

    def _replay(self, feeds: dict) -> dict:
        """Copy the inputs into the persistent tensors of their shapes' graph, replay it (or run it eagerly)."""
        key = capture_key(feeds)
        entry = self._captured.get(key) or self._capture(key, feeds)
        self._follow_previous(torch.cuda.current_stream(self.device))  # the last call's stream
        for name, value in feeds.items():
            entry.tensors[name].copy_(value)  # into the addresses the graph was captured with
        if entry.graph is None:
            self._execute_ordered(entry.context)
        else:
            entry.graph.replay()
        return {name: entry.tensors[name].clone() for name in self.output_names}  # the next call overwrites them

    def _capture(self, key: tuple, feeds: dict) -> _Captured:
        """A context and persistent I/O for one set of input shapes (first filled with this call's inputs) and its
        CUDA graph (None: capture failed, stay eager)."""
        tensors = {name: aligned(value.clone()) for name, value in feeds.items()}
        context = self._new_context()
        tensors.update(self._bind(context, tensors))  # frozen into the graph: never rebind this context
        self._captured[key] = _Captured(context, tensors, self._capture_graph(context, key))
        return self._captured[key]

    def _capture_graph(self, context, key: tuple) -> "torch.cuda.CUDAGraph | None":
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
            log.warning("CUDA graph capture failed for inputs %s (%s); running them eagerly", key, error)
            graph = None
        finally:
            torch.cuda.set_stream(caller)  # a failing capture_end skips torch.cuda.graph's own stream restore
        return graph


def open_file(path: Path, device: torch.device | None, threads: int | None, manifest=None,
              cuda_graphs: bool = False) -> TensorRTRunner:
    """The engine; manifest None: the one beside it (the engine's record says which TensorRT and GPU built it)."""
    return TensorRTRunner(path, read_any_manifest(path) if manifest is None else manifest, device, cuda_graphs)
