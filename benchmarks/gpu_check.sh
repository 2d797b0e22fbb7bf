#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): one script for a single-GPU machine, ≤ 8 minutes,
# results in one file (<out>/gpu_check.md).
#
#   bash benchmarks/gpu_check.sh                 # on the GPU machine; OUT=<dir> to choose the output folder
#   bash benchmarks/gpu_check.sh --dry-run       # CPU, tiny sizes (what the test suite runs)
#
# On a machine without omegaconf / hydra-core, put their wheels in .whl/ (they are installed to a
# private folder first). Fashion-MNIST for the quality section: $HARL_FASHION_MNIST, else .fmnist/
# in the repository, else Debian's /usr/share/datasets/fashion-mnist.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
[ -x "$ROOT/.venv/bin/python" ] && [ -z "${PYTHON:-}" ] && PY="$ROOT/.venv/bin/python"
if ls .whl/*.whl >/dev/null 2>&1 && ! "$PY" -c "import omegaconf, hydra" 2>/dev/null; then
    site="${TMPDIR:-/tmp}/harl-gpu-check-site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
        || { echo "gpu_check: installing .whl/ failed" >&2; exit 1; }
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 WANDB_MODE=offline WANDB_SILENT=true
if [ -z "${HARL_FASHION_MNIST:-}" ] && [ -d "$ROOT/.fmnist" ]; then export HARL_FASHION_MNIST="$ROOT/.fmnist"; fi
exec "$PY" "$ROOT/benchmarks/gpu_check.py" --out "${OUT:-$ROOT/runs/gpu-check}" "$@"
