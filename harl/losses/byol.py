"""BYOL regression loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def byol_loss(p: torch.Tensor, z: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``2 - 2 · mean_b cos(p_b, sg(z_b))``.

    Args:
        p: online predictions, B×D.
        z: target projections, B×D (gradient is stopped).
        weights: optional per-sample weights B; the mean becomes Σ w_b cos_b / max(1, Σ w_b)
            (samples with weight 0 drop out; all-zero weights give a loss of exactly 2 with no
            gradient dependence on p... callers that want 0 handle it; see HARL's pooling).
    """
    cos = F.cosine_similarity(p, z.detach(), dim=-1)
    if weights is None:
        return 2 - 2 * cos.mean()
    w = weights.to(cos.dtype)
    return 2 - 2 * (w * cos).sum() / w.sum().clamp(min=1.0)
