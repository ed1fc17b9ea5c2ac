"""The quantization sweep's parts that need no export: the early decision on half the held-out starts
(export.quantize.sample_error, decided_early) and FP8's ranges carried from the FP32 trace to the FP16 graph
(corresponding_inputs, translate_ranges), on small hand-made graphs."""

import contextlib

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from dit_ref.errors import DiTError
from export import quantize
from export.quantize import QDQ_OPSET, corresponding_inputs, decided_early, sample_error, translate_ranges

LIMIT = 0.02


@pytest.mark.parametrize("error, decided", [(0.0099, True), (0.0101, False), (0.039, False), (0.041, True)])
def test_a_kind_is_decided_early_only_far_from_the_limit(error, decided):
    assert decided_early(error, LIMIT) is decided


@pytest.fixture
def identity_sampler(monkeypatch):
    """ddim_sample returns its starts, so a held-out start of expected * (1 + e) has sample error e; the calls are
    counted."""
    calls = []

    def ddim_sample(eps_of, x, y, cfg_scale, steps):
        calls.append(len(x))
        return x

    monkeypatch.setattr(quantize, "graph_eps", lambda graph: contextlib.nullcontext(None))
    monkeypatch.setattr(quantize, "ddim_sample", ddim_sample)
    return calls


def held_out_with_errors(first: float, second: float) -> tuple:
    """4 starts whose first two have error `first` against ones, the last two `second`; and the ones."""
    expected = torch.ones(4, 1, 2, 2)
    scale = torch.tensor([1 + first, 1 + first, 1 + second, 1 + second]).view(4, 1, 1, 1)
    return (expected * scale, torch.zeros(4), torch.ones(4)), expected


def test_a_kind_far_from_the_limit_is_judged_on_half_the_starts(identity_sampler):
    held_out, expected = held_out_with_errors(0.005, 0.5)  # the second half would have put it over
    error, starts = sample_error("trial.onnx", expected, held_out, steps=10, limit=LIMIT)
    print(f"error {error:.4f} on {starts} starts, runs {identity_sampler}")
    assert starts == 2 and identity_sampler == [2] and error == pytest.approx(0.005, rel=1e-5)


def test_a_kind_near_the_limit_is_judged_on_every_start(identity_sampler):
    held_out, expected = held_out_with_errors(0.015, 0.025)
    error, starts = sample_error("trial.onnx", expected, held_out, steps=10, limit=LIMIT)
    whole = np.sqrt((0.015 ** 2 + 0.025 ** 2) / 2)  # relative RMS over all four
    print(f"error {error:.5f} on {starts} starts (expected {whole:.5f}), runs {identity_sampler}")
    assert starts == 4 and identity_sampler == [2, 2] and error == pytest.approx(whole, rel=1e-5)


def scoped(node: onnx.NodeProto, module: str) -> onnx.NodeProto:
    """The node with the exporter's name scope of `module` (what scoped_nodes reads)."""
    node.metadata_props.add(key="pkg.torch.onnx.name_scopes", value=repr(["", f"model.{module}"]))
    return node


def traces(extra_fp16_matmul: bool = False) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """A linear (x @ w) then an attention-like product (h @ h^T) as the FP32 trace, and the FP16 trace of the same:
    casts around float16 ops, other node and tensor names (the exporter's counters moved)."""
    w = np.linspace(-1, 1, 16, dtype=np.float32).reshape(4, 4)
    fp32 = helper.make_graph(
        [scoped(helper.make_node("MatMul", ["x", "w"], ["h"], name="node_linear"), "blocks.0.attn.qkv"),
         helper.make_node("Transpose", ["h"], ["ht"], name="node_t"),
         scoped(helper.make_node("MatMul", ["h", "ht"], ["out"], name="node_matmul_1"), "blocks.0.attn")],
        "fp32", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [4, 4])], [onnx.numpy_helper.from_array(w, "w")])
    nodes = [helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16, name="node_Cast_0"),
             scoped(helper.make_node("MatMul", ["x16", "w16"], ["h16"], name="node_linear"), "blocks.0.attn.qkv"),
             helper.make_node("Transpose", ["h16"], ["ht16"], name="node_Transpose_2"),
             scoped(helper.make_node("MatMul", ["h16", "ht16"], ["o16"], name="node_MatMul_3"), "blocks.0.attn")]
    if extra_fp16_matmul:
        nodes.append(scoped(helper.make_node("MatMul", ["o16", "o16"], ["p16"], name="node_MatMul_9"), "blocks.0.attn"))
    nodes.append(helper.make_node("Cast", [nodes[-1].output[0]], ["out"], to=TensorProto.FLOAT, name="node_Cast_4"))
    fp16 = helper.make_graph(
        nodes, "fp16", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [4, 4])],
        [onnx.numpy_helper.from_array(w.astype(np.float16), "w16")])
    return tuple(helper.make_model(graph, opset_imports=[helper.make_opsetid("", QDQ_OPSET)]) for graph in (fp32, fp16))


