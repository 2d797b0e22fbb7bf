"""NNCLR: nearest-neighbour positives from a support set (Dwibedi et al., ICCV 2021)."""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F


@torch.no_grad()
def nearest_neighbour(z: torch.Tensor, support: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """For each row of ``z`` (B×D) the support-set row (support: Q×D) of highest cosine similarity.

    Returns:
        (nn, idx): B×D unit-norm neighbours (no gradient) and their B row indices in ``support``.
    """
    z = F.normalize(z.float(), dim=-1)
    support = F.normalize(support.float(), dim=-1)
    idx = (z @ support.T).argmax(dim=1)
    return support[idx], idx


def nnclr_loss(nn: torch.Tensor, p: torch.Tensor, temperature: float = 0.1, p_all: torch.Tensor | None = None,
               offset: int = 0) -> torch.Tensor:
    """``CE(n̂ p̂_allᵀ / T, offset + arange(B))``: the neighbour of view 1 must pick out the prediction of
    view 2 of the same image among the predictions of the (global) batch.

    Args:
        nn: B×D nearest neighbours (no gradient); p: B×D local predictions of the other view.
        temperature: T.
        p_all: M×D predictions gathered over devices (with gradient; defaults to ``p``), the local
            block at ``offset .. offset+B``.
    """
    if p_all is None:
        p_all, offset = p, 0
    logits = F.normalize(nn.detach(), dim=-1) @ F.normalize(p_all, dim=-1).T / temperature
    labels = torch.arange(nn.shape[0], device=nn.device) + offset
    return F.cross_entropy(logits, labels)
