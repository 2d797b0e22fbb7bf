#!/usr/bin/env bash
# Run the test suite: creates or reuses .venv (scripts/install.sh), then pytest.
#
#   bash scripts/test.sh                 # the whole suite (what CI runs)
#   bash scripts/test.sh tests/test_config.py -k unknown    # extra arguments go to pytest
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/install.sh
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[test] installing Debian's dataset-fashion-mnist (used by the Fashion-MNIST tests)"
    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
        || echo "[test] could not install dataset-fashion-mnist; tests that read it will say so" >&2
fi
export WANDB_MODE=offline WANDB_SILENT=true PYTHONHASHSEED=0
exec "${VENV:-$ROOT/.venv}/bin/python" -m pytest -q "$@"
