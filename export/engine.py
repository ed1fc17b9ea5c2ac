"""From a guided ONNX graph to a TensorRT engine (.plan) beside it, for TensorRT 10.12+ and 11.x.

The build runs on Polygraphy's loaders: CreateConfig (the optimization profile, the optimization
level, the workspace pool, TF32 cleared, the progress monitor) and EngineBytesFromNetwork (the build).
Two parts stay ours, each for a reason in Polygraphy's own source (0.53): its NetworkFromOnnxPath logs
the parser's errors and raises "Could not parse ONNX correctly", where ours names the failing node in
one line; its CreateConfig ignores set_timing_cache's refusal of a cache made elsewhere and its
save_timing_cache rewrites the file in place, where ours falls back to an empty cache with a warning
and replaces the file whole. The network is strongly typed, so the engine computes in the graph's own
types (FP16 graph -> FP16 engine); TF32 is cleared so an FP32 graph builds an FP32 engine. tensorrt
and polygraphy are imported only inside the functions that need them.
"""

import logging
import re
import time
from pathlib import Path

from dit_ref.contract import (
    DECODER_INPUT, GUIDED, INPUT_NAMES, BatchRange, DecoderManifest, EngineRecord, io_shapes, read_any_manifest,
    write_manifest,
)
from dit_ref.errors import DiTError
from dit_ref.files import write_bytes_atomic
from dit_ref.machine.tensorrt_stack import (  # noqa: F401 (NOT_INSTALLED, tensorrt_release: part of this module's API)
    NOT_INSTALLED, build_unavailable_reason, compute_capability_text, engine_unavailable_reason, start_tensorrt,
    tensorrt_release, trt_logger,
)

log = logging.getLogger(__name__)

OPTIMIZATION_LEVELS = range(6)  # builder_optimization_level: 0 fastest build .. 5 slowest, default 3


def network_flags(trt) -> int:
    """Creation flags for a strongly typed network, from the enum (its value differs in 10.x and 11.x)."""
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def profile_shapes(latent_shape: tuple[int, int, int], batch: BatchRange, guided_rows: bool = True,
                   role: str = "guided", feature_shape: tuple | None = None) -> dict[str, tuple[tuple[int, ...], ...]]:
    """Input name -> (min, opt, max) shapes for x of (B, C, L, L); B counts images, the CFG doubling
    happens inside the graph. `guided` (U,) runs from 0 (nothing guided: TensorRT takes empty tensors,
    IOptimizationProfile::setDimensions allows a minimum of 0) to the largest batch, tuned for every
    row guided at the opt batch."""
    sizes = (batch.min, batch.opt, batch.max)
    shapes = {"x": tuple((b, *latent_shape) for b in sizes)}
    shapes.update({name: tuple((b,) for b in sizes) for name in INPUT_NAMES if name != "x"})
    if guided_rows:
        shapes[GUIDED] = ((0,), (batch.opt,), (batch.max,))
    if role == "reuse":  # the features of the B conditional rows and of the U guided rows' null pass
        shapes["features"] = tuple((b, *feature_shape) for b in sizes)
        shapes["null_features"] = tuple((u, *feature_shape) for u in (0, batch.opt, batch.max))
    return shapes


def input_profile(manifest, batch: BatchRange) -> dict[str, tuple[tuple[int, ...], ...]]:
    """Input name -> (min, opt, max) shapes for a DiT graph's manifest or a VAE decoder's (latents (B, C, L, L))."""
    if isinstance(manifest, DecoderManifest):
        return {DECODER_INPUT: tuple((b, *manifest.latent_shape) for b in (batch.min, batch.opt, batch.max))}
    latent = io_shapes(manifest.latent_channels, manifest.latent_size, manifest.learn_sigma)["x"]
    return profile_shapes(latent, batch, manifest.guided_rows, manifest.role, manifest.feature_shape)


def timing_cache_path(directory: Path, gpu_name: str, compute_capability: str, tensorrt_version: str) -> Path:
    """One timing cache per GPU model and TensorRT release: caches shared across GPUs slow engines."""
    gpu = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-") or "gpu"
    sm = compute_capability.replace(".", "")
    release = ".".join(str(part) for part in tensorrt_release(tensorrt_version))
    return Path(directory) / f"timing-{gpu}-sm{sm}-trt{release}.cache"


def workspace_bytes(total_memory: int) -> int:
    """Workspace pool limit: half the GPU's memory, leaving room for weights and the caller's tensors."""
    return total_memory // 2


