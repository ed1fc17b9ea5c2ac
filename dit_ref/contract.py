"""The contract between export and runtime: the guided graph's I/O, its batch range, its manifest.

export writes graphs, engines and manifests by it; runtime reads them by it; neither imports the
other. Everything here is plain Python and torch dtypes: reading a manifest imports no onnx and no
TensorRT.

The guided graph (docs/manifest.md):
    inputs   x (B, C, L, L) float32   latents (or pixels) at step t; C = the model's latent channels
             t (B,) int64             original timestep 0..999
             y (B,) int64             class label 0..num_classes-1
             cfg_scale (B,) float32   guidance scale per sample
             guided (U,) int64        the rows to guide, 0 <= U <= B (format 4 graphs: guided_rows)
    outputs  eps (B, C, L, L) float32         guided noise prediction (a row not guided: conditional)
             var_values (B, C, L, L) float32  learned-range values (learned-sigma models only)
I/O stays float32 in every precision. B is dynamic within the manifest's batch range, U within 0..B:
the transformer runs over B + U rows. Graphs of older formats have no `guided` and guide every row.

The VAE decoder graph (dit-export --vae) has a manifest of its own kind (DecoderManifest, format
dit-deploy-decoder/1): latents (B, C, L, L) float32 in, images (B, 3, 8L, 8L) float32 in about [-1, 1] out,
the 1/0.18215 latent scaling inside. Neither kind of manifest is taken for the other.
"""

import dataclasses
import datetime
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from dit_ref.configs import VAE_DOWNSAMPLE
from dit_ref.errors import DiTError
from dit_ref.files import read_json, write_text_atomic

INPUT_NAMES = ("x", "t", "y", "cfg_scale")  # one row per image (the batch B)
GUIDED = "guided"  # (U,) the indices of the rows to guide
OUTPUT_NAMES = ("eps", "var_values")  # var_values only for learned-sigma models
# Cached steps (dit_ref.block_features): a "refresh" graph also gives, and a "reuse" graph takes, every block's branch
# outputs: features (B, depth, 2, T, D) of the conditional rows, null_features (U, depth, 2, T, D) of the guided
# rows' null-class pass. The "guided" graph is the plain one.
FEATURES = ("features", "null_features")
ROLES = ("guided", "refresh", "reuse")
IO_DTYPES = {"x": torch.float32, "t": torch.int64, "y": torch.int64, "cfg_scale": torch.float32,
             GUIDED: torch.int64, "eps": torch.float32, "var_values": torch.float32,
             "features": torch.float32, "null_features": torch.float32}


def guided_rows(cfg_scale: torch.Tensor) -> torch.Tensor:
    """(U,) int64 indices of the rows a call guides, on cfg_scale's device: those whose scale is not 1 (guidance at
    scale 1 is the conditional output, so a cfg-1 row runs the transformer once)."""
    return torch.nonzero(cfg_scale != 1).flatten()


def input_names(guided_rows: bool, role: str = "guided") -> tuple[str, ...]:
    """The graph's inputs: the per-image ones, `guided` for a graph that guides only some rows, and the
    features for a reuse graph."""
    names = (*INPUT_NAMES, GUIDED) if guided_rows else INPUT_NAMES
    return (*names, *FEATURES) if role == "reuse" else names


def output_names(learn_sigma: bool, role: str = "guided") -> tuple[str, ...]:
    """The graph's outputs: eps and var_values (eps alone without learned sigma), and the features of a refresh."""
    names = OUTPUT_NAMES if learn_sigma else OUTPUT_NAMES[:1]
    return (*names, *FEATURES) if role == "refresh" else names


def io_shapes(latent_channels: int, latent_size: int, learn_sigma: bool, guided_rows: bool = True,
              role: str = "guided", feature_shape: tuple | None = None) -> dict[str, tuple]:
    """Name -> shape without the first (batch) dimension: x/eps/var_values (C, L, L), t/y/cfg_scale/guided (),
    features and null_features (depth, 2, T, D)."""
    image = (latent_channels, latent_size, latent_size)
    shapes = {name: image if name == "x" else () for name in input_names(guided_rows, role)}
    shapes.update({name: image for name in output_names(learn_sigma, role)})
    for name in FEATURES:
        if name in shapes:
            shapes[name] = tuple(feature_shape)
    return shapes


