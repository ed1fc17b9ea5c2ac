"""Run an exported graph in ONNX Runtime (CPU) and compare it with the PyTorch guided forward."""

from pathlib import Path

import numpy as np
import torch

from dit_ref import DiT
from export.guided import INPUT_NAMES, OUTPUT_NAMES, example_inputs


def relative_error(actual, expected) -> float:
    """max |actual - expected| / max |expected| (inf when actual has a non-finite value)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if not np.isfinite(actual).all():
        return float("inf")
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-30))


def onnxruntime_session(graph_path):
    """A CPU ONNX Runtime session on the graph (external data is found beside the file)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    return onnxruntime.InferenceSession(str(graph_path), options, providers=["CPUExecutionProvider"])


def run_graph(session, x, t, y, cfg_scale) -> tuple[np.ndarray, np.ndarray]:
    """(eps, var_values) of the graph for torch inputs."""
    feed = {name: value.numpy() for name, value in zip(INPUT_NAMES, (x, t, y, cfg_scale))}
    eps, var_values = session.run(list(OUTPUT_NAMES), feed)
    return eps, var_values


def compare_with_reference(graph_path: Path, model: DiT, cfg_channels: int, batch: int = 1,
                           seed: int = 0, session=None) -> dict[str, float]:
    """Relative errors {"eps": ..., "var_values": ...} of the graph against model.guided_forward."""
    session = session or onnxruntime_session(graph_path)
    x, t, y, cfg_scale = example_inputs(model.latent_size, batch, seed)
    with torch.no_grad():
        reference = model.guided_forward(x, t, y, cfg_scale, cfg_channels)
    outputs = run_graph(session, x, t, y, cfg_scale)
    return {name: relative_error(output, expected.numpy())
            for name, output, expected in zip(OUTPUT_NAMES, outputs, reference)}
