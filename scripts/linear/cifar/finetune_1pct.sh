#!/usr/bin/env bash
# Semi-supervised fine-tuning on CIFAR-10 with 1 % of the labels (50 per class); data.dataset=cifar100 for CIFAR-100. Extra arguments are Hydra overrides, e.g.
#   bash scripts/linear/cifar/finetune_1pct.sh pretrained_feature_extractor=trained_models/harl/<version>/<name>-ep=<e>.ckpt
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/../../_harl.sh"
harl_cli harl-finetune --config-path "$HERE" --config-name finetune_1pct.yaml "$@"
