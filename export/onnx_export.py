"""DiT -> guided ONNX graph (FP32 or FP16-typed) + manifest, written atomically.

torch.onnx.export with the dynamo exporter (torch.export, then onnxscript with its optimizer, which
folds constants). The batch is traced at 2 and declared dynamic with torch.export.Dim; the result
is verified to be symbolic, because the exporter silently falls back to a static shape when
torch.export cannot keep a dimension dynamic.
"""

import contextlib
import importlib.metadata
import io
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from dit_ref import DiT, block_features
from dit_ref import contract
from dit_ref.contract import (DEFAULT_BATCH, INPUT_NAMES, BatchRange, Checkpoint, GraphRecord, Manifest,
                              external_data_path)
from dit_ref.errors import DiTError
from dit_ref.files import sha256_of_files
from export import opcheck, typed
from export.guided import MODULES, example_inputs

TRACED_PRECISIONS = ("fp32", "fp16", "bf16")  # int8 and fp8: Q/DQ graphs on a traced base (export/quantize.py)
MIN_OPSET = 17  # LayerNormalization is one op from opset 17
TRACE_BATCH = 4  # torch.export specialises a dimension traced at size 1 (or equal to another)
TRACE_GUIDED = (0, 2)  # U = 2 of 4 rows guided while tracing: B and U stay two dimensions


def graph_file_name(model: DiT, precision: str, role: str = "guided") -> str:
    """"DiT-XL-2-256-fp16.onnx"; a cached-steps graph "DiT-XL-2-256-fp16-refresh.onnx" (or -reuse)."""
    suffix = "" if role == "guided" else f"-{role}"
    return f"{model.config.file_stem}-{model.image_size}-{precision}{suffix}.onnx"


def check_export_options(model: DiT, precision: str, cfg_channels: int, opset: int) -> None:
    if precision not in TRACED_PRECISIONS:
        raise DiTError(f"precision must be one of {', '.join(TRACED_PRECISIONS)}, not {precision!r}")
    model.config.check_cfg_channels(cfg_channels)
    if opset < MIN_OPSET:
        raise DiTError(f"opset {opset} is too old; use {MIN_OPSET} or newer (one LayerNormalization op)")


def export_module(model: DiT, precision: str, copy_model: bool = True) -> DiT:
    """The module to trace: the model itself for FP32, a float16 (bfloat16) one with its float32 islands
    kept for FP16 (BF16).

    copy_model=False converts the caller's model in place (saves its float32 memory).
    """
    if precision in typed.DTYPES:
        dtype = typed.DTYPES[precision]
        if model.dtype == dtype:
            return model
        return typed.typed_copy(model, dtype) if copy_model else model.to(dtype)
    if model.dtype != torch.float32:
        raise DiTError(f"the FP32 graph needs a float32 model, got {model.dtype}")
    return model


def trace_graph(model: DiT, precision: str, cfg_channels: int = 3, opset: int = 18,
                copy_model: bool = True, role: str = "guided"):
    """Trace the guided forward (or its cached-steps refresh or reuse form) to an in-memory
    torch.onnx.ONNXProgram with a dynamic batch and a dynamic count of guided rows."""
    check_export_options(model, precision, cfg_channels, opset)
    outputs = contract.output_names(model.config.learn_sigma, role)
    module = MODULES[role](export_module(model, precision, copy_model), cfg_channels).eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    guided = torch.export.Dim("guided", min=0, max=4096)
    inputs = (*example_inputs(model, TRACE_BATCH), torch.tensor(TRACE_GUIDED))
    dynamic = {name: {0: batch} for name in INPUT_NAMES} | {contract.GUIDED: {0: guided}}
    if role == "reuse":
        shape = block_features.feature_shape(model)
        inputs += (torch.randn(TRACE_BATCH, *shape), torch.randn(len(TRACE_GUIDED), *shape))
        dynamic |= {"features": {0: batch}, "null_features": {0: guided}}
    with quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            module, inputs, dynamo=True, opset_version=opset, optimize=True,
            input_names=list(contract.input_names(True, role)), output_names=list(outputs),
            dynamic_shapes=dynamic, verbose=False,
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


def save_graph(program, out_dir: Path, file_name: str, manifest: Manifest) -> Path:
    """Write a traced graph (+ one external data file if large) and manifest; all or nothing (save_file)."""

    def write(staged: Path):
        with quiet_exporter():
            program.save(staged)

    return save_file(write, out_dir, file_name, manifest)


