"""A graph over protobuf's 2 GB limit: one external data file beside it, written atomically, runnable."""

import resource

import onnx
import pytest

from dit_ref import DiT, DiTConfig, randomize_weights_
from dit_ref.contract import read_manifest
from export.onnx_export import export_onnx
from export.opcheck import check_graph, check_operators
from export.verify import compare_with_reference

# One block of width 5376 at patch 8 (16 tokens): 618M parameters, 2.47 GB in float32, cheap to run.
WIDE = DiTConfig(family="W", depth=1, hidden_size=5376, num_heads=42, patch_size=8)
TWO_GB = 2 * 1024**3


@pytest.mark.slow
def test_wide_fp32_graph_uses_one_external_data_file(tmp_path):
    model = randomize_weights_(DiT(WIDE, 256), seed=0).eval().requires_grad_(False)
    weight_bytes = sum(tensor.numel() * tensor.element_size() for tensor in model.state_dict().values())
    assert weight_bytes > TWO_GB
    graph = export_onnx(model, tmp_path, "fp32", checkpoint={"source": "random init (seed 0)",
                                                             "sha256": None, "random_weights": True})
    data = tmp_path / (graph.name + ".data")
    files = sorted(path.name for path in tmp_path.iterdir())
    print(f"{weight_bytes / 1e9:.2f} GB of weights -> {files}: graph {graph.stat().st_size / 1e6:.2f} MB, "
          f"data {data.stat().st_size / 1e9:.2f} GB")
    assert files == sorted([graph.name, data.name, "DiT-W-8-256-fp32.json"])
    assert graph.stat().st_size < 10e6 and data.stat().st_size >= weight_bytes * 0.99

    structure = onnx.load(str(graph), load_external_data=False)
    locations = {entry.value for tensor in structure.graph.initializer
                 for entry in tensor.external_data if entry.key == "location"}
    assert locations == {data.name}  # relative, final name: the graph can move with its data file

    check_operators(graph)
    check_graph(graph)  # path-based checker and shape inference work past 2 GB
    errors = compare_with_reference(graph, model, cfg_channels=3, batch=1)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"reloaded in ONNX Runtime: {errors}; peak RSS of this process {peak_gb:.1f} GB")
    assert max(errors.values()) <= 1e-4
    assert read_manifest(graph).graph.external_data == data.name
