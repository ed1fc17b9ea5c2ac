"""pyproject.toml's extras resolved by name, without a network: which combinations bring which packages.

The dependency sets are followed through the installed packages' own metadata (importlib.metadata)
and, for the GPU packages that cannot be installed here, through the Requires-Dist recorded below.
"""

import importlib.metadata
import itertools
import subprocess
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the CI's Python has it

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EXTRAS = PROJECT["optional-dependencies"]
FLAVOURS = {"gpu-cu12": 12, "gpu-cu13": 13}

# Requires-Dist of GPU packages, read from PyPI's metadata with
# `pip install --dry-run --no-deps --ignore-installed --report` on 2026-11-25 (x86_64 Linux, CPython 3.11).
# onnxruntime-gpu: the CUDA major its [cuda,cudnn] wheels are built for, per release on PyPI then.
ONNXRUNTIME_GPU_CUDA = {**{v: 12 for v in ("1.18.0", "1.18.1", "1.19.0", "1.19.2", "1.20.0", "1.20.2", "1.21.0",
                                           "1.21.1", "1.22.0", "1.23.0", "1.23.2", "1.24.1", "1.24.4", "1.25.0",
                                           "1.25.1", "1.26.0")},
                        **{v: 13 for v in ("1.27.0", "1.28.0", "1.29.0", "1.30.0", "1.31.0", "1.31.1")}}
_ORT_BASE = ["flatbuffers", "numpy>=1.21.6", "packaging", "protobuf"]
_ORT_CU12 = ['nvidia-cuda-nvrtc-cu12~=12.0; extra == "cuda"', 'nvidia-cuda-runtime-cu12~=12.0; extra == "cuda"',
             'nvidia-cufft-cu12~=11.0; extra == "cuda"', 'nvidia-curand-cu12~=10.0; extra == "cuda"',
             'nvidia-cudnn-cu12~=9.0; extra == "cudnn"']  # 1.21.0, 1.24.4 and 1.26.0 alike
_ORT_CU13 = ['nvidia-cuda-nvrtc~=13.0; extra == "cuda"', 'nvidia-cuda-runtime~=13.0; extra == "cuda"',
             'nvidia-cufft~=12.0; extra == "cuda"', 'nvidia-curand~=10.0; extra == "cuda"',
             'nvidia-cudnn-cu13~=9.0; extra == "cudnn"']  # 1.29.0 and 1.31.1 (1.27.0 names them -cu13)
KNOWN_REQUIRES = {
    "onnxruntime-gpu": lambda cuda: _ORT_BASE + (_ORT_CU12 if cuda == 12 else _ORT_CU13),
    "tensorrt-cu12": lambda cuda: ["tensorrt_cu12_libs", "tensorrt_cu12_bindings"],
    "tensorrt-cu13": lambda cuda: ["tensorrt_cu13_libs", "tensorrt_cu13_bindings"],
    "tensorrt": lambda cuda: ["tensorrt_cu13"],  # 11.4.0.106: the bare name means CUDA 13 now
    "polygraphy": lambda cuda: [],
}


def requires_of(name: str, cuda: int | None) -> list[str]:
    """Requires-Dist of a package: the recorded GPU ones, else the installed one's, else none known."""
    if name in KNOWN_REQUIRES:
        return KNOWN_REQUIRES[name](cuda)
    try:
        return importlib.metadata.requires(name) or []
    except importlib.metadata.PackageNotFoundError:
        return []


