#!/usr/bin/env bash
# HARL loss ablation (paper §5.2): the mask loss with alpha_base ∈ {0.3, 0.5, 0.7} and the
# hybrid loss with lambda_base ∈ {0.3, 0.5, 0.7}, otherwise the recipe of harl.yaml. Runs sequentially;
# extra arguments are Hydra overrides passed to every run (e.g. max_epochs=100 devices=[0,1]).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
for a in 0.3 0.5 0.7; do
    bash "$HERE/harl.sh" method_kwargs.loss_type=mask method_kwargs.alpha_base=$a name=harl-ablation-mask-alpha$a "$@"
done
for l in 0.3 0.5 0.7; do
    bash "$HERE/harl.sh" method_kwargs.loss_type=hybrid method_kwargs.lambda_base=$l name=harl-ablation-hybrid-lambda$l "$@"
done
