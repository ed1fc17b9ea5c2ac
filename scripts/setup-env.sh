#!/usr/bin/env bash
# Creates .venv (once) and installs the toolchain into it with the extras in EXTRAS (default: dev).
#
# CPU, the default: torch pinned to the CPU wheel that CPU machines here have on disk (an unpinned
# torch would pull a multi-GB CUDA build), and the `cpu` extra (the CPU onnxruntime) added.
#
# GPU: name the CUDA flavour in EXTRAS; `nvidia-smi` shows the driver:
#   EXTRAS=dev,gpu-cu12   CUDA 12 builds of torch, TensorRT, onnxruntime-gpu; NVIDIA driver 525.60.13+
#   EXTRAS=dev,gpu-cu13   CUDA 13 builds; NVIDIA driver 580+
# For a flavour it: installs torch built for that CUDA (TORCH_SPEC, default PyPI's range for it;
# TORCH_INDEX_URL for PyTorch's own index), replacing a torch of another build; removes the CPU
# onnxruntime and TensorRT packages of the other CUDA (each shares its folder with the GPU one);
# passes NVIDIA's package index (NVIDIA_INDEX_URL, default https://pypi.nvidia.com), where
# TensorRT's libraries are (their PyPI packages are placeholders that fetch from it; set it to a
# mirror of it, or to "" when pip is already configured with one); and then stops with the reason
# unless torch sees the GPU, TensorRT imports and ONNX Runtime runs a session on CUDA.
# DRY_RUN=1 prints the commands that change anything instead of running them.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-dev}
NVIDIA_INDEX_URL=${NVIDIA_INDEX_URL-https://pypi.nvidia.com}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-}
PYTHON="$VENV/bin/python"

fail() { echo "setup-env: $*" >&2; exit 1; }
run() { if [ -n "${DRY_RUN:-}" ]; then echo "+ $*"; else "$@"; fi; }
# (Hides only pip's warnings about this machine's local package mirrors; errors still show.)
quiet_pip() {
    if [ -n "${DRY_RUN:-}" ]; then echo "+ pip install $*"; return; fi
    "$PYTHON" -m pip install -q --disable-pip-version-check "$@" \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
installed() { [ -x "$PYTHON" ] && "$PYTHON" -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$1" 2>/dev/null; }
# CUDA major of the installed torch: 12, 13, ..., "cpu" for a CPU build, "none" without torch.
torch_cuda() {
    [ -x "$PYTHON" ] && "$PYTHON" -c "import torch; print((torch.version.cuda or 'cpu').split('.')[0])" 2>/dev/null \
        || echo none
}

flavour="" cpu=""
IFS=, read -ra names <<< "$EXTRAS"
for name in "${names[@]}"; do
    case "$name" in
        gpu-cu12|gpu-cu13)
            [ -z "$flavour" ] || fail "EXTRAS=$EXTRAS names two CUDA flavours; choose $flavour or $name"
            flavour=$name ;;
        gpu) fail "EXTRAS=$EXTRAS: name the CUDA flavour instead of gpu: gpu-cu12 (NVIDIA driver 525.60.13 or newer) or gpu-cu13 (driver 580 or newer); nvidia-smi shows the driver" ;;
        cpu) cpu=1 ;;
    esac
done
case "$flavour" in
    gpu-cu12) cuda_major=12 default_torch="torch>=2.5,<2.11" ;;  # PyPI's torch up to 2.10 is built for CUDA 12
    gpu-cu13) cuda_major=13 default_torch="torch>=2.11" ;;       # PyPI's torch from 2.11 on is built for CUDA 13
    *) cuda_major="" default_torch="torch==2.13.0" ;;
esac
if [ -n "$flavour" ] && [ -n "$cpu" ]; then
    fail "EXTRAS=$EXTRAS: cpu (onnxruntime) and $flavour (onnxruntime-gpu) install the same onnxruntime/ folder; drop cpu"
fi
[ -n "$flavour" ] || [ -n "$cpu" ] || EXTRAS="cpu,$EXTRAS"  # ONNX Runtime for CPU machines
TORCH_SPEC=${TORCH_SPEC:-$default_torch}

[ -x "$PYTHON" ] || run python3 -m venv "$VENV"

torch_args=()
[ -z "$TORCH_INDEX_URL" ] || torch_args=(--index-url "$TORCH_INDEX_URL")
if [ -n "$flavour" ]; then
    found=$(torch_cuda)
    if [ "$found" != none ] && [ "$found" != "$cuda_major" ]; then
        echo "setup-env: replacing torch (built for ${found/cpu/CPU}) with a CUDA $cuda_major build ($TORCH_SPEC)"
        run "$PYTHON" -m pip uninstall -y -q torch
    fi
fi
quiet_pip ${torch_args[@]+"${torch_args[@]}"} "$TORCH_SPEC"
if [ -n "$flavour" ] && [ -z "${DRY_RUN:-}" ] && [ "$(torch_cuda)" != "$cuda_major" ]; then
    fail "TORCH_SPEC=$TORCH_SPEC installed a torch built for $(torch_cuda), not CUDA $cuda_major ($flavour); set TORCH_SPEC and TORCH_INDEX_URL to a CUDA $cuda_major build"
fi

# Packages that share a folder with the ones this install brings: removing one of a pair deletes
# files of the other, so both go and the extras install below brings back the right one.
clash=()
if [ -n "$flavour" ]; then
    installed onnxruntime && clash+=(onnxruntime onnxruntime-gpu)
    other=$([ "$cuda_major" = 12 ] && echo cu13 || echo cu12)
    if installed "tensorrt-$other" || installed "tensorrt-$other-bindings" || installed tensorrt; then
        clash+=(tensorrt tensorrt-cu12 tensorrt-cu12-bindings tensorrt-cu12-libs
                tensorrt-cu13 tensorrt-cu13-bindings tensorrt-cu13-libs)
    fi
else
    installed onnxruntime-gpu && clash+=(onnxruntime onnxruntime-gpu)
fi
if [ ${#clash[@]} -gt 0 ]; then
    echo "setup-env: removing ${clash[*]} (they share folders with what $EXTRAS installs)"
    run "$PYTHON" -m pip uninstall -y -q "${clash[@]}"
fi

index_args=()
[ -z "$flavour" ] || [ -z "$NVIDIA_INDEX_URL" ] || index_args=(--extra-index-url "$NVIDIA_INDEX_URL")
quiet_pip -e ".[$EXTRAS]" ${index_args[@]+"${index_args[@]}"} || fail "installing .[$EXTRAS] failed (above)${flavour:+; TensorRT's libraries come from NVIDIA's package index (NVIDIA_INDEX_URL=$NVIDIA_INDEX_URL): this machine must reach it, or NVIDIA_INDEX_URL must name a mirror of it}"

if [ -n "$flavour" ]; then
    run "$PYTHON" -m dit_ref.machine.gpu_stack check "$flavour" \
        || fail "the $flavour stack does not work here (reasons above); nvidia-smi shows the driver and GPU"
fi
