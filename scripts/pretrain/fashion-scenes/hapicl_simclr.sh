#!/usr/bin/env bash
# Pretrain hapicl_simclr (HAPiCL, SimCLR instance loss) on fashion-scenes. Extra arguments are Hydra overrides, e.g.
#   bash scripts/pretrain/fashion-scenes/hapicl_simclr.sh max_epochs=5 accelerator=cpu
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/../../_harl.sh"
harl_cli harl-pretrain --config-path "$HERE" --config-name hapicl_simclr.yaml "$@"
