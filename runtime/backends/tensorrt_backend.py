"""The TensorRT backend: a .plan on a CUDA device, run by dit_ref.runners.tensorrt_runner (torch CUDA tensors bound
directly, on the caller's stream; optionally replayed as CUDA graphs). tensorrt is imported when an engine loads."""

from pathlib import Path

import torch

from dit_ref.errors import DiTError
from dit_ref.machine.tensorrt_stack import GPU_SET_UP, engine_unavailable_reason
from dit_ref.runners import open_runner
from dit_ref.runners.tensorrt_runner import graph_name
from runtime.backends.graph import GraphDenoiser, given


def default_device() -> torch.device:
    """TensorRT runs on the current CUDA device."""
    return torch.device("cuda")


def load(path, manifest, expected, device=None, threads=None, cuda_graphs=False) -> GraphDenoiser:
    """The TensorRT denoiser; DiTError pointing to the graph when TensorRT cannot run here. cuda_graphs: one CUDA
    graph per batch size and count of guided rows for the plain guided engine (a cached-steps pair runs eagerly)."""
    remedy = (f"set up the GPU stack on a CUDA machine ({GPU_SET_UP}), or run the graph "
              f"instead: dit-run {graph_name(manifest, path)}")
    reason = engine_unavailable_reason()
    if reason:
        raise DiTError(f"cannot run {Path(path).name}: {reason}; {remedy}")
    if threads is not None:
        torch.set_num_threads(threads)  # the sampling loop's host work
    graphs = bool(cuda_graphs) and manifest.role == "guided"
    runner = open_runner(path, "tensorrt", device or "cuda", threads, manifest, cuda_graphs=graphs)
    name = f"tensorrt {manifest.precision}" + (" cuda-graphs" if graphs else "")
    return GraphDenoiser(runner, manifest, path, "tensorrt", given(device=device, threads=threads,
                                                                   cuda_graphs=cuda_graphs), name)
