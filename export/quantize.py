"""INT8 and FP8 Q/DQ graphs on a 16-bit (or FP32) base graph, in TensorRT's explicit-quantization form.

The base is the FP16-typed graph by default (export/typed.py: the same float32 islands as --fp16):
ONNX Runtime's quantizer gives the Q/DQ pairs of a float16 tensor float16 scales, so DequantizeLinear
yields float16 and a strongly typed TensorRT build runs the quantized MatMul/Gemm/Conv as INT8 (FP8)
x INT8 (FP8) with 16-bit output and every unquantized op in FP16, as NVIDIA's diffusion engines do.
Q/DQ with float16 scales (and float8) need opset 19 (QDQ_OPSET), so the base is traced at 19. The
FP32 base (every unquantized op float32) is kept as --qdq-base fp32 (docs/export.md says when).

ONNX Runtime's quantizer (onnxruntime.quantization.quantize_static, QDQ format) puts QuantizeLinear /
DequantizeLinear pairs in front of both inputs of the MatMul, Gemm and Conv nodes: weights per
channel (INT8; FP8 per tensor, as ONNX Runtime makes it), activations per tensor, symmetric, zero
point 0, no pair on their outputs and none on biases. That is what TensorRT's explicit quantization
builds (strongly typed: the graph says every type), and the same file runs in ONNX Runtime (INT8 on
VNNI CPUs) and OpenVINO. Chosen by measurement (ONNX Runtime, OpenVINO and NNCF on the shipped fashion model and a random DiT-S/2;
docs/export.md): ONNX Runtime's default Q/DQ (pairs on
outputs too) does not compile in OpenVINO (a constant-folding error); NNCF's ONNX quantizer leaves
the patch-embedding Conv and the softmax-times-V MatMul unquantized, quantizes the label table and
makes asymmetric activations unless told otherwise, which TensorRT cannot take. FP8 needs ONNX
Runtime's Distribution calibration (MinMax is refused for float types).

Which layers stay in the base type is measured, not chosen by hand: each kind of token-wise layer (every
block's qkv, attention products, projection and MLP) is quantized alone and the error it makes in the final
samples of held-out DDIM runs measured; the kinds whose error exceeds the exclusion limit stay in the base
type, and the manifest records the sweep and the choice. A kind whose error on the first half of the starts
is under half the limit or over twice it is decided there (its record says on how many starts). The
conditioning layers (the timestep MLP, every adaLN modulation) compute once per sample, not per token
(under 1% of the flops at any size), so quantizing them saves nothing, and their errors shift every token
of a sample alike (the most sensitive kinds measured): they stay in the base type without a sweep, as
NVIDIA's diffusion recipes keep the time embedding and the output norm; so do the two token-wise layers at
the ends, each under 1% of the flops: the patch embedding (the input Conv; OpenVINO mis-computes it
quantized on this project's CPU) and the final linear (over the INT8 limit on both models swept). Activation
ranges are calibrated once (ONNX Runtime's calibration cache) for the sweep and the final graph; on a
machine with ONNX Runtime's CUDA provider the calibration and the sweep's runs use it.
"""

import ast
import contextlib
import io
import logging
import re
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
import torch

from dit_ref.contract import external_data_path
from dit_ref.errors import DiTError
from export.calibration import ddim_sample

QUANTIZED_OPS = ("MatMul", "Gemm", "Conv")
STATISTICS = ("avg", "std", "lowest", "highest", "hist_edges")  # a calibrated TensorData's float fields
QDQ_OPSET = 19  # the first opset whose QuantizeLinear/DequantizeLinear take float16 scales and float8
BASES = ("fp16", "fp32")  # the type of the unquantized ops: the FP16-typed graph (default) or the FP32 one
# A kind whose own quantization moves the samples by more than this (relative RMS) stays float. FP8 (e4m3: 3 mantissa
# bits, per-tensor weights) moves every kind of the shipped model by more than 0.02 (0.013..0.39 measured), so its
# limit is looser: at 0.02 nothing would be left to quantize.
EXCLUSION_LIMIT = {"int8": 0.02, "fp8": 0.05}
# Kept in the base type, unswept: the per-sample conditioning layers, the patch embedding (the one Conv: under 1%
# of the flops; quantized, OpenVINO on an AVX2 CPU without VNNI drops the fashion model's accuracy to 24%) and the
# final linear (hidden -> p*p*2C per token: 0.1% of S/2's flops; over the INT8 limit on the fashion model and on S/2
# in the DDIM-10 sweep; FP8 keeps it unmeasured).
UNSWEPT = re.compile(r"(^t_embedder\.|adaLN_modulation|^x_embedder\.|^final_layer\.linear)")
# A kind whose error on the first half of the held-out starts is under limit / DECISIVE or over limit * DECISIVE is
# decided there. On the fashion model, 4-start errors lay within 0.71x to 1.55x their mean over 8 draws of starts
# (6 kinds x 8 draws), so such a kind's mean error is on the same side of the limit (docs/export.md).
DECISIVE = 2.0


