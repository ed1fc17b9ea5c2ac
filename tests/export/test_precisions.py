"""Every precision through export: bf16 (typed, checked in OpenVINO), int8 and fp8 (Q/DQ on an FP16 or FP32
base, calibrated on sampling runs, layer kinds excluded by the measured sweep), each passing the operator check,
within its stated bound, and sampling a few steps; and the precisions a backend or device cannot run refused in one
line."""

import functools

import numpy as np
import onnx
import pytest
import torch

from dit_ref.contract import read_manifest
from dit_ref.errors import DiTError
from export import export
from export.calibration import Calibration
from export.opcheck import check_operators
from export.quantize import QDQ_OPSET, UNSWEPT, decided_early, layer_kinds
from runtime.backends import load_denoiser
from runtime.generate import generate
from runtime.sampling import sampler_from_name

pytestmark = pytest.mark.slow
MODEL, IMAGE_SIZE = "S/8", 256
LIMITS = {"bf16": 3e-2, "int8": 0.5, "fp8": 1.0}  # export's check stage (export/pipeline.TOLERANCE)
SMALL = Calibration(trajectories=4, steps=5)  # enough to test the path; exports use 8 x 10


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    @functools.cache
    def make(precision: str, base: str = "auto"):
        return export(MODEL, IMAGE_SIZE, random_init=0, precision=precision, out=tmp_path_factory.mktemp(precision),
                      engine="skip", calibration=SMALL, qdq_base=base)

    return make


@pytest.mark.parametrize("precision", ["bf16", "int8", "fp8"])
def test_every_precision_exports_checks_and_samples(exported, precision):
    result = exported(precision)
    manifest = read_manifest(result.graph)
    counts = check_operators(result.graph)  # TensorRT's parser takes every op
    errors = result.errors
    print(f"{precision}: check errors {errors}, ops {dict(counts.most_common(6))}")
    assert manifest.precision == precision and max(errors.values()) < LIMITS[precision]
    with load_denoiser(result.graph, threads=1) as denoiser:
        (batch,) = generate(denoiser, [1, 2], sampler_from_name("ddim", 3), seed=0, decoder=None)
    print(f"{precision}: sampled with {denoiser.name}")
    assert batch.samples.shape == (2, 4, 32, 32) and np.isfinite(batch.samples).all()


def test_bf16_graph_is_bfloat16_typed_with_float32_io(exported):
    graph = onnx.load(str(exported("bf16").graph))
    types = {initializer.data_type for initializer in graph.graph.initializer}
    io = {value.type.tensor_type.elem_type for value in [*graph.graph.input, *graph.graph.output]}
    assert onnx.TensorProto.BFLOAT16 in types and io <= {onnx.TensorProto.FLOAT, onnx.TensorProto.INT64}


