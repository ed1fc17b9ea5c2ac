#!/usr/bin/env bash
# One command for a Linux machine with an NVIDIA GPU and driver: prints the driver, GPU, CUDA and
# package versions; installs the stack matched to the driver (scripts/setup-env.sh with EXTRAS=dev,
# gpu-cu12 or gpu-cu13); runs the gpu/trt tests with DIT_REQUIRE_GPU=1 (a missing piece fails, it
# does not skip); exports XL/2 at 256 (random weights) as FP16 and builds its engine; measures
# benchmarks/throughput.py for tensorrt, torch-fp16, torch-compile and onnxruntime-fp16; and writes
# gpu-check/gpu-report.md and gpu-check/gpu-report.json, ready to paste into an issue.
# Without an NVIDIA GPU and driver it stops at once with the reason, and the report says so.
#   FLAVOUR=gpu-cu12|gpu-cu13   instead of choosing from the driver (580+: gpu-cu13)
#   OUT=DIR                     instead of gpu-check/ (engines and graphs go to DIR/work, ~3 GB)
#   BATCHES=1,8                 throughput batch sizes
#   --no-install                no set-up, no network: the Python in PYTHON (default python3) with the checkout
#                               on PYTHONPATH; stages whose packages it lacks (TensorRT, onnxruntime-gpu, ...)
#                               are skipped with the reason; the torch CUDA paths still run (< 8 minutes)
# Needs python3 (3.10+) and, without --no-install, NVIDIA's package index for TensorRT (see scripts/setup-env.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v python3 >/dev/null || { echo "gpu-check: python3 (3.10 or newer) is needed" >&2; exit 1; }
exec "${PYTHON:-python3}" scripts/gpu_check.py "$@"