def save_file(write, out_dir: Path, file_name: str, manifest: Manifest, final_manifest=None) -> Path:
    """write(staged_path) makes the graph (+ `<name>.data` if large); check it, then publish it with its
    manifest (final_manifest(), when given, is called after write: the quantizer's record); all or nothing.

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
        write(staged)
        opcheck.check_operators(staged)
        opcheck.check_graph(staged)
        return publish(staging, out_dir, file_name, final_manifest() if final_manifest else manifest)
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


def publish(staging: Path, out_dir: Path, file_name: str, manifest: Manifest) -> Path:
    """Fill in the graph section of the manifest, then move data, graph and manifest into place."""
    data_name = external_data_path(staging / file_name).name
    external = (staging / data_name).exists()
    extras = sorted(path.name for path in staging.iterdir() if path.name not in (file_name, data_name))
    if extras:
        raise DiTError(f"the exporter wrote unexpected files {extras}; expected one graph and one data file")
    graph = GraphRecord(file_name, sha256_of_files(staging / file_name), data_name if external else None)
    contract.write_manifest(staging / file_name, manifest.replace(graph=graph))
    final = out_dir / file_name
    if external:
        os.replace(staging / data_name, out_dir / data_name)
    os.replace(staging / file_name, final)
    os.replace(contract.manifest_path_for(staging / file_name), contract.manifest_path_for(final))
    if not external:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(out_dir / data_name)  # stale weights of an earlier export of the same name
    return final


def graph_manifest(model: DiT, precision: str, cfg_channels: int, batch: BatchRange, opset: int,
                   checkpoint: Checkpoint | None, role: str = "guided") -> Manifest:
    """The manifest known before the graph is written (the graph record is added on save)."""
    config = model.config
    return Manifest(
        model=config.name, image_size=model.image_size, latent_size=model.latent_size,
        latent_channels=config.latent_channels, num_classes=config.num_classes, learn_sigma=config.learn_sigma,
        patch_size=config.patch_size, decoder=config.decoder, precision=precision, cfg_channels=cfg_channels,
        numerics=model.numerics, batch=batch, opset=opset,
        checkpoint=checkpoint or Checkpoint("in-memory model (source not recorded)", None, None),
        versions=package_versions(), created=contract.now_iso(), guided_rows=True, role=role,
        feature_shape=None if role == "guided" else block_features.feature_shape(model),
    )


def package_versions() -> dict:
    """Versions of the packages that shaped a graph (None for a package that is not installed)."""
    versions = {}
    for key, package in (("dit_deploy", "dit-deploy"), ("torch", "torch"), ("onnx", "onnx"),
                         ("onnxscript", "onnxscript"), ("onnxruntime", "onnxruntime")):
        try:
            versions[key] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[key] = None
    return versions


def export_onnx(model: DiT, out_dir: Path, precision: str = "fp32", cfg_channels: int | None = None,
                batch: BatchRange = DEFAULT_BATCH, checkpoint: Checkpoint | None = None, opset: int = 18,
                copy_model: bool = True, stage=None, role: str = "guided") -> Path:
    """Export the guided graph of a DiT into out_dir with its manifest; returns the graph path.

    cfg_channels: None for the model's default (3 for 4-channel latents, else all). checkpoint: as
    dit_ref.weights.LoadedDiT reports it. copy_model=False converts the model to float16 in place
    for FP16 (no float32 copy stays in memory). stage(name, detail) is a context manager that
    reports progress (export.pipeline's); None reports nothing.
    """
    stage = stage or _silent_stage
    cfg_channels = model.config.default_cfg_channels if cfg_channels is None else cfg_channels
    check_export_options(model, precision, cfg_channels, opset)
    check_out_dir(out_dir)
    manifest = graph_manifest(model, precision, cfg_channels, batch, opset, checkpoint, role)
    name = graph_file_name(model, precision, role)
    what = "" if role == "guided" else f" ({role} graph of cached steps)"
    with stage("trace", f"torch.onnx.export (dynamo), {precision}, cfg on {cfg_channels} channel"
                        f"{'s' if cfg_channels > 1 else ''}{what}"):
        program = trace_graph(model, precision, cfg_channels, opset, copy_model, role)
    with stage("save", f"{Path(out_dir) / name} + manifest; TensorRT operator check, onnx.checker") as result:
        graph = save_graph(program, Path(out_dir), name, manifest)
        result["done"] = f"{graph.stat().st_size / 1e6:.1f} MB" + (
            " + external data" if external_data_path(graph).exists() else "")
    return graph


@contextlib.contextmanager
def _silent_stage(name: str, detail: str):
    yield {}
