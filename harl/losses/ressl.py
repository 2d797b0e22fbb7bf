"""ReSSL's relational loss (Zheng et al., NeurIPS 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ressl_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature_q: float = 0.1,
               temperature_k: float = 0.04) -> torch.Tensor:
    """``−mean_b Σ_j softmax(k̂_b·Q̂_j / τ_k) log softmax(q̂_b·Q̂_j / τ_q)``.

    The student's similarity distribution over the queue (query q of the strongly augmented view)
    is pulled to the sharper one of the teacher (key k of the weakly augmented view, no gradient).

    Args:
        q: B×D online projections; k: B×D momentum projections; queue: Q×D earlier keys.
        temperature_q, temperature_k: τ_q (student), τ_k (teacher, < τ_q).
    """
    q = F.normalize(q.float(), dim=-1)
    k = F.normalize(k.detach().float(), dim=-1)
    queue = F.normalize(queue.detach().float(), dim=-1)
    target = F.softmax(k @ queue.T / temperature_k, dim=1)
    return -(target * F.log_softmax(q @ queue.T / temperature_q, dim=1)).sum(dim=1).mean()
