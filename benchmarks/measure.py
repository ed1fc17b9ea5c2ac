"""One throughput measurement, run in its own process by throughput.py: python -m benchmarks.measure SPEC.

SPEC is JSON with backend, model, image_size, batch, steps, repeats, warmup, threads and artifact (the
graph or engine, or null for PyTorch); or {"gemm_peaks": SIZE, "threads": N}: this CPU's large-GEMM
peaks. Prints one JSON record on its last line.
"""

import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import backends
from dit_ref import configs
from dit_ref.machine.cpu import cpu_has, cpu_summary, physical_cores
from runtime.denoiser import WrappedDenoiser

# Dense FP16 tensor-core peaks in TFLOP/s (without sparsity), from NVIDIA's datasheets:
# A100 (SXM4 and PCIe) 312; L4 121 (242 with sparsity); H100 SXM5 989, H100 PCIe 756,
# H100 NVL 835; H200 989. Checked in order: the first pattern found in the device name wins.
FP16_PEAK_TFLOPS = [
    (r"H200", 989.0), (r"H100.*PCIe", 756.0), (r"H100.*NVL", 835.0), (r"H100", 989.0),
    (r"A100", 312.0), (r"\bL4\b", 121.0),
]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(denoiser, inputs, repeats: int, warmup: int) -> list[float]:
    """Milliseconds of each of `repeats` denoiser calls, after `warmup` untimed ones."""
    for _ in range(warmup):
        denoiser(*inputs)
    synchronize(denoiser.device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        denoiser(*inputs)
        synchronize(denoiser.device)
        times.append(1000 * (time.perf_counter() - start))
    return times


def call_ms(function, repeats: int) -> list[float]:
    """Milliseconds of each of `repeats` calls of function (host time; synchronise inside it on a GPU)."""
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append(1e3 * (time.perf_counter() - start))
    return samples


def median_ms(function, repeats: int) -> float:
    """Median milliseconds of one call of function (host time; synchronise inside it on a GPU)."""
    return statistics.median(call_ms(function, repeats))


class TimedDenoiser(WrappedDenoiser):
    """Adds up the (synchronised) wall time spent inside the wrapped denoiser's calls; its facts are the inner's."""

    def __init__(self, inner):
        super().__init__(inner)
        self.seconds = 0.0

    def reset(self) -> None:
        self.seconds = 0.0

    def __call__(self, *inputs):
        start = time.perf_counter()
        outputs = self.inner(*inputs)
        synchronize(self.inner.device)
        self.seconds += time.perf_counter() - start
        return outputs


def time_sampling_run(denoiser, sampler, batch: int, callback=None, cache: str | None = None) -> float:
    """Seconds for one seeded generate() run of `batch` random labels, as dit-run draws them (no decoder), with
    cached steps when `cache` names a policy."""
    from runtime.generate import generate

    synchronize(denoiser.device)
    start = time.perf_counter()
    for _ in generate(denoiser, [None] * batch, sampler, seed=0, cfg_scale=4.0, batch_size=batch, on_step=callback,
                      cache=cache):
        pass
    synchronize(denoiser.device)
    return time.perf_counter() - start


def time_full_run(denoiser, batch: int, steps: int, cache: str | None = None) -> tuple[float, float | None]:
    """(whole run, inside the denoiser) in seconds for one DDPM run of `steps` steps; with cached steps the time
    inside is None (the refresh and reuse forms run outside the timed call)."""
    from runtime.sampling import sampler_from_name

    timed = TimedDenoiser(denoiser)
    total = time_sampling_run(timed, sampler_from_name("ddpm", steps), batch, cache=cache)
    return total, None if cache else timed.seconds


def peak_memory_mb(device: torch.device) -> float:
    """Peak resident memory of this process (VmHWM) on CPU; on a GPU the peak CUDA memory in use.

    Not getrusage's ru_maxrss: Linux carries that over from the forking parent, which here is the
    benchmark driver that exported the graphs.
    """
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return max(torch.cuda.max_memory_allocated(device), total - free) / 2**20
    status = open("/proc/self/status").read()
    return int(re.search(r"VmHWM:\s*(\d+) kB", status).group(1)) / 1024


def gpu_peak_tflops(name: str) -> float | None:
    return next((peak for pattern, peak in FP16_PEAK_TFLOPS if re.search(pattern, name)), None)


def flops_per_second(gmacs: float, batch: int, ms: float) -> float:
    """GFLOP/s of one guided call taking `ms`: 2 FLOPs per multiply-accumulate of `gmacs` (per sample),
    x2 for the guidance doubling (the graph runs the conditional and unconditional halves), x batch."""
    return 2 * 2 * gmacs * batch / (ms / 1000)


def achieved_gflops(model: str, image_size: int, batch: int, ms: float) -> float:
    """GFLOP/s of a guided step of `ms` over `batch` images, counted from the paper's Gflops (configs.gflops)."""
    return flops_per_second(configs.gflops(configs.get_config(model), image_size), batch, ms)


def matmul_graph(rows: int, weights):
    """An ONNX graph of one MatMul, a (rows, k) input by the constant (k, m) weights, as a linear layer is."""
    from onnx import TensorProto, helper, numpy_helper

    inner, columns = weights.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [rows, inner])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [rows, columns])],
        initializer=[numpy_helper.from_array(weights, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def gemm_peak_gflops(hint: str, threads: int, size: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of the fastest of `repeats` (size, size) @ (size, size) MatMuls (after 2 untimed), compiled by
    OpenVINO (oneDNN's kernels) with the OpenVINO backend's settings and `threads` threads, precision hint
    "f32" or "bf16". The fastest, not the median: a ceiling, which another process's load can only lower."""
    import numpy
    import onnx

    from dit_ref.machine.openvino_stack import import_openvino
    from dit_ref.runners import open_runner

    random = numpy.random.default_rng(0)
    a, b = (random.standard_normal((size, size), dtype=numpy.float32) for _ in range(2))
    with tempfile.TemporaryDirectory(prefix="dit-gemm-") as scratch:
        path = Path(scratch) / "matmul.onnx"
        onnx.save(matmul_graph(size, b), path)
        with open_runner(path, "openvino", threads=threads, precision_hint=hint) as runner:
            request = runner.request  # its infer request, driven directly: no output copy, the kernel alone
            request.set_input_tensor(import_openvino().Tensor(a))

            def run():
                request.start_async()
                request.wait()

            call_ms(run, 2)
            fastest = min(call_ms(run, repeats))
    return 2 * size**3 / (fastest / 1000) / 1e9


def gemm_peaks(size: int, threads: int, repeats: int = 10) -> dict:
    """This CPU's large-GEMM peaks in GFLOP/s: fp32, and bf16 where the CPU has bfloat16 units."""
    peaks = {"gemm_size": size, "threads": threads, "repeats": repeats, "bf16": None,
             "fp32": gemm_peak_gflops("f32", threads, size, repeats)}
    if cpu_has("avx512_bf16", "amx_bf16"):
        peaks["bf16"] = gemm_peak_gflops("bf16", threads, size, repeats)
    else:
        peaks["bf16_skipped"] = "this CPU has no bfloat16 units (avx512_bf16 / amx_bf16)"
    return peaks


def measure(spec: dict) -> dict:
    device = backends.device()
    threads = (spec.get("threads") or physical_cores()) if device.type == "cpu" else None
    denoiser = backends.make_denoiser(spec["backend"], spec["model"], spec["image_size"], spec["artifact"], threads)
    batch = spec["batch"]
    inputs = (
        torch.randn(batch, *denoiser.latent_shape, device=device),
        torch.full((batch,), 500, dtype=torch.int64, device=device),
        torch.arange(batch, dtype=torch.int64, device=device),
        torch.full((batch,), 4.0, device=device),  # every row guided: the transformer runs 2 x batch rows
    )
    times = time_calls(denoiser, inputs, spec["repeats"], spec["warmup"])
    cache = backends.SETTINGS[spec["backend"]].cache
    full_run, in_denoiser = time_full_run(denoiser, batch, spec["steps"], cache)
    median = statistics.median(times)
    overhead = None if cache else 1000 * (full_run - in_denoiser) / spec["steps"]  # the sampling loop's host work
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu_summary()}, {threads} threads"
    record = {
        "device": device.type, "device_name": name, "torch": torch.__version__, "steps": spec["steps"],
        "denoiser": denoiser.name, "ms_per_step_median": median,
        "ms_per_step_p90": statistics.quantiles(times, n=10)[-1] if len(times) > 1 else median,
        "images_per_s": batch / full_run, "overhead_ms_per_step": overhead,
        "overhead_percent": None if cache else 100 * overhead / (1000 * full_run / spec["steps"]),
        "cache": cache, "peak_mem_mb": peak_memory_mb(device),
        "threads": threads, "tflops": None, "percent_of_peak": None, "gflops": None,
    }
    achieved = achieved_gflops(spec["model"], spec["image_size"], batch, median)
    if device.type == "cuda":
        record["tflops"] = achieved / 1000
        peak = gpu_peak_tflops(name)
        record["percent_of_peak"] = 100 * record["tflops"] / peak if peak else None
    else:
        record["gflops"] = achieved  # throughput.py holds it against the GEMM peaks of the same run
    return record


if __name__ == "__main__":
    request = json.loads(sys.argv[1])
    if "gemm_peaks" in request:
        print(json.dumps(gemm_peaks(request["gemm_peaks"], request["threads"])))
    else:
        print(json.dumps(measure(request)))
