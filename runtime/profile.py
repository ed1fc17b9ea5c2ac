"""Tuning profiles: the named points dit-tune measured on a model and a machine, applied by name.

    dit-run fashion-28-fp32.onnx --profile fast          # the profile beside the graph, point "fast"
    dit-run G.onnx --profile tuned/fashion-28.profile.json:faithful

A profile (JSON, `<model>-<size>.profile.json` beside the graphs, format dit-deploy-profile/1) holds points
such as exact (the reference), faithful and fast. A point's settings say what loads (the graph or engine
file beside the profile, the backend and its options) and how it samples (request options: sampler, steps,
a guidance interval, a cache policy); explicit options win over the point's. The profile also records the
model (its checkpoint), the machine and the runtime versions it was measured with: a profile of another
model is refused; one measured elsewhere is used with a warning that says how to tune here.
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from dit_ref.contract import Manifest, now_iso, read_manifest
from dit_ref.errors import DiTError
from dit_ref.files import read_json, write_text_atomic
from runtime.options import TUNED

FORMAT = "dit-deploy-profile/1"
SUFFIX = ".profile.json"
VERSIONED = ("torch", "onnxruntime", "openvino", "tensorrt")  # the runtimes whose speed a profile records

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Point:
    """One named point: what it loads, how it samples, and what it measured."""

    name: str
    graph: str  # the graph or engine file, beside the profile
    backend: str  # runtime.backends.BACKENDS name
    load: dict  # the backend's options (e.g. {"dtype": "bfloat16"})
    request: dict  # the request options dit-tune chooses (runtime.options.TUNED): sampler, steps, ...
    measured: dict  # seconds_per_image, speedup, fidelity, quality, ... (as dit-tune wrote them)

    def request_for(self, given) -> dict:
        """The point's request options (those set) less the ones the caller gave (names): the caller's win. A
        calibrated refresh list fits the point's own sampler and steps only, so it goes when either is given."""
        request = {name: value for name, value in self.request.items() if name not in given and value is not None}
        return without_stale_refresh(request, given)

    def where(self) -> str:
        """"GRAPH on BACKEND" and the backend's options, for messages."""
        return f"{self.graph} on {self.backend}" + (f" {self.load}" if self.load else "")

    def load_for(self, backend) -> dict:
        """The point's backend options where its own backend runs it (backend None or "auto": the point's); another
        backend has options of its own."""
        return dict(self.load) if backend in (None, "auto", self.backend) else {}


def without_stale_refresh(options: dict, given) -> dict:
    """options less a calibrated refresh list (cache "refresh:...") when the caller gave a sampler or steps of its
    own (names in given): the list fits the sampler and steps it was calibrated for only."""
    from runtime.caching import parse_cache

    policy = parse_cache(options.get("cache"))
    if policy is None or policy.kind != "refresh" or not {"sampler", "steps"} & set(given) or "cache" in given:
        return options
    return {name: value for name, value in options.items() if name != "cache"}


@dataclass(frozen=True)
class Profile:
    path: Path
    record: dict

    def point(self, name: str) -> Point:
        points = self.record["points"]
        if name not in points:
            raise DiTError(f"{self.path.name} has no point {name!r}; it has {', '.join(points) or 'none'}")
        entry = points[name]
        settings = entry["settings"]
        return Point(name, settings["graph"], settings["backend"], dict(settings.get("load", {})),
                     {key: settings.get(key) for key in TUNED}, entry)

    def graph_path(self, point: Point) -> Path:
        return self.path.parent / point.graph


def profile_name(manifest: Manifest) -> str:
    """"fashion-28.profile.json", "DiT-XL-2-256.profile.json": one profile per model and size, any precision."""
    return f"{manifest.model.replace('/', '-')}-{manifest.image_size}{SUFFIX}"  # any DiT shape (configs.file_stem)


def profile_path_for(graph) -> Path:
    """The profile beside a graph or engine (and its manifest)."""
    return Path(graph).parent / profile_name(read_manifest(graph))


def locate(spec: str, graph) -> tuple[Path, str]:
    """(profile file, point name) for --profile NAME (beside the graph) or --profile FILE.profile.json:NAME."""
    if SUFFIX in spec:
        path, _, name = spec.rpartition(":") if not spec.endswith(SUFFIX) else (spec, "", "")
        if not name:
            raise DiTError(f"--profile {spec}: name the point too, e.g. {spec}:fast")
        return Path(path).expanduser(), name
    if graph is None:
        raise DiTError(f"--profile {spec} is found beside an engine or graph: pass one (or FILE{SUFFIX}:{spec})")
    return profile_path_for(graph), spec


