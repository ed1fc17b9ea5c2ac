"""DiT -> guided ONNX graph (FP32 or FP16-typed) + manifest, written atomically.

torch.onnx.export with the dynamo exporter (torch.export, then onnxscript with its optimizer, which
folds constants). The batch is traced at 2 and declared dynamic with torch.export.Dim; the result
is verified to be symbolic, because the exporter silently falls back to a static shape when
torch.export cannot keep a dimension dynamic.
"""

import contextlib
import io
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from dit_ref import DiT
from dit_ref.errors import DiTError
from dit_ref.files import sha256_of_files
from export import fp16, manifest as manifests, opcheck
from export.guided import INPUT_NAMES, OUTPUT_NAMES, GuidedDiT, example_inputs

PRECISIONS = ("fp32", "fp16")
DEFAULT_BATCH = {"min": 1, "opt": 8, "max": 32}
MIN_OPSET = 17  # LayerNormalization is one op from opset 17
TRACE_BATCH = 2  # torch.export specialises a dimension traced at size 1


def graph_file_name(model: DiT, precision: str) -> str:
    """"DiT-XL-2-256-fp16.onnx"."""
    return f"{model.config.file_stem}-{model.image_size}-{precision}.onnx"


def check_batch(batch: dict | None) -> dict:
    """A validated {"min", "opt", "max"} batch range (DEFAULT_BATCH when None)."""
    batch = dict(DEFAULT_BATCH if batch is None else batch)
    try:
        low, opt, high = (int(batch[key]) for key in ("min", "opt", "max"))
    except (KeyError, TypeError, ValueError):
        raise DiTError(f"batch range {batch} needs integer min, opt and max") from None
    if not 1 <= low <= opt <= high:
        raise DiTError(f"batch range {low}:{opt}:{high} must satisfy 1 <= min <= opt <= max")
    return {"min": low, "opt": opt, "max": high}


def check_options(precision: str, cfg_channels: int, opset: int) -> None:
    if precision not in PRECISIONS:
        raise DiTError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if cfg_channels not in (3, 4):
        raise DiTError(f"cfg_channels must be 3 (official sample.py) or 4 (textbook), not {cfg_channels}")
    if opset < MIN_OPSET:
        raise DiTError(f"opset {opset} is too old; use {MIN_OPSET} or newer (one LayerNormalization op)")


def export_module(model: DiT, precision: str, copy_model: bool = True) -> DiT:
    """The module to trace: the model itself for FP32, a float16 one (float32 islands kept) for FP16.

    copy_model=False converts the caller's model to float16 in place (saves its float32 memory).
    """
    if precision == "fp16" and model.dtype != torch.float16:
        return fp16.half_copy(model) if copy_model else model.half()
    if precision == "fp16":
        return model
    if model.dtype != torch.float32:
        raise DiTError(f"the FP32 graph needs a float32 model, got {model.dtype}")
    return model


def trace_graph(model: DiT, precision: str, cfg_channels: int = 3, opset: int = 18,
                copy_model: bool = True):
    """Trace the guided forward to an in-memory torch.onnx.ONNXProgram with a dynamic batch."""
    check_options(precision, cfg_channels, opset)
    module = GuidedDiT(export_module(model, precision, copy_model), cfg_channels).eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    inputs = example_inputs(model.latent_size, TRACE_BATCH)
    with quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            module, inputs, dynamo=True, opset_version=opset, optimize=True,
            input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
            dynamic_shapes={name: {0: batch} for name in INPUT_NAMES}, verbose=False,
        )
    check_dynamic_batch(program)
    return program


@contextlib.contextmanager
def quiet_exporter():
    """Silence the exporter's progress chatter and warnings that do not concern the user."""
    logger = logging.getLogger("torch")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(previous)


def check_dynamic_batch(program) -> None:
    """DiTError unless every graph input and output has a symbolic first dimension."""
    graph = program.model.graph  # an onnx_ir graph
    values = list(graph.inputs) + list(graph.outputs)
    static = [value.name for value in values if isinstance(value.shape[0], int)]
    if static:
        raise DiTError(
            f"the exporter fixed the batch of {', '.join(static)}; the model code defeats "
            "torch.export's dynamic batch (check guide() and reshapes over the batch)"
        )


