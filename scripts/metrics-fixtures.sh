#!/usr/bin/env bash
# Regenerates the torch-fidelity fixtures in tests/fixtures/metrics/ (images, synthetic
# Inception BatchNorm statistics, torch-fidelity 0.4.0's features, logits, FID/IS/KID and the
# TF1 resize) with tests/py/fidelity_fixtures.py.
#
# It needs PyTorch: PyPI's torch wheel imports only with its nvidia-* dependencies installed,
# so the environment takes about 6 GB of disk and about 10 minutes to create (then the script
# itself runs in about 2 minutes on the CPU). CI does NOT run this: the tests compare against the
# committed fixtures. Rerun it only when the fixture script changes, then commit the results.
#
# Usage: scripts/metrics-fixtures.sh [VENV]   (default VENV: /work/torch-venv, or $TORCH_VENV)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-${TORCH_VENV:-/work/torch-venv}}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import torch, torch_fidelity, PIL, numpy, scipy" 2>/dev/null; then
  "$venv/bin/pip" install torch "torch-fidelity==0.4.0" lpips numpy pillow scipy
fi
"$venv/bin/python" tests/py/fidelity_fixtures.py tests/fixtures/metrics
