"""The benchmark's own logic; its figures are not asserted (speed targets live in the README)."""

import json
import subprocess
import sys
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
               "--work-dir", str(tmp_path / "work"), "--json", str(out)]
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


def test_on_a_gpu_machine_onnxruntime_settings_ask_for_cuda(monkeypatch):
    """gpu-check's onnxruntime-fp16 figure must come from CUDA or fail saying why, never quietly from the CPU."""
    import runtime.backends

    calls = []
    monkeypatch.setattr(backends, "device", lambda: torch.device("cuda"))
    monkeypatch.setattr(runtime.backends, "load_denoiser", lambda path, backend, **options: calls.append(options))
    backends.make_denoiser("onnxruntime-fp16", "S/2", 256, "g.onnx")
    backends.make_denoiser("tensorrt", "S/2", 256, "g.plan")
    assert calls == [{"device": "cuda"}, {}]
