"""Run an exported graph on the CPU (dit_ref.runners: ONNX Runtime; OpenVINO for BF16) and compare it with the PyTorch
guided forward."""

from pathlib import Path

import numpy as np
import torch

from dit_ref import DiT
from dit_ref.contract import GUIDED
from export.guided import example_inputs


def as_float64(value) -> np.ndarray:
    """A numpy float64 copy of an array or a torch tensor (on any device)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().double().numpy()
    return np.asarray(value, np.float64)


def relative_error(actual, expected) -> float:
    """max |actual - expected| / max |expected| (inf when actual has a non-finite value)."""
    actual, expected = as_float64(actual), as_float64(expected)
    if not np.isfinite(actual).all():
        return float("inf")
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-30))


def check_runner(graph_path, precision: str = "fp32"):
    """A CPU runner that checks a graph as written: ONNX Runtime with basic graph optimisations (the full level folds
    FP16 weights into float32 copies for the CPU kernels: XL/2 FP16 4.3 GB peak and 7 s to load, against 3.3 GB and
    2 s), OpenVINO in float32 inference for bf16 (ONNX Runtime has no bfloat16 CPU kernels). External data is found
    beside the file."""
    from dit_ref.runners import open_runner

    if precision == "bf16":
        return open_runner(graph_path, "openvino", precision_hint="f32")
    return open_runner(graph_path, "onnxruntime", optimization="basic")


def run_graph(runner, x, t, y, cfg_scale, guided=None) -> list[torch.Tensor]:
    """The graph's outputs (eps[, var_values]) for torch inputs; guided (the rows to guide) None: every row,
    and nothing for a graph of an older format, which has no guided input."""
    guided = torch.arange(len(x)) if guided is None else torch.as_tensor(guided, dtype=torch.int64)
    values = {"x": x, "t": t, "y": y, "cfg_scale": cfg_scale, GUIDED: guided}
    outputs = runner.run({name: value for name, value in values.items() if name in runner.input_names})
    return [outputs[name] for name in runner.output_names]


def reference_outputs(model: DiT, cfg_channels: int, batch: int = 1, seed: int = 0):
    """Seeded random inputs and the PyTorch guided forward's outputs on them (numpy)."""
    inputs = example_inputs(model, batch, seed)
    with torch.no_grad():
        outputs = model.guided_forward(*inputs, cfg_channels)
    return inputs, [output.numpy() for output in outputs]


def compare_outputs(graph_path: Path, inputs, expected, precision: str = "fp32") -> dict[str, float]:
    """Relative errors {"eps": ...[, "var_values": ...]} of the graph (in check_runner's runtime) against expected
    outputs."""
    with check_runner(graph_path, precision) as runner:
        outputs = run_graph(runner, *inputs)
        return {name: relative_error(output, value) for name, output, value in zip(runner.output_names, outputs, expected)}


def compare_with_reference(graph_path: Path, model: DiT, cfg_channels: int, batch: int = 1,
                           seed: int = 0, precision: str = "fp32") -> dict[str, float]:
    """Relative errors of the graph against model.guided_forward on seeded random inputs."""
    inputs, expected = reference_outputs(model, cfg_channels, batch, seed)
    return compare_outputs(graph_path, inputs, expected, precision)


def compare_cached_steps(refresh: Path, reuse: Path, inputs, expected, precision: str = "fp32") -> dict[str, float]:
    """Relative errors against expected outputs of the refresh graph's eps, and of the reuse graph's eps fed
    the refresh's own features (which must give the full forward back)."""
    x, t, y, cfg_scale = inputs
    feed = {"x": x, "t": t, "y": y, "cfg_scale": cfg_scale, GUIDED: torch.arange(len(x))}
    with check_runner(refresh, precision) as refresh_runner, check_runner(reuse, precision) as reuse_runner:
        outputs = refresh_runner.run(feed)
        reused = reuse_runner.run({**feed, "features": outputs["features"], "null_features": outputs["null_features"]})
    return {"refresh eps": relative_error(outputs["eps"], expected[0]),
            "reuse eps": relative_error(reused["eps"], expected[0])}
