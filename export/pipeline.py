"""export(): checkpoint -> guided ONNX graph + manifest -> TensorRT engine, the one export sequence.

    from export import export

    result = export("fashion", ckpt="auto", precision="fp16", out="graphs/")
    result.graph, result.manifest, result.engine  # .onnx, dit_ref.contract.Manifest, .plan or None

Stages: load, check (PyTorch float32 reference), trace, save (operator check, onnx.checker), check
(ONNX Runtime vs the reference; OpenVINO for BF16, which ONNX Runtime cannot run on a CPU), engine.
INT8 and FP8 add calibrate (inputs recorded along sampling runs) and quantize (the sensitivity sweep
and the Q/DQ graph, export/quantize.py) between trace and save. `stage` reports them (dit-export
prints them); by default nothing is printed.
"""

import contextlib
import dataclasses
import gc
from dataclasses import dataclass
from pathlib import Path

from dit_ref import configs
from dit_ref.contract import DEFAULT_BATCH, PRECISIONS, BatchRange, Checkpoint, Manifest, read_manifest
from dit_ref.errors import DiTError
from export.calibration import Calibration

# The check stage's limit on max|err| / max|ref| of eps and var_values at batch 1 (random inputs, cfg 1..5).
# A Q/DQ graph is judged by its pictures (the yardstick, benchmarks/quality.py); its limit only catches
# a broken one (measured on the shipped model: int8 7e-2, fp8 2e-1..4e-1).
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 3e-2, "int8": 0.5, "fp8": 1.0}
QUANTIZED = ("int8", "fp8")
ENGINE_CHOICES = ("auto", "required", "skip")


@dataclass(frozen=True)
class ExportResult:
    graph: Path  # the .onnx
    manifest: Manifest  # as written beside the graph (and engine)
    engine: Path | None  # the .plan, or None when none was built
    engine_skipped: str | None  # why no engine was built (None when one was)
    errors: dict | None  # the check's relative errors per output, None without a check


@contextlib.contextmanager
def silent_stage(name: str, detail: str):
    yield {}


def engine_reason(engine: str) -> str | None:
    """Why no engine will be built (None: build one); DiTError when --engine required cannot be met."""
    if engine not in ENGINE_CHOICES:
        raise DiTError(f"engine must be one of {', '.join(ENGINE_CHOICES)}, not {engine!r}")
    if engine == "skip":
        return "--engine skip"
    from dit_ref.machine.tensorrt_stack import build_unavailable_reason

    reason = build_unavailable_reason()
    if reason and engine == "required":
        raise DiTError(f"--engine required, but no engine can be built here: {reason}")
    return reason


def check_request(model: str, image_size: int | None, precision: str, cfg_channels: int | None,
                  ckpt=None) -> int:
    """The image size to export at; DiTError for a bad option, before anything loads. cfg_channels is
    checked against the config's latent channels only without a checkpoint: a checkpoint's own
    channels (16 for a 16-channel VAE) are known once it is loaded, and checked then."""
    config = configs.get_config(model)
    image_size = config.image_sizes[0] if image_size is None else image_size
    config.check_image_size(image_size)
    if precision not in PRECISIONS:
        raise DiTError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if cfg_channels is not None and ckpt is None:
        config.check_cfg_channels(cfg_channels)
    elif cfg_channels is not None and (isinstance(cfg_channels, bool) or not isinstance(cfg_channels, int)
                                       or cfg_channels < 1):
        raise DiTError(f"cfg_channels must be a positive integer, not {cfg_channels!r}")
    return image_size


def load_stage(model: str, image_size: int, ckpt, random_init, stage, num_classes=None):
    """The model and its checkpoint record (dit_ref.weights.load_dit)."""
    from dit_ref.weights import load_dit

    with stage("load", f"{configs.get_config(model).name} at {image_size} px") as result:
        loaded = load_dit(model, image_size, ckpt=ckpt, random_init=random_init, num_classes=num_classes)
        label = "RANDOM WEIGHTS" if loaded.random_weights else f"sha256 {loaded.sha256[:12]}..."
        result["done"] = f"{loaded.source} ({label})"
    return loaded.model, Checkpoint(loaded.source, loaded.sha256, loaded.random_weights)