def read_profile(path) -> Profile:
    """The profile at path; DiTError (one line) when it is missing, unreadable or not a profile."""
    path = Path(path)
    remedy = "make one with dit-tune GRAPH_OR_ENGINE"
    record = read_json(path, "profile", remedy)
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        found = record.get("format") if isinstance(record, dict) else None
        raise DiTError(f"{path} is not a {FORMAT} profile (format {found!r}); {remedy}")
    try:
        for name, entry in record["points"].items():
            settings = entry["settings"]
            if not isinstance(settings["graph"], str) or not isinstance(settings["backend"], str):
                raise TypeError(f"point {name}'s graph and backend must be names")
        record["checkpoint"]["source"]
    except (KeyError, TypeError, AttributeError) as error:
        raise DiTError(f"profile {path} is malformed ({error}); {remedy}") from None
    return Profile(path, record)


def write_profile(path, record: dict) -> Path:
    """Write a profile record atomically (the format and the time added)."""
    write_text_atomic(path, json.dumps({"format": FORMAT, "created": now_iso(), **record}, indent=1) + "\n")
    return Path(path)


def check_model(profile: Profile, manifest: Manifest) -> None:
    """DiTError unless the profile was measured on this model: the same checkpoint and image size."""
    checkpoint, recorded = manifest.checkpoint, profile.record["checkpoint"]
    same = (checkpoint.sha256 == recorded.get("sha256") and checkpoint.source == recorded.get("source")
            and manifest.image_size == profile.record.get("image_size"))
    if not same:
        raise DiTError(f"{profile.path.name} was measured on another model ({recorded.get('source')}, sha256 "
                       f"{str(recorded.get('sha256'))[:12]}, {profile.record.get('image_size')} px), not this "
                       f"{manifest.model} ({checkpoint.source}, sha256 {str(checkpoint.sha256)[:12]}, "
                       f"{manifest.image_size} px); tune this one: dit-tune GRAPH_OR_ENGINE")


def machine_record() -> dict:
    """What a profile's speeds belong to: the CPU (model, cores, speed flags), the GPU, runtime versions."""
    import torch

    from dit_ref.machine.cpu import cpu_summary
    from dit_ref.machine.gpu_stack import versions

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"cpu": cpu_summary(), "gpu": gpu, "versions": versions(*VERSIONED)}


def elsewhere(profile: Profile, here: dict | None = None) -> str | None:
    """One line saying how this machine or its runtimes differ from the profile's, or None when they do not."""
    here = here or machine_record()
    there = profile.record.get("machine", {})
    changes = [f"{key} {there.get(key)} there, {here[key]} here" for key in ("cpu", "gpu") if there.get(key) != here[key]]
    versions = there.get("versions", {})
    changes += [f"{name} {versions.get(name)} there, {version} here" for name, version in here["versions"].items()
                if name != "python" and versions.get(name) != version]
    return "; ".join(changes) or None


def warn_if_elsewhere(profile: Profile, graph) -> None:
    """A one-line warning when the profile was measured on another machine or runtime versions."""
    difference = elsewhere(profile)
    if difference:
        log.warning("%s was measured elsewhere (%s): its speeds may not hold here; re-tune with: dit-tune %s",
                    profile.path.name, difference, Path(graph).name)


def measured_backend(graph) -> str | None:
    """The backend dit-tune measured fastest for this graph on this machine, from the profile beside it; None without
    one (or one measured elsewhere, or for another model)."""
    graph = Path(graph)
    try:
        profile = read_profile(profile_path_for(graph))
        check_model(profile, read_manifest(graph))
    except DiTError:
        return None
    if elsewhere(profile) is not None:
        return None
    return profile.record.get("backends", {}).get(graph.name)


def load_point(spec: str, graph) -> tuple[Profile, Point]:
    """The profile and point --profile names, checked against the graph's model (refused for another model,
    a warning when measured elsewhere), its graph or engine present."""
    path, name = locate(spec, graph)
    profile = read_profile(path)
    point = profile.point(name)
    target = profile.graph_path(point)
    if not target.is_file():
        raise DiTError(f"{profile.path.name}'s point {name} runs {point.graph}, which is not beside it; export it "
                       f"again (dit-tune said how) or re-tune with dit-tune")
    check_model(profile, read_manifest(graph if graph is not None else target))
    warn_if_elsewhere(profile, target)
    return profile, point
