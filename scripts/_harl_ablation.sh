#!/usr/bin/env bash
# HARL loss ablation (paper §5.2), shared by scripts/pretrain/<dataset>/harl_ablation.sh: the mask loss
# with alpha_base ∈ {0.3, 0.5, 0.7} and the hybrid loss with lambda_base ∈ {0.3, 0.5, 0.7}, otherwise
# the dataset's harl recipe. Runs sequentially.
# Usage: bash scripts/_harl_ablation.sh PATH/TO/harl.sh [HYDRA_OVERRIDE ...]
set -euo pipefail
recipe="$1"; shift
for a in 0.3 0.5 0.7; do
    bash "$recipe" method_kwargs.loss_type=mask method_kwargs.alpha_base=$a name=harl-ablation-mask-alpha$a "$@"
done
for l in 0.3 0.5 0.7; do
    bash "$recipe" method_kwargs.loss_type=hybrid method_kwargs.lambda_base=$l name=harl-ablation-hybrid-lambda$l "$@"
done
