#!/usr/bin/env bash
# Linear evaluation of a HARL checkpoint on ImageNet-1k. Extra arguments are Hydra overrides, e.g.
#   bash scripts/linear/imagenet/harl.sh pretrained_feature_extractor=trained_models/harl/<version>/<file>.ckpt
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/../../_harl.sh"
harl_cli harl-linear --config-path "$HERE" --config-name harl.yaml "$@"
