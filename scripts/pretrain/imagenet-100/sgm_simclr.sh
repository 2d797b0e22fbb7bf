#!/usr/bin/env bash
# Pretrain sgm_simclr (saliency-guided masking) on imagenet-100. Extra arguments are Hydra overrides, e.g.
#   bash scripts/pretrain/imagenet-100/sgm_simclr.sh method_kwargs.sgm_saliency_weights=/weights/resnet50.pth data.train_path=/data/train data.val_path=/data/val
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/../../_harl.sh"
harl_cli harl-pretrain --config-path "$HERE" --config-name sgm_simclr.yaml "$@"
