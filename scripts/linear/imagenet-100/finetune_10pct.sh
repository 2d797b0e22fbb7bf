#!/usr/bin/env bash
# Semi-supervised fine-tuning on ImageNet-100 with 10 % of the labels. Extra arguments are Hydra overrides, e.g.
#   bash scripts/linear/imagenet-100/finetune_10pct.sh pretrained_feature_extractor=trained_models/harl/<version>/<name>-ep=<e>.ckpt
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/../../_harl.sh"
harl_cli harl-finetune --config-path "$HERE" --config-name finetune_10pct.yaml "$@"
