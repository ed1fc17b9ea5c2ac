"""This environment's GPU stack and what it lacks, each lack in one line saying why.

The facts behind DIT_REQUIRE_GPU (tests/conftest.py), the set-up script's check after a GPU install
(`python -m dit_ref.machine.gpu_stack check gpu-cu12`) and the versions in scripts/gpu-check.sh's report
(`python -m dit_ref.machine.gpu_stack describe`). torch, tensorrt, onnxruntime and onnx are imported inside
the functions that need them; dit-run never imports this module.
"""

import importlib.metadata
import json
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from dit_ref.machine.onnxruntime_stack import NOT_INSTALLED as ONNXRUNTIME_NOT_INSTALLED
from dit_ref.machine.tensorrt_stack import GPU_SET_UP, polygraphy_unavailable_reason, tensorrt_unavailable_reason


@dataclass(frozen=True)
class Flavour:
    """One CUDA major version's stack: the extra of pyproject.toml that installs it."""

    name: str  # the extra, e.g. gpu-cu12
    cuda_major: int  # every CUDA package of the extra (and torch) is built for it
    driver: str  # the oldest NVIDIA Linux driver that runs it
    tensorrt: str  # the TensorRT package named after this CUDA (the bare `tensorrt` means CUDA 13 since 11.0)


FLAVOURS = {flavour.name: flavour for flavour in (
    Flavour("gpu-cu12", 12, "525.60.13", "tensorrt-cu12"),  # CUDA 12 minor-version compatibility
    Flavour("gpu-cu13", 13, "580", "tensorrt-cu13"),
)}
DRIVERS = ", ".join(f"{flavour.name} needs {flavour.driver} or newer" for flavour in FLAVOURS.values())
# Distributions whose versions the report lists (plus every nvidia-* wheel found).
PACKAGES = ("torch", "triton", "tensorrt", "tensorrt-cu12", "tensorrt-cu12-bindings", "tensorrt-cu12-libs",
            "tensorrt-cu13", "tensorrt-cu13-bindings", "tensorrt-cu13-libs", "polygraphy", "onnxruntime",
            "onnxruntime-gpu", "onnx", "onnxscript", "numpy", "diffusers")


