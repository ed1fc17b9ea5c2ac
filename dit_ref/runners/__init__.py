"""One way to run a graph or an engine, below both export and runtime: open it, run named tensors, close it.

    with open_runner("g.onnx", "onnxruntime", threads=2, manifest=manifest) as runner:
        outputs = runner.run({"x": x, "t": t, "y": y, "cfg_scale": cfg_scale, "guided": guided})

In the spirit of Polygraphy's runners, smaller: ONNX Runtime (CPU, or CUDA through I/O binding), OpenVINO (CPU) and
TensorRT (CUDA) each have one module here, imported only when chosen. The runtime's denoisers and decoders, export's
checks and calibration, and the benchmarks all run graphs through it: ONNX Runtime sessions, OpenVINO compiled
models and TensorRT execution contexts are made here and nowhere else (tests/test_layout.py reads the calls).
"""

import importlib
from pathlib import Path

import torch

from dit_ref.contract import DecoderManifest, Manifest
from dit_ref.errors import DiTError
from dit_ref.runners.base import CONTRACT_DTYPES, Runner  # noqa: F401 (the package's API)
from dit_ref.runners.checks import check_io
from dit_ref.runners.choice import (  # noqa: F401 (the package's API)
    CPU_CHOICE, ENGINE_SUFFIXES, choose_runtime, is_engine, onnxruntime_cuda_here, openvino_here, runtime_device,
)

MODULES = {"onnxruntime": "dit_ref.runners.onnxruntime_runner", "openvino": "dit_ref.runners.openvino_runner",
           "tensorrt": "dit_ref.runners.tensorrt_runner"}  # each defines open_file(path, device, threads, manifest, ...)
RUNTIMES = tuple(MODULES)


def open_runner(path, runtime: str, device=None, threads: int | None = None,
                manifest: Manifest | DecoderManifest | None = None, **options) -> Runner:
    """The file opened in `runtime` on `device` (None: the runtime's own default), its I/O checked against the
    manifest when one is given. threads: CPU threads (intra-op; None: the physical cores). options are the
    runtime's own: onnxruntime optimization="basic"; openvino precision_hint="f32"|"bf16"; tensorrt cuda_graphs."""
    if runtime not in MODULES:
        raise DiTError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    device = None if device is None else torch.device(device)
    runner = importlib.import_module(MODULES[runtime]).open_file(Path(path), device, threads, manifest, **options)
    if manifest is not None:
        try:
            check_io(runner, manifest)
        except DiTError:
            runner.close()
            raise
    return runner