def reference_stage(model, cfg_channels: int, stage):
    """PyTorch float32 outputs for the check, computed before export may turn the model to float16."""
    from export.verify import reference_outputs

    with stage("check", "PyTorch float32 reference at batch 1") as result:
        inputs, expected = reference_outputs(model, cfg_channels, batch=1)
        result["done"] = f"max |eps| {abs(expected[0]).max():.3g}"
    return inputs, expected


def check_stage(graph: Path, reference, precision: str, stage) -> dict:
    """ONNX Runtime (OpenVINO for BF16) on the graph, CPU, against the PyTorch float32 reference outputs."""
    from export.verify import compare_outputs

    limit = TOLERANCE[precision]
    runner = "openvino" if precision == "bf16" else "onnxruntime"
    with stage("check", f"{runner} on the graph vs the reference, limit {limit:g}") as result:
        errors = compare_outputs(graph, *reference, precision)
        result["done"] = ", ".join(f"{name} max rel err {value:.2e}" for name, value in errors.items())
    if max(errors.values()) > limit:
        raise DiTError(f"the graph disagrees with PyTorch (errors {errors}, limit {limit:g}); "
                       f"{graph} is kept for inspection")
    return errors


def engine_stage(graph: Path, batch: BatchRange, opt_level: int, timing_cache, stage) -> Path:
    """The graph's engine, and its cached-steps pair's when it has one (export.engine.build_engines)."""
    from export.engine import build_engines

    with stage("engine", f"TensorRT, batch {batch}, level {opt_level}") as result:
        engines = build_engines(graph, batch, opt_level, timing_cache)
        result["done"] = ", ".join(map(str, engines))
    return engines[0]


def cached_steps_stages(dit, graph: Path, precision: str, cfg_channels: int, batch: BatchRange, checkpoint,
                        reference, stage) -> None:
    """The refresh and reuse graphs beside the guided one, checked, and named in its manifest."""
    from dit_ref.contract import write_manifest
    from export.onnx_export import export_onnx
    from export.verify import compare_cached_steps

    pair = {role: export_onnx(dit, graph.parent, precision, cfg_channels, batch, checkpoint, copy_model=False,
                              stage=stage, role=role) for role in ("refresh", "reuse")}
    if reference is not None:
        limit = TOLERANCE[precision]
        with stage("check", f"cached steps: refresh, and reuse of its own features, vs the reference, limit "
                            f"{limit:g}") as result:
            errors = compare_cached_steps(pair["refresh"], pair["reuse"], *reference, precision)
            result["done"] = ", ".join(f"{name} {value:.2e}" for name, value in errors.items())
        if max(errors.values()) > limit:
            raise DiTError(f"the cached-steps graphs disagree with PyTorch (errors {errors}, limit {limit:g})")
    write_manifest(graph, read_manifest(graph).replace(cached_steps={role: path.name for role, path in pair.items()}))


def export(model: str, image_size: int | None = None, *, ckpt: str | None = None, random_init: int | None = None,
           precision: str = "fp16", cfg_channels: int | None = None, batch: BatchRange = DEFAULT_BATCH,
           out=".", engine: str = "auto", check: bool = True, opt_level: int = 3, timing_cache=None,
           num_classes: int | None = None, calibration: Calibration = Calibration(),
           exclusion_limit: float | None = None, qdq_base: str = "auto", cached_steps: bool = False,
           stage=silent_stage) -> ExportResult:
    """Load a DiT (ckpt: path, "auto", "hf:ID"; or random_init=SEED), export its guided graph into
    out with its manifest, check it in ONNX Runtime, and build its TensorRT engine when possible.

    image_size None: the config's first size. precision: fp32, fp16, bf16 (typed graphs), int8 or fp8
    (Q/DQ graphs calibrated on `calibration`'s sampling runs; layer kinds whose own quantization moves
    the samples by more than exclusion_limit stay in the base type; qdq_base: the unquantized ops' type,
    fp16, fp32, or auto: fp16 when this export builds an engine, else fp32, the faster form on a CPU).
    cfg_channels None: the model's default (3 for the paper's 4-channel latents, else all channels).
    engine: auto | required | skip.
    num_classes: the class count of a checkpoint that does not carry it (a bare state dict; train.py's
    carry theirs). cached_steps: also the refresh and reuse graphs of cached steps (dit_ref.block_features).
    """
    from export.onnx_export import check_out_dir, export_onnx

    image_size = check_request(model, image_size, precision, cfg_channels, ckpt)
    if qdq_base not in ("auto", *quantize_bases()):
        raise DiTError(f"--qdq-base must be auto or one of {', '.join(quantize_bases())}, not {qdq_base!r}")
    if cached_steps and precision in QUANTIZED:
        raise DiTError(f"cached steps come as fp32, fp16 or bf16 graphs, not {precision}; drop --cached-steps or "
                       f"choose one of those precisions")
    check_out_dir(out)
    reason = engine_reason(engine)  # before any work: --engine required fails fast
    dit, checkpoint = load_stage(model, image_size, ckpt, random_init, stage, num_classes)
    cfg_channels = dit.config.default_cfg_channels if cfg_channels is None else dit.config.check_cfg_channels(cfg_channels)
    reference = reference_stage(dit, cfg_channels, stage) if check else None
    if precision in QUANTIZED:
        base = qdq_base if qdq_base != "auto" else "fp32" if reason else "fp16"
        graph = quantized_stages(dit, Path(out), precision, cfg_channels, batch, checkpoint, calibration,
                                 exclusion_limit, base, stage)
    else:
        graph = export_onnx(dit, Path(out), precision, cfg_channels, batch, checkpoint, copy_model=False, stage=stage)
        if cached_steps:
            cached_steps_stages(dit, graph, precision, cfg_channels, batch, checkpoint, reference, stage)
    del dit  # the graph file holds the weights now (onnxscript 0.7.2 may keep them until exit)
    gc.collect()
    errors = check_stage(graph, reference, precision, stage) if check else None
    engine_path = None if reason else engine_stage(graph, batch, opt_level, timing_cache, stage)
    return ExportResult(graph, read_manifest(graph), engine_path, reason, errors)


