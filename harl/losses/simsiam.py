"""SimSiam's negative cosine similarity (Chen & He, 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def simsiam_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``−mean_b cos(p_b, sg(z_b))``; p: B×D predictions, z: B×D projections (gradient stopped)."""
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()
