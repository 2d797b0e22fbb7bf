#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install harl into it.
#
#   bash scripts/install.sh            # .venv with torch 2.14.1 / torchvision 0.29.1 + harl[test]
#   VENV=/path/to/venv bash scripts/install.sh
#
# Re-running is cheap: it reinstalls only when setup.py changed since the last install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)

if [ ! -x "$VENV/bin/python" ]; then
    echo "[install] creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
stamp="$VENV/.harl-install-stamp"
want="$(sha256sum "$ROOT/setup.py" | cut -d' ' -f1) ${TORCH_PINS[*]}"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VENV/bin/python" -c "import harl, torch, torchvision" 2>/dev/null; then
    echo "[install] $VENV is up to date"
    exit 0
fi
echo "[install] installing ${TORCH_PINS[*]} (this can take a few minutes the first time)"
"${PIP[@]}" install "${TORCH_PINS[@]}" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
"$VENV/bin/python" -c "import torch, torchvision" || { echo "[install] torch failed to install" >&2; exit 1; }
echo "[install] installing harl and its dependencies"
"${PIP[@]}" install -e "$ROOT[test]" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
"$VENV/bin/python" -c "import harl, lightning, timm, omegaconf, hydra, skimage, safetensors" \
    || { echo "[install] harl failed to install" >&2; exit 1; }
echo "$want" > "$stamp"
echo "[install] done: $("$VENV/bin/python" -c 'import torch, harl; print("torch", torch.__version__, "harl", harl.__version__)')"
