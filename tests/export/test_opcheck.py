"""The operator check against TensorRT's parser list, on hand-made graphs (no export needed)."""

import onnx
import pytest
from onnx import TensorProto, helper

from dit_ref.errors import DiTError
from export.opcheck import check_graph, check_operators, supported_operators


def save(tmp_path, nodes, functions=(), name="graph.onnx"):
    """A one-input one-output float graph made of nodes, saved under tmp_path."""
    graph = helper.make_graph(
        nodes, "handmade",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 3])],
    )
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("local", 1), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets, functions=list(functions))
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def test_supported_list_is_loaded():
    ops = supported_operators()
    print(f"{len(ops)} supported operators")
    assert {"LayerNormalization", "MatMul", "Softmax", "Einsum", "Attention"} <= ops
    assert not {"Unique", "StringNormalizer", "SequenceAt"} & ops  # marked N in operators.md


def test_passes_on_supported_ops(tmp_path):
    path = save(tmp_path, [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Tanh", ["h"], ["out"])])
    assert check_operators(path) == {"Relu": 1, "Tanh": 1}
    check_graph(path)


def test_fails_naming_an_unsupported_op(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Hardmax", ["h"], ["k"]),
             helper.make_node("Unique", ["k"], ["u"]), helper.make_node("Identity", ["h"], ["out"])]
    with pytest.raises(DiTError, match=r"not support: Unique \("):
        check_operators(save(tmp_path, nodes))


def test_fails_on_an_op_from_another_domain(tmp_path):
    nodes = [helper.make_node("FusedMatMul", ["x", "x"], ["out"], domain="com.microsoft")]
    with pytest.raises(DiTError, match="com.microsoft::FusedMatMul"):
        check_operators(save(tmp_path, nodes))


def test_looks_inside_subgraphs_and_functions(tmp_path):
    branch = helper.make_graph([helper.make_node("NonZero", ["x"], ["z"])], "branch", [],
                               [helper.make_tensor_value_info("z", TensorProto.INT64, None)])
    condition = helper.make_node("Constant", [], ["c"], value=helper.make_tensor("c", TensorProto.BOOL, [], [True]))
    if_node = helper.make_node("If", ["c"], ["z_out"], then_branch=branch, else_branch=branch)
    body = helper.make_function("local", "Custom", ["a"], ["b"], [helper.make_node("Det", ["a"], ["b"])],
                                [helper.make_opsetid("", 18)])
    nodes = [condition, if_node, helper.make_node("Custom", ["x"], ["out"], domain="local")]
    path = save(tmp_path, nodes, functions=[body])
    with pytest.raises(DiTError, match="not support: Det \\("):
        check_operators(path)  # NonZero (in the If branches) is supported; Det (in the function) is not


def test_check_graph_rejects_an_invalid_graph(tmp_path):
    path = save(tmp_path, [helper.make_node("Add", ["x", "missing"], ["out"])])
    with pytest.raises(DiTError, match="fails ONNX validation"):
        check_graph(path)


def test_missing_or_corrupt_file(tmp_path):
    with pytest.raises(DiTError, match="no ONNX graph"):
        check_operators(tmp_path / "absent.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00not a protobuf\xff" * 10)
    with pytest.raises(DiTError, match="not a readable ONNX graph"):
        check_operators(tmp_path / "junk.onnx")
