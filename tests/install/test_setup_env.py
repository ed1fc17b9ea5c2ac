"""scripts/setup-env.sh's plan for each EXTRAS, as DRY_RUN=1 prints it (nothing is installed)."""

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[2]


def plan(extras: str | None, venv: str = "/nonexistent-venv", **env) -> subprocess.CompletedProcess:
    variables = {"PATH": os.environ["PATH"], "DRY_RUN": "1", "VENV": venv, **env}
    if extras is not None:
        variables["EXTRAS"] = extras
    done = subprocess.run(["bash", "scripts/setup-env.sh"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=variables)
    print(done.stdout, done.stderr)
    return done


def torch_spec(stdout: str) -> SpecifierSet:
    line = next(line for line in stdout.splitlines() if line.startswith("+ pip install torch"))
    return SpecifierSet(line.removeprefix("+ pip install torch"))


def test_cpu_default_adds_the_cpu_extra_and_the_cpu_torch():
    done = plan(None)
    assert done.returncode == 0
    assert "+ pip install torch==2.13.0" in done.stdout and "+ pip install -e .[cpu,dev]" in done.stdout
    assert "nvidia" not in done.stdout and "gpu_stack" not in done.stdout


@pytest.mark.parametrize("flavour, cuda_torch, other_torch", [("gpu-cu12", "2.10.0", "2.11.0"),
                                                              ("gpu-cu13", "2.11.0", "2.10.0")])
def test_a_flavour_installs_its_torch_and_tensorrt_from_nvidia_and_checks_the_stack(flavour, cuda_torch, other_torch):
    # PyPI's torch wheels up to 2.10 are CUDA 12 builds, from 2.11 on CUDA 13 (their Requires-Dist).
    done = plan(f"dev,{flavour}")
    assert done.returncode == 0
    spec = torch_spec(done.stdout)
    assert spec.contains(cuda_torch) and not spec.contains(other_torch)
    assert f"+ pip install -e .[dev,{flavour}] --extra-index-url https://pypi.nvidia.com" in done.stdout
    assert "cpu" not in done.stdout.replace("nonexistent", "")
    assert done.stdout.rstrip().endswith(f"-m dit_ref.machine.gpu_stack check {flavour}")


def test_the_nvidia_index_can_be_left_to_pip_configuration():
    done = plan("dev,gpu-cu13", NVIDIA_INDEX_URL="")
    assert done.returncode == 0 and "--extra-index-url" not in done.stdout


@pytest.mark.parametrize("extras, words", [
    ("dev,gpu", "name the CUDA flavour instead of gpu: gpu-cu12 (NVIDIA driver 525.60.13 or newer) or gpu-cu13"),
    ("dev,cpu,gpu-cu12", "install the same onnxruntime/ folder; drop cpu"),
    ("gpu-cu12,gpu-cu13", "names two CUDA flavours"),
])
def test_unworkable_extras_are_refused_with_the_reason(extras, words):
    done = plan(extras)
    assert done.returncode == 1 and words in done.stderr and done.stdout == ""


def test_an_existing_cpu_environment_is_converted_not_layered():
    # This test's own environment: CPU torch and the CPU onnxruntime (DRY_RUN only reads it).
    if torch.version.cuda is not None:
        pytest.skip("this environment's torch is a CUDA build")
    try:
        importlib.metadata.version("onnxruntime")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("this environment has no CPU onnxruntime")
    done = plan("dev,gpu-cu13", venv=sys.prefix)
    lines = done.stdout.splitlines()
    print(lines)
    assert done.returncode == 0
    uninstall_torch = lines.index(f"+ {sys.prefix}/bin/python -m pip uninstall -y -q torch")
    uninstall_onnxruntime = lines.index(f"+ {sys.prefix}/bin/python -m pip uninstall -y -q onnxruntime onnxruntime-gpu")
    install = next(i for i, line in enumerate(lines) if line.startswith("+ pip install -e"))
    assert uninstall_torch < install and uninstall_onnxruntime < install
    assert "replacing torch (built for CPU) with a CUDA 13 build" in done.stdout
