#!/usr/bin/env bash
# The test command of README.md: sets up .venv, then runs the whole suite.
# Tests that need a GPU or TensorRT skip here with the reason shown; extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
exec .venv/bin/python -m pytest "$@"
