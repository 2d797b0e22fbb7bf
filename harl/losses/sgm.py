"""SGM's loss term: the hard-negative logits (docs/methods/sgm.md).

The masked copies of the key view are extra negatives: their logits ``α·q̂·t̂/T`` are appended to
MoCo's (:func:`harl.losses.moco.moco_loss` with ``hard_negatives``) or to each NT-Xent anchor's
denominator (:func:`harl.losses.simclr.nt_xent_loss` with ``extra_neg_logits``). The masking that
makes the copies is :mod:`harl.ops.sgm_masking`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["hard_negative_logits"]


def hard_negative_logits(q: torch.Tensor, t: torch.Tensor, scale: float = 2.0, temperature: float = 0.2) -> torch.Tensor:
    """SGM hard-negative logits ``α·q̂·t̂_m / T`` (α applied before /T).

    The same numbers as the extra columns of :func:`harl.losses.moco.moco_logits`; for SimCLR
    pass them as ``nt_xent_loss(..., extra_neg_logits=...)``. ``t`` is detached (hard negatives
    come from the key / stop-gradient encoder).

    Args:
        q: B×D queries; t: B×M×D hard negatives (B×D is read as M = 1).
    Returns:
        B×M logits.
    """
    if t.dim() == 2:
        t = t.unsqueeze(1)
    if q.dim() != 2 or t.dim() != 3 or t.shape[0] != q.shape[0] or t.shape[2] != q.shape[1]:
        raise ValueError(f"hard_negative_logits expects q B×D and t B×M×D, got {tuple(q.shape)} and {tuple(t.shape)}")
    qn = F.normalize(q, dim=-1)
    tn = F.normalize(t.detach(), dim=-1).to(qn.dtype)
    return scale * torch.einsum("bd,bmd->bm", qn, tn) / temperature