def saved_traces(folder) -> tuple:
    """traces() written to folder: (the FP32 trace's path, the FP16 trace's)."""
    paths = folder / "fp32.onnx", folder / "fp16.onnx"
    for model, path in zip(traces(), paths):
        onnx.save(model, path)
    return paths


def test_the_activation_inputs_correspond_by_kind_and_position_not_by_name():
    fp32, fp16 = traces()
    renamed = corresponding_inputs(fp32.graph, fp16.graph)
    print(renamed)
    assert renamed == {"x": "x16", "h": "h16", "ht": "ht16"}  # the weights are not ranged


def test_traces_that_do_not_correspond_are_refused_in_one_line():
    fp32, fp16 = traces(extra_fp16_matmul=True)
    with pytest.raises(DiTError, match=r"blocks\.\*\.attn has a different number of quantizable nodes.*--qdq-base fp32"):
        corresponding_inputs(fp32.graph, fp16.graph)
    fp32, fp16 = traces()
    fp16.graph.node[3].input[1] = "h16"  # the FP16 product made h h: h and ht would both be ranged as h16
    with pytest.raises(DiTError, match="two FP32 tensors feed one FP16 tensor"):
        corresponding_inputs(fp32.graph, fp16.graph)
    fp32, fp16 = traces()
    fp32.graph.node[2].input[1] = "h"  # the FP32 product made h h: h's range would go to h16 and ht16
    with pytest.raises(DiTError, match="h feeds ht16 and h16"):
        corresponding_inputs(fp32.graph, fp16.graph)


def test_fp8_ranges_from_the_fp32_trace_reach_the_fp16_tensors_in_float16(tmp_path):
    from onnxruntime.quantization.calibrate import load_tensors_data

    paths = saved_traces(tmp_path)
    feeds = [{"x": np.random.default_rng(seed).standard_normal((4, 4)).astype(np.float32)} for seed in range(4)]
    translate_ranges(*paths, "fp8", feeds, tmp_path / "ranges.json")
    ranges = load_tensors_data(tmp_path / "ranges.json").data
    print({name: (data.avg.dtype, float(data.std)) for name, data in ranges.items()})
    assert set(ranges) == {"x16", "h16", "ht16"}
    assert all(data.avg.dtype == np.float16 and data.std.dtype == np.float16 for data in ranges.values())
    x = np.concatenate([feed["x"] for feed in feeds])
    assert float(ranges["x16"].std) == pytest.approx(x.std(), rel=1e-2)  # x's own statistics, in float16


def test_an_input_left_without_a_range_is_refused_in_one_line(tmp_path, monkeypatch):
    from onnxruntime.quantization.calibrate import TensorsData

    paths = saved_traces(tmp_path)
    feeds = [{"x": np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)}]
    measured = quantize.calibrated_ranges(paths[0], "fp8", feeds)
    partial = TensorsData(measured.calibration_method, {k: v for k, v in measured.data.items() if k != "ht"})
    monkeypatch.setattr(quantize, "calibrated_ranges", lambda graph, precision, calibration: partial)
    with pytest.raises(DiTError, match=r"1 input\(s\) .* no float range .*first ht16.*--qdq-base fp32"):
        translate_ranges(*paths, "fp8", feeds, tmp_path / "ranges.json")
    assert not (tmp_path / "ranges.json").exists()
