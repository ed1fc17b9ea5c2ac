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
    assert "| engine | skipped | - | - | this Python" in gpu_report.markdown({**report, "result": "partial", "date": "today"})


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
    assert "| tensorrt | XL/2 | 8 | 12.5 | 13 | 30.1 | 6.2 | 301 | 30.4 | 4200 |" in text
    assert "- onnxruntime-fp16 (XL/2) not measured: failed: no CUDA provider" in text
    assert "libcurand.so.10" in text


# --- what a run covers and its result (scripts/gpu_plan.py), and the stages a --no-install run chooses ------------

import gpu_plan  # noqa: E402

NO_TENSORRT = "TensorRT is not installed: set up a GPU flavour"
NO_PROVIDER = "ONNX Runtime's CUDA provider is not loadable: onnxruntime 1.30.0 is the CPU package"


def a_report(missing=None, statuses=("passed",), tests=("passed",)) -> dict:
    return {"result": None, "stack": {"missing": missing or {}},
            "stages": [{"stage": f"stage{i}", "status": status, "detail": "why"} for i, status in enumerate(statuses)],
            "tests": [{"test": f"t{i}", "outcome": outcome, "message": "reason"} for i, outcome in enumerate(tests)]}


@pytest.mark.parametrize("report, result, reason", [
    (a_report(), "passed", None),
    (a_report({"tensorrt": NO_TENSORRT, "onnxruntime_cuda": NO_PROVIDER}), "partial",
     "TensorRT not checked; ONNX Runtime's CUDA provider not checked"),
    (a_report(statuses=("passed", "skipped")), "partial", "stage stage1 skipped"),
    (a_report(tests=("passed", "skipped", "skipped")), "partial", "2 GPU tests skipped"),
    (a_report({"tensorrt": NO_TENSORRT}, statuses=("failed", "skipped")), "failed", "failed: stage0"),
    ({"result": "stopped", "reason": "no driver", "stages": []}, "stopped", "no driver"),
])
def test_a_run_passes_only_when_it_checked_everything(report, result, reason):
    assert gpu_plan.verdict(report) == (result, reason)


@pytest.mark.parametrize("result, require_all, code", [
    ("passed", False, 0), ("passed", True, 0), ("partial", False, 0), ("partial", True, 1),
    ("failed", False, 1), ("stopped", False, 1)])
def test_exit_codes(result, require_all, code):
    assert gpu_plan.exit_code(result, require_all) == code


def test_what_the_tests_require_follows_what_is_here():
    assert gpu_plan.required_markers(True, {"tensorrt": NO_TENSORRT}) == "1"  # installed: everything, or fail
    assert gpu_plan.required_markers(False, {"tensorrt": NO_TENSORRT, "onnxruntime_cuda": NO_PROVIDER}) == "gpu"
    assert gpu_plan.required_markers(False, {"onnxruntime_cuda": NO_PROVIDER}) == "gpu,trt"
    assert gpu_plan.required_markers(False, {}) == "gpu,trt,onnxruntime_cuda"


def test_stage_limits_keep_the_torch_only_run_within_8_minutes():
    assert gpu_plan.stage_limits(True, True) == {}  # with the set-up: no bounds
    torch_only = gpu_plan.stage_limits(False, False)
    assert set(torch_only) == {"stack", "tests", "throughput", "overhead"}
    assert sum(torch_only.values()) + gpu_plan.PROBES_SECONDS <= gpu_plan.BUDGET_SECONDS == 480
    with_tensorrt = gpu_plan.stage_limits(False, True)
    assert with_tensorrt["engine"] == 2 * 45 + 2 * 30  # the measured S/2 export and a level-1 build, doubled
    assert with_tensorrt["tests"] > torch_only["tests"] and {"compare", "engine-throughput"} <= set(with_tensorrt)
    assert gpu_plan.stage_limits(False, False, scale=2)["tests"] == 2 * torch_only["tests"]


def test_the_gpu_tests_are_found_by_their_markers():
    files = gpu_check.gpu_test_files()
    expected = {"tests/gpu/test_torch_cuda.py", "tests/gpu/test_tensorrt_gpu.py", "tests/runtime/test_backends.py"}
    assert expected <= set(files)
    assert "tests/install/test_gpu_check.py" not in files and gpu_check.TORCH_TESTS in files


