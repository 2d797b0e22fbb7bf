#!/usr/bin/env bash
# Semi-supervised fine-tuning on ImageNet-100 with 1 % of the labels (13 images per class). Extra arguments are Hydra overrides, e.g.
#   bash scripts/linear/imagenet-100/finetune_1pct.sh pretrained_feature_extractor=trained_models/harl/<version>/<name>-ep=<e>.ckpt
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/../../_harl.sh"
harl_cli harl-finetune --config-path "$HERE" --config-name finetune_1pct.yaml "$@"
