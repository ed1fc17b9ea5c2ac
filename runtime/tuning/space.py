"""What dit-tune can try on this machine: the engines (a graph or engine file beside the one given, and a
backend that runs it here) and the settings (an engine, a sampler and its steps, a guidance interval, a cache
policy).

    engines, notes = engines_beside(Path("graphs/fashion-28-fp32.onnx"))
    Setting(engines[0], "ddim", 25, cache="fora:3").key   # "openvino fashion-28-fp32.onnx | ddim 25 | fora:3"

Files count as the same model when their manifests name the same model, image size and checkpoint (source and
sha256); cached steps need the file's refresh and reuse pair (dit-export --cached-steps).
"""

from dataclasses import dataclass, field, replace
from pathlib import Path

from dit_ref.contract import PRECISIONS, Manifest, read_manifest
from dit_ref.errors import DiTError
from runtime.backends import BACKENDS

ENGINE_SUFFIXES = BACKENDS["tensorrt"].suffixes
SAMPLERS = {"ddim": (40, 30, 25, 20, 15, 10), "dpm++": (25, 20, 15, 10, 8), "unipc": (15, 10, 8)}  # beside exact's
INTERVALS = ((0, 800), (0, 600), (82, 468))  # timesteps guided (82:468: the paper's EDM2 interval on DiT's schedule)


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

    def with_engine(self, engine: Engine) -> "Setting":
        return replace(self, engine=engine)

    def with_steps(self, sampler: str, steps: int) -> "Setting":
        return replace(self, sampler=sampler, steps=steps)

    def with_interval(self, interval: tuple[int, int] | None) -> "Setting":
        return replace(self, guidance_interval=interval)

    def with_cache(self, cache: str | None) -> "Setting":
        return replace(self, cache=cache)

    @property
    def interval(self) -> tuple[int, int] | None:
        return self.guidance_interval

    @property
    def timesteps(self) -> tuple[int, ...]:
        from runtime.sampling import sampler_from_name

        return sampler_from_name(self.sampler, self.steps).timesteps

    @property
    def call_options(self):
        """What its trajectories' calls are asked (runtime.sampling.CallOptions)."""
        from runtime.caching import parse_cache
        from runtime.sampling import CallOptions

        return CallOptions(self.guidance_interval, parse_cache(self.cache))

    def levers(self, exact: "Setting", cached: Engine | None) -> list[tuple["Setting", "Setting"]]:
        """(lever, base) pairs whose errors against their bases add up to this setting's against exact: its engine,
        its sampler and steps, and its interval, each applied to exact alone; its cache policy on the engine with
        cached steps, at its sampler, steps and interval, against the same uncached."""
        levers = []
        if self.engine != exact.engine:
            levers.append((exact.with_engine(self.engine), exact))
        if (self.sampler, self.steps) != (exact.sampler, exact.steps):
            levers.append((exact.with_steps(self.sampler, self.steps), exact))
        if self.guidance_interval is not None:
            levers.append((exact.with_interval(self.guidance_interval), exact))
        if self.cache is not None:
            base = Setting(cached, self.sampler, self.steps, self.guidance_interval)
            levers.append((base.with_cache(self.cache), base))
        return levers

    def built_up(self, first: Engine) -> list["Setting"]:
        """The setting built up one lever at a time at its own sampler and steps: on the engine `first`, plain, then
        with its interval, then its cache, then on its own engine (the setting itself, last)."""
        steps = [Setting(first, self.sampler, self.steps)]
        if self.guidance_interval is not None:
            steps.append(steps[-1].with_interval(self.guidance_interval))
        if self.cache is not None:
            steps.append(steps[-1].with_cache(self.cache))
        return list(dict.fromkeys([*steps, self]))


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
    """The engine of the exact point: the FP32 graph (else the one given) with the backend dit-run picks for it
    without a profile (a profile written by an earlier run must not change the point a resumed run measures from)."""
    from runtime.backends import unmeasured_backend

    fp32 = [engine for engine in found.engines if engine.precision == "fp32" and not engine.load]
    pool = fp32 or [engine for engine in found.engines if engine.graph == graph.name and not engine.load]
    if not pool:
        raise DiTError(f"no backend here runs {graph.name}; pass a graph this machine runs")
    wanted = unmeasured_backend(graph.parent / pool[0].graph)[0]
    return next((engine for engine in pool if engine.backend == wanted), pool[0])
