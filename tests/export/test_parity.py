"""ONNX Runtime (CPU) on the exported graph against DiT.guided_forward, same random weights.

One graph per model and precision serves batch 1 and 3 (B is dynamic). Errors are
max|graph - reference| / max|reference| against the float32 PyTorch model.
"""

import functools

import numpy as np
import pytest
import torch

from export.guided import example_inputs
from export.verify import check_runner, relative_error, run_graph
from testing_utils import random_model

TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}  # of the output scale: the export check's limits (export/pipeline.py)
BATCHES = (1, 3)  # a dynamic batch: two sizes, one of them odd
# (model, cfg_channels): both guidance forms are covered; all at 512 px, the largest size the paper uses.
CASES = [("S/2", 3), ("S/4", 3), ("B/8", 4)]


@functools.cache
def reference(name: str, batch: int, cfg_channels: int):
    """Inputs and the float32 PyTorch outputs, computed once for both precisions."""
    model = random_model(name, 512, 0)
    x, t, y, cfg_scale = example_inputs(model, batch, seed=batch)
    t[0] = 999  # the largest timestep stresses the timestep features most
    with torch.no_grad():
        outputs = model.guided_forward(x, t, y, cfg_scale, cfg_channels)
    return (x, t, y, cfg_scale), [output.numpy() for output in outputs]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("name,cfg_channels", CASES)
def test_graph_matches_reference(exported_graph, name, cfg_channels, precision):
    graph = exported_graph(name, 512, precision, cfg_channels=cfg_channels)
    session = check_runner(graph)
    for batch in BATCHES:
        inputs, expected = reference(name, batch, cfg_channels)
        outputs = run_graph(session, *inputs)
        errors = [relative_error(output, value) for output, value in zip(outputs, expected)]
        print(f"{name}@512 {precision} cfg{cfg_channels} batch {batch}: "
              f"eps {errors[0]:.2e}, var_values {errors[1]:.2e}")
        assert all(output.shape == (batch, 4, 64, 64) for output in outputs)
        assert all(np.isfinite(output).all() for output in outputs)
        assert max(errors) <= TOLERANCE[precision]


def test_cfg_channels_is_baked_in(exported_graph):
    """The cfg-4 graph guides channel 3, the official cfg-3 form does not: the graphs must differ there."""
    model = random_model("B/8", 512, 0)
    x, t, y, cfg_scale = example_inputs(model, 2, seed=5)
    with torch.no_grad():
        official = model.guided_forward(x, t, y, cfg_scale, 3)[0]
    eps = run_graph(check_runner(exported_graph("B/8", 512, "fp32", cfg_channels=4)), x, t, y, cfg_scale)[0]
    gap = relative_error(eps[:, 3], official[:, 3])
    print(f"cfg4 graph vs cfg3 reference on channel 3: {gap:.2e}; channels 0..2: "
          f"{relative_error(eps[:, :3], official[:, :3]):.2e}")
    assert gap > 100 * TOLERANCE["fp32"]
    assert relative_error(eps[:, :3], official[:, :3]) <= TOLERANCE["fp32"]
