"""MLP heads.

- :func:`byol_mlp`: Linear → BN1d → ReLU → Linear (BYOL projector / predictor), B×C_in → B×C_out.
  ``num_layers=3`` gives Linear–BN–ReLU–Linear–BN–ReLU–Linear (no output bias) as in the HARL TF code.
- :func:`simclr_mlp`: Linear → ReLU → Linear (SimCLR / MoCo v2+ projector).
- :func:`conv_mlp`: the same on feature maps with 1×1 convolutions, B×C_in×h×w → B×C_out×h×w.
- :func:`mlp`: the general form the other baselines use: ``len(dims) − 1`` Linear layers, each
  hidden one followed by BN1d (optional) and an activation, the output optionally followed by a
  BN1d without affine (SimSiam's and MoCo v3's projectors).
- :class:`PrototypeLayer`: bias-free linear layer with unit-norm rows (SwAV's prototypes, DINO's last layer).
- :class:`DINOHead`: DINO's projection head ending in a :class:`PrototypeLayer`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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


def mlp(dims, hidden_bn: bool = True, last_bn: bool = False, bias: bool = True, act: str = "relu") -> nn.Sequential:
    """``dims = [in, h1, ..., out]`` → Linear(in, h1) [BN] act ... Linear(h_last, out) [BN(affine=False)].

    ``bias`` applies to the layers followed by a BN (their bias is redundant there); the output
    layer keeps its bias unless ``last_bn``. B×in → B×out.
    """
    acts = {"relu": lambda: nn.ReLU(inplace=True), "gelu": nn.GELU}
    if act not in acts:
        raise ValueError(f"act must be one of {sorted(acts)}, got {act!r}")
    if len(dims) < 2:
        raise ValueError(f"an MLP needs at least [in, out] dims, got {dims}")
    layers = []
    for i in range(len(dims) - 2):
        layers.append(nn.Linear(dims[i], dims[i + 1], bias=bias or not hidden_bn))
        if hidden_bn:
            layers.append(nn.BatchNorm1d(dims[i + 1]))
        layers.append(acts[act]())
    layers.append(nn.Linear(dims[-2], dims[-1], bias=not last_bn))
    if last_bn:
        layers.append(nn.BatchNorm1d(dims[-1], affine=False))
    return nn.Sequential(*layers)


class PrototypeLayer(nn.Module):
    """Linear layer without bias whose rows are unit vectors times a gain (weight normalisation).

    B×D → B×K with W = g ⊙ v / ‖v‖_row; ``learn_gain=False`` fixes g = 1 (SwAV's prototypes, DINO's
    ``norm_last_layer``), else g (K×1, initialised to 1) is a parameter.
    """

    def __init__(self, in_dim: int, num_prototypes: int, learn_gain: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_prototypes, in_dim))
        nn.init.trunc_normal_(self.weight, std=0.02)
        self.gain = nn.Parameter(torch.ones(num_prototypes, 1)) if learn_gain else None

    def normalized_weight(self) -> torch.Tensor:
        w = F.normalize(self.weight, dim=1)
        return w * self.gain if self.gain is not None else w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.normalized_weight())


class DINOHead(nn.Module):
    """DINO's head: Linear–GELU–Linear–GELU–Linear (→ bottleneck), L2 normalisation, then a
    weight-normalised :class:`PrototypeLayer` (gain fixed to 1 when ``norm_last_layer``). B×C → B×K."""

    def __init__(self, in_dim: int, hidden_dim: int, bottleneck_dim: int, num_prototypes: int,
                 norm_last_layer: bool = True):
        super().__init__()
        self.mlp = mlp([in_dim, hidden_dim, hidden_dim, bottleneck_dim], hidden_bn=False, act="gelu")
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = PrototypeLayer(bottleneck_dim, num_prototypes, learn_gain=not norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))