def installed(distribution: str) -> str | None:
    """The installed version of a distribution, or None."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions(*distributions: str) -> dict:
    """Python's version and each distribution's (None where it is not installed): what a benchmark records."""
    return {"python": platform.python_version(), **{name: installed(name) for name in distributions}}


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def cuda_unavailable_reason() -> str | None:
    """None when torch sees a CUDA device; else "no CUDA device (why)"."""
    import torch

    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return (f"no CUDA device (torch {torch.__version__} is a CPU build; install the CUDA build of your "
                f"flavour: {GPU_SET_UP})")
    try:
        torch.cuda.init()
        detail = "torch.cuda.device_count() is 0"
    except Exception as error:  # torch says what it found: no driver, a driver too old, no device
        detail = first_line(error)
    return (f"no CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda}, sees none: {detail}; "
            f"check nvidia-smi and the driver: {DRIVERS})")


def onnxruntime_packages_problem() -> str | None:
    """The CPU and GPU packages of ONNX Runtime both installed (they share one folder), or None."""
    if installed("onnxruntime") and installed("onnxruntime-gpu"):
        return (f"both onnxruntime {installed('onnxruntime')} (CPU) and onnxruntime-gpu {installed('onnxruntime-gpu')} "
                f"are installed and share the onnxruntime/ folder; remove both and re-run the set-up ({GPU_SET_UP})")
    return None


def onnxruntime_cuda_unavailable_reason() -> str | None:
    """None when ONNX Runtime makes a session on its CUDA provider here; else why not, in one line.

    The last step opens a one-node graph on CUDA and runs it: ONNX Runtime falls back to CPU without an error
    when the provider cannot load, so only the session's providers tell (the runner checks them).
    """
    prefix = "ONNX Runtime's CUDA provider is not loadable: "
    try:
        import onnxruntime as ort
    except ModuleNotFoundError:
        return prefix + ONNXRUNTIME_NOT_INSTALLED
    problem = onnxruntime_packages_problem()
    if problem:
        return prefix + problem
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return (f"{prefix}onnxruntime {ort.__version__} is the CPU package (no CUDAExecutionProvider); install "
                f"onnxruntime-gpu of your CUDA flavour ({GPU_SET_UP})")
    gpu = cuda_unavailable_reason()
    if gpu:
        return prefix + gpu
    from dit_ref.machine.onnxruntime_stack import cuda_provider_load_error, preload_cuda_libraries

    preload_cuda_libraries(ort)
    failure = probe_cuda_session(prefix)
    error = cuda_provider_load_error(ort) if failure else None  # the loader names the missing library
    if error:
        return f"{prefix}{error} (onnxruntime-gpu {ort.__version__} is built for CUDA {ort.cuda_version or '?'})"
    return failure


def probe_cuda_session(prefix: str) -> str | None:
    """Open and run a graph of one Add node in ONNX Runtime on CUDA, as the runtime does (dit_ref.runners); None when
    it runs there."""
    import tempfile

    import onnx
    import torch
    from onnx import TensorProto, helper

    from dit_ref.runners import open_runner

    value = helper.make_tensor_value_info
    graph = helper.make_graph([helper.make_node("Add", ["a", "a"], ["b"])], "probe",
                              [value("a", TensorProto.FLOAT, [4])], [value("b", TensorProto.FLOAT, [4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    with tempfile.TemporaryDirectory(prefix="dit-probe-") as scratch:
        path = Path(scratch) / "probe.onnx"
        onnx.save(model, path)
        try:
            with open_runner(path, "onnxruntime", "cuda") as runner:
                runner.run({"a": torch.ones(4, device="cuda")})
        except Exception as error:
            return f"{prefix}{first_line(error)[:300]}"
    return None


def tensorrt_packages_problem(flavour: Flavour | None = None) -> str | None:
    """TensorRT packages of another CUDA (or of both) installed, or None; they share the tensorrt/ folder."""
    found = [name for name in PACKAGES if name.startswith("tensorrt-cu") and installed(name)]
    other = [name for name in found if flavour is not None and not name.startswith(flavour.tensorrt)]
    both = {name[:len("tensorrt-cu12")] for name in found} == {"tensorrt-cu12", "tensorrt-cu13"}
    if other or both:
        wanted = flavour.tensorrt if flavour else "one flavour's packages"
        return (f"TensorRT packages of two CUDA versions are installed ({', '.join(found)}) and share the tensorrt/ "
                f"folder: remove them and install {wanted} ({GPU_SET_UP})")
    return None


def torch_problem(flavour: Flavour) -> str | None:
    """torch not built for the flavour's CUDA major, or None."""
    import torch

    built = torch.version.cuda
    if built is None:
        return (f"torch {torch.__version__} is a CPU build; {flavour.name} needs torch built for CUDA "
                f"{flavour.cuda_major} (re-run scripts/setup-env.sh with EXTRAS=dev,{flavour.name})")
    if int(built.split(".")[0]) != flavour.cuda_major:
        return (f"torch {torch.__version__} is built for CUDA {built}, not CUDA {flavour.cuda_major} ({flavour.name}); "
                f"set TORCH_SPEC (and TORCH_INDEX_URL) to a CUDA {flavour.cuda_major} build of torch")
    return None


def onnxruntime_flavour_problem(flavour: Flavour) -> str | None:
    """onnxruntime-gpu built for another CUDA major than the flavour's, or None."""
    try:
        import onnxruntime as ort
    except ModuleNotFoundError:
        return None  # onnxruntime_cuda_unavailable_reason says it
    built = getattr(ort, "cuda_version", "") or ""
    if built and int(built.split(".")[0]) != flavour.cuda_major:
        return (f"onnxruntime-gpu {ort.__version__} is built for CUDA {built}, not CUDA {flavour.cuda_major} "
                f"({flavour.name}); install the range pyproject.toml's {flavour.name} extra names")
    return None


