#!/usr/bin/env bash
# One command for a Linux machine with an NVIDIA GPU and driver: prints the driver, GPU, CUDA and
# package versions; installs the stack matched to the driver (scripts/setup-env.sh with EXTRAS=dev,
# gpu-cu12 or gpu-cu13); runs the gpu/trt tests with DIT_REQUIRE_GPU=1 (a missing piece fails, it
# does not skip); exports XL/2 at 256 (random weights) as FP16 and builds its engine; compares that
# engine with ONNX Runtime through Polygraphy's Comparator; measures benchmarks/throughput.py for
# TensorRT, torch eager, torch.compile and CUDA graphs, and ONNX Runtime on CUDA; and writes
# gpu-check/gpu-report.md and gpu-check/gpu-report.json, ready to paste into an issue.
# The result is PASSED only when everything was checked; PARTIAL names what was not (exit 0, or 1 with
# --require-all); FAILED or STOPPED exit 1. Without an NVIDIA GPU and driver it stops at once with the reason.
#   FLAVOUR=gpu-cu12|gpu-cu13   instead of choosing from the driver (580+: gpu-cu13)
#   OUT=DIR                     instead of gpu-check/ (engines and graphs go to DIR/work, ~3 GB)
#   BATCHES=1,8                 throughput batch sizes
#   --no-install                no set-up, no network: the Python in PYTHON (default python3) with the checkout
#                               on PYTHONPATH; stages whose packages it lacks are skipped with the reason, tests
#                               needing what it lacks skip with theirs (the run is then PARTIAL); every stage is
#                               bounded, the torch CUDA paths within 8 minutes (LIMIT_SCALE=2 doubles the bounds)
#   --require-all               exit 1 unless everything was checked (TensorRT, ONNX Runtime's CUDA provider, ...)
# Needs python3 (3.10+) and, without --no-install, NVIDIA's package index for TensorRT (see scripts/setup-env.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v python3 >/dev/null || { echo "gpu-check: python3 (3.10 or newer) is needed" >&2; exit 1; }
exec "${PYTHON:-python3}" scripts/gpu_check.py "$@"
