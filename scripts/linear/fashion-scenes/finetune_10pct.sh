#!/usr/bin/env bash
# Semi-supervised fine-tuning on the built-in fashion-scenes demo set with 10 % of the labels (CPU-sized). Extra arguments are Hydra overrides, e.g.
#   bash scripts/linear/fashion-scenes/finetune_10pct.sh pretrained_feature_extractor=trained_models/harl/<version>/<name>-ep=<e>.ckpt
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/../../_harl.sh"
harl_cli harl-finetune --config-path "$HERE" --config-name finetune_10pct.yaml "$@"