# --- the batch range -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchRange:
    """The image batch sizes a graph or engine serves: min <= opt <= max (opt: what TensorRT tunes for)."""

    min: int = 1
    opt: int = 8
    max: int = 32

    def __post_init__(self):
        values = (self.min, self.opt, self.max)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise DiTError(f"batch range {values} needs integer min, opt and max")
        if not 1 <= self.min <= self.opt <= self.max:
            raise DiTError(f"batch range {self.min}:{self.opt}:{self.max} must satisfy 1 <= min <= opt <= max")

    @classmethod
    def parse(cls, text: str) -> "BatchRange":
        """"1:8:32" -> BatchRange(1, 8, 32)."""
        parts = str(text).split(":")
        if len(parts) != 3 or not all(part.strip().isdigit() for part in parts):
            raise DiTError(f"--batch {text!r} must be MIN:OPT:MAX, for example 1:8:32")
        return cls(*(int(part) for part in parts))

    @classmethod
    def from_dict(cls, value) -> "BatchRange":
        try:
            return cls(*(int(value[key]) for key in ("min", "opt", "max")))
        except (KeyError, TypeError, ValueError):
            raise DiTError(f"batch range {value} needs integer min, opt and max") from None

    def to_dict(self) -> dict:
        return {"min": self.min, "opt": self.opt, "max": self.max}

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"

    def __contains__(self, batch_size: int) -> bool:
        return self.min <= batch_size <= self.max

    def check(self, batch_size: int, whose: str = "the", remedy: str = "re-export with --batch MIN:OPT:MAX") -> int:
        """batch_size, or the one DiTError for a batch outside the range ("outside the engine's range ...")."""
        if batch_size not in self:
            raise DiTError(f"batch of {batch_size} is outside {whose} range {self.min}..{self.max}; use "
                           f"--batch-size between {self.min} and {self.max}, or {remedy}")
        return batch_size


DEFAULT_BATCH = BatchRange()


# --- the manifest ------------------------------------------------------------------------------------

FORMAT = "dit-deploy-manifest/4"  # the schema version; docs/manifest.md lists the fields
# Older versions this one reads as they are: their graphs have no `guided` input (they guide every row),
# and 2 lacks `quantization` (its graphs are fp32 or fp16, never Q/DQ).
READABLE = (FORMAT, "dit-deploy-manifest/3", "dit-deploy-manifest/2")
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8")  # fp16/bf16: typed graphs; int8/fp8: Q/DQ graphs
DECODERS = ("vae", "pixels")  # latents for the SD VAE (8x upsampling), or samples that are images


# The one label of a random-weight model, wherever it appears (dit-run, dit-export, dit-serve and its page).
RANDOM_WEIGHTS = "RANDOM WEIGHTS: noise from an untrained network, not DiT samples"


@dataclass(frozen=True)
class Checkpoint:
    """Where the weights came from."""

    source: str  # a path, URL, "hf:ORG/NAME", "shipped:fashion" or "random init (seed N)"
    sha256: str | None  # of the checkpoint file(s); None for random weights
    random_weights: bool | None  # True: the graph computes noise, not images; None: not recorded


@dataclass(frozen=True)
class GraphRecord:
    file: str  # the .onnx beside the manifest
    sha256: str  # of the .onnx file
    external_data: str | None  # the one weights file beside large graphs, else None


def external_data_path(graph: Path) -> Path:
    """The one weights file beside a large graph (GraphRecord.external_data; it may not exist)."""
    return graph.with_name(f"{graph.name}.data")


@dataclass(frozen=True)
class EngineRecord:
    file: str  # the .plan beside the manifest
    tensorrt: str  # the TensorRT version that built it (an engine loads only in that release)
    gpu: str  # the GPU model it was built on (TensorRT promises the same model, not the same architecture)
    compute_capability: str  # "8.6"
    build_seconds: float
    optimization_level: int


