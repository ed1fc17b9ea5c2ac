"""DIT_REQUIRE_GPU=1: every gpu/trt test that would skip fails instead, naming what is missing."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dit_ref.machine.gpu_stack import cuda_unavailable_reason

ROOT = Path(__file__).resolve().parents[2]


def run_gpu_tests(require: bool) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "DIT_REQUIRE_GPU"}
    if require:
        env["DIT_REQUIRE_GPU"] = "1"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu or trt", "tests/gpu",
               "tests/runtime/test_backends.py"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    print(done.stdout[-3000:], done.stderr[-2000:])
    return done


@pytest.mark.skipif(cuda_unavailable_reason() is None, reason="this machine has a CUDA device")
def test_without_a_gpu_the_required_run_fails_naming_what_is_missing():
    done = run_gpu_tests(require=True)
    assert done.returncode == 1
    assert "DIT_REQUIRE_GPU=1 but no CUDA device (torch" in done.stdout
    assert "TensorRT is not installed" in done.stdout or "TensorRT failed to import" in done.stdout
    assert "ONNX Runtime's CUDA provider is not loadable" in done.stdout
    assert " passed" not in done.stdout and "skipped" not in done.stdout


@pytest.mark.skipif(cuda_unavailable_reason() is None, reason="this machine has a CUDA device")
def test_without_the_variable_they_skip_with_the_reason():
    done = run_gpu_tests(require=False)
    assert done.returncode == 0 and " skipped" in done.stdout and "error" not in done.stdout.lower()


def test_the_variable_names_the_markers_it_requires():
    from testing_utils import required_markers

    assert required_markers("1") == {"gpu", "trt", "onnxruntime_cuda"}
    assert required_markers("") == required_markers("0") == set()
    assert required_markers("gpu, onnxruntime_cuda") == {"gpu", "onnxruntime_cuda"}


@pytest.mark.skipif(cuda_unavailable_reason() is None, reason="this machine has a CUDA device")
def test_requiring_some_markers_fails_those_and_skips_the_rest():
    env = {**os.environ, "DIT_REQUIRE_GPU": "trt"}
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-m", "gpu or trt", "tests/gpu"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    print(done.stdout[-3000:])
    assert done.returncode == 1 and "DIT_REQUIRE_GPU=trt but TensorRT" in done.stdout  # TensorRT's tests fail
    assert "SKIPPED" in done.stdout and "test_torch_cuda.py" in done.stdout  # the torch CUDA tests skip (no GPU)
