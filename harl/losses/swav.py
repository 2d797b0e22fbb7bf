"""SwAV: Sinkhorn-Knopp codes and the swapped prediction loss (Caron et al., 2020)."""

from __future__ import annotations

from typing import Callable, List, Optional

import torch
import torch.nn.functional as F


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, epsilon: float = 0.05, iters: int = 3,
                   all_reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                   world_size: int = 1) -> torch.Tensor:
    """Soft codes Q (N×K) for prototype scores ``scores`` (N×K), equal-partition constrained.

    Q ∝ exp(scores / ε)ᵀ (K×N_total), normalised to sum 1; then ``iters`` times: rows (prototypes)
    rescaled to sum 1/K, columns (samples) to sum 1/N_total; finally columns scaled to sum 1
    (returned transposed, N×K). ``all_reduce`` sums a tensor over devices (N_total = N·world_size).
    """
    reduce = all_reduce if all_reduce is not None else (lambda t: t)
    q = torch.exp(scores.float() / epsilon).T  # K×N
    k, n = q.shape
    n_total = n * world_size
    q = q / reduce(q.sum())
    for _ in range(iters):
        q = q / reduce(q.sum(dim=1, keepdim=True)) / k
        q = q / q.sum(dim=0, keepdim=True) / n_total
    return (q * n_total).T


def swav_loss(preds: List[torch.Tensor], codes: List[torch.Tensor], temperature: float = 0.1) -> torch.Tensor:
    """Swapped prediction: mean over (v, w ≠ v) of −mean_b Σ_k q_v[b,k] log softmax(p_w[b]/T)_k.

    Args:
        preds: per crop, B×K prototype scores (all crops: large and small).
        codes: per large crop v (the first ``len(codes)`` crops), B×K Sinkhorn codes (no grad).
        temperature: T.
    """
    losses = []
    for v, q in enumerate(codes):
        for w, p in enumerate(preds):
            if w != v:
                losses.append(-(q.detach() * F.log_softmax(p / temperature, dim=1)).sum(dim=1).mean())
    return sum(losses) / len(losses)
