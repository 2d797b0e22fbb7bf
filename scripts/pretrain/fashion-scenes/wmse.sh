#!/usr/bin/env bash
# Pretrain wmse on the demo set fashion-scenes (CPU-sized). Extra arguments are Hydra overrides, e.g.
#   bash scripts/pretrain/fashion-scenes/wmse.sh data.train_path=datasets/fashion-scenes max_epochs=5
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/../../_harl.sh"
harl_cli harl-pretrain --config-path "$HERE" --config-name wmse.yaml "$@"
