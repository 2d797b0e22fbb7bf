#!/usr/bin/env bash
# Linear evaluation of a SGM (MoCo v2, hp) checkpoint on ImageNet-100. Extra arguments are Hydra overrides, e.g.
#   bash scripts/linear/imagenet-100/sgm_mocov2.sh pretrained_feature_extractor=trained_models/sgm_mocov2/<version>/<file>.ckpt
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/../../_harl.sh"
harl_cli harl-linear --config-path "$HERE" --config-name sgm_mocov2.yaml "$@"
