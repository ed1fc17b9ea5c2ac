"""scripts/gpu-check.sh where there is no GPU (it stops at once and says why), and its report's parts."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import gpu_check  # noqa: E402
import gpu_report  # noqa: E402


def gpu_check_sh(tmp_path, nvidia_smi: str, *arguments: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {"PATH": os.environ["PATH"], "OUT": str(tmp_path / "report"), "NVIDIA_SMI": nvidia_smi}
    start = time.perf_counter()
    done = subprocess.run(["bash", "scripts/gpu-check.sh", *arguments], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=env)
    print(done.stdout, done.stderr)
    return done, time.perf_counter() - start


def fake_nvidia_smi(tmp_path, script: str) -> str:
    path = tmp_path / "nvidia-smi"
    path.write_text("#!/usr/bin/env bash\n" + script)
    path.chmod(0o755)
    return str(path)


def test_without_a_driver_it_stops_at_once_and_the_report_says_why(tmp_path):
    done, seconds = gpu_check_sh(tmp_path, str(tmp_path / "no-such-nvidia-smi"))
    assert done.returncode == 1 and seconds < 30  # before any install
    report = json.loads((tmp_path / "report/gpu-report.json").read_text())
    assert report["result"] == "stopped" and "not found: no NVIDIA driver on this machine" in report["reason"]
    assert [stage["stage"] for stage in report["stages"]] == ["machine"]
    markdown = (tmp_path / "report/gpu-report.md").read_text()
    assert "**Result: STOPPED: " in markdown and "no NVIDIA driver" in markdown
    assert "gpu-check: stopped: " in done.stdout


def test_no_install_without_a_gpu_stops_at_once_with_the_reason(tmp_path):
    done, seconds = gpu_check_sh(tmp_path, str(tmp_path / "no-such-nvidia-smi"), "--no-install")
    report = json.loads((tmp_path / "report/gpu-report.json").read_text())
    assert done.returncode == 1 and seconds < 30 and report["mode"] == "no-install"
    assert report["result"] == "stopped" and "no NVIDIA driver" in report["reason"]
    assert not (ROOT / ".venv-gpu-check").exists() and [stage["stage"] for stage in report["stages"]] == ["machine"]


def test_no_install_skips_a_stage_whose_packages_are_missing_and_says_which(tmp_path):
    reason = gpu_check.missing_module(sys.executable, ("no_such_package_here",), {"PYTHONPATH": str(ROOT)})
    print(reason)
    assert "No module named 'no_such_package_here'" in reason
    assert gpu_check.missing_module(sys.executable, ("runtime.generate",), {"PYTHONPATH": str(ROOT)}) is None
    report = {"stages": []}
    gpu_check.skip_stage(report, "engine", reason)
    assert report["stages"] == [{"stage": "engine", "status": "skipped", "detail": reason}]
    assert "| engine | skipped | - | this Python" in gpu_report.markdown({**report, "result": "passed", "date": "today"})


def test_a_driver_that_cannot_talk_to_the_gpu_is_the_reason(tmp_path):
    smi = fake_nvidia_smi(tmp_path, "echo \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA "
                                    "driver. Make sure that the latest NVIDIA driver is installed and running.\"\nexit 9\n")
    done, _ = gpu_check_sh(tmp_path, smi)
    report = json.loads((tmp_path / "report/gpu-report.json").read_text())
    assert done.returncode == 1 and report["result"] == "stopped"
    assert report["reason"].startswith(f"{smi} failed: NVIDIA-SMI has failed because it couldn't communicate")


def test_an_old_driver_is_the_reason(tmp_path):
    smi = fake_nvidia_smi(tmp_path, 'case "$1" in --query-gpu*) echo "Tesla T4, 470.82.01, 15360, 7.5";; '
                                    '*) echo "| NVIDIA-SMI 470.82.01  Driver Version: 470.82.01  CUDA Version: 11.4 |";; esac\n')
    done, _ = gpu_check_sh(tmp_path, smi)
    report = json.loads((tmp_path / "report/gpu-report.json").read_text())
    assert done.returncode == 1 and "driver 470.82.01 is older than 525.60.13" in report["reason"]
    assert report["machine"]["gpus"][0]["name"] == "Tesla T4" and report["machine"]["driver_cuda"] == "11.4"


@pytest.mark.parametrize("driver, requested, flavour, words", [
    ("580.65.06", "auto", "gpu-cu13", None),
    ("575.57.08", "auto", "gpu-cu12", None),
    ("525.60.13", "auto", "gpu-cu12", None),
    ("525.60.11", "auto", None, "older than 525.60.13"),
    ("550.54.15", "gpu-cu13", None, "older than 580, which gpu-cu13 needs"),
    ("580.65.06", "gpu-cu12", "gpu-cu12", None),
    ("580.65.06", "gpu", None, "not a flavour"),
])
def test_flavour_from_the_driver(driver, requested, flavour, words):
    chosen, reason = gpu_check.choose_flavour(driver, requested)
    assert chosen == flavour and (words is None) == (reason is None)
    assert words is None or words in reason


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.gpu.test_tensorrt_gpu" name="test_engine_matches_reference_and_onnxruntime[fp32-1]" time="2.5">
 <properties><property name="error_vs_torch" value="3.1e-05"/><property name="error_vs_onnxruntime" value="2.0e-05"/>
 </properties></testcase>
<testcase classname="tests.gpu.test_tensorrt_gpu" name="test_engine_matches_reference_and_onnxruntime[fp32-8]" time="1.0">
 <properties><property name="error_vs_torch" value="0.00021"/></properties>
 <failure message="assert 0.00021 &lt;= 0.0001">long text</failure></testcase>
<testcase classname="tests.gpu.test_tensorrt_gpu" name="test_cuda_graph_replay_equals_eager_bitwise[fp16]" time="3">
 <properties><property name="max_abs_difference" value="0.0"/></properties></testcase>
<testcase classname="tests.runtime.test_backends" name="test_onnxruntime_cuda_io_binding" time="0">
 <error message="DIT_REQUIRE_GPU=1 but ONNX Runtime's CUDA provider is not loadable: libcurand.so.10: cannot open"/>
</testcase></testsuite></testsuites>"""


