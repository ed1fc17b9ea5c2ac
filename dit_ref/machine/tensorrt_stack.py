"""TensorRT facts shared by the engine build (export) and the engine runner (runtime).

Whether TensorRT can run here and why not, its release as a comparable tuple, the compute
capability text the manifest records, and the process's one logger. tensorrt is imported only
inside the functions that need it, so this module imports anywhere.
"""

import functools
import re

from dit_ref.errors import DiTError

MINIMUM_TENSORRT = (10, 12)
MINIMUM_POLYGRAPHY = (0, 53, 4)  # earlier releases break on TensorRT 11 (pyproject.toml's gpu extras pin it)
GPU_SET_UP = "bash scripts/setup-env.sh with EXTRAS=dev,gpu-cu12, or EXTRAS=dev,gpu-cu13 on driver 580+"  # README "GPU machines"
NOT_INSTALLED = f"TensorRT is not installed: set up a GPU flavour on a machine with a CUDA GPU ({GPU_SET_UP})"


# The oldest GPU (compute capability) whose tensor cores compute a precision: bf16 from Ampere (8.0), fp8
# from Ada and Hopper (8.9); fp16 and int8 run on every GPU TensorRT 10 supports (Turing 7.5 and newer).
MIN_CAPABILITY = {"bf16": (8, 0), "fp8": (8, 9)}
GPU_GENERATION = {(8, 0): "Ampere", (8, 9): "Ada or Hopper"}


def precision_unsupported_reason(precision: str, capability: tuple[int, int], gpu: str = "this GPU") -> str | None:
    """Why a GPU of this compute capability cannot run a precision's tensor-core math (one line), or None."""
    needed = MIN_CAPABILITY.get(precision)
    if needed is None or tuple(capability) >= needed:
        return None
    return (f"{precision} needs an {GPU_GENERATION[needed]} or newer GPU (compute capability "
            f"{compute_capability_text(needed)}+), and {gpu} has {compute_capability_text(capability)}; export "
            f"--precision fp16 for it")


def tensorrt_release(version: str) -> tuple[int, ...]:
    """(major, minor, patch) of a version string such as "10.12.0.36"; missing parts are left out."""
    return tuple(int(part) for part in re.findall(r"\d+", str(version))[:3])


def tensorrt_unavailable_reason() -> str | None:
    """None when TensorRT imports and is 10.12 or newer (a GPU or not); else one line saying why."""
    try:
        import tensorrt as trt
    except ModuleNotFoundError as error:
        if error.name in ("tensorrt", None):
            return NOT_INSTALLED
        return f"TensorRT failed to import (no module {error.name}); reinstall it with {GPU_SET_UP}"
    except Exception as error:  # a broken install (missing libnvinfer, PyPI stub) must not crash the CLI
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        return f"TensorRT failed to import ({detail}); reinstall it with {GPU_SET_UP}"
    version = getattr(trt, "__version__", "unknown")
    if tensorrt_release(version) < MINIMUM_TENSORRT:
        return f"TensorRT {version} is too old: this project needs 10.12 or newer ({GPU_SET_UP})"
    return None


def engine_unavailable_reason() -> str | None:
    """None when TensorRT imports, is new enough and a CUDA GPU is visible; else one line saying why."""
    reason = tensorrt_unavailable_reason()
    if reason:
        return reason
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:
        has_gpu = False
    if not has_gpu:
        return "no CUDA GPU is visible (torch.cuda.is_available() is False); build on the GPU machine that runs the engine"
    return None


def polygraphy_unavailable_reason() -> str | None:
    """None when Polygraphy (which builds the engines) imports and is 0.53.4 or newer; else one line saying why."""
    try:
        import polygraphy
    except ImportError:
        return f"Polygraphy is not installed: it builds the TensorRT engines ({GPU_SET_UP})"
    version = getattr(polygraphy, "__version__", "unknown")
    if tensorrt_release(version) < MINIMUM_POLYGRAPHY:
        return f"Polygraphy {version} is too old for TensorRT 11: this project needs 0.53.4 or newer ({GPU_SET_UP})"
    return None


def build_unavailable_reason() -> str | None:
    """None when an engine can be built here (TensorRT, a GPU, Polygraphy); else one line saying why."""
    return engine_unavailable_reason() or polygraphy_unavailable_reason()


def compute_capability_text(capability: tuple[int, int]) -> str:
    """(8, 6) -> "8.6", the form the manifest records."""
    return f"{capability[0]}.{capability[1]}"


@functools.cache
def trt_logger():
    """The process's one TensorRT logger (warnings and errors go to stderr)."""
    import tensorrt as trt

    return trt.Logger(trt.Logger.WARNING)


def start_tensorrt(factory):
    """trt.Builder or trt.Runtime with the process's logger; DiTError when TensorRT cannot start.

    Both are factory constructors that raise TypeError when the factory returns nullptr (for
    example a driver too old for the CUDA TensorRT was built with).
    """
    try:
        return factory(trt_logger())
    except (TypeError, RuntimeError) as error:
        raise DiTError(f"TensorRT could not start ({error}); check the NVIDIA driver against the CUDA "
                       "version TensorRT was built for") from None