@dataclass(frozen=True)
class Manifest:
    """The JSON beside a graph and its engine (same stem, .json); README.md "The manifest" shows one."""

    model: str  # config name, "DiT-XL/2" or "fashion"
    image_size: int  # pixels per side of the images the model makes
    latent_size: int  # L: side of the model's input (image / 8 through the VAE; = image in pixel space)
    latent_channels: int  # C of x, eps and var_values
    num_classes: int  # labels 0..num_classes-1; num_classes is the null class
    learn_sigma: bool  # True: the graph has var_values; False: DDPM uses the fixed (large) variance
    patch_size: int
    decoder: str  # "vae" (latents for the SD VAE) or "pixels" (samples are images in [-1, 1])
    precision: str  # one of PRECISIONS: the graph's compute types (I/O stays float32)
    cfg_channels: int  # eps channels guided inside the graph (3 = official sample.py for 4 channels)
    numerics: str  # "official" or "diffusers"
    batch: BatchRange  # image batch sizes served; an engine's profile when one is built
    opset: int
    checkpoint: Checkpoint
    versions: dict  # package versions that shaped the graph (torch, onnx, ...)
    created: str  # UTC, ISO 8601
    graph: GraphRecord | None = None  # filled when the graph is written
    engine: EngineRecord | None = None  # filled when an engine is built
    quantization: dict | None = None  # int8/fp8: tool, form, calibration, the sweep and the excluded layer kinds
    guided_rows: bool = False  # True: the graph takes `guided` and runs the null pass for those rows only
    role: str = "guided"  # one of ROLES: the plain graph, or a cached-steps refresh or reuse graph
    feature_shape: tuple | None = None  # refresh and reuse graphs: one row's features (depth, 2, T, D)
    cached_steps: dict | None = None  # a guided graph exported with its pair: {"refresh": file, "reuse": file}

    @property
    def output_names(self) -> tuple[str, ...]:
        return output_names(self.learn_sigma, self.role)

    @property
    def input_names(self) -> tuple[str, ...]:
        return input_names(self.guided_rows, self.role)

    @property
    def random_weights(self) -> bool:
        return bool(self.checkpoint.random_weights)

    def replace(self, **changes) -> "Manifest":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        record = dataclasses.asdict(self)
        record["batch"] = self.batch.to_dict()
        return {"format": FORMAT, **record}

    @classmethod
    def from_dict(cls, record: dict, where: str = "manifest") -> "Manifest":
        """A Manifest from its JSON object; DiTError naming what is missing or wrong."""
        remedy = "re-export the graph with dit-export to write it"
        if isinstance(record, dict) and record.get("format") == DECODER_FORMAT:
            raise DiTError(f"{where} describes a VAE decoder ({DECODER_FORMAT}), not a DiT graph: pass its graph or "
                           f"engine as --vae, and a DiT graph or engine made by dit-export --model as the file to run")
        if not isinstance(record, dict) or record.get("format") not in READABLE:
            found = record.get("format") if isinstance(record, dict) else None
            raise DiTError(f"{where} is not a {FORMAT} manifest (format {found!r}); {remedy}")
        fields = {field.name for field in dataclasses.fields(cls)}
        optional = ("graph", "engine", "quantization", "guided_rows", "role", "feature_shape",
                    "cached_steps")  # absent from older formats, or until filled
        missing = [name for name in fields if name not in record and name not in optional]
        if missing:
            raise DiTError(f"{where} lacks {', '.join(sorted(missing))}; {remedy}")
        values = {name: record[name] for name in fields if name in record}
        try:
            values["batch"] = BatchRange.from_dict(record["batch"])
            values["checkpoint"] = Checkpoint(**record["checkpoint"])
            values["graph"] = GraphRecord(**record["graph"]) if record.get("graph") else None
            values["engine"] = EngineRecord(**record["engine"]) if record.get("engine") else None
            if record.get("feature_shape") is not None:
                values["feature_shape"] = tuple(int(size) for size in record["feature_shape"])
            for name in ("image_size", "latent_size", "latent_channels", "num_classes", "patch_size",
                         "cfg_channels", "opset"):
                values[name] = int(values[name])
        except (TypeError, ValueError) as error:
            raise DiTError(f"{where} has a malformed field ({error}); {remedy}") from None
        manifest = cls(**values)
        manifest.check_consistent(where)
        return manifest

    def check_consistent(self, where: str = "manifest") -> None:
        """DiTError unless the manifest agrees with itself: a known precision, and its image size is what its
        latent size makes through its decoder (the SD VAE upsamples 8x; pixel models make images of their
        input's size)."""
        if self.role not in ROLES:
            raise DiTError(f"{where} names role {self.role!r}, not one of {', '.join(ROLES)}; re-export the graph")
        if (self.role != "guided") != (self.feature_shape is not None):
            raise DiTError(f"{where}: a {self.role} graph {'needs' if self.role != 'guided' else 'has no'} a feature "
                           f"shape; re-export the graph with dit-export")
        if self.precision not in PRECISIONS:
            raise DiTError(f"{where} names precision {self.precision!r}, not one of {', '.join(PRECISIONS)}; "
                           f"re-export the graph with dit-export")
        if self.decoder not in DECODERS:
            raise DiTError(f"{where} names decoder {self.decoder!r}, not one of {', '.join(DECODERS)}; "
                           f"re-export the graph with dit-export")
        made = self.latent_size * (VAE_DOWNSAMPLE if self.decoder == "vae" else 1)
        if made != self.image_size:
            raise DiTError(f"{where} claims {self.image_size} px images, but its {self.latent_size} x "
                           f"{self.latent_size} latents make {made} px through its decoder ({self.decoder}): it "
                           f"was edited or belongs to another graph; re-export the graph with dit-export")


