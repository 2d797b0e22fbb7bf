#!/usr/bin/env bash
# Pretrain sgm_mocov2 (saliency-guided masking) on cifar. Extra arguments are Hydra overrides, e.g.
#   bash scripts/pretrain/cifar/sgm_mocov2.sh data.dataset=cifar100 max_epochs=400
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/../../_harl.sh"
harl_cli harl-pretrain --config-path "$HERE" --config-name sgm_mocov2.yaml "$@"
