"""Barlow Twins (Zbontar et al., ICML 2021), solo-learn conventions."""

from __future__ import annotations

import torch

from harl.heads import mlp
from harl.losses import barlow_twins_loss
from harl.methods.base import BaseMethod, require_two_large_crops
from harl.methods.projector import ProjectorMixin
from harl.methods.registry import METHODS
from harl.utils.distributed import gather_with_grad


@METHODS.register("barlow_twins")
class BarlowTwins(ProjectorMixin, BaseMethod):
    """Projector Linear–BN–ReLU–Linear–BN–ReLU–Linear on both views; the cross-correlation of the
    two standardised projections (over the gathered batch) is pushed to the identity.

    Loss: scale_loss · [Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij²].
    """

    _DEFAULT_METHOD_KWARGS = {"proj_hidden_dim": 2048, "proj_output_dim": 2048, "lamb": 0.0051, "scale_loss": 0.024}

    def __init__(self, cfg):
        super().__init__(cfg)
        kw = cfg.method_kwargs
        self.lamb = float(kw.lamb)
        self.scale_loss = float(kw.scale_loss)
        self.projector = mlp([self.features_dim, kw.proj_hidden_dim, kw.proj_hidden_dim, kw.proj_output_dim])

    @classmethod
    def check_cfg(cls, cfg) -> None:
        super().check_cfg(cfg)

        require_two_large_crops(cfg)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        out = super().training_step(batch, batch_idx)
        z1, z2 = (gather_with_grad(z) for z in out["z"][:2])
        loss = barlow_twins_loss(z1, z2, lamb=self.lamb, scale_loss=self.scale_loss)
        self.log("train_barlow_loss", loss, on_epoch=True, sync_dist=True)
        return loss + out["loss"]
