"""MoCo's InfoNCE loss with a queue of negatives."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def moco_logits(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float,
                hard_negatives: torch.Tensor | None = None, hard_negative_scale: float = 1.0) -> torch.Tensor:
    """Logits ``[q·k, q·queue_1..K, α·q·t_1..α·q·t_M] / T``.

    Args:
        q: B×D queries; k: B×D keys (no gradient); queue: D×K negatives.
        hard_negatives: optional B×M×D per-query hard negatives (SGM); scaled by α before /T.
    Returns:
        B×(1+K[+M]) logits; the positive is column 0.
    """
    q = F.normalize(q, dim=-1)
    k = F.normalize(k, dim=-1).detach()
    pos = (q * k).sum(dim=1, keepdim=True)
    neg = q @ queue.detach().to(q.dtype)
    parts = [pos, neg]
    if hard_negatives is not None:
        t = F.normalize(hard_negatives, dim=-1).detach()
        parts.append(hard_negative_scale * torch.einsum("bd,bmd->bm", q, t))
    return torch.cat(parts, dim=1) / temperature


def moco_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2,
              hard_negatives: torch.Tensor | None = None, hard_negative_scale: float = 1.0) -> torch.Tensor:
    """``CE([q·k, q·queue(, α q·t)]/T, 0)``, mean over the batch. Shapes as :func:`moco_logits`."""
    logits = moco_logits(q, k, queue, temperature, hard_negatives, hard_negative_scale)
    target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, target)
