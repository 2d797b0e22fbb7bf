"""SimCLR's NT-Xent loss (multi-positive form, as solo-learn)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent_loss(z: torch.Tensor, indexes: torch.Tensor, temperature: float = 0.2,
                 z_all: torch.Tensor | None = None, indexes_all: torch.Tensor | None = None,
                 offset: int = 0, extra_neg_logits: torch.Tensor | None = None) -> torch.Tensor:
    """NT-Xent for the local embeddings ``z`` (N×D: every view of every local sample).

    sim_ij = exp(ẑ_i·ẑ_j / T) against ``z_all`` (M×D, embeddings gathered across devices; defaults
    to ``z``) in which the local rows sit at ``offset .. offset+N``. Positives are the entries with
    the same sample index other than i itself; the loss is
    ``−mean_i log(Σ_pos sim_ij / Σ_{j≠i} sim_ij)``.

    Args:
        z: N×D local embeddings; indexes: N sample indices (views of an image share one).
        temperature: T.
        z_all, indexes_all, offset: the gathered batch and where the local block sits in it.
        extra_neg_logits: optional N×K logits (already divided by T) that join the denominator
            only (SGM hard negatives).
    """
    if z_all is None:
        z_all, indexes_all, offset = z, indexes, 0
    z = F.normalize(z, dim=-1)
    z_all = F.normalize(z_all, dim=-1)
    logits = z @ z_all.T / temperature  # N×M
    n = z.shape[0]
    self_mask = torch.zeros_like(logits, dtype=torch.bool)
    rows = torch.arange(n, device=z.device)
    self_mask[rows, rows + offset] = True
    pos_mask = (indexes.view(-1, 1) == indexes_all.view(1, -1)) & ~self_mask
    # log-sum-exp with the row max removed (exp(1/T) overflows fp16 for small T)
    row_max = logits.masked_fill(self_mask, float("-inf")).max(dim=1, keepdim=True).values
    if extra_neg_logits is not None:
        row_max = torch.maximum(row_max, extra_neg_logits.max(dim=1, keepdim=True).values)
    row_max = row_max.detach()
    sim = torch.exp(logits - row_max).masked_fill(self_mask, 0.0)
    pos = (sim * pos_mask).sum(dim=1)
    total = sim.sum(dim=1)
    if extra_neg_logits is not None:
        total = total + torch.exp(extra_neg_logits - row_max).sum(dim=1)
    return -(torch.log(pos) - torch.log(total)).mean()
