"""OpenVINO: a graph compiled for the CPU, one compiled model for every batch size.

OpenVINO reads the .onnx itself: the FP32 graph, the FP16- and BF16-typed ones and the INT8/FP8 Q/DQ graphs. The
precision hint f32 computes every op in float32 (a BF16 graph's bfloat16 ops as written, its float32 islands kept);
bf16 lets OpenVINO compute in bfloat16 where the CPU has bf16 units (its own default there), which is faster and also
drops the graph's float32 islands. Inputs go in as numpy views of the torch tensors; outputs come back copied.
"""

from pathlib import Path

import numpy as np
import torch

from dit_ref.errors import DiTError
from dit_ref.machine.cpu import physical_cores
from dit_ref.machine.openvino_stack import HINTS, import_openvino, port_name, read_onnx
from dit_ref.runners.base import Runner

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16, "f64": torch.float64,
          "i64": torch.int64, "i32": torch.int32, "i8": torch.int8, "u8": torch.uint8, "boolean": torch.bool}


def compile_graph(graph_path: Path, hint: str = "f32", threads: int | None = None):
    """An OpenVINO CompiledModel of an ONNX graph on the CPU (dynamic batch kept), latency-tuned;
    DiTError (one line) when the file is not a graph OpenVINO can compile."""
    if hint not in HINTS:
        raise DiTError(f"OpenVINO precision hint must be one of {', '.join(HINTS)}, not {hint!r}")
    openvino = import_openvino()
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    try:
        return openvino.Core().compile_model(read_onnx(openvino, graph_path), "CPU", config)
    except Exception as error:  # OpenVINO raises RuntimeError with its C++ message, sometimes many lines
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        raise DiTError(f"cannot load the ONNX graph {graph_path} in OpenVINO: {reason}; re-export it with "
                       f"dit-export") from None


def port_shape(port) -> tuple:
    """A port's shape, "B" for a dynamic dimension."""
    return tuple(dimension.get_length() if dimension.is_static else "B" for dimension in port.get_partial_shape())


class OpenVinoRunner(Runner):
    """A graph compiled by OpenVINO for the CPU; `request` is its one infer request."""

    runtime = "openvino"

    def __init__(self, path: Path, threads: int | None = None, precision_hint: str = "f32"):
        self.path, self.device = Path(path), torch.device("cpu")
        self.compiled = compile_graph(self.path, precision_hint, threads or physical_cores())
        self.request = self.compiled.create_infer_request()
        ports = [*self.compiled.inputs, *self.compiled.outputs]
        self.input_names = tuple(port_name(port) for port in self.compiled.inputs)
        self.output_names = tuple(port_name(port) for port in self.compiled.outputs)
        self.shapes = {port_name(port): port_shape(port) for port in ports}
        self.dtypes = {port_name(port): DTYPES.get(port.get_element_type().get_type_name(),
                                                   port.get_element_type().get_type_name()) for port in ports}
        self._outputs = {name: port for name, port in zip(self.output_names, self.compiled.outputs)}
        self.name = "openvino-cpu" + (" (bf16 compute)" if precision_hint == "bf16" else "")

    def close(self) -> None:
        self.request = self.compiled = None

    def run(self, inputs: dict) -> dict:
        results = self.request.infer({name: value.numpy() for name, value in self.feeds(inputs).items()})
        return {name: torch.from_numpy(np.asarray(results[port])) for name, port in self._outputs.items()}  # copies


def open_file(path: Path, device: torch.device | None, threads: int | None, manifest=None,
              precision_hint: str = "f32") -> OpenVinoRunner:
    if device is not None and device.type != "cpu":
        raise DiTError(f"the openvino backend runs on the CPU, not {device}; use --backend onnxruntime or a "
                       f"TensorRT engine on a GPU")
    return OpenVinoRunner(path, threads, precision_hint)