def quantization_settings(precision: str) -> dict:
    """quantize_static's keyword arguments for int8 or fp8 in TensorRT's form."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    kind = {"int8": QuantType.QInt8, "fp8": QuantType.QFLOAT8E4M3FN}[precision]
    return {"quant_format": QuantFormat.QDQ, "activation_type": kind, "weight_type": kind,
            "per_channel": precision == "int8", "op_types_to_quantize": list(QUANTIZED_OPS),
            "calibrate_method": CalibrationMethod.MinMax if precision == "int8" else CalibrationMethod.Distribution,
            "extra_options": {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                              "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS)}}


def tool_record(precision: str, base: str) -> dict:
    """What made the Q/DQ graph and in which form (the manifest's quantization record)."""
    import onnxruntime

    weights = "int8 per channel" if precision == "int8" else "float8 e4m3fn per tensor"
    activations = "int8" if precision == "int8" else "float8 e4m3fn"
    return {"tool": f"onnxruntime.quantization {onnxruntime.__version__} (quantize_static, QDQ)",
            "form": f"weights {weights}, activations {activations} per tensor, symmetric (zero point 0), "
                    f"Q/DQ on the inputs of {', '.join(QUANTIZED_OPS)} only",
            "method": "minmax" if precision == "int8" else "distribution", "base": base}


def scoped_nodes(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """The quantizable nodes by the kind of layer they belong to, in graph order: "blocks.*.attn.qkv",
    "x_embedder.proj", "blocks.*.attn" (the attention products q k^T and w v), ... read from the exporter's name
    scopes."""
    kinds = defaultdict(list)
    for node in graph.node:
        if node.op_type not in QUANTIZED_OPS:
            continue
        scopes = {prop.key: prop.value for prop in node.metadata_props}.get("pkg.torch.onnx.name_scopes", "[]")
        modules = [scope for scope in ast.literal_eval(scopes) if scope.startswith("model.")]
        module = modules[-1].removeprefix("model.") if modules else "unscoped"
        kinds[re.sub(r"^blocks\.\d+\.", "blocks.*.", module)].append(node)
    return dict(kinds)


def layer_kinds(graph_path) -> dict[str, list[str]]:
    """Quantizable node names by layer kind (scoped_nodes) of the graph file."""
    graph = onnx.load(str(graph_path), load_external_data=False).graph
    return {kind: [node.name for node in nodes] for kind, nodes in scoped_nodes(graph).items()}


def calibration_reader(feeds: list[dict]):
    """onnxruntime.quantization's CalibrationDataReader over recorded feeds."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(feeds)

        def get_next(self):
            return next(self.items, None)

    return Reader()


def quantize_graph(base_graph: Path, out: Path, precision: str, nodes: list[str], calibration: list[dict],
                   cache: Path) -> Path:
    """The Q/DQ graph of base_graph with `nodes` quantized, written to out; activation ranges from the
    calibration feeds, computed once into `cache` and reused."""
    from onnxruntime.quantization import quantize_static

    external = external_data_path(base_graph).exists()
    with quiet_quantizer():
        quantize_static(str(base_graph), str(out), calibration_reader(calibration), nodes_to_quantize=nodes,
                        use_external_data_format=external, calibration_cache_path=str(cache),
                        calibration_providers=providers(), **quantization_settings(precision))
    return out


def translate_ranges(range_graph: Path, base_graph: Path, precision: str, calibration: list[dict], cache: Path) -> None:
    """Activation ranges calibrated on range_graph (the FP32 trace), written to `cache` under base_graph's tensor
    names and types (FP8 on the FP16 base: ONNX Runtime's distribution calibration cannot histogram float16
    tensors). DiTError unless every activation input of a quantizable base node gets exactly one range."""
    from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

    base = onnx.load(str(base_graph), load_external_data=False)
    renamed = corresponding_inputs(onnx.load(str(range_graph), load_external_data=False).graph, base.graph)
    measured = calibrated_ranges(range_graph, precision, calibration)
    types = tensor_types(base)
    unmeasured = sorted(target for source, target in renamed.items() if source not in measured.data or
                        types.get(target) not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16))
    if unmeasured:
        raise DiTError(f"{len(unmeasured)} input(s) of the FP16 graph's quantizable nodes get no float range from its "
                       f"FP32 trace (first {unmeasured[0]}); export {precision} with --qdq-base fp32")
    data = {target: typed_range(measured.data[source], types[target]) for source, target in renamed.items()}
    save_tensors_data(TensorsData(measured.calibration_method, data), cache)


def calibrated_ranges(graph: Path, precision: str, calibration: list[dict]):
    """ONNX Runtime's TensorsData for the inputs and outputs of graph's quantizable nodes, calibrated as
    quantize_static calibrates for this precision, without quantizing a graph."""
    from onnxruntime.quantization.calibrate import create_calibrator

    external = external_data_path(graph).exists()
    with tempfile.TemporaryDirectory(prefix="dit-ranges-") as scratch, quiet_quantizer():
        calibrator = create_calibrator(str(graph), list(QUANTIZED_OPS), str(Path(scratch) / "augmented.onnx"),
                                       quantization_settings(precision)["calibrate_method"], external, providers())
        calibrator.collect_data(calibration_reader(calibration))
        return calibrator.compute_data()


def corresponding_inputs(range_graph: onnx.GraphProto, base_graph: onnx.GraphProto) -> dict[str, str]:
    """{range_graph's tensor: base_graph's} for the activation inputs (not weights) of the quantizable nodes: the
    two traces of one model have the same quantizable nodes per layer kind in the same order (scoped_nodes), each
    with its inputs in the same positions. DiTError where they do not correspond one to one."""
    mismatch = "the FP32 and FP16 traces of this model do not match ({}); export with --qdq-base fp32"
    kinds = scoped_nodes(range_graph), scoped_nodes(base_graph)
    weights = {initializer.name for initializer in base_graph.initializer}
    renamed = {}
    for kind in kinds[0].keys() | kinds[1].keys():
        sources, targets = kinds[0].get(kind, []), kinds[1].get(kind, [])
        if len(sources) != len(targets):
            raise DiTError(mismatch.format(f"{kind} has a different number of quantizable nodes"))
        for source_node, target_node in zip(sources, targets):
            if source_node.op_type != target_node.op_type:
                raise DiTError(mismatch.format(f"{target_node.name} is {target_node.op_type}, not "
                                               f"{source_node.op_type}"))
            for source, target in zip(source_node.input[:2], target_node.input[:2]):  # the quantized inputs
                if target not in weights and renamed.setdefault(source, target) != target:
                    raise DiTError(mismatch.format(f"{source} feeds {target} and {renamed[source]}"))
    if len(set(renamed.values())) != len(renamed):
        raise DiTError(mismatch.format("two FP32 tensors feed one FP16 tensor"))
    return renamed


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Every tensor's element type (onnx.TensorProto), by shape inference over the model (loaded without its
    weights)."""
    model = onnx.shape_inference.infer_shapes(model)
    values = [*model.graph.value_info, *model.graph.input, *model.graph.output]
    return {value.name: value.type.tensor_type.elem_type for value in values}


def typed_range(data, elem_type: int | None):
    """A calibrated TensorData in the type of the tensor it now describes: the quantizer gives a scale the dtype of
    the statistics it comes from, and a float16 tensor's QuantizeLinear needs a float16 scale."""
    from onnxruntime.quantization.calibrate import TensorData

    dtype = np.float16 if elem_type == onnx.TensorProto.FLOAT16 else np.float32
    fields = {key: value for key, value in data.to_dict().items() if key != "CLS"}
    return TensorData(**{key: np.asarray(value).astype(dtype) if key in STATISTICS else value
                         for key, value in fields.items()})


@contextlib.contextmanager
def quiet_quantizer():
    """ONNX Runtime's quantizer logs every node at INFO and warns about its own defaults; its distribution
    calibration (FP8) prints its settings."""
    logger = logging.getLogger()
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(previous)


def providers() -> list[str]:
    """ONNX Runtime's providers for quantize_static's own calibration session: CUDA first where it runs here."""
    from dit_ref.runners import onnxruntime_cuda_here

    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if onnxruntime_cuda_here() else ["CPUExecutionProvider"]


@contextlib.contextmanager
def graph_eps(graph: Path):
    """eps_of(x, t, y, cfg_scale) -> eps of a graph in ONNX Runtime (on the GPU where its CUDA provider and a GPU are,
    else the CPU), for calibration.ddim_sample; its runner is closed on leaving."""
    from dit_ref.runners import onnxruntime_cuda_here, open_runner
    from export.verify import run_graph

    device = torch.device("cuda" if onnxruntime_cuda_here() else "cpu")
    with open_runner(graph, "onnxruntime", device=device, optimization="basic") as runner:
        def eps_of(x, t, y, cfg_scale):
            return run_graph(runner, *(value.to(device) for value in (x, t, y, cfg_scale)))[0].cpu()  # all guided

        yield eps_of


def relative_rms(got: torch.Tensor, expected: torch.Tensor) -> float:
    """||got - expected|| / ||expected|| (root mean square over every value)."""
    return float(torch.linalg.vector_norm(got - expected) / torch.linalg.vector_norm(expected).clamp(min=1e-30))


def sample_error(graph: Path, expected: torch.Tensor, held_out: tuple, steps: int, limit: float) -> tuple[float, int]:
    """(error, starts judged on): the relative RMS of the final samples of DDIM runs from the held-out starts against
    the base graph's (an eps error at t near 0 barely moves a sample; near 999 it does; averaged over pixels, as a
    deterministic sampler can move a few pixels much for a small change). The first half of the starts decides a
    kind far from the limit; the rest run only for a kind within a factor DECISIVE of it."""
    half = max(1, len(expected) // 2)
    with graph_eps(graph) as eps_of:
        got = ddim_sample(eps_of, *(value[:half] for value in held_out), steps)  # (half, C, L, L)
        error = relative_rms(got, expected[:half])
        if half < len(expected) and not decided_early(error, limit):
            rest = ddim_sample(eps_of, *(value[half:] for value in held_out), steps)
            got = torch.cat([got, rest])  # (n, C, L, L)
            error = relative_rms(got, expected)
    return error, len(got)


def decided_early(error: float, limit: float) -> bool:
    """Whether a kind's error on the first half of the held-out starts is far enough from the limit to decide it."""
    return not limit / DECISIVE <= error <= limit * DECISIVE


def swept_kinds(kinds: dict[str, list[str]]) -> dict[str, list[str]]:
    """The token-wise kinds the sweep judges (the UNSWEPT ones stay in the base type)."""
    return {kind: nodes for kind, nodes in kinds.items() if not UNSWEPT.search(kind)}


def sensitivity(base_graph: Path, precision: str, calibration: list[dict], held_out: tuple, steps: int,
                cache: Path, limit: float) -> dict[str, tuple[float, int]]:
    """Each token-wise layer kind quantized alone -> (its sample error, starts judged on) (the sweep)."""
    with graph_eps(base_graph) as eps_of:
        expected = ddim_sample(eps_of, *held_out, steps)
    errors = {}
    with tempfile.TemporaryDirectory(prefix="dit-sweep-") as scratch:
        for kind, nodes in swept_kinds(layer_kinds(base_graph)).items():
            trial = quantize_graph(base_graph, Path(scratch) / "trial.onnx", precision, nodes, calibration, cache)
            errors[kind] = sample_error(trial, expected, held_out, steps, limit)
    return errors


def choose_exclusions(errors: dict[str, float], limit: float, kinds) -> list[str]:
    """The kinds that stay in the base type: the UNSWEPT ones, and those whose own quantization error exceeds the
    limit."""
    return sorted({kind for kind in kinds if UNSWEPT.search(kind)} |
                  {kind for kind, error in errors.items() if error > limit})


def quantize_with_sweep(base_graph: Path, out: Path, precision: str, calibration: list[dict],
                        held_out: tuple, steps: int, limit: float, range_graph: Path | None = None) -> dict:
    """The sweep, the exclusions and the final graph at out; returns the quantization record. range_graph: the FP32
    trace to calibrate the activation ranges on instead of base_graph (translate_ranges)."""
    with tempfile.TemporaryDirectory(prefix="dit-calibration-") as scratch:
        cache = Path(scratch) / "ranges.json"
        if range_graph is not None:
            translate_ranges(range_graph, base_graph, precision, calibration, cache)
        swept = sensitivity(base_graph, precision, calibration, held_out, steps, cache, limit)
        errors = {kind: error for kind, (error, _) in swept.items()}
        kinds = layer_kinds(base_graph)
        excluded = choose_exclusions(errors, limit, kinds)
        nodes = [node for kind, names in kinds.items() if kind not in excluded for node in names]
        if not nodes:
            raise DiTError(f"every layer kind of the graph moves the samples by more than {limit:g} when {precision}: "
                           f"nothing is left to quantize; raise --exclusion-limit, or use --precision fp16 or bf16")
        quantize_graph(base_graph, out, precision, nodes, calibration, cache)
    return {"excluded": excluded, "sensitivity": {kind: round(error, 6) for kind, error in errors.items()},
            "sweep_starts": {kind: starts for kind, (_, starts) in swept.items()},
            "exclusion_limit": limit, "quantized_nodes": len(nodes)}
