#!/usr/bin/env bash
# Semi-supervised fine-tuning on ImageNet-1k with 1 % of the labels (HARL paper: 54.5 top-1, BYOL 53.2). Extra arguments are Hydra overrides, e.g.
#   bash scripts/linear/imagenet/finetune_1pct.sh pretrained_feature_extractor=trained_models/harl/<version>/<name>-ep=<e>.ckpt
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/../../_harl.sh"
harl_cli harl-finetune --config-path "$HERE" --config-name finetune_1pct.yaml "$@"