def format_parser_errors(errors, limit: int = 3) -> str:
    """One line from TensorRT's IParserError objects: "node (Op): description; ..."."""
    parts = [f"{error.node_name() or '<graph>'} ({error.node_operator() or '?'}): {error.desc()}"
             for error in errors[:limit]]
    more = f"; and {len(errors) - limit} more" if len(errors) > limit else ""
    return "; ".join(parts).replace("\n", " ") + more


class PhaseLog:
    """Logs the builder's top-level phases with their elapsed time; the logic behind the progress monitor."""

    def __init__(self):
        self.started: dict[str, float] = {}

    def phase_start(self, phase_name, parent_phase, num_steps):
        if parent_phase is None:
            self.started[phase_name] = time.perf_counter()
            log.info("TensorRT: %s (%d steps)", phase_name, num_steps)

    def phase_finish(self, phase_name):
        start = self.started.pop(phase_name, None)
        if start is not None:
            log.info("TensorRT: %s done in %.1f s", phase_name, time.perf_counter() - start)


def _progress_monitor(trt):
    """A trt.IProgressMonitor that forwards to PhaseLog; never cancels the build."""
    phases = PhaseLog()

    class ProgressMonitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            phases.phase_start(phase_name, parent_phase, num_steps)

        def step_complete(self, phase_name, step):
            return True  # False (or an exception) would cancel the build

        def phase_finish(self, phase_name):
            phases.phase_finish(phase_name)

    return ProgressMonitor()


def parse_network(trt, graph_path: Path):
    """(builder, network, parser): the graph in a strongly typed network (the parser owns the weights, so it
    lives as long as the network); DiTError naming the nodes the parser failed on."""
    builder = start_tensorrt(trt.Builder)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, trt_logger())
    if not parser.parse_from_file(str(graph_path)):  # external data is found beside the .onnx
        errors = [parser.get_error(index) for index in range(parser.num_errors)]
        said = format_parser_errors(errors) or "the parser gave no reason; is it an ONNX file from dit-export?"
        raise DiTError(f"TensorRT could not parse {graph_path.name}: {said}")
    return builder, network, parser


def network_inputs(network) -> dict[str, tuple[int, ...]]:
    """Input name -> its dimensions in a parsed network (-1: dynamic)."""
    inputs = (network.get_input(index) for index in range(network.num_inputs))
    return {tensor.name: tuple(tensor.shape) for tensor in inputs}


def profile_mismatch(inputs: dict[str, tuple[int, ...]], shapes: dict) -> str | None:
    """Why the profile's (min, opt, max) shapes do not fit the network's inputs (names, ranks, fixed dimensions)
    in one line, or None. TensorRT's own refusal (IOptimizationProfile.set_shape's RuntimeError) names no input."""
    if set(inputs) != set(shapes):
        return f"the graph's inputs are {', '.join(inputs)} but its manifest describes {', '.join(shapes)}"
    for name, dims in inputs.items():
        for which, shape in zip(("min", "opt", "max"), shapes[name]):
            if len(shape) != len(dims) or any(dim >= 0 and dim != size for dim, size in zip(dims, shape)):
                shown = ", ".join("?" if dim < 0 else str(dim) for dim in dims)
                return f"input {name} is ({shown}) in the graph, but its {which} shape is {tuple(shape)}"
    return None


def config_arguments(trt, shapes, optimization_level: int, workspace: int, progress_monitor=None) -> dict:
    """Polygraphy CreateConfig's keyword arguments: one profile over the batch range, the optimization level,
    the workspace pool, TF32 off (the graph's float32 stays float32), the progress monitor."""
    from polygraphy.backend.trt import Profile

    profile = Profile()
    for name, (low, opt, high) in shapes.items():
        profile.add(name, low, opt, high)
    return {"profiles": [profile], "builder_optimization_level": optimization_level, "tf32": False,
            "memory_pool_limits": {trt.MemoryPoolType.WORKSPACE: workspace}, "progress_monitor": progress_monitor}


def use_timing_cache(config, cache_data: bytes) -> None:
    """The saved timing cache on the config; one that does not load or fit this GPU and TensorRT is replaced by
    an empty one, with a warning."""
    if not cache_data:
        return  # CreateConfig has set an empty one
    cache = config.create_timing_cache(cache_data)
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        log.warning("the timing cache does not fit this GPU or TensorRT; starting an empty one")
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def build_failure(graph_name: str, error: BaseException) -> str:
    """One line for a build that failed: the first thing TensorRT or Polygraphy said, and what to do."""
    said = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
    return (f"TensorRT failed to build an engine from {graph_name} ({said}); TensorRT's log above says why; out of "
            "GPU memory: lower --batch MAX or free the GPU")


