#!/usr/bin/env bash
# Linear probe (cached features, CPU) of a HARL checkpoint on fashion-scenes. Extra arguments are Hydra overrides, e.g.
#   bash scripts/linear/fashion-scenes/harl.sh pretrained_feature_extractor=trained_models/harl/<version>/<file>.ckpt mode=knn
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/../../_harl.sh"
harl_cli harl-linear --config-path "$HERE" --config-name harl.yaml "$@"
