"""This machine's CPU: the physical cores a process may use, its instruction-set flags and its model name."""

import functools
import os
import re
from pathlib import Path


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads share a core's FP units)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text().strip(), (topology / "core_id").read_text().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))  # no topology (not Linux): count logical CPUs
    return max(1, len(cores))


def logical_cpus() -> int:
    """Logical CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The instruction-set flags /proc/cpuinfo lists (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    found = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
    return frozenset(found.group(1).split()) if found else frozenset()


def cpu_has(*flags: str) -> bool:
    """True if the CPU lists any of the flags (avx512_bf16, amx_bf16, avx512_vnni, ...)."""
    return any(flag in cpu_flags() for flag in flags)


def cpu_model() -> str:
    """The processor's model name, as /proc/cpuinfo gives it."""
    try:
        return re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text()).group(1).strip()
    except (OSError, AttributeError):
        return "CPU"


SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx512_fp16")


def cpu_summary() -> str:
    """"AMD EPYC, 2 cores, avx2 avx512f avx512_vnni avx512_bf16": what to record beside a CPU figure."""
    flags = " ".join(flag for flag in SPEED_FLAGS if flag in cpu_flags()) or "no AVX2"
    return f"{cpu_model()}, {physical_cores()} cores, {flags}"