def resolve(extras: tuple[str, ...]) -> set[str]:
    """Canonical names of every package `pip install -e .[extras]` would bring, by name (not versions)."""
    environment = default_environment()
    cuda = next((FLAVOURS[extra] for extra in extras if extra in FLAVOURS), None)
    pending = [(Requirement(text), "") for text in PROJECT["dependencies"]]
    pending += [(Requirement(text), "") for extra in extras for text in EXTRAS[extra]]
    found: set[str] = set()
    while pending:
        requirement, extra = pending.pop()
        if requirement.marker and not requirement.marker.evaluate({**environment, "extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        for wanted in [""] + sorted(requirement.extras):
            if (name, wanted) in found:
                continue
            found.add((name, wanted))
            pending += [(Requirement(text), wanted) for text in requires_of(name, cuda)]
    return {name for name, _ in found}


def combinations():
    names = sorted(EXTRAS)
    return [combo for size in range(len(names) + 1) for combo in itertools.combinations(names, size)]


def test_the_base_has_no_onnxruntime_and_cpu_brings_the_cpu_package():
    assert not {"onnxruntime", "onnxruntime-gpu"} & resolve(())
    assert {"onnxruntime"} <= resolve(("cpu",)) and "onnxruntime-gpu" not in resolve(("cpu",))
    assert "onnxruntime" in resolve(("cpu", "dev"))  # what setup-env.sh installs on a CPU machine


@pytest.mark.parametrize("combo", combinations(), ids=lambda combo: ",".join(combo) or "base")
def test_no_combination_setup_env_accepts_installs_both_onnxruntimes(combo):
    both = {"onnxruntime", "onnxruntime-gpu"} <= resolve(combo)
    flavours = [extra for extra in combo if extra in FLAVOURS]
    # The only combinations that bring both are `cpu` beside a GPU flavour, which setup-env refuses
    # (tests/install/test_setup_env.py); pip alone cannot refuse a combination.
    assert both == ("cpu" in combo and bool(flavours))
    if both:
        done = subprocess.run(["bash", "scripts/setup-env.sh"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                              env={"PATH": "/usr/bin:/bin", "DRY_RUN": "1", "VENV": "/nonexistent-venv",
                                   "EXTRAS": ",".join(combo)})
        assert done.returncode == 1 and "setup-env:" in done.stderr and done.stdout == ""


@pytest.mark.parametrize("flavour, cuda", FLAVOURS.items())
def test_each_flavour_pins_packages_of_its_cuda(flavour, cuda):
    requirements = {canonicalize_name(Requirement(text).name): Requirement(text) for text in EXTRAS[flavour]}
    assert set(requirements) == {f"tensorrt-cu{cuda}", "polygraphy", "onnxruntime-gpu"}  # never the bare tensorrt
    onnxruntime = requirements["onnxruntime-gpu"]
    assert onnxruntime.extras == {"cuda", "cudnn"}  # cuRAND, cuFFT, cuDNN as wheels: recent torch lacks cuRAND
    allowed = [version for version in ONNXRUNTIME_GPU_CUDA if onnxruntime.specifier.contains(version)]
    print(f"{flavour}: onnxruntime-gpu {onnxruntime.specifier} allows {allowed}")
    assert allowed and all(ONNXRUNTIME_GPU_CUDA[version] == cuda for version in allowed)
    assert Version(allowed[0]) >= Version("1.21")  # preload_dlls and the [cuda,cudnn] extras start there
    newest_checked = max(ONNXRUNTIME_GPU_CUDA, key=Version)
    assert not onnxruntime.specifier.contains(f"{Version(newest_checked).major}.{Version(newest_checked).minor + 1}.0")
    tensorrt = requirements[f"tensorrt-cu{cuda}"]
    assert not tensorrt.specifier.contains("10.11.0.33") and tensorrt.specifier.contains("11.4.0.106")
    assert not tensorrt.specifier.contains("12.0.0")  # an unknown API, until checked
    polygraphy = requirements["polygraphy"]
    assert polygraphy.specifier.contains("0.53.4") and not polygraphy.specifier.contains("0.53.3")  # 11.x needs it
    other = f"-cu{25 - cuda}"  # cu12 <-> cu13
    brought = resolve((flavour, "dev"))
    print(f"{flavour}: {sorted(name for name in brought if 'nvidia' in name or 'tensorrt' in name)}")
    assert not [name for name in brought if other in name]
    assert {f"nvidia-cudnn-cu{cuda}", f"tensorrt-cu{cuda}-libs"} <= brought


def test_the_flavours_are_the_gpu_stack_checks():
    from dit_ref.machine.gpu_stack import FLAVOURS as STACK

    assert {name: flavour.cuda_major for name, flavour in STACK.items()} == FLAVOURS
    for name, flavour in STACK.items():
        assert any(Requirement(text).name == flavour.tensorrt for text in EXTRAS[name])
    assert "gpu" not in EXTRAS  # a GPU install names its CUDA
