"""Iterative normalisation (IterNorm; Huang, Zhou, Zhu, Liu & Shao, CVPR 2019) of N×D vectors.

Whitening by Newton's iterations instead of an eigen-decomposition: the D channels are split into
groups of consecutive channels and each group is whitened on its own. VIbCReg's projector ends in
this layer (solo-learn uses 64 groups and T = 5 iterations).
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn


def iternorm_groups(num_features: int, num_groups: int) -> Tuple[int, int]:
    """(groups, channels per group) for ``num_features`` channels and a wished ``num_groups``.

    Channels per group start at ceil(D / num_groups) and are halved until they divide D.
    """
    channels = (num_features - 1) // num_groups + 1
    while num_features % channels:
        channels //= 2
    return num_features // channels, channels


def iterative_whitening(x: torch.Tensor, num_groups: int, T: int = 5,
                        eps: float = 1e-5) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Whiten ``x`` (N×D) group by group with T Newton iterations.

    Per group g (channels c, X_g = c×N): μ = mean over N, Σ = eps·I + (X_g − μ)(X_g − μ)ᵀ / N,
    Σ_N = Σ / tr Σ, P₀ = I, P_k = (3 P_{k−1} − P_{k−1}³ Σ_N) / 2, W = P_T / sqrt(tr Σ), and the
    output is W (X_g − μ). Computed in float32.

    Returns:
        (N×D whitened x, G×c×1 means μ, G×c×c whitening matrices W).
    """
    x = x.float()
    n, d = x.shape
    g, c = iternorm_groups(d, num_groups)
    xg = x.T.reshape(g, c, n)
    mean = xg.mean(dim=-1, keepdim=True)
    xc = xg - mean
    eye = torch.eye(c, device=x.device, dtype=x.dtype).expand(g, c, c)
    sigma = eps * eye + xc @ xc.transpose(1, 2) / n
    r_tr = 1.0 / sigma.diagonal(dim1=1, dim2=2).sum(-1).view(g, 1, 1)
    sigma_n = sigma * r_tr
    p = eye
    for _ in range(T):
        p = 1.5 * p - 0.5 * torch.linalg.matrix_power(p, 3) @ sigma_n
    wm = p * r_tr.sqrt()
    out = (wm @ xc).reshape(d, n).T
    return out, mean, wm


class IterNorm(nn.Module):
    """IterNorm layer on N×D inputs: :func:`iterative_whitening` with the batch's statistics in training
    (running mean and whitening matrix updated with ``momentum``), the running ones in evaluation, then a
    per-channel affine map (weight 1, bias 0 at start)."""

    def __init__(self, num_features: int, num_groups: int = 64, T: int = 5, eps: float = 1e-5,
                 momentum: float = 0.1, affine: bool = True):
        super().__init__()
        self.num_features, self.num_groups, self.T, self.eps, self.momentum = num_features, num_groups, T, eps, momentum
        g, c = iternorm_groups(num_features, num_groups)
        self.register_buffer("running_mean", torch.zeros(g, c, 1))
        self.register_buffer("running_wm", torch.eye(c).expand(g, c, c).clone())
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            out, mean, wm = iterative_whitening(x, self.num_groups, self.T, self.eps)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_wm.lerp_(wm.detach(), self.momentum)
        else:
            n, d = x.shape
            g, c = self.running_mean.shape[:2]
            xc = x.float().T.reshape(g, c, n) - self.running_mean
            out = (self.running_wm @ xc).reshape(d, n).T
        out = out.to(x.dtype)
        if self.weight is not None:
            out = out * self.weight + self.bias
        return out

    def extra_repr(self) -> str:
        g, c = self.running_mean.shape[:2]
        return f"{self.num_features}, groups={g}, channels={c}, T={self.T}, eps={self.eps}, momentum={self.momentum}"