def manifest_path_for(path) -> Path:
    """The manifest of a graph or engine: same directory and stem, suffix .json."""
    return Path(path).with_suffix(".json")


def read_record(path) -> tuple[dict, str]:
    """(the JSON record, "manifest PATH") of the manifest beside a graph or engine (or the manifest itself);
    DiTError if it is missing or unreadable."""
    path = Path(path)
    manifest_path = path if path.suffix == ".json" else manifest_path_for(path)
    record = read_json(manifest_path, "manifest", "re-export the graph with dit-export to write it",
                       missing=f" beside {path.name}")
    return record, f"manifest {manifest_path}"


def read_manifest(path) -> Manifest:
    """The manifest beside a DiT graph or engine (or the manifest itself); DiTError if missing or corrupt."""
    return Manifest.from_dict(*read_record(path))


def read_any_manifest(path) -> "Manifest | DecoderManifest":
    """The manifest beside a DiT's or a VAE decoder's graph or engine, of the kind its format says."""
    record, where = read_record(path)
    kind = DecoderManifest if isinstance(record, dict) and record.get("format") == DECODER_FORMAT else Manifest
    return kind.from_dict(record, where)


def write_manifest(path, manifest: "Manifest | DecoderManifest") -> Path:
    """Write the manifest for a graph or engine path (or a .json path) atomically; returns its path."""
    path = Path(path)
    manifest_path = path if path.suffix == ".json" else manifest_path_for(path)
    write_text_atomic(manifest_path, json.dumps(manifest.to_dict(), indent=2) + "\n")
    return manifest_path


def check_io_shapes(manifest: Manifest, found: dict[str, tuple], path) -> None:
    """DiTError unless a graph's or engine's own I/O (name -> shape, batch first) is the manifest's.

    The file is the truth: a manifest edited (or copied from another export) to claim another
    size, channel count or output set is refused, naming which file to trust.
    """
    expected = io_shapes(manifest.latent_channels, manifest.latent_size, manifest.learn_sigma, manifest.guided_rows,
                         manifest.role, manifest.feature_shape)
    name = Path(path).name
    if set(found) != set(expected):
        raise DiTError(f"{name} has tensors {sorted(found)} but its manifest describes {sorted(expected)}; "
                       f"{name} is the truth: re-export it with dit-export to get a matching manifest")
    for tensor, shape in expected.items():
        if tuple(found[tensor][1:]) != shape:
            raise DiTError(
                f"{name} takes {tensor} of shape (B, {', '.join(map(str, found[tensor][1:]))}) but its manifest "
                f"says (B, {', '.join(map(str, shape))}) ({manifest.model} at {manifest.image_size} px); "
                f"{name} is the truth: re-export it with dit-export to get a matching manifest"
            )


# --- the VAE decoder graph and its manifest -------------------------------------------------------------

DECODER_FORMAT = "dit-deploy-decoder/1"
DECODER_INPUT, DECODER_OUTPUT = "latents", "images"  # (B, C, L, L) float32 -> (B, 3, 8L, 8L) float32
DECODER_PRECISIONS = ("fp32", "fp16", "bf16")  # typed graphs with float32 islands; I/O stays float32
INTEGER_FIELDS = ("latent_channels", "latent_size", "image_size", "image_channels", "opset")


