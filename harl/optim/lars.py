"""LARS (layer-wise adaptive rate scaling) with solo-learn's semantics.

For each parameter ``w`` with gradient ``g`` (unless it is 1-D and its group has
``exclude_bias_n_norm``), when both norms are non-zero::

    local = eta * ||w|| / (||g|| + wd * ||w|| + eps)
    local = min(local / lr, 1)            # only with clip_lr
    step  = (g + wd * w) * local

then plain SGD momentum on ``step``. Excluded (1-D) parameters get SGD momentum with no weight
decay and no adaptation.
"""

from __future__ import annotations

import torch
from torch.optim import Optimizer


class LARS(Optimizer):
    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 1e-3, eps: float = 1e-8, clip_lr: bool = False,
                 exclude_bias_n_norm: bool = False, nesterov: bool = False, dampening: float = 0.0):
        if lr < 0:
            raise ValueError(f"invalid learning rate {lr}")
        if momentum < 0 or weight_decay < 0:
            raise ValueError("momentum and weight_decay must be non-negative")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov momentum requires a momentum and zero dampening")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, eps=eps,
                        clip_lr=clip_lr, exclude_bias_n_norm=exclude_bias_n_norm,
                        nesterov=nesterov, dampening=dampening)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            wd, momentum, lr = group["weight_decay"], group["momentum"], group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad
                if p.ndim != 1 or not group["exclude_bias_n_norm"]:
                    p_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(d_p)
                    if p_norm != 0 and g_norm != 0:
                        local = group["eta"] * p_norm / (g_norm + wd * p_norm + group["eps"])
                        if group["clip_lr"] and lr > 0:
                            local = torch.clamp(local / lr, max=1.0)
                        d_p = d_p.add(p, alpha=wd).mul_(local)
                if momentum != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = torch.clone(d_p).detach()
                    else:
                        buf.mul_(momentum).add_(d_p, alpha=1 - group["dampening"])
                    d_p = d_p.add(buf, alpha=momentum) if group["nesterov"] else buf
                p.add_(d_p, alpha=-lr)
        return loss
