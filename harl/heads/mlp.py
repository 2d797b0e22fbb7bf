"""MLP heads.

- :func:`byol_mlp`: Linear → BN1d → ReLU → Linear (BYOL projector / predictor), B×C_in → B×C_out.
  ``num_layers=3`` gives Linear–BN–ReLU–Linear–BN–ReLU–Linear (no output bias) as in the HARL TF code.
- :func:`simclr_mlp`: Linear → ReLU → Linear (SimCLR / MoCo v2+ projector).
- :func:`conv_mlp`: the same on feature maps with 1×1 convolutions, B×C_in×h×w → B×C_out×h×w.
"""

from __future__ import annotations

from torch import nn


def byol_mlp(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2) -> nn.Sequential:
    if num_layers not in (2, 3):
        raise ValueError(f"num_layers must be 2 or 3, got {num_layers}")
    layers = [nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
    if num_layers == 3:
        layers += [nn.Linear(hidden_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        layers += [nn.Linear(hidden_dim, out_dim, bias=False)]
    else:
        layers += [nn.Linear(hidden_dim, out_dim)]
    return nn.Sequential(*layers)


def simclr_mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))


def conv_mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_dim, hidden_dim, 1), nn.BatchNorm2d(hidden_dim), nn.ReLU(inplace=True), nn.Conv2d(hidden_dim, out_dim, 1)
    )