def fake_run(monkeypatch, tmp_path, missing: dict, importable=lambda modules: True) -> tuple[dict, list]:
    """gpu_check.check(--no-install) on a machine that nvidia-smi describes, every stage passing at once: the
    report and the stages run as (name, command, env, limit)."""
    ran = []
    h200 = {"system": "Linux", "gpus": [{"name": "NVIDIA H200", "driver": "580.159.03", "memory_mib": "143771",
                                         "compute_capability": "9.0"}], "driver": "580.159.03"}
    monkeypatch.setattr(gpu_check, "probe_machine", lambda smi: (h200, None))
    monkeypatch.setattr(gpu_check, "missing_module", lambda python, modules, env: None if importable(modules)
                        else f"this Python cannot import what it needs: No module named '{modules[1]}'")

    def run_stage(report, name, command, out, env=None, seconds=None):
        ran.append((name, command, env or {}, seconds))
        if name == "stack":
            stack = {"python": "3.12.3", "torch": "2.11.0+cu130", "torch_cuda": "13.0", "cudnn": 91300,
                     "tensorrt": None, "missing": missing}
            (out / "stack.json").write_text(json.dumps(stack))
        report["stages"].append({"stage": name, "status": "passed", "seconds": 1.0})
        return True

    monkeypatch.setattr(gpu_check, "run_stage", run_stage)
    return gpu_check.check(tmp_path, "auto", "nvidia-smi", install=False), ran


def test_without_tensorrt_the_torch_paths_run_and_the_run_is_partial(monkeypatch, tmp_path):
    report, ran = fake_run(monkeypatch, tmp_path, {"tensorrt": NO_TENSORRT, "onnxruntime_cuda": NO_PROVIDER})
    assert [name for name, *_ in ran] == ["stack", "tests", "throughput", "overhead"]
    tests = next(entry for entry in ran if entry[0] == "tests")
    assert tests[2]["DIT_REQUIRE_GPU"] == "gpu" and "tests/gpu/test_tensorrt_gpu.py" in tests[1]  # they skip, saying why
    throughput = next(entry for entry in ran if entry[0] == "throughput")
    assert throughput[1][throughput[1].index("--backends") + 1] == gpu_plan.TORCH_BENCHMARKED
    assert throughput[1][throughput[1].index("--time-budget") + 1] == str(throughput[3] - gpu_plan.THROUGHPUT_SLACK)
    assert sum(seconds for *_, seconds in ran) + gpu_plan.PROBES_SECONDS <= 480
    assert report["result"] == "partial" and report["reason"] == (
        "TensorRT not checked; ONNX Runtime's CUDA provider not checked; stage engine skipped; stage compare skipped")
    assert report["not_checked"][0] == {"what": "TensorRT not checked", "why": NO_TENSORRT}
    text = gpu_report.markdown(report)
    assert "**Result: PARTIAL: TensorRT not checked;" in text and f"- TensorRT not checked: {NO_TENSORRT}" in text
    assert report["require_gpu"] == "gpu"


def test_without_onnx_only_the_torch_cuda_tests_run(monkeypatch, tmp_path):
    report, ran = fake_run(monkeypatch, tmp_path, {"tensorrt": NO_TENSORRT},
                           importable=lambda modules: "onnx" not in modules)
    tests = next(entry for entry in ran if entry[0] == "tests")
    assert gpu_check.TORCH_TESTS in tests[1] and "tests/gpu/test_tensorrt_gpu.py" not in tests[1]
    assert "stage tests needing onnx skipped" in report["reason"]


def test_with_tensorrt_the_smoke_engine_is_s2_at_a_low_level_and_compared(monkeypatch, tmp_path):
    report, ran = fake_run(monkeypatch, tmp_path, {})
    assert [name for name, *_ in ran] == ["stack", "tests", "engine", "compare", "throughput", "engine-throughput",
                                          "overhead"]
    engine = next(entry for entry in ran if entry[0] == "engine")[1]
    assert engine[engine.index("--model") + 1] == "S/2" and engine[engine.index("--opt-level") + 1] == "1"
    compare = next(entry for entry in ran if entry[0] == "compare")[1]
    assert compare[2:4] == ["export.compare_engine", str(tmp_path / "work/S-2-256/DiT-S-2-256-fp16.onnx")]
    assert next(entry for entry in ran if entry[0] == "tests")[2]["DIT_REQUIRE_GPU"] == "gpu,trt,onnxruntime_cuda"
    assert report["result"] == "passed" and gpu_plan.exit_code(report["result"], True) == 0


def test_require_all_makes_a_partial_run_fail(tmp_path):
    env = {"PATH": os.environ["PATH"], "OUT": str(tmp_path / "report"), "NVIDIA_SMI": str(tmp_path / "none")}
    done = subprocess.run(["bash", "scripts/gpu-check.sh", "--no-install", "--require-all", "--bogus"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2 and "the options are --no-install and --require-all" in done.stderr
