#!/usr/bin/env bash
# HARL loss ablation (paper §5.2): the mask loss with alpha_base ∈ {0.3, 0.5, 0.7} and the
# hybrid loss with lambda_base ∈ {0.3, 0.5, 0.7}, otherwise the recipe of harl.yaml. Runs sequentially;
# extra arguments are Hydra overrides passed to every run (e.g. max_epochs=100 devices=[0,1]).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec bash "$HERE/../../_harl_ablation.sh" "$HERE/harl.sh" "$@"
