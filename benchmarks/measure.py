"""One throughput measurement, run in its own process by throughput.py: python -m benchmarks.measure SPEC.

SPEC is JSON with backend, model, image_size, batch, steps, repeats, warmup and artifact (the graph
or engine, or null for PyTorch). Prints one JSON record on its last line.
"""

import json
import re
import statistics
import sys
import time

import torch

from benchmarks import backends
from dit_ref import configs
from dit_ref.machine.cpu import cpu_summary

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


def median_ms(function, repeats: int) -> float:
    """Median milliseconds of one call of function (host time; synchronise inside it on a GPU)."""
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return 1e3 * statistics.median(samples)


class TimedDenoiser:
    """Adds up the (synchronised) wall time spent inside the wrapped denoiser's calls; otherwise it is
    the wrapped denoiser (every other attribute is the inner one's)."""

    def __init__(self, inner):
        self.inner, self.seconds = inner, 0.0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, *inputs):
        start = time.perf_counter()
        outputs = self.inner(*inputs)
        synchronize(self.inner.device)
        self.seconds += time.perf_counter() - start
        return outputs


def time_sampling_run(denoiser, sampler, batch: int, callback=None) -> float:
    """Seconds for one seeded generate() run of `batch` random labels, as dit-run draws them (no decoder)."""
    from runtime.generate import generate

    synchronize(denoiser.device)
    start = time.perf_counter()
    for _ in generate(denoiser, [None] * batch, sampler, seed=0, cfg_scale=4.0, batch_size=batch, on_step=callback):
        pass
    synchronize(denoiser.device)
    return time.perf_counter() - start


def time_full_run(denoiser, batch: int, steps: int) -> tuple[float, float]:
    """(whole run, inside the denoiser) in seconds for one DDPM run of `steps` steps."""
    from runtime.sampling import sampler_from_name

    timed = TimedDenoiser(denoiser)
    total = time_sampling_run(timed, sampler_from_name("ddpm", steps), batch)
    return total, timed.seconds


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


def measure(spec: dict) -> dict:
    device = backends.device()
    denoiser = backends.make_denoiser(spec["backend"], spec["model"], spec["image_size"], spec["artifact"])
    batch = spec["batch"]
    inputs = (
        torch.randn(batch, *denoiser.latent_shape, device=device),
        torch.full((batch,), 500, dtype=torch.int64, device=device),
        torch.arange(batch, dtype=torch.int64, device=device),
        torch.full((batch,), 4.0, device=device),
    )
    times = time_calls(denoiser, inputs, spec["repeats"], spec["warmup"])
    full_run, in_denoiser = time_full_run(denoiser, batch, spec["steps"])
    median = statistics.median(times)
    overhead = 1000 * (full_run - in_denoiser) / spec["steps"]  # the sampling loop's own host work
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu_summary()}, {torch.get_num_threads()} threads"
    record = {
        "device": device.type, "device_name": name, "torch": torch.__version__, "steps": spec["steps"],
        "denoiser": denoiser.name, "ms_per_step_median": median,
        "ms_per_step_p90": statistics.quantiles(times, n=10)[-1] if len(times) > 1 else median,
        "images_per_s": batch / full_run, "overhead_ms_per_step": overhead,
        "overhead_percent": 100 * overhead / (1000 * full_run / spec["steps"]), "peak_mem_mb": peak_memory_mb(device),
        "tflops": None, "percent_of_peak": None,
    }
    if device.type == "cuda":
        flops = 2 * 2 * configs.gflops(configs.get_config(spec["model"]), spec["image_size"]) * 1e9 * batch
        record["tflops"] = flops / (median / 1000) / 1e12
        peak = gpu_peak_tflops(name)
        record["percent_of_peak"] = 100 * record["tflops"] / peak if peak else None
    return record


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(sys.argv[1]))))
