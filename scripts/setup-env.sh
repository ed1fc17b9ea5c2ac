#!/usr/bin/env bash
# Creates .venv (once) and installs the toolchain into it with the test tools.
# torch is pinned to the CPU wheel that CPU machines here have on disk; an unpinned torch would pull
# a multi-GB CUDA build. On a GPU machine set TORCH_SPEC (e.g. TORCH_SPEC=torch) and EXTRAS=dev,gpu.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS=${EXTRAS:-dev}
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
# (Hides only pip's warnings about this machine's local package mirrors; errors still show.)
quiet_pip() {
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@" \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
quiet_pip "$TORCH_SPEC"
quiet_pip -e ".[$EXTRAS]"