def test_the_report_shows_outcomes_measured_errors_and_throughput(tmp_path):
    (tmp_path / "tests.xml").write_text(JUNIT)
    tests = gpu_check.parse_junit(tmp_path / "tests.xml")
    assert [test["outcome"] for test in tests] == ["passed", "failed", "passed", "error"]
    assert tests[1]["measured"] == {"error_vs_torch": 0.00021} and tests[1]["message"] == "assert 0.00021 <= 0.0001"
    report = {"date": "2026-11-25T00:00:00+00:00", "result": "failed", "reason": "failed: tests", "model": "XL/2",
              "image_size": 256, "flavour": "gpu-cu13", "tests": tests,
              "machine": {"host": "gpu1", "system": "Linux", "machine": "x86_64", "driver": "580.65.06",
                          "driver_cuda": "13.0", "gpus": [{"name": "NVIDIA H100 80GB HBM3", "driver": "580.65.06",
                                                           "memory_mib": "81559", "compute_capability": "9.0"}]},
              "stages": [{"stage": "tests", "status": "failed", "seconds": 60.0, "detail": "1 failed"}],
              "throughput": [{"backend": "tensorrt", "batch": 8, "ms_per_step_median": 12.5, "ms_per_step_p90": 13.0,
                              "images_per_s": 30.1, "ratio_vs_torch": 6.2, "tflops": 301.0, "percent_of_peak": 30.4,
                              "peak_mem_mb": 4200.0},
                             {"backend": "onnxruntime-fp16", "batch": 8, "skipped": "failed: no CUDA provider"}]}
    text = gpu_report.markdown(report)
    print(text)
    assert "**Result: FAILED: failed: tests**" in text and "NVIDIA H100 80GB HBM3" in text
    assert "| FP32 engine vs torch and ONNX Runtime | 1e-4 (max abs error / max abs reference) | 0.00021 |" in text
    assert "| CUDA-graph replay vs eager | 0 (bitwise) | 0 |" in text
    assert "| FP16 engine vs torch and ONNX Runtime | 1e-2 | not measured |" in text
    assert "| tensorrt | 8 | 12.5 | 13 | 30.1 | 6.2 | 301 | 30.4 | 4200 |" in text
    assert "- onnxruntime-fp16 not measured: failed: no CUDA provider" in text
    assert "libcurand.so.10" in text
