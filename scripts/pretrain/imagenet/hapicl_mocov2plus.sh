#!/usr/bin/env bash
# Pretrain hapicl_mocov2plus (HAPiCL, MoCo v2+ instance loss) on ImageNet-1k. Extra arguments are Hydra overrides, e.g.
#   bash scripts/pretrain/imagenet/hapicl_mocov2plus.sh data.train_path=/data/train data.val_path=/data/val devices=[0,1,2,3]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/../../_harl.sh"
harl_cli harl-pretrain --config-path "$HERE" --config-name hapicl_mocov2plus.yaml "$@"
