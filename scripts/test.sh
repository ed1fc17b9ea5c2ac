#!/usr/bin/env bash
# The test command of README.md: sets up .venv, then runs the whole suite.
# Tests that need a GPU or TensorRT skip here with the reason shown; extra args go to pytest.
# Debian packages some tests need are installed when missing and this user can (root with apt-get):
# dataset-fashion-mnist for the classifier tests, chromium and chromium-driver for dit-serve's page
# test; without them those tests skip, saying so.
set -euo pipefail
cd "$(dirname "$0")/.."
DATASET=/usr/share/datasets/fashion-mnist
packages=()
[ -d "$DATASET" ] || packages+=(dataset-fashion-mnist)
command -v chromium >/dev/null && command -v chromedriver >/dev/null || packages+=(chromium chromium-driver)
if [ ${#packages[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test.sh: installing ${packages[*]} (apt-get)"
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${packages[@]}"; } >/dev/null \
        || echo "test.sh: could not install ${packages[*]}; the tests that need them will skip" >&2
fi
bash scripts/setup-env.sh
exec .venv/bin/python -m pytest "$@"
