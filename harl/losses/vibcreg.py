"""VIbCReg's loss (Lee & Aune, 2021): VICReg's invariance and variance terms with a covariance term on
feature-normalised embeddings (a correlation matrix), so its scale does not depend on the dimension."""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F


def vibcreg_terms(z1: torch.Tensor, z2: torch.Tensor, eps: float = 1e-4) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three VIbCReg terms for N×D embeddings ``z1``, ``z2`` (N ≥ 2, D ≥ 2).

    - invariance: s = mean_{n,d} (z1 − z2)²  (MSE);
    - variance: v = mean_d relu(1 − sqrt(Var_n z1_d + eps)) + the same for z2 (unbiased variance);
    - covariance: with ẑ the column-centred z whose columns are L2-normalised over the batch,
      C = ẑᵀẑ (D×D, the correlation matrix), c = mean_{i≠j} C_ij² for z1 + the same for z2.

    Returns:
        (s, v, c), each a scalar.
    """
    z1, z2 = z1.float(), z2.float()
    sim = F.mse_loss(z1, z2)
    var = sum(F.relu(1.0 - torch.sqrt(z.var(dim=0) + eps)).mean() for z in (z1, z2))
    d = z1.shape[1]
    off = ~torch.eye(d, dtype=torch.bool, device=z1.device)
    cov = 0.0
    for z in (z1, z2):
        zn = F.normalize(z - z.mean(dim=0), p=2, dim=0)
        corr = zn.T @ zn
        cov = cov + corr[off].pow(2).mean()
    return sim, var, cov


def vibcreg_loss(z1: torch.Tensor, z2: torch.Tensor, sim_loss_weight: float = 25.0, var_loss_weight: float = 25.0,
                 cov_loss_weight: float = 200.0) -> torch.Tensor:
    """``λ s + μ v + ν c`` with the terms of :func:`vibcreg_terms`; z1, z2: N×D."""
    sim, var, cov = vibcreg_terms(z1, z2)
    return sim_loss_weight * sim + var_loss_weight * var + cov_loss_weight * cov
