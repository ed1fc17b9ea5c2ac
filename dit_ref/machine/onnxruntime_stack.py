"""ONNX Runtime as export's check and runtime's backend import it: one line when it is missing.

It is not a base dependency (pyproject.toml says why): the `cpu` extra brings the CPU package and
each gpu-cuXX extra brings onnxruntime-gpu, so a bare `pip install -e .` has neither.
"""

import ctypes
import functools
import logging
import platform
from pathlib import Path

from dit_ref.errors import DiTError

log = logging.getLogger(__name__)

NOT_INSTALLED = ("ONNX Runtime is not installed: pip install -e '.[cpu]' on a CPU machine, or set up a GPU "
                 "flavour (EXTRAS=dev,gpu-cu12 or gpu-cu13 bash scripts/setup-env.sh)")


def import_onnxruntime():
    """The onnxruntime module; DiTError saying what to install when neither package is there."""
    try:
        import onnxruntime
    except ModuleNotFoundError as error:
        if error.name not in ("onnxruntime", None):
            raise
        raise DiTError(NOT_INSTALLED) from None
    return onnxruntime


@functools.cache
def preload_cuda_libraries(ort) -> None:
    """Load the CUDA and cuDNN libraries that onnxruntime-gpu's [cuda,cudnn] wheels installed, once.

    onnxruntime.preload_dlls() (1.21+; cuda=True, cudnn=True, msvc=True, directory=None: torch's
    compatible libraries, then the nvidia wheels, then the default search paths) is ONNX Runtime's
    documented way to find them; older releases rely on the system's libraries. A no-op for the CPU
    package. It prints what it could not load; it raises only for a bad directory.
    """
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload()
    except Exception as error:
        log.warning("onnxruntime.preload_dlls() failed (%s); relying on the system's CUDA libraries", error)


def cuda_provider_load_error(ort) -> str | None:
    """Why ONNX Runtime's CUDA provider library does not load here, in the dynamic loader's words, or None.

    Loads it as ONNX Runtime does (its shared-provider library first, globally), so the missing
    dependency is named (for example libcurand.so.10, which recent torch wheels no longer bring).
    """
    names = {"Linux": ("libonnxruntime_providers_shared.so", "libonnxruntime_providers_cuda.so"),
             "Windows": ("onnxruntime_providers_shared.dll", "onnxruntime_providers_cuda.dll")}.get(platform.system())
    if names is None:
        return None
    capi = Path(ort.__file__).parent / "capi"
    for name in names:
        if not (capi / name).is_file():
            return f"{name} is not in {capi} (is onnxruntime the CPU package?)"
        try:
            ctypes.CDLL(str(capi / name), mode=ctypes.RTLD_GLOBAL)
        except OSError as error:
            return str(error).strip().splitlines()[0] if str(error).strip() else f"{name} does not load"
    return None
