"""MoCo v3's in-batch InfoNCE (Chen, Xie & He, 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mocov3_loss(q: torch.Tensor, k: torch.Tensor, temperature: float = 0.2, k_all: torch.Tensor | None = None,
                offset: int = 0) -> torch.Tensor:
    """``2T · CE(q̂ k̂_allᵀ / T, offset + arange(B))``.

    The keys of the other images of the (global) batch are the negatives; the positive of query
    b is key ``offset + b``.

    Args:
        q: B×D queries (online predictor output); k: B×D local keys (momentum projector, no grad).
        temperature: T.
        k_all: M×D keys gathered over devices (defaults to ``k``); the local block sits at
            ``offset .. offset+B``.
    Returns:
        scalar loss (the 2T factor is MoCo v3's, it keeps the gradient scale independent of T).
    """
    if k_all is None:
        k_all, offset = k, 0
    q = F.normalize(q, dim=-1)
    k_all = F.normalize(k_all, dim=-1).detach()
    logits = q @ k_all.T / temperature
    labels = torch.arange(q.shape[0], device=q.device) + offset
    return F.cross_entropy(logits, labels) * (2 * temperature)
