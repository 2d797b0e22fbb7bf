#!/usr/bin/env bash
# Pretrain sgm_simclr (saliency-guided masking) on fashion-scenes. Extra arguments are Hydra overrides, e.g.
#   bash scripts/pretrain/fashion-scenes/sgm_simclr.sh max_epochs=5 accelerator=cpu
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/../../_harl.sh"
harl_cli harl-pretrain --config-path "$HERE" --config-name sgm_simclr.yaml "$@"
