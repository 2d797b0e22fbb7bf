#!/usr/bin/env bash
# Pretrain hapicl_byol (HAPiCL, BYOL instance loss) on CIFAR-10. Extra arguments are Hydra overrides, e.g.
#   bash scripts/pretrain/cifar/hapicl_byol.sh data.dataset=cifar100 data.masks.root=./datasets/masks/cifar100 devices=[0,1]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/../../_harl.sh"
harl_cli harl-pretrain --config-path "$HERE" --config-name hapicl_byol.yaml "$@"
