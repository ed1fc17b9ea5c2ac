"""Static checks on an exported graph: TensorRT-parsable operators, ONNX validity, shape inference."""

import collections
import functools
import tempfile
from pathlib import Path

import onnx

from dit_ref.errors import DiTError

DEFAULT_DOMAINS = ("", "ai.onnx")
OPS_FILE = "tensorrt_onnx_ops.txt"


@functools.cache
def supported_operators() -> frozenset[str]:
    """The TensorRT ONNX parser's supported operators, read from the data file beside this module."""
    text = (Path(__file__).parent / OPS_FILE).read_text()
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return frozenset(line for line in lines if line)


def load_graph_structure(graph_path) -> onnx.ModelProto:
    """The graph without its external weights (enough for op types and I/O)."""
    path = Path(graph_path)
    if not path.is_file():
        raise DiTError(f"no ONNX graph at {path}; export one with dit-export")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf raises its own DecodeError
        raise DiTError(f"{path} is not a readable ONNX graph ({error}); re-export it") from None


def operator_counts(model: onnx.ModelProto) -> collections.Counter:
    """Count op types over the graph, nested subgraphs and local functions; key "domain::Op" off the default domain."""
    counts = collections.Counter()
    local_functions = {(function.domain, function.name) for function in model.functions}

    def visit(nodes):
        for node in nodes:
            if (node.domain, node.op_type) in local_functions:
                continue  # its body is visited below
            key = node.op_type if node.domain in DEFAULT_DOMAINS else f"{node.domain}::{node.op_type}"
            counts[key] += 1
            for attribute in node.attribute:
                for subgraph in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                    visit(subgraph.node)

    visit(model.graph.node)
    for function in model.functions:
        visit(function.node)
    return counts


def check_operators(graph_path) -> collections.Counter:
    """Op counts of a graph; DiTError naming every op TensorRT's ONNX parser does not support."""
    counts = operator_counts(load_graph_structure(graph_path))
    unsupported = sorted(set(counts) - supported_operators())
    if unsupported:
        raise DiTError(
            f"{Path(graph_path).name} uses operators TensorRT's ONNX parser does not support: "
            f"{', '.join(unsupported)} (list: export/{OPS_FILE}); change the model code or opset"
        )
    return counts


def check_graph(graph_path) -> None:
    """onnx.checker and strict shape inference through the path-based APIs (graphs over 2 GB work)."""
    path = Path(graph_path)
    try:
        onnx.checker.check_model(str(path), full_check=False)
        with tempfile.TemporaryDirectory(prefix="dit-shape-inference-") as scratch:
            inferred = Path(scratch) / path.name
            onnx.shape_inference.infer_shapes_path(str(path), str(inferred), strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DiTError(f"{path.name} fails ONNX validation: {first_line}; re-export it") from None
