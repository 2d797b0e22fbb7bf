"""Projection / prediction heads (MLPs on pooled vectors, 1×1-conv MLPs on feature maps)."""

from harl.heads.mlp import DINOHead, PrototypeLayer, byol_mlp, conv_mlp, mlp, simclr_mlp

__all__ = ["DINOHead", "PrototypeLayer", "byol_mlp", "conv_mlp", "mlp", "simclr_mlp"]
