#!/usr/bin/env bash
# Set up a virtual environment (once) and run the test suite.
#   bash tests/run.sh            # everything that can run here
#   bash tests/run.sh -k fal     # extra arguments go to pytest
# Integration and browser tests run when COMFYUI_PATH points at a ComfyUI checkout.
# Browser tests also run on a second frontend, classic and Nodes 2.0, when SAMKIT_FRONTEND_ROOT names
# its static folder (pip install --target DIR comfyui-frontend-package==X: DIR/comfyui_frontend_package/static).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SAMKIT_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
. "$VENV/bin/activate"
python -m pip install --quiet --upgrade pip
python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
python -m pip install --quiet setuptools wheel
# sam2 (the SAM 2 reference) builds from source: against the torch above, without its CUDA extension
SAM2_BUILD_CUDA=0 python -m pip install --quiet --no-build-isolation -r tests/requirements.txt
# fal's official JS client for tests/test_fal_official_clients.py (skipped there without Node)
if command -v npm >/dev/null 2>&1 && command -v node >/dev/null 2>&1; then
    (cd tests/js/falclient && npm ci --no-audit --no-fund --silent)
fi
set +e
python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests" >&2
fi
exit "$status"
