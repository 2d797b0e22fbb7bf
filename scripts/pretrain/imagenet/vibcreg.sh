#!/usr/bin/env bash
# Pretrain vibcreg on ImageNet with the recipe next to this script (its header says where each value comes from). Extra arguments are Hydra overrides, e.g.
#   bash scripts/pretrain/imagenet/vibcreg.sh data.train_path=/data/train data.val_path=/data/val devices=[0,1,2,3,4,5,6,7]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/../../_harl.sh"
harl_cli harl-pretrain --config-path "$HERE" --config-name vibcreg.yaml "$@"