@pytest.mark.parametrize("precision, kind", [("int8", onnx.TensorProto.INT8), ("fp8", onnx.TensorProto.FLOAT8E4M3FN)])
def test_quantized_graph_records_its_calibration_sweep_and_exclusions(exported, precision, kind):
    result = exported(precision)
    record = read_manifest(result.graph).quantization
    graph = onnx.load(str(result.graph))
    quantized = [node for node in graph.graph.node if node.op_type == "QuantizeLinear"]
    zero_points = {initializer.name: initializer for initializer in graph.graph.initializer}
    kinds = layer_kinds(result.graph)  # the Q/DQ graph keeps the exporter's name scopes
    print(f"{precision}: excluded {record['excluded']}, sweep {record['sensitivity']}")
    assert record["calibration"] == SMALL.record() and set(record["sensitivity"]) >= {"blocks.*.attn.qkv",
                                                                                      "blocks.*.mlp.fc1"}
    unswept = {k for k in kinds if UNSWEPT.search(k)}  # timestep MLP, adaLN, patch embedding, final linear: kept
    assert unswept == {"t_embedder.mlp.0", "t_embedder.mlp.2", "blocks.*.adaLN_modulation.1",
                       "final_layer.adaLN_modulation.1", "x_embedder.proj", "final_layer.linear"}
    assert not unswept & set(record["sensitivity"])
    limit = record["exclusion_limit"]
    over = {k for k, e in record["sensitivity"].items() if e > limit}
    assert record["excluded"] == sorted(over | unswept) and record["base"] == "fp32"  # auto without an engine
    for layer, error in record["sensitivity"].items():  # half the starts decide only a kind far from the limit
        starts = record["sweep_starts"][layer]
        assert starts in (SMALL.trajectories // 2, SMALL.trajectories), layer
        assert starts == SMALL.trajectories or decided_early(error, limit), layer
    assert quantized and record["quantized_nodes"] > 0 and kinds
    for node in quantized:  # TensorRT's form: a zero point of the quantized type, all zeros (symmetric)
        zero_point = onnx.numpy_helper.to_array(zero_points[node.input[2]]) if len(node.input) > 2 else None
        assert zero_point is not None and zero_points[node.input[2]].data_type == kind
        assert not np.asarray(zero_point, dtype=np.float32).any()


def test_onnxruntime_refuses_a_bf16_graph_on_a_cpu_and_openvino_runs_it(exported):
    graph = exported("bf16").graph
    with pytest.raises(DiTError, match="bf16 graph, and ONNX Runtime has no bfloat16 CPU kernels.*--backend openvino"):
        load_denoiser(graph, "onnxruntime")
    with load_denoiser(graph, "openvino", threads=1) as denoiser:
        eps, _ = denoiser(torch.randn(1, 4, 32, 32), torch.tensor([500]), torch.tensor([3]), torch.tensor([4.0]))
    assert torch.isfinite(eps).all()


def test_fp8_on_a_cpu_is_labelled_emulated(exported):
    with load_denoiser(exported("fp8").graph, "onnxruntime", threads=1) as denoiser:
        assert denoiser.name == "onnxruntime-cpu fp8 (emulated)"


@pytest.mark.parametrize("precision, kind", [("int8", onnx.TensorProto.INT8), ("fp8", onnx.TensorProto.FLOAT8E4M3FN)])
def test_fp16_base_dequantizes_to_float16_and_keeps_the_float32_islands(exported, precision, kind):
    """TensorRT's strongly typed build runs what the graph says: on the FP16 base every DequantizeLinear has a float16
    scale (so yields float16: INT8/FP8 x INT8/FP8 GEMMs with 16-bit output), the float32 islands stay (LayerNorm and
    softmax in float32, as in the FP16 graph), and the check against the float32 reference holds."""
    result = exported(precision, "fp16")
    manifest, graph = read_manifest(result.graph), onnx.load(str(result.graph))
    initializers = {initializer.name: initializer for initializer in graph.graph.initializer}
    dequantize = [node for node in graph.graph.node if node.op_type == "DequantizeLinear"]
    scales = {initializers[node.input[1]].data_type for node in dequantize}
    weights = {initializers[node.input[0]].data_type for node in dequantize if node.input[0] in initializers}
    inferred = onnx.shape_inference.infer_shapes(graph, strict_mode=True)
    types = {value.name: value.type.tensor_type.elem_type for value in inferred.graph.value_info}
    softmax = {types[node.output[0]] for node in graph.graph.node if node.op_type == "Softmax"}
    print(f"{precision} on fp16: check errors {result.errors}, {len(dequantize)} DequantizeLinear, softmax types "
          f"{softmax}, excluded {manifest.quantization['excluded']}")
    assert manifest.quantization["base"] == "fp16" and manifest.opset == QDQ_OPSET
    assert scales == {onnx.TensorProto.FLOAT16} and weights == {kind} and softmax == {onnx.TensorProto.FLOAT}
    assert max(result.errors.values()) < LIMITS[precision]