def quantize_bases() -> tuple[str, ...]:
    from export.quantize import BASES

    return BASES


def quantized_stages(dit, out: Path, precision: str, cfg_channels: int, batch: BatchRange, checkpoint,
                     calibration: Calibration, exclusion_limit: float | None, base: str, stage) -> Path:
    """calibrate (inputs along the reference's DDIM runs), trace the base graph (FP16-typed or FP32, at the
    Q/DQ opset) into a scratch folder, quantize (the sweep, then the Q/DQ graph), save it beside its manifest."""
    import tempfile

    from export import quantize
    from export.calibration import starts, trajectory_inputs
    from export.onnx_export import export_onnx, graph_file_name, graph_manifest, save_file

    limit = quantize.EXCLUSION_LIMIT[precision] if exclusion_limit is None else exclusion_limit
    with stage("calib", f"{calibration.inputs} inputs along {calibration.trajectories} DDIM-{calibration.steps} "
                        f"runs of the float32 reference, cfg {'/'.join(f'{s:g}' for s in calibration.cfg_scales)}"):
        feeds = trajectory_inputs(dit, cfg_channels, calibration)
        held_out = starts(dit, dataclasses.replace(calibration, seed=calibration.seed + 1))
    manifest = graph_manifest(dit, precision, cfg_channels, batch, quantize.QDQ_OPSET, checkpoint)
    with tempfile.TemporaryDirectory(prefix=f"dit-{base}-", dir=out if out.is_dir() else None) as scratch:
        base_graph = export_onnx(dit, Path(scratch), base, cfg_channels, batch, checkpoint,
                                 opset=quantize.QDQ_OPSET, copy_model=True, stage=stage)
        range_graph = None  # FP8's distribution calibration runs on the FP32 trace (quantize.translate_ranges)
        if precision == "fp8" and base == "fp16":
            range_graph = export_onnx(dit, Path(scratch) / "ranges", "fp32", cfg_channels, batch, checkpoint,
                                      opset=quantize.QDQ_OPSET, copy_model=True, stage=stage)
        with stage("quant", f"{precision} Q/DQ on the {base} graph (ONNX Runtime, TensorRT's form); sweep: each "
                            f"token-wise layer kind alone, kinds moving the samples by more than {limit:g} stay "
                            f"{base}") as result:
            record = {}

            def write(staged: Path):
                record.update(quantize.quantize_with_sweep(base_graph, staged, precision, feeds, held_out,
                                                           calibration.steps, limit, range_graph))

            name = graph_file_name(dit, precision)
            graph = save_file(write, out, name, manifest, lambda: manifest.replace(quantization={
                **quantize.tool_record(precision, base), "calibration": calibration.record(), **record}))
            result["done"] = (f"excluded {', '.join(record['excluded']) or 'nothing'}; "
                              f"{record['quantized_nodes']} nodes quantized")
    return graph
