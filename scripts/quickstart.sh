#!/usr/bin/env bash
# The whole flow on a laptop CPU: creates .venv if missing and installs harl, builds the demo set
# fashion-scenes, pretrains (HARL by default), evaluates against random init, prints a results table
# and writes a report with plots. About 15 minutes on 2 CPU cores (less when .venv exists).
#
#   bash scripts/quickstart.sh                    # defaults
#   bash scripts/quickstart.sh --method byol --epochs 4 --out my_run
#   bash scripts/quickstart.sh --help             # every knob
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
for arg in "$@"; do
    if [ "$arg" = "-h" ] || [ "$arg" = "--help" ]; then
        if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import harl" 2>/dev/null; then
            exec "$VENV/bin/python" -m harl.quickstart --help
        fi
        cat <<'USAGE'
usage: bash scripts/quickstart.sh [--out DIR] [--method NAME] [--epochs N] [--train N] [--test N]
                                  [--size PX] [--width W] [--batch B] [--workers N] [--seed S]
                                  [--data-seed S] [--fashion-mnist DIR] [--no-baseline]
                                  [--override KEY=VALUE] [--quiet]

Creates .venv and installs harl (first run only), builds the demo set fashion-scenes, pretrains a
method (default harl), evaluates the frozen backbone (linear probe, kNN) against random init, prints a
table and writes a report with plots into --out (default quickstart_out). Run it once to install; then
--help lists every default.
USAGE
        exit 0
    fi
done
start=$(date +%s)
bash "$ROOT/scripts/install.sh"
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ -z "${HARL_FASHION_MNIST:-}" ] \
        && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[quickstart] installing Debian's dataset-fashion-mnist"
    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
        || echo "[quickstart] apt-get failed; will try torchvision's download instead" >&2
fi
export WANDB_MODE="${WANDB_MODE:-offline}"
"$VENV/bin/python" -m harl.quickstart "$@"
echo "[quickstart] total $(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s"
