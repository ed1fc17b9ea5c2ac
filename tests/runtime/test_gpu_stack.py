"""dit_ref.machine.gpu_stack on a CPU machine: each missing piece named in one line, the flavour checks."""

import json
import sys

import pytest
import torch

from dit_ref.machine import gpu_stack


def test_no_cuda_device_says_why():
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    reason = gpu_stack.cuda_unavailable_reason()
    print(reason)
    assert reason.startswith("no CUDA device (") and "\n" not in reason


def test_a_cuda_torch_without_a_device_passes_on_torchs_words(monkeypatch):
    def init():
        raise RuntimeError("Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU\nmore")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "init", init)
    reason = gpu_stack.cuda_unavailable_reason()
    print(reason)
    assert "built for CUDA 13.0, sees none: Found no NVIDIA driver on your system" in reason
    assert "gpu-cu13 needs 580 or newer" in reason and "\n" not in reason


@pytest.mark.parametrize("cuda, flavour, words", [
    (None, "gpu-cu12", "is a CPU build; gpu-cu12 needs torch built for CUDA 12"),
    ("12.8", "gpu-cu13", "is built for CUDA 12.8, not CUDA 13 (gpu-cu13)"),
    ("13.0", "gpu-cu13", None),
])
def test_torch_must_be_built_for_the_flavours_cuda(monkeypatch, cuda, flavour, words):
    monkeypatch.setattr(torch.version, "cuda", cuda)
    problem = gpu_stack.torch_problem(gpu_stack.FLAVOURS[flavour])
    assert (problem is None) == (words is None) and (words is None or words in problem)


def test_packages_sharing_a_folder_are_named(monkeypatch):
    versions = {"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.31.1", "tensorrt-cu12": "11.4.0.106",
                "tensorrt-cu13-bindings": "11.4.0.106"}
    monkeypatch.setattr(gpu_stack, "installed", versions.get)
    assert "both onnxruntime 1.32.0 (CPU) and onnxruntime-gpu 1.31.1" in gpu_stack.onnxruntime_packages_problem()
    problem = gpu_stack.tensorrt_packages_problem(gpu_stack.FLAVOURS["gpu-cu13"])
    assert "tensorrt-cu12, tensorrt-cu13-bindings" in problem and "install tensorrt-cu13" in problem
    monkeypatch.setattr(gpu_stack, "installed", {"tensorrt-cu13": "11.4.0.106"}.get)
    assert gpu_stack.tensorrt_packages_problem(gpu_stack.FLAVOURS["gpu-cu13"]) is None
    assert gpu_stack.onnxruntime_packages_problem() is None


def test_the_cpu_onnxruntime_is_not_a_cuda_provider():
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    reason = gpu_stack.onnxruntime_cuda_unavailable_reason()
    assert reason.startswith("ONNX Runtime's CUDA provider is not loadable: onnxruntime ")
    assert "is the CPU package (no CUDAExecutionProvider)" in reason


def test_check_lists_every_problem_and_fails(capsys):
    if not gpu_stack.stack_problems("gpu-cu12"):
        pytest.skip("this machine has a working gpu-cu12 stack")
    assert gpu_stack.main(["check", "gpu-cu12"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    print(lines)
    assert lines and all(line.startswith("gpu-cu12: ") for line in lines)
    assert gpu_stack.stack_problems("gpu-cu11") == ["unknown CUDA flavour 'gpu-cu11'; choose gpu-cu12 or gpu-cu13"]


def test_describe_writes_the_versions_and_what_is_missing(tmp_path):
    assert gpu_stack.main(["describe", str(tmp_path / "stack.json")]) == 0
    stack = json.loads((tmp_path / "stack.json").read_text())
    assert stack["torch"] == torch.__version__ and stack["python"] == sys.version.split()[0]
    assert set(stack["missing"]) == {"cuda", "tensorrt", "polygraphy", "onnxruntime_cuda"}
    assert stack["packages"]["torch"] == torch.__version__
