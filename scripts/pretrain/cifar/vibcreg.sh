#!/usr/bin/env bash
# Pretrain vibcreg on CIFAR-10 with the recipe next to this script (its header says where each value comes from). Extra arguments are Hydra overrides, e.g.
#   bash scripts/pretrain/cifar/vibcreg.sh data.dataset=cifar100 max_epochs=400 devices=[0,1]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/../../_harl.sh"
harl_cli harl-pretrain --config-path "$HERE" --config-name vibcreg.yaml "$@"