def _build_engine_bytes(trt, graph_path: Path, shapes, optimization_level: int, cache_data: bytes):
    """Parse the graph, check the profile against it and build it on Polygraphy's loaders: (serialized plan,
    serialized timing cache)."""
    import torch
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork
    from polygraphy.exception import PolygraphyException

    network = parse_network(trt, graph_path)
    mismatch = profile_mismatch(network_inputs(network[1]), shapes)
    if mismatch:
        raise DiTError(f"{graph_path.name} does not match its manifest: {mismatch}; re-export it with dit-export")
    total_memory = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    arguments = config_arguments(trt, shapes, optimization_level, workspace_bytes(total_memory), _progress_monitor(trt))
    try:
        config = CreateConfig(**arguments)(*network[:2])
        use_timing_cache(config, cache_data)
        engine_bytes = EngineBytesFromNetwork(network, config=config)()
    except (PolygraphyException, RuntimeError, TypeError) as error:  # pybind's std::runtime_error, bad arguments
        raise DiTError(build_failure(graph_path.name, error)) from None
    return engine_bytes, config.get_timing_cache().serialize()


def build_engines(graph_path: Path, batch: BatchRange | None, optimization_level: int = 3,
                  timing_cache: Path | None = None) -> list[Path]:
    """The graph's engine, then those of its cached-steps refresh and reuse graphs when its manifest names
    them (one engine per graph variant)."""
    graph_path = Path(graph_path)
    engines = [build_engine(graph_path, batch, optimization_level, timing_cache)]
    manifest = read_any_manifest(graph_path)  # a decoder's has no cached-steps pair
    pair = {} if isinstance(manifest, DecoderManifest) else manifest.cached_steps or {}
    return engines + [build_engine(graph_path.parent / pair[role], batch, optimization_level, timing_cache)
                    for role in ("refresh", "reuse") if role in pair]


def build_engine(graph_path: Path, batch: BatchRange | None, optimization_level: int = 3,
                 timing_cache: Path | None = None) -> Path:
    """Build graph_path's engine beside it (same stem, .plan), record it in the manifest, return its path."""
    reason = build_unavailable_reason()
    if reason:
        raise DiTError(reason)
    import tensorrt as trt
    import torch

    graph_path = Path(graph_path)
    if not graph_path.is_file():
        raise DiTError(f"{graph_path} does not exist; export a graph first with dit-export --model ...")
    if optimization_level not in OPTIMIZATION_LEVELS:
        raise DiTError(f"optimization level {optimization_level} must be 0..5 (3 is TensorRT's default)")
    manifest = read_any_manifest(graph_path)  # a DiT graph's or a VAE decoder's
    batch = manifest.batch if batch is None else batch
    device = torch.cuda.current_device()  # TensorRT builds for the current device
    gpu_name = torch.cuda.get_device_name(device)
    capability = compute_capability_text(torch.cuda.get_device_capability(device))
    cache_path = Path(timing_cache) if timing_cache else timing_cache_path(
        graph_path.parent, gpu_name, capability, trt.__version__)
    cache_data = cache_path.read_bytes() if cache_path.is_file() else b""
    log.info("building a TensorRT %s engine from %s for batch %d..%d on %s (takes minutes)",
             trt.__version__, graph_path.name, batch.min, batch.max, gpu_name)
    start = time.perf_counter()
    shapes = input_profile(manifest, batch)
    engine_bytes, cache = _build_engine_bytes(trt, graph_path, shapes, optimization_level, cache_data)
    seconds = round(time.perf_counter() - start, 1)
    engine_path = graph_path.with_suffix(".plan")
    write_bytes_atomic(engine_path, engine_bytes)
    write_bytes_atomic(cache_path, cache)
    engine = EngineRecord(file=engine_path.name, tensorrt=trt.__version__, gpu=gpu_name, compute_capability=capability,
                          build_seconds=seconds, optimization_level=optimization_level)
    write_manifest(graph_path, manifest.replace(batch=batch, engine=engine))  # the batch range is the engine's now
    log.info("wrote %s in %.1f s (timing cache %s)", engine_path, seconds, cache_path.name)
    return engine_path
