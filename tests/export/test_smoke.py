"""First check of the export path: a tiny graph runs in ONNX Runtime at several batch sizes."""

import onnxruntime
import torch

from export.guided import example_inputs
from export.manifest import read_manifest
from tests.conftest import max_rel_error, random_model

TOLERANCE = 1e-4  # FP32 graph vs the PyTorch guided forward, relative to max |reference|


def test_tiny_fp32_graph_matches_reference(exported_graph):
    graph = exported_graph("S/8", 256, "fp32")
    model = random_model("S/8", 256, 0)
    session = onnxruntime.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x, t, y, cfg_scale = example_inputs(model.latent_size, batch, seed=batch)
        eps, var_values = session.run(None, {"x": x.numpy(), "t": t.numpy(), "y": y.numpy(),
                                             "cfg_scale": cfg_scale.numpy()})
        ref_eps, ref_var = model.guided_forward(x, t, y, cfg_scale, 3)
        errors = max_rel_error(eps, ref_eps), max_rel_error(var_values, ref_var)
        print(f"S/8 fp32 batch {batch}: eps {errors[0]:.2e}, var_values {errors[1]:.2e}")
        assert max(errors) <= TOLERANCE
    assert read_manifest(graph)["checkpoint"]["random_weights"] is True
