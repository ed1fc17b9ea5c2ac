"""What the exported graph is: I/O contract, LayerNormalization ops, FP16 typing with float32 islands, manifest."""

import collections

import onnx
import pytest
from onnx import TensorProto

from dit_ref import get_config
from dit_ref.files import sha256_of_files
from dit_ref.contract import FORMAT, read_manifest
from export.opcheck import check_graph, check_operators

NAME = "S/4"  # shares the graphs exported for the parity tests
FLOAT, FLOAT16, INT64 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.INT64


def io_signature(values):
    """name -> (element type, shape with the symbolic dims as strings)."""
    return {value.name: (value.type.tensor_type.elem_type,
                         tuple(dim.dim_param or dim.dim_value for dim in value.type.tensor_type.shape.dim))
            for value in values}


def input_types_by_op(graph_path) -> dict[str, collections.Counter]:
    """op type -> Counter of its first input's element type, after shape inference."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(graph_path)), strict_mode=True)
    graph = model.graph
    types = {value.name: value.type.tensor_type.elem_type
             for value in [*graph.value_info, *graph.input, *graph.output]}
    types.update({initializer.name: initializer.data_type for initializer in graph.initializer})
    found = collections.defaultdict(collections.Counter)
    for node in graph.node:
        found[node.op_type][types.get(node.input[0])] += 1
    return found


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_io_contract_and_dynamic_batch(exported_graph, precision):
    model = onnx.load(str(exported_graph(NAME, 512, precision)))
    inputs, outputs = io_signature(model.graph.input), io_signature(model.graph.output)
    batch, guided = inputs["x"][1][0], inputs["guided"][1][0]
    assert isinstance(batch, str) and isinstance(guided, str), "the batch and guided dimensions must be symbolic"
    assert batch != guided  # two dimensions: U rows of B are guided
    assert inputs == {"x": (FLOAT, (batch, 4, 64, 64)), "t": (INT64, (batch,)),
                      "y": (INT64, (batch,)), "cfg_scale": (FLOAT, (batch,)), "guided": (INT64, (guided,))}
    assert set(outputs) == {"eps", "var_values"}
    for element_type, shape in outputs.values():
        assert element_type == FLOAT and shape[1:] == (4, 64, 64) and isinstance(shape[0], str)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_layer_norm_is_one_op_and_checks_pass(exported_graph, precision):
    graph = exported_graph(NAME, 512, precision)
    model = onnx.load(str(graph), load_external_data=False)
    opset = next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
    counts = check_operators(graph)
    print(f"{NAME} {precision} opset {opset}: {dict(sorted(counts.items()))}")
    assert opset >= 17
    assert counts["LayerNormalization"] == 2 * get_config(NAME).depth + 1  # two per block + final
    assert "ReduceMean" not in counts
    check_graph(graph)  # onnx.checker + strict shape inference


def test_fp16_graph_keeps_float32_islands(exported_graph):
    types = input_types_by_op(exported_graph(NAME, 512, "fp16"))
    print({op: {TensorProto.DataType.Name(key): n for key, n in counter.items()} for op, counter in types.items()})
    for op in ("LayerNormalization", "Softmax", "Sin", "Cos"):  # statistics, softmax, timestep features
        assert set(types[op]) == {FLOAT}, op
    for op in ("MatMul", "Gemm", "Conv"):  # the transformer's weights and matmuls
        assert set(types[op]) == {FLOAT16}, op


def test_fp16_weights_are_float16(exported_graph):
    model = onnx.load(str(exported_graph(NAME, 512, "fp16")))
    sizes = collections.Counter()
    for initializer in model.graph.initializer:
        sizes[initializer.data_type] += onnx.numpy_helper.to_array(initializer).size
    print({TensorProto.DataType.Name(key): n for key, n in sizes.items()})
    assert sizes[FLOAT16] > 0.99 * sum(sizes.values())


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_manifest_describes_graph(exported_graph, precision):
    graph = exported_graph(NAME, 512, precision)
    manifest = read_manifest(graph).to_dict()
    assert graph.name == f"DiT-S-4-512-{precision}.onnx"
    assert manifest["format"] == FORMAT
    assert (manifest["model"], manifest["image_size"], manifest["latent_size"], manifest["patch_size"]) == (
        "DiT-S/4", 512, 64, 4)
    assert (manifest["precision"], manifest["cfg_channels"], manifest["opset"]) == (precision, 3, 18)
    assert manifest["batch"] == {"min": 1, "opt": 8, "max": 32}
    assert manifest["checkpoint"] == {"source": "random init (seed 0)", "sha256": None, "random_weights": True}
    assert manifest["graph"] == {"file": graph.name, "sha256": sha256_of_files(graph), "external_data": None}
    assert manifest["versions"]["torch"] and manifest["versions"]["onnx"]
    assert sorted(path.name for path in graph.parent.iterdir()) == sorted([graph.name, graph.stem + ".json"])


def test_a_specialised_batch_is_caught():
    """torch.onnx.export silently falls back to a fixed batch when torch.export cannot keep it dynamic
    (chunk over a doubled batch did that to DiT's guide()); check_dynamic_batch must refuse it."""
    import torch

    from dit_ref.errors import DiTError
    from export.onnx_export import check_dynamic_batch, quiet_exporter

    class DoubledChunk(torch.nn.Module):
        def forward(self, x):  # x (B, 3)
            cond, uncond = torch.cat([x, x]).chunk(2, dim=0)  # the old guide() pattern
            return cond - uncond

    with quiet_exporter():
        program = torch.onnx.export(DoubledChunk(), (torch.randn(2, 3),), dynamo=True,
                                    dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=64)}})
    print([value.shape for value in program.model.graph.inputs])
    with pytest.raises(DiTError, match="fixed the batch of x"):
        check_dynamic_batch(program)
