"""VIbCReg (Lee & Aune, 2021), solo-learn conventions."""

from __future__ import annotations

import torch
from torch import nn

from harl.config_values import Num
from harl.heads import mlp
from harl.heads.iternorm import IterNorm
from harl.losses import vibcreg_terms
from harl.methods.base import BaseMethod, require_two_large_crops
from harl.methods.projector import ProjectorMixin
from harl.methods.registry import METHODS
from harl.utils.distributed import gather_with_grad


@METHODS.register("vibcreg")
class VIbCReg(ProjectorMixin, BaseMethod):
    """Projector Linear–BN–GELU–Linear–BN–GELU–Linear, then IterNorm (64 groups, T = 5) when ``iternorm``.

    Loss (over the batch gathered from every device, as VICReg): sim_loss_weight · MSE(z₁, z₂)
    + var_loss_weight · Σ_v mean_d relu(1 − std(z_v,d)) + cov_loss_weight · Σ_v mean_{i≠j} Corr(z_v)_ij²
    (:func:`harl.losses.vibcreg_terms`).
    """

    _DEFAULT_METHOD_KWARGS = {"proj_hidden_dim": 2048, "proj_output_dim": 2048, "sim_loss_weight": 25.0,
                              "var_loss_weight": 25.0, "cov_loss_weight": 200.0, "iternorm": True}
    _METHOD_KWARG_VALUES = {k: Num(ge=0) for k in ("sim_loss_weight", "var_loss_weight", "cov_loss_weight")}
    #: IterNorm's settings in VIbCReg (as solo-learn)
    ITERNORM_GROUPS = 64
    ITERNORM_T = 5

    def __init__(self, cfg):
        super().__init__(cfg)
        kw = cfg.method_kwargs
        self.sim_loss_weight = float(kw.sim_loss_weight)
        self.var_loss_weight = float(kw.var_loss_weight)
        self.cov_loss_weight = float(kw.cov_loss_weight)
        head = list(mlp([self.features_dim, kw.proj_hidden_dim, kw.proj_hidden_dim, kw.proj_output_dim], act="gelu"))
        last = IterNorm(kw.proj_output_dim, self.ITERNORM_GROUPS, self.ITERNORM_T) if kw.iternorm else nn.Identity()
        self.projector = nn.Sequential(*head, last)

    @classmethod
    def check_cfg(cls, cfg) -> None:
        super().check_cfg(cfg)

        require_two_large_crops(cfg)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        out = super().training_step(batch, batch_idx)
        z1, z2 = (gather_with_grad(z) for z in out["z"][:2])
        sim, var, cov = vibcreg_terms(z1, z2)
        loss = self.sim_loss_weight * sim + self.var_loss_weight * var + self.cov_loss_weight * cov
        self.log_dict({"train_vibcreg_loss": loss, "train_invariance_loss": sim, "train_variance_loss": var,
                       "train_covariance_loss": cov}, on_epoch=True, sync_dist=True)
        return loss + out["loss"]
