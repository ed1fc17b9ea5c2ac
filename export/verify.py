"""Run an exported graph in ONNX Runtime (CPU; OpenVINO for BF16) and compare it with the PyTorch guided forward."""

from pathlib import Path
from types import SimpleNamespace

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


def onnxruntime_session(graph_path, providers=("CPUExecutionProvider",)):
    """An ONNX Runtime session on the graph, CPU unless providers say (external data is found beside the file).

    Basic graph optimisations only: the full level folds FP16 weights into float32 copies for the
    CPU kernels (XL/2 FP16: 4.3 GB peak and 7 s to load, against 3.3 GB and 2 s), and a check
    should run the graph as written.
    """
    from dit_ref.machine.onnxruntime_stack import import_onnxruntime

    onnxruntime = import_onnxruntime()
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return onnxruntime.InferenceSession(str(graph_path), options, providers=list(providers))


class OpenVinoSession:
    """An OpenVINO compiled graph with ONNX Runtime's session shape (get_outputs, run), float32 inference:
    the BF16 graph's check (ONNX Runtime has no bfloat16 CPU kernels)."""

    def __init__(self, graph_path):
        from dit_ref.machine.openvino_stack import compile_graph

        self.compiled = compile_graph(graph_path, "f32")

    def get_inputs(self):
        from dit_ref.machine.openvino_stack import port_name

        return [SimpleNamespace(name=port_name(port)) for port in self.compiled.inputs]

    def get_outputs(self):
        from dit_ref.machine.openvino_stack import port_name

        return [SimpleNamespace(name=port_name(port)) for port in self.compiled.outputs]

    def run(self, names, feed) -> list[np.ndarray]:
        results = self.compiled(feed)
        return [np.asarray(results[self.compiled.output(name)]) for name in names]


def openvino_session(graph_path) -> OpenVinoSession:
    return OpenVinoSession(graph_path)


def run_graph(session, x, t, y, cfg_scale, guided=None) -> list[np.ndarray]:
    """The graph's outputs (eps[, var_values]) for torch inputs; guided (the rows to guide) None: every row,
    and nothing for a graph of an older format, which has no guided input."""
    names = {node.name for node in session.get_inputs()}
    guided = torch.arange(len(x)) if guided is None else guided
    values = {"x": x, "t": t, "y": y, "cfg_scale": cfg_scale, GUIDED: guided}
    feed = {name: value.numpy() for name, value in values.items() if name in names}
    return session.run([output.name for output in session.get_outputs()], feed)


def reference_outputs(model: DiT, cfg_channels: int, batch: int = 1, seed: int = 0):
    """Seeded random inputs and the PyTorch guided forward's outputs on them (numpy)."""
    inputs = example_inputs(model, batch, seed)
    with torch.no_grad():
        outputs = model.guided_forward(*inputs, cfg_channels)
    return inputs, [output.numpy() for output in outputs]


def compare_outputs(graph_path: Path, inputs, expected, session=None) -> dict[str, float]:
    """Relative errors {"eps": ...[, "var_values": ...]} of the graph against expected outputs."""
    session = session or onnxruntime_session(graph_path)
    names = [output.name for output in session.get_outputs()]
    outputs = run_graph(session, *inputs)
    return {name: relative_error(output, value) for name, output, value in zip(names, outputs, expected)}


def compare_with_reference(graph_path: Path, model: DiT, cfg_channels: int, batch: int = 1,
                           seed: int = 0, session=None) -> dict[str, float]:
    """Relative errors of the graph against model.guided_forward on seeded random inputs."""
    inputs, expected = reference_outputs(model, cfg_channels, batch, seed)
    return compare_outputs(graph_path, inputs, expected, session)


def compare_cached_steps(refresh: Path, reuse: Path, inputs, expected, bf16: bool = False) -> dict[str, float]:
    """Relative errors against expected outputs of the refresh graph's eps, and of the reuse graph's eps fed
    the refresh's own features (which must give the full forward back)."""
    make = openvino_session if bf16 else onnxruntime_session
    refresh_session, reuse_session = make(refresh), make(reuse)
    x, t, y, cfg_scale = inputs
    names = [output.name for output in refresh_session.get_outputs()]
    feed = {"x": x.numpy(), "t": t.numpy(), "y": y.numpy(), "cfg_scale": cfg_scale.numpy(),
            GUIDED: np.arange(len(x), dtype=np.int64)}
    outputs = dict(zip(names, refresh_session.run(names, feed)))
    reused = reuse_session.run(["eps"], {**feed, "features": outputs["features"],
                                         "null_features": outputs["null_features"]})[0]
    return {"refresh eps": relative_error(outputs["eps"], expected[0]), "reuse eps": relative_error(reused, expected[0])}
