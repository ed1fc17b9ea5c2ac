"""The benchmark's own logic; its figures are not asserted (speed targets live in the README)."""

import importlib.util
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks import backends, measure, throughput
from dit_ref import DiTError

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_peak_table_matches_names():
    assert measure.gpu_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert measure.gpu_peak_tflops("NVIDIA L4") == 121.0
    assert measure.gpu_peak_tflops("NVIDIA L40S") is None  # not an L4
    assert measure.gpu_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert measure.gpu_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0


def test_ratio_is_speedup_over_torch_eager():
    records = [
        {"backend": "torch", "model": "S/2", "batch": 8, "ms_per_step_median": 100.0},
        {"backend": "onnxruntime", "model": "S/2", "batch": 8, "ms_per_step_median": 40.0},
        {"backend": "tensorrt", "model": "S/2", "batch": 8, "skipped": "no GPU"},
    ]
    throughput.add_ratios(records)
    assert [r["ratio_vs_torch"] for r in records] == [1.0, 2.5, None]


def test_bad_lists_and_unknown_backend():
    with pytest.raises(DiTError, match="--batch takes a comma list"):
        throughput.parse_ints("1,x", "--batch")
    assert "unknown backend" in backends.skip_reason("tensorflow")
    assert backends.skip_reason("torch") is None