def stack_problems(flavour_name: str) -> list[str]:
    """Every reason this environment is not a working stack of the flavour, one line each; [] when it is."""
    flavour = FLAVOURS.get(flavour_name)
    if flavour is None:
        return [f"unknown CUDA flavour {flavour_name!r}; choose {' or '.join(FLAVOURS)}"]
    wrong_torch = torch_problem(flavour)
    checks = (lambda: wrong_torch or cuda_unavailable_reason(), lambda: tensorrt_packages_problem(flavour),
              tensorrt_unavailable_reason, polygraphy_unavailable_reason, lambda: onnxruntime_flavour_problem(flavour),
              onnxruntime_cuda_unavailable_reason)
    return [problem for problem in (check() for check in checks) if problem]


def gpus() -> list[dict]:
    """Name, compute capability and memory of each GPU torch sees."""
    import torch

    if not torch.cuda.is_available():
        return []
    found = []
    for index in range(torch.cuda.device_count()):
        properties = torch.cuda.get_device_properties(index)
        found.append({"name": properties.name, "compute_capability": f"{properties.major}.{properties.minor}",
                      "memory_gib": round(properties.total_memory / 2**30, 1)})
    return found


def describe() -> dict:
    """Versions and reasons for the report: Python, torch and its CUDA, the GPUs, the packages, what is missing."""
    import torch

    packages = {name: installed(name) for name in PACKAGES if installed(name)}
    packages.update(sorted((dist.metadata["Name"], dist.version) for dist in importlib.metadata.distributions()
                           if (dist.metadata["Name"] or "").lower().startswith("nvidia-")))
    try:
        import onnxruntime as ort

        onnxruntime = {"version": ort.__version__, "cuda_version": getattr(ort, "cuda_version", "") or None,
                       "providers": ort.get_available_providers()}
    except ModuleNotFoundError:
        onnxruntime = None
    return {
        "python": sys.version.split()[0], "platform": platform.platform(),
        "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.version.cuda else None, "gpus": gpus(),
        "tensorrt": _tensorrt_version(), "onnxruntime": onnxruntime, "packages": packages,
        "missing": {"cuda": cuda_unavailable_reason(), "tensorrt": tensorrt_unavailable_reason(),
                    "polygraphy": polygraphy_unavailable_reason(),
                    "onnxruntime_cuda": onnxruntime_cuda_unavailable_reason()},
        "flavours": {name: asdict(flavour) for name, flavour in FLAVOURS.items()},
    }


def _tensorrt_version() -> str | None:
    try:
        import tensorrt

        return tensorrt.__version__
    except Exception:  # not installed, or broken: describe()["missing"]["tensorrt"] says which
        return None


def main(argv: list[str]) -> int:
    """check FLAVOUR: the problems, one a line, exit 1 if any; describe [PATH]: describe() as JSON."""
    if len(argv) == 2 and argv[0] == "check":
        problems = stack_problems(argv[1])
        for problem in problems:
            print(f"{argv[1]}: {problem}", file=sys.stderr)
        if not problems:
            import torch

            print(f"{argv[1]}: torch {torch.__version__} sees {torch.cuda.get_device_name()}; TensorRT imports; "
                  "ONNX Runtime runs a session on its CUDA provider")
        return 1 if problems else 0
    if argv[:1] == ["describe"] and len(argv) <= 2:
        text = json.dumps(describe(), indent=1) + "\n"
        if len(argv) == 2:
            Path(argv[1]).write_text(text)
        else:
            print(text, end="")
        return 0
    print("usage: python -m dit_ref.machine.gpu_stack check gpu-cu12|gpu-cu13 | describe [JSON_PATH]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