def save_graph(program, out_dir: Path, file_name: str, manifest: dict) -> Path:
    """Write graph (+ one external data file if large) and manifest; all or nothing.

    Files are written with their final names into a temporary directory inside out_dir (so the
    external-data location recorded in the graph is already the final name), checked, then moved
    with os.replace. Any failure or Ctrl-C removes the temporary directory.
    """
    out_dir = Path(out_dir)
    created = make_out_dir(out_dir)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{file_name}.", suffix=".partial", dir=out_dir))
    except OSError as error:
        remove_if_empty(out_dir, created)
        raise DiTError(f"cannot write to {out_dir} ({error.strerror}); choose another --out") from None
    try:
        staged = staging / file_name
        with quiet_exporter():
            program.save(staged)
        opcheck.check_operators(staged)
        opcheck.check_graph(staged)
        return publish(staging, out_dir, file_name, manifest)
    except OSError as error:
        raise DiTError(f"writing the graph to {out_dir} failed ({error}); check space and permissions") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        remove_if_empty(out_dir, created)


def remove_if_empty(out_dir: Path, created: bool) -> None:
    """Remove an output directory this export created and left empty (after a failure)."""
    if created and out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()


def check_out_dir(out_dir) -> None:
    """DiTError unless out_dir is (or can be created as) a writable directory; creates nothing."""
    out_dir = Path(out_dir)
    existing = next(path for path in [out_dir, *out_dir.absolute().parents] if path.exists())
    if not existing.is_dir():
        raise DiTError(f"output path {existing} is not a directory; choose another --out")
    try:  # a real probe: permission bits say little for root or read-only mounts
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as error:
        raise DiTError(f"output directory {existing} is not writable ({error.strerror}); "
                       "choose another --out") from None


def make_out_dir(out_dir: Path) -> bool:
    """Create the output directory if needed; True when this call created it."""
    check_out_dir(out_dir)
    if out_dir.is_dir():
        return False
    try:
        out_dir.mkdir(parents=True)
    except OSError as error:
        raise DiTError(f"cannot create output directory {out_dir} ({error.strerror}); choose another --out") from None
    return True


def publish(staging: Path, out_dir: Path, file_name: str, manifest: dict) -> Path:
    """Fill in the graph section of the manifest, then move data, graph and manifest into place."""
    data_name = f"{file_name}.data"
    external = (staging / data_name).exists()
    extras = sorted(path.name for path in staging.iterdir() if path.name not in (file_name, data_name))
    if extras:
        raise DiTError(f"the exporter wrote unexpected files {extras}; expected one graph and one data file")
    manifest = dict(manifest, graph={
        "file": file_name,
        "sha256": sha256_of_files(staging / file_name),
        "external_data": data_name if external else None,
    })
    manifests.write_manifest(staging / file_name, manifest)
    final = out_dir / file_name
    if external:
        os.replace(staging / data_name, out_dir / data_name)
    os.replace(staging / file_name, final)
    os.replace(manifests.manifest_path_for(staging / file_name), manifests.manifest_path_for(final))
    if not external:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(out_dir / data_name)  # stale weights of an earlier export of the same name
    return final


def graph_manifest(model: DiT, precision: str, cfg_channels: int, batch: dict, opset: int,
                   checkpoint: dict | None) -> dict:
    """The manifest fields known before the graph is written (the graph section is added on save)."""
    checkpoint = checkpoint or {"source": "in-memory model (source not recorded)", "sha256": None,
                                "random_weights": None}
    return {
        "format": manifests.FORMAT,
        "model": model.config.name,
        "image_size": model.image_size,
        "latent_size": model.latent_size,
        "patch_size": model.config.patch_size,
        "precision": precision,
        "cfg_channels": cfg_channels,
        "numerics": model.numerics,
        "batch": batch,
        "opset": opset,
        "checkpoint": {key: checkpoint.get(key) for key in ("source", "sha256", "random_weights")},
        "versions": manifests.package_versions(),
        "created": manifests.now_iso(),
    }


def export_onnx(model: DiT, out_dir: Path, precision: str = "fp32", cfg_channels: int = 3,
                batch: dict | None = None, checkpoint: dict | None = None, opset: int = 18) -> Path:
    """Export the guided graph of a DiT into out_dir with its manifest; returns the graph path.

    checkpoint: {"source", "sha256", "random_weights"} as dit_ref.weights.LoadedDiT reports them.
    """
    check_options(precision, cfg_channels, opset)
    batch = check_batch(batch)
    check_out_dir(out_dir)
    manifest = graph_manifest(model, precision, cfg_channels, batch, opset, checkpoint)
    program = trace_graph(model, precision, cfg_channels, opset)
    return save_graph(program, Path(out_dir), graph_file_name(model, precision), manifest)
