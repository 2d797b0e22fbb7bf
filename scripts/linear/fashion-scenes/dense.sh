#!/usr/bin/env bash
# Dense (foreground) probe of any checkpoint on fashion-scenes. Extra arguments are Hydra overrides, e.g.
#   bash scripts/linear/fashion-scenes/dense.sh pretrained_feature_extractor=trained_models/harl/<version>/<file>.ckpt dense.loss=ce
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/../../_harl.sh"
harl_cli harl-linear --config-path "$HERE" --config-name dense.yaml "$@"
