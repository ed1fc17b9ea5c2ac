#!/usr/bin/env bash
# The test command of README.md: sets up .venv, then runs the whole suite.
# Tests that need a GPU or TensorRT skip here with the reason shown; extra args go to pytest.
# Fashion-MNIST (Debian's dataset-fashion-mnist) is installed when missing and this user can
# (root with apt-get); without it the classifier tests that read the test images skip, saying so.
set -euo pipefail
cd "$(dirname "$0")/.."
DATASET=/usr/share/datasets/fashion-mnist
if [ ! -d "$DATASET" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test.sh: installing Fashion-MNIST (apt-get install dataset-fashion-mnist)"
    { apt-get update -q && apt-get install -y -q dataset-fashion-mnist; } >/dev/null \
        || echo "test.sh: could not install dataset-fashion-mnist; the tests that need it will skip" >&2
fi
bash scripts/setup-env.sh
exec .venv/bin/python -m pytest "$@"
