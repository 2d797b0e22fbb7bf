"""MLP heads.

- :func:`byol_mlp`: Linear → BN1d → ReLU → Linear (BYOL projector / predictor), B×C_in → B×C_out.
  ``num_layers=3`` gives Linear–BN–ReLU–Linear–BN–ReLU–Linear (no output bias) as in the HARL TF code.
- :func:`simclr_mlp`: Linear → ReLU → Linear (SimCLR / MoCo v2+ projector).
- :func:`conv_mlp`: the same on feature maps with 1×1 convolutions, B×C_in×h×w → B×C_out×h×w.
- :func:`mlp`: the general form the other baselines use: ``len(dims) − 1`` Linear layers, each
  hidden one followed by BN1d (optional) and an activation, the output optionally followed by a
  BN1d without affine (SimSiam's and MoCo v3's projectors).
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
