"""VICReg's variance-invariance-covariance loss (Bardes et al., 2022)."""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F


def vicreg_terms(z1: torch.Tensor, z2: torch.Tensor, eps: float = 1e-4) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three VICReg terms for N×D embeddings ``z1``, ``z2``.

    - invariance: s = mean_{b,d} (z1 − z2)²  (MSE);
    - variance: v = mean_d relu(1 − sqrt(Var_b z1_d + eps)) + the same for z2 (unbiased variance);
    - covariance: c = Σ_{i≠j} Cov(z1)_ij² / D + the same for z2, with
      Cov(z) = (z − mean)ᵀ(z − mean) / (N − 1).

    Returns:
        (s, v, c), each a scalar.
    """
    z1, z2 = z1.float(), z2.float()
    sim = F.mse_loss(z1, z2)
    var = sum(F.relu(1.0 - torch.sqrt(z.var(dim=0) + eps)).mean() for z in (z1, z2))
    n, d = z1.shape
    cov = 0.0
    for z in (z1, z2):
        zc = z - z.mean(dim=0)
        c = zc.T @ zc / (n - 1)
        cov = cov + (c.pow(2).sum() - torch.diagonal(c).pow(2).sum()) / d
    return sim, var, cov


def vicreg_loss(z1: torch.Tensor, z2: torch.Tensor, sim_loss_weight: float = 25.0, var_loss_weight: float = 25.0,
                cov_loss_weight: float = 1.0) -> torch.Tensor:
    """``λ s + μ v + ν c`` with the terms of :func:`vicreg_terms`; z1, z2: N×D (N ≥ 2)."""
    sim, var, cov = vicreg_terms(z1, z2)
    return sim_loss_weight * sim + var_loss_weight * var + cov_loss_weight * cov
