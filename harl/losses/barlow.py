"""Barlow Twins' redundancy-reduction loss (Zbontar et al., 2021)."""

from __future__ import annotations

import torch


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lamb: float = 0.0051, scale_loss: float = 0.024,
                      eps: float = 1e-5) -> torch.Tensor:
    """``scale_loss · [Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij²]``.

    Each embedding is standardised per dimension over the batch (biased variance, as a
    ``BatchNorm1d`` without affine in training mode): ẑ = (z − mean_b z) / sqrt(var_b z + eps);
    the cross-correlation is C = ẑ₁ᵀ ẑ₂ / N (D×D).

    Args:
        z1, z2: N×D projections of the two views (gathered over devices when distributed).
        lamb: λ, weight of the off-diagonal (redundancy) term.
        scale_loss: overall factor (solo-learn's ``scale_loss``; 1 in the paper's notation).
        eps: added to the variance.
    Returns:
        scalar loss.
    """
    n = z1.shape[0]

    def standardise(z):
        z = z.float()
        mean = z.mean(dim=0, keepdim=True)
        var = z.var(dim=0, unbiased=False, keepdim=True)
        return (z - mean) / torch.sqrt(var + eps)

    c = standardise(z1).T @ standardise(z2) / n
    diag = torch.diagonal(c)
    on_diag = (diag - 1).pow(2).sum()
    off_diag = c.pow(2).sum() - diag.pow(2).sum()
    return scale_loss * (on_diag + lamb * off_diag)
