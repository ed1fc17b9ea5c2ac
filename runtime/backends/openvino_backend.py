"""The OpenVINO denoiser: the exported guided graph compiled by OpenVINO for the CPU.

OpenVINO reads the .onnx directly: the FP32 graph, the FP16- and BF16-typed ones and the INT8/FP8
Q/DQ graphs, with one compiled model for every batch size. dtype "float32" (the default) asks for
float32 inference (a BF16 graph's bfloat16 ops run as written, its float32 islands kept); "bfloat16"
lets OpenVINO compute in bfloat16 where the CPU has bf16 units (OpenVINO's own default there), which
is faster and also drops the graph's float32 islands: the yardstick (benchmarks/quality.py) says what
that costs. Inputs go in as numpy views of the torch tensors; outputs come back copied.
"""

from pathlib import Path

import numpy as np
import torch

from dit_ref.contract import IO_DTYPES, Manifest, check_io_shapes
from dit_ref.errors import DiTError
from dit_ref.machine.cpu import physical_cores
from dit_ref.machine.openvino_stack import compile_graph, cpu_has_bf16, port_name
from runtime.denoiser import Denoiser, Provenance

HINTS = {None: "f32", "float32": "f32", "bfloat16": "bf16"}  # --dtype -> OpenVINO's inference precision


def default_device() -> torch.device:
    return torch.device("cpu")


class OpenVinoDenoiser(Denoiser):
    """The guided graph in OpenVINO on the CPU: (x, t, y, cfg_scale) -> (eps, var_values or None)."""

    def __init__(self, graph_path, manifest: Manifest, threads: int | None = None, dtype: str | None = None):
        if dtype not in HINTS:
            raise DiTError(f"the openvino backend computes float32 or bfloat16, not {dtype}; use --dtype float32 or "
                           f"bfloat16")
        hint = HINTS[dtype]
        if hint == "bf16" and not cpu_has_bf16():
            raise DiTError("--dtype bfloat16: this CPU has no bfloat16 units (OpenVINO would emulate them); use "
                           "--dtype float32")
        self.graph_path, self.manifest, self.device = Path(graph_path), manifest, torch.device("cpu")
        self.compiled = compile_graph(self.graph_path, hint, threads or physical_cores())
        self.output_names = list(manifest.output_names)
        check_graph_io(self.compiled, self.graph_path, manifest)
        self.request = self.compiled.create_infer_request()
        self.provenance = Provenance.from_manifest(manifest)
        self.batch_range = manifest.batch
        self.name = f"openvino-cpu {manifest.precision}" + (" (bf16 compute)" if hint == "bf16" else "") + (
            " (emulated)" if manifest.precision == "fp8" else "")

    def close(self) -> None:
        self.request = self.compiled = None

    def run_named(self, inputs: dict) -> dict:
        feeds = {name: value.to("cpu", IO_DTYPES[name]).contiguous().numpy() for name, value in inputs.items()}
        results = self.request.infer(feeds)  # copies of the outputs (share_outputs is off)
        return {name: torch.from_numpy(np.asarray(results[self.compiled.output(name)])) for name in self.output_names}


def check_graph_io(compiled, graph_path: Path, manifest: Manifest) -> None:
    """DiTError unless the compiled graph has the guided contract's I/O, of the manifest's shapes."""
    ports = {port_name(port): port for port in [*compiled.inputs, *compiled.outputs]}
    inputs = sorted(port_name(port) for port in compiled.inputs)
    if sorted(inputs) != sorted(manifest.input_names) or "eps" not in ports:
        raise DiTError(f"{graph_path} is not a guided DiT graph (inputs {inputs}); export it with dit-export")
    shapes = {name: tuple(dimension.get_length() if dimension.is_static else "B"
                          for dimension in port.get_partial_shape()) for name, port in ports.items()}
    check_io_shapes(manifest, shapes, graph_path)


def load(path, manifest, expected, device=None, threads=None, dtype=None) -> OpenVinoDenoiser:
    if device is not None and torch.device(device).type != "cpu":
        raise DiTError(f"the openvino backend runs on the CPU, not {device}; use --backend onnxruntime or a "
                       f"TensorRT engine on a GPU")
    return OpenVinoDenoiser(path, manifest, threads, dtype)
