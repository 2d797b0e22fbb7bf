"""Optimizers (sgd, lars, adam, adamw), per-step schedules and parameter groups."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict

import torch

from harl.optim.lars import LARS
from harl.optim.param_groups import split_bias_and_norm
from harl.optim.schedulers import StepDecay, WarmupCosine, cosine_increase, warmup_cosine_lr
from harl.registry import OPTIMIZERS


@dataclass(frozen=True)
class OptimizerSpec:
    cls: Any
    default_kwargs: Dict[str, Any] = field(default_factory=dict)


# OPTIMIZERS lives in harl.registry (harl.config looks names up there); this module fills it
OPTIMIZERS.register("sgd", OptimizerSpec(torch.optim.SGD, {"momentum": 0.9, "nesterov": False, "dampening": 0.0}))
OPTIMIZERS.register("lars", OptimizerSpec(LARS, {"momentum": 0.9, "eta": 1e-3, "clip_lr": False,
                                                 "exclude_bias_n_norm": False, "eps": 1e-8,
                                                 "nesterov": False, "dampening": 0.0}))
OPTIMIZERS.register("adam", OptimizerSpec(torch.optim.Adam, {"betas": [0.9, 0.999], "eps": 1e-8}))
OPTIMIZERS.register("adamw", OptimizerSpec(torch.optim.AdamW, {"betas": [0.9, 0.999], "eps": 1e-8}))


def build_optimizer(name: str, groups, lr: float, weight_decay: float, **kwargs):
    """Instantiate optimizer ``name`` on param ``groups`` (extra keys like ``name``/``static_lr`` dropped)."""
    spec = OPTIMIZERS.get(name)
    opts = dict(spec.default_kwargs)
    opts.update(kwargs)
    if "betas" in opts:
        opts["betas"] = tuple(opts["betas"])
    clean = [{k: v for k, v in g.items() if k != "static_lr"} for g in groups]
    return spec.cls(clean, lr=lr, weight_decay=weight_decay, **opts)


__all__ = ["LARS", "OPTIMIZERS", "OptimizerSpec", "StepDecay", "WarmupCosine", "build_optimizer",
           "cosine_increase", "split_bias_and_norm", "warmup_cosine_lr"]
