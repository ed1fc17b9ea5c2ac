"""What dit-tune can try on this machine: the engines (a graph or engine file beside the one given, and a
backend that runs it here) and the settings (an engine, a sampler and its steps, a guidance interval, a cache
policy).

    engines, notes = engines_beside(Path("graphs/fashion-28-fp32.onnx"))
    Setting(engines[0], "ddim", 25, cache="fora:3").key   # "openvino fashion-28-fp32.onnx | ddim 25 | fora:3"

Files count as the same model when their manifests name the same model, image size and checkpoint (source and
sha256); cached steps need the file's refresh and reuse pair (dit-export --cached-steps).
"""

from dataclasses import dataclass, field
from pathlib import Path

from dit_ref.contract import PRECISIONS, Manifest, read_manifest
from dit_ref.errors import DiTError
from runtime.backends import BACKENDS

ENGINE_SUFFIXES = BACKENDS["tensorrt"].suffixes


@dataclass(frozen=True)
class Engine:
    """One way to run the model here: a graph or engine file beside the profile and the backend that runs it."""

    graph: str  # the file's name
    backend: str  # runtime.backends.BACKENDS name
    precision: str  # the manifest's
    cached_steps: bool  # its refresh and reuse pair is beside it
    load: tuple = ()  # the backend's options as (name, value) pairs, e.g. (("dtype", "bfloat16"),)

    @property
    def key(self) -> str:
        compute = "".join(f" {name}={value}" for name, value in self.load)
        return f"{self.backend}{compute} {self.graph}"

    @property
    def label(self) -> str:
        """"openvino fp32", "openvino fp32 (bf16 compute)": what a table calls it."""
        return f"{self.backend} {self.precision}" + (" (bf16 compute)" if dict(self.load).get("dtype") else "")


@dataclass(frozen=True)
class Setting:
    """A point of the space: an engine and the request options it samples with."""

    engine: Engine
    sampler: str
    steps: int
    guidance_interval: tuple[int, int] | None = None
    cache: str | None = None  # a cache policy's spec (runtime.caching)

    @property
    def key(self) -> str:
        parts = [self.engine.key, f"{self.sampler} {self.steps}"]
        parts += [f"gi {self.guidance_interval[0]}:{self.guidance_interval[1]}"] if self.guidance_interval else []
        return " | ".join(parts + ([self.cache] if self.cache else []))

    @property
    def request(self) -> dict:
        """The request options it sets (runtime.options), as a profile records them."""
        interval = None if self.guidance_interval is None else "{}:{}".format(*self.guidance_interval)
        return {"sampler": self.sampler, "steps": self.steps, "guidance_interval": interval, "cache": self.cache}

    def label(self) -> str:
        """"openvino fp32, ddim 25, fora:3": one line of a table."""
        return ", ".join([self.engine.label, f"{self.sampler} {self.steps}", *self.key.split(" | ")[2:]])


@dataclass
class Found:
    """What engines_beside found: the engines, and notes on what is missing and how to make it."""

    engines: list[Engine] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def same_model(a: Manifest, b: Manifest) -> bool:
    """Whether b is a plain (guided) graph of a's model: its name, image size and checkpoint."""
    return b.role == "guided" and (a.model, a.image_size, a.checkpoint.source, a.checkpoint.sha256) == (
        b.model, b.image_size, b.checkpoint.source, b.checkpoint.sha256)


def siblings(graph: Path) -> list[tuple[Path, Manifest]]:
    """The graphs and engines of graph's model beside it (graph first), each with its manifest."""
    wanted = read_manifest(graph)
    found = {}
    for path in sorted(graph.parent.iterdir()):
        if path.suffix.lower() not in (".onnx", *ENGINE_SUFFIXES) or not path.is_file():
            continue
        try:
            manifest = read_manifest(path)
        except DiTError:
            continue  # another kind of file (a decoder, a cached-steps graph's own manifest is guided too)
        if same_model(wanted, manifest):
            found[path.name] = (path, manifest)
    first = found.pop(graph.name, (graph, wanted))
    return [first, *found.values()]


def backends_here(path: Path, manifest: Manifest) -> list[tuple[str, tuple]]:
    """(backend, options) pairs that can run the file on this machine: TensorRT for an engine where it runs; for a
    graph ONNX Runtime on a GPU where its CUDA provider is, else ONNX Runtime and OpenVINO on the CPU (OpenVINO
    also with bfloat16 compute where the CPU has bf16 units)."""
    from dit_ref.machine.tensorrt_stack import engine_unavailable_reason
    from runtime.backends import onnxruntime_cuda_here, openvino_here  # noqa: I001

    if path.suffix.lower() in ENGINE_SUFFIXES:
        return [] if engine_unavailable_reason() else [("tensorrt", ())]
    if onnxruntime_cuda_here():
        return [("onnxruntime", ())]
    choices = [] if manifest.precision == "bf16" else [("onnxruntime", ())]  # no bfloat16 CPU kernels there
    if openvino_here() and manifest.precision != "fp8":
        from dit_ref.machine.openvino_stack import cpu_has_bf16

        choices.append(("openvino", ()))
        if manifest.precision == "fp32" and cpu_has_bf16():
            choices.append(("openvino", (("dtype", "bfloat16"),)))
    return choices


def engines_beside(graph) -> Found:
    """Every engine of graph's model that runs here, and notes on the precisions and pairs that are missing."""
    graph = Path(graph)
    result = Found()
    files = siblings(graph)
    for path, manifest in files:
        for backend, load in backends_here(path, manifest):
            result.engines.append(Engine(path.name, backend, manifest.precision, bool(manifest.cached_steps), load))
    manifest = files[0][1]
    have = {found.precision for found in result.engines}
    missing = [precision for precision in PRECISIONS if precision not in have]
    model = manifest.model if manifest.model == "fashion" else manifest.model.removeprefix("DiT-")
    if missing:
        result.notes.append(f"not tried: {', '.join(missing)} (no such graph beside {graph.name}, or none this "
                            f"machine runs); export one with dit-export --model {model} --image-size "
                            f"{manifest.image_size} --precision {missing[0]} --out {graph.parent} (and your --ckpt)")
    if not any(engine.cached_steps for engine in result.engines):
        result.notes.append(f"not tried: cache policies (no graph has its cached-steps pair); export with "
                            f"--cached-steps to try them")
    return result


def exact_engine(found, graph: Path):
    """The engine of the exact point: the FP32 graph (else the one given) with the backend dit-run picks for it."""
    from runtime.backends import backend_for

    fp32 = [engine for engine in found.engines if engine.precision == "fp32" and not engine.load]
    pool = fp32 or [engine for engine in found.engines if engine.graph == graph.name and not engine.load]
    if not pool:
        raise DiTError(f"no backend here runs {graph.name}; pass a graph this machine runs")
    wanted = backend_for(graph.parent / pool[0].graph, "auto")
    return next((engine for engine in pool if engine.backend == wanted), pool[0])
