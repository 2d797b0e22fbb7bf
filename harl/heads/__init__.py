"""Projection / prediction heads (MLPs on pooled vectors, 1×1-conv MLPs on feature maps)."""

from harl.heads.byol import BYOL_HEAD_KWARGS, BYOLHeads, byol_heads, momentum_copy
from harl.heads.mlp import DINOHead, PrototypeLayer, byol_mlp, conv_mlp, mlp, simclr_mlp

__all__ = ["BYOL_HEAD_KWARGS", "BYOLHeads", "DINOHead", "PrototypeLayer", "byol_heads", "byol_mlp", "conv_mlp", "mlp",
           "momentum_copy", "simclr_mlp"]
