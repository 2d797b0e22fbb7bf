"""VICReg (Bardes, Ponce & LeCun, ICLR 2022), solo-learn conventions."""

from __future__ import annotations

import torch

from harl.heads import mlp
from harl.losses import vicreg_terms
from harl.methods.base import BaseMethod, require_two_large_crops
from harl.methods.projector import ProjectorMixin
from harl.methods.registry import METHODS
from harl.utils.distributed import gather_with_grad


@METHODS.register("vicreg")
class VICReg(ProjectorMixin, BaseMethod):
    """Expander Linear–BN–ReLU–Linear–BN–ReLU–Linear on both views.

    Loss (over the batch gathered from every device): sim_loss_weight · MSE(z₁, z₂)
    + var_loss_weight · Σ_v mean_d relu(1 − std(z_v,d)) + cov_loss_weight · Σ_v off-diag(Cov z_v)² / D.
    """

    _DEFAULT_METHOD_KWARGS = {"proj_hidden_dim": 2048, "proj_output_dim": 2048, "sim_loss_weight": 25.0,
                              "var_loss_weight": 25.0, "cov_loss_weight": 1.0}

    def __init__(self, cfg):
        super().__init__(cfg)
        kw = cfg.method_kwargs
        self.sim_loss_weight = float(kw.sim_loss_weight)
        self.var_loss_weight = float(kw.var_loss_weight)
        self.cov_loss_weight = float(kw.cov_loss_weight)
        self.projector = mlp([self.features_dim, kw.proj_hidden_dim, kw.proj_hidden_dim, kw.proj_output_dim])

    @classmethod
    def check_cfg(cls, cfg) -> None:
        super().check_cfg(cfg)

        require_two_large_crops(cfg)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        out = super().training_step(batch, batch_idx)
        z1, z2 = (gather_with_grad(z) for z in out["z"][:2])
        sim, var, cov = vicreg_terms(z1, z2)
        loss = self.sim_loss_weight * sim + self.var_loss_weight * var + self.cov_loss_weight * cov
        self.log_dict({"train_vicreg_loss": loss, "train_invariance_loss": sim, "train_variance_loss": var,
                       "train_covariance_loss": cov}, on_epoch=True, sync_dist=True)
        return loss + out["loss"]