@dataclass(frozen=True)
class DecoderManifest:
    """The JSON beside a VAE decoder graph and its engine (same stem, .json); docs/manifest.md lists the fields."""

    vae: Checkpoint  # source: hub id, directory or random; sha256 of its weights file (None for random weights)
    latent_channels: int  # C of the latents it takes
    latent_size: int  # L
    image_size: int  # side of the images it gives: 8 L
    image_channels: int  # 3
    scaling_factor: float  # the latents are divided by it inside the graph (sample.py's 1 / 0.18215)
    precision: str  # one of DECODER_PRECISIONS
    float32_islands: tuple[str, ...]  # what stays float32 inside a fp16 or bf16 graph
    batch: BatchRange  # images per decoder call
    opset: int
    versions: dict  # package versions that shaped the graph (torch, diffusers, onnx, ...)
    created: str  # UTC, ISO 8601
    graph: GraphRecord | None = None
    engine: EngineRecord | None = None

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.latent_channels, self.latent_size, self.latent_size)

    @property
    def random_weights(self) -> bool:
        return bool(self.vae.random_weights)

    def io_shapes(self) -> dict[str, tuple]:
        """Name -> shape without the batch."""
        return {DECODER_INPUT: self.latent_shape,
                DECODER_OUTPUT: (self.image_channels, self.image_size, self.image_size)}

    def replace(self, **changes) -> "DecoderManifest":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        record = dataclasses.asdict(self)
        record.update(batch=self.batch.to_dict(), float32_islands=list(self.float32_islands))
        return {"format": DECODER_FORMAT, **record}

    @classmethod
    def from_dict(cls, record: dict, where: str = "manifest") -> "DecoderManifest":
        """A DecoderManifest from its JSON object; DiTError naming what is missing or wrong."""
        remedy = "re-export the decoder with dit-export --vae to write it"
        found = record.get("format") if isinstance(record, dict) else None
        if found in READABLE:
            raise DiTError(f"{where} describes a DiT graph, not a VAE decoder: pass it as the file to run, and a "
                           f"decoder made by dit-export --vae as --vae")
        if found != DECODER_FORMAT:
            raise DiTError(f"{where} is not a {DECODER_FORMAT} manifest (format {found!r}); {remedy}")
        names = [field.name for field in dataclasses.fields(cls)]
        missing = sorted(name for name in names if name not in record and name not in ("graph", "engine"))
        if missing:
            raise DiTError(f"{where} lacks {', '.join(missing)}; {remedy}")
        values = {name: record[name] for name in names if name in record}
        try:
            values.update({name: int(values[name]) for name in INTEGER_FIELDS},
                          scaling_factor=float(values["scaling_factor"]), vae=Checkpoint(**record["vae"]),
                          batch=BatchRange.from_dict(record["batch"]), float32_islands=tuple(values["float32_islands"]),
                          graph=GraphRecord(**record["graph"]) if record.get("graph") else None,
                          engine=EngineRecord(**record["engine"]) if record.get("engine") else None)
        except (TypeError, ValueError) as error:
            raise DiTError(f"{where} has a malformed field ({error}); {remedy}") from None
        manifest = cls(**values)
        if manifest.precision not in DECODER_PRECISIONS or manifest.image_size != VAE_DOWNSAMPLE * manifest.latent_size:
            raise DiTError(f"{where} claims {manifest.precision} {manifest.image_size} px images from "
                           f"{manifest.latent_size} x {manifest.latent_size} latents: it was edited; {remedy}")
        return manifest


def read_decoder_manifest(path) -> DecoderManifest:
    """The manifest beside a VAE decoder graph or engine; DiTError if missing, corrupt or a DiT graph's."""
    return DecoderManifest.from_dict(*read_record(path))


def check_decoder_io(manifest: DecoderManifest, found: dict[str, tuple], path) -> None:
    """DiTError unless a decoder graph's or engine's own I/O (name -> shape, batch first) is its manifest's."""
    name = Path(path).name
    wanted = {tensor: f"(B, {', '.join(map(str, shape))})" for tensor, shape in manifest.io_shapes().items()}
    have = {tensor: f"(B, {', '.join(map(str, shape[1:]))})" for tensor, shape in found.items()}
    if have != wanted:
        raise DiTError(f"{name} has {have} but its manifest says {wanted}; {name} is the truth: re-export the "
                       f"decoder with dit-export --vae to get a matching manifest")


def now_iso() -> str:
    """Current UTC time, ISO 8601, to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
