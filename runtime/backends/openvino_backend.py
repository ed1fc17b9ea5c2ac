"""The OpenVINO backend: the exported guided graph compiled by OpenVINO for the CPU (dit_ref.runners.openvino_runner).

dtype "float32" (the default) asks for float32 inference (a BF16 graph's bfloat16 ops run as written, its float32
islands kept); "bfloat16" lets OpenVINO compute in bfloat16 where the CPU has bf16 units, faster, and without the
graph's float32 islands: the yardstick (benchmarks/quality.py) says what that costs.
"""

import torch

from dit_ref.errors import DiTError
from dit_ref.machine.openvino_stack import cpu_has_bf16
from dit_ref.runners import open_runner
from runtime.backends.graph import GraphDenoiser, given

HINTS = {None: "f32", "float32": "f32", "bfloat16": "bf16"}  # --dtype -> OpenVINO's inference precision


def default_device() -> torch.device:
    return torch.device("cpu")


def load(path, manifest, expected, device=None, threads=None, dtype=None) -> GraphDenoiser:
    if dtype not in HINTS:
        raise DiTError(f"the openvino backend computes float32 or bfloat16, not {dtype}; use --dtype float32 or "
                       f"bfloat16")
    if HINTS[dtype] == "bf16" and not cpu_has_bf16():
        raise DiTError("--dtype bfloat16: this CPU has no bfloat16 units (OpenVINO would emulate them); use "
                       "--dtype float32")
    runner = open_runner(path, "openvino", device, threads, manifest, precision_hint=HINTS[dtype])
    compute = " (bf16 compute)" if HINTS[dtype] == "bf16" else ""
    name = f"openvino-cpu {manifest.precision}{compute}" + (" (emulated)" if manifest.precision == "fp8" else "")
    return GraphDenoiser(runner, manifest, path, "openvino", given(device=device, threads=threads, dtype=dtype), name)
