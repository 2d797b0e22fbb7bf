#!/usr/bin/env bash
# Pretrain hapicl_byol (HAPiCL, BYOL instance loss) on ImageNet-100. Extra arguments are Hydra overrides, e.g.
#   bash scripts/pretrain/imagenet-100/hapicl_byol.sh data.train_path=/data/in100/train data.masks.root=/data/in100-masks/train
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/../../_harl.sh"
harl_cli harl-pretrain --config-path "$HERE" --config-name hapicl_byol.yaml "$@"
