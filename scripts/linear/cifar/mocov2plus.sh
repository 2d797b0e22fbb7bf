#!/usr/bin/env bash
# Linear evaluation of a MoCo v2+ checkpoint on CIFAR-10 (set data.dataset=cifar100 for CIFAR-100). Extra arguments are Hydra overrides, e.g.
#   bash scripts/linear/cifar/mocov2plus.sh pretrained_feature_extractor=trained_models/mocov2plus/<version>/<file>.ckpt
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/../../_harl.sh"
harl_cli harl-linear --config-path "$HERE" --config-name mocov2plus.yaml "$@"
