"""W-MSE: whitening of the embeddings in sub-batches, then MSE of normalised views (Ermolov et al., 2021)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def cholesky_whiten(x: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Whiten the rows of ``x`` (N×D, N > D) with the Cholesky factor of their covariance.

    Σ = (x − μ)ᵀ(x − μ) / (N − 1), shrunk to (1 − eps)·Σ + eps·I; with Σ = L Lᵀ (L lower
    triangular) the output rows are L⁻¹(x_n − μ), so the output's covariance is the identity.
    Computed in float32. Returns N×D.
    """
    x = x.float()
    n, d = x.shape
    xc = x - x.mean(dim=0, keepdim=True)
    cov = xc.T @ xc / (n - 1)
    eye = torch.eye(d, device=x.device, dtype=x.dtype)
    cov = (1.0 - eps) * cov + eps * eye
    chol = torch.linalg.cholesky(cov)
    inv = torch.linalg.solve_triangular(chol, eye, upper=False)  # L⁻¹
    return xc @ inv.T


def wmse_loss(views: Sequence[torch.Tensor], perms: Sequence[torch.Tensor], whitening_size: int,
              eps: float = 0.0) -> torch.Tensor:
    """W-MSE over V ≥ 2 views of the same N samples (each ``views[v]`` N×D).

    For each permutation in ``perms`` (one per whitening iteration, each a length-N index tensor with
    N a multiple of ``whitening_size``) the samples are split into sub-batches of ``whitening_size``
    consecutive entries of the permutation; within each sub-batch every view is whitened on its own
    (:func:`cholesky_whiten`). The loss averages, over iterations and view pairs v < w,
    ``mean_n (2 − 2·cos(w_v,n, w_w,n))`` = the MSE of the L2-normalised whitened embeddings.
    Returns a scalar.
    """
    n = views[0].shape[0]
    total, count = 0.0, 0
    for perm in perms:
        white = [torch.empty(n, v.shape[1], device=v.device, dtype=torch.float32) for v in views]
        for idx in perm.view(-1, whitening_size):
            for v, z in enumerate(views):
                white[v][idx] = cholesky_whiten(z[idx], eps)
        for a in range(len(views)):
            for b in range(a + 1, len(views)):
                total = total + (2.0 - 2.0 * F.cosine_similarity(white[a], white[b], dim=-1)).mean()
                count += 1
    return total / count