def test_runs_and_lists_skipped_backends(tmp_path):
    out = tmp_path / "bench.json"
    command = [sys.executable, "benchmarks/throughput.py", "--model", "S/8", "--batch", "1",
               "--backends", "torch,tensorrt", "--steps", "2", "--repeats", "2", "--warmup", "1",
               "--gemm-size", "64", "--work-dir", str(tmp_path / "work"), "--json", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    print(done.stdout)
    assert done.returncode == 0, done.stderr
    records = json.loads(out.read_text())
    measured = [r for r in records if "skipped" not in r]
    assert [r["backend"] for r in measured] == ["torch"] and measured[0]["ms_per_step_median"] > 0
    for key in ("backend", "model", "image_size", "batch", "ms_per_step_median", "ms_per_step_p90",
                "images_per_s", "peak_mem_mb", "ratio_vs_torch", "device"):
        assert key in measured[0]
    assert "skipped tensorrt:" in done.stdout
    if measured[0]["device"] == "cpu":
        assert measured[0]["gflops"] > 0 and "GEMM peaks" in done.stdout and "gemm_peaks" in measured[0]


def test_on_a_gpu_machine_onnxruntime_settings_ask_for_cuda(monkeypatch):
    """gpu-check's onnxruntime-fp16 figure must come from CUDA or fail saying why, never quietly from the CPU."""
    import runtime.backends

    calls = []
    monkeypatch.setattr(backends, "device", lambda: torch.device("cuda"))
    monkeypatch.setattr(runtime.backends, "load_denoiser", lambda path, backend, **options: calls.append(options))
    backends.make_denoiser("onnxruntime-fp16", "S/2", 256, "g.onnx")
    backends.make_denoiser("tensorrt", "S/2", 256, "g.plan")
    assert calls == [{"device": "cuda"}, {}]


def test_achieved_gflops_counts_two_flops_per_mac_doubled_for_guidance():
    # 6 Gmacs a sample, batch 8, 100 ms: 2 FLOPs x 2 halves x 6e9 x 8 / 0.1 s = 1,920 GFLOP/s
    assert measure.flops_per_second(6.0, 8, 100.0) == pytest.approx(1920.0)
    # S/2 at 256 px: 6.06 Gflops (the paper's Table 1); one image in 40 ms
    assert measure.achieved_gflops("S/2", 256, 1, 40.0) == pytest.approx(4 * 6.0557 / 0.04, rel=1e-4)


def test_peak_fractions_name_their_peak():
    peaks = {"fp32": 400.0, "bf16": 800.0}
    records = [{"backend": name, "gflops": 200.0} for name in ("openvino", "openvino-bf16-compute", "openvino-int8")]
    records.append({"backend": "tensorrt", "skipped": "no GPU"})
    throughput.add_peak_fractions(records, peaks)
    assert [r["percent_of_fp32_peak"] for r in records] == [50.0, 50.0, 50.0, None]
    assert [r["percent_of_bf16_peak"] for r in records] == [None, 25.0, 25.0, None]  # fp32 settings: fp32 peak only
    throughput.add_peak_fractions(records, {"fp32": 400.0, "bf16": None})  # a CPU without bf16 units
    assert records[1]["percent_of_bf16_peak"] is None


def test_the_peak_is_the_higher_of_before_and_after():
    before = {"gemm_size": 64, "threads": 2, "repeats": 10, "fp32": 400.0, "bf16": 800.0}
    peaks = throughput.higher_peaks(before, {**before, "fp32": 430.0, "bf16": 780.0})
    assert (peaks["fp32"], peaks["bf16"], len(peaks["runs"])) == (430.0, 800.0, 2)
    assert throughput.higher_peaks({"skipped": "failed: x"}, before) == before
    no_bf16 = {**before, "bf16": None}
    assert throughput.higher_peaks(no_bf16, no_bf16)["bf16"] is None


def test_gemm_peak_on_a_tiny_matmul():
    pytest.importorskip("openvino")
    peak = measure.gemm_peak_gflops("f32", threads=1, size=64, repeats=3)
    print(f"64^3 MatMul, 1 thread: {peak:.1f} GFLOP/s")
    assert math.isfinite(peak) and peak > 0


def test_new_settings_say_why_they_cannot_run(monkeypatch):
    monkeypatch.setattr(backends, "cpu_has", lambda *flags: False)
    assert "no bfloat16 units" in backends.skip_reason("openvino-bf16-compute")
    assert backends.SETTINGS["openvino-bf16"].options == {}  # float32 inference of the BF16 graph: runs anywhere
    if importlib.util.find_spec("openvino") is not None:
        monkeypatch.setattr(backends, "device", lambda: torch.device("cuda"))
        assert "runs on the CPU" in backends.skip_reason("openvino")  # a GPU run: OpenVINO's figure would be the CPU's
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if OpenVINO were not installed
    for name in ("openvino", "openvino-fp16", "openvino-bf16", "openvino-bf16-compute", "openvino-int8"):
        assert "OpenVINO is not installed" in backends.skip_reason(name)
    monkeypatch.setattr(backends.importlib.util, "find_spec", lambda name: None)
    assert "ONNX Runtime is not installed" in backends.skip_reason("onnxruntime-int8")
    assert [backends.SETTINGS[name].precision for name in ("onnxruntime-int8", "openvino-int8")] == ["int8", "int8"]


def test_report_prints_the_cpu_columns_and_the_peaks(capsys):
    record = {"backend": "openvino-int8", "model": "S/2", "batch": 8, "image_size": 256, "steps": 20, "device": "cpu",
              "device_name": "AMD EPYC, 2 cores", "torch": "2.13.0", "ms_per_step_median": 400.0,
              "gflops": 242.2, "percent_of_fp32_peak": 56.3, "percent_of_bf16_peak": 28.2}
    peaks = {"gemm_size": 2048, "threads": 2, "repeats": 10, "fp32": 430.0, "bf16": 860.0}
    throughput.print_report([record, {"backend": "openvino", "model": "S/2", "batch": 8, "skipped": "x"}], peaks)
    out = capsys.readouterr().out
    print(out)
    assert "GEMM peaks (one 2048x2048 by 2048x2048 MatMul in OpenVINO/oneDNN, 2 threads" in out
    assert "fp32 430 GFLOP/s, bf16 860 GFLOP/s" in out
    header = next(line for line in out.splitlines() if "ms/step med" in line)
    assert header.endswith("GFLOP/s  % fp32 peak  % bf16 peak") and "TFLOP/s" not in header
    assert "242.2" in out and "56.3" in out and "28.2" in out
    throughput.print_report([record], {"skipped": "OpenVINO is not installed"})
    assert "GEMM peaks: not measured (OpenVINO is not installed)" in capsys.readouterr().out


def test_torch_gpu_settings_say_why_they_cannot_run(monkeypatch):
    for name in ("torch-cudagraphs-fp16", "torch-cudagraphs-bf16", "torch-cudagraphs-fp16-fora3"):
        assert backends.skip_reason(name) == "CUDA graphs (torch.compile mode reduce-overhead) need a CUDA GPU"
    assert backends.SETTINGS["torch-cudagraphs-fp16-fora3"].cache == "fora:3"
    monkeypatch.setattr(backends, "device", lambda: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert backends.skip_reason("torch-cudagraphs-bf16") == "this GPU does not support bfloat16 (needs Ampere or newer)"
    monkeypatch.setattr(backends.importlib.util, "find_spec", lambda name: None)
    for name in ("torch-compile", "torch-compile-fp16", "torch-cudagraphs-fp16"):
        assert backends.skip_reason(name) == "torch.compile needs triton on a GPU"
    assert backends.skip_reason("torch-fp16") is None  # eager float16 on a GPU


def test_a_measurement_past_its_time_is_recorded_and_the_others_go_on():
    record = throughput.run_worker({"backend": "torch", "model": "S/8", "image_size": 256, "batch": 1, "steps": 2,
                                    "repeats": 1, "warmup": 0, "artifact": None, "worker_seconds": 1.0})
    assert record == {"skipped": "stopped after 1 s (its time limit), compilation included"}
    assert throughput.worker_seconds({"worker_seconds": 90.0, "deadline": None}) == 90.0
    assert 29 < throughput.worker_seconds({"worker_seconds": 90.0, "deadline": time.monotonic() + 30}) <= 30
    assert throughput.worker_seconds({"worker_seconds": None, "deadline": None}) is None
    settings = {"model": "S/8", "image_size": 256, "worker_seconds": None, "deadline": time.monotonic() + 1}
    records = throughput.run_model(settings, ["torch", "tensorflow"], [1, 2], Path("/nonexistent"))
    assert [r["skipped"][:12] for r in records] == ["not measured"] * 2 + ["unknown back"] * 2


def test_a_full_run_with_cached_steps_times_the_run_not_the_denoiser(tiny_model):
    from runtime.backends.torch_backend import TorchDenoiser

    denoiser = TorchDenoiser(tiny_model("S/8", 256), "cpu")
    total, inside = measure.time_full_run(denoiser, 1, 6, "fora:2")
    plain_total, plain_inside = measure.time_full_run(denoiser, 1, 6)
    print(f"S/8, 6 DDPM steps: fora:2 {total:.3f} s, uncached {plain_total:.3f} s (denoiser {plain_inside:.3f} s)")
    assert total > 0 and inside is None and 0 < plain_inside <= plain_total
