"""NNBYOL (solo-learn's BYOL with NNCLR's nearest-neighbour targets; Dwibedi et al., ICCV 2021 + Grill et al., 2020)."""

from __future__ import annotations

import torch

from harl.losses import byol_loss
from harl.methods.byol import BYOL
from harl.methods.registry import METHODS
from harl.methods.support_set import SupportSet, check_support_set


@METHODS.register("nnbyol")
class NNBYOL(BYOL):
    """BYOL's heads; the target of each view is the support-set nearest neighbour of the other view's
    EMA projection. The support set holds the unit EMA projections of view 1.

    Loss: [2 − 2 cos(p₁, nn(z′₂))] + [2 − 2 cos(p₂, nn(z′₁))].
    """

    _DEFAULT_METHOD_KWARGS = {"proj_hidden_dim": 4096, "proj_output_dim": 256, "pred_hidden_dim": 4096,
                              "queue_size": 65536}

    def __init__(self, cfg):
        super().__init__(cfg)
        self.support = SupportSet(int(cfg.method_kwargs.queue_size), int(cfg.method_kwargs.proj_output_dim))

    @classmethod
    def check_cfg(cls, cfg) -> None:
        super().check_cfg(cfg)
        check_support_set(cfg)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        out = super(BYOL, self).training_step(batch, batch_idx)  # BaseMomentumMethod's: crops + EMA branch
        targets = batch[2]
        p1, p2 = out["p"][:2]
        zm1, zm2 = out["momentum_z"][:2]
        nn1, idx1 = self.support.nearest(zm1)
        nn2, _ = self.support.nearest(zm2)
        loss = byol_loss(p1, nn2) + byol_loss(p2, nn1)
        nn_acc = self.support.accuracy(idx1, targets)
        self.support.push(zm1, targets)
        self.log_dict({"train_neg_cos_sim": loss, "train_nn_acc": nn_acc}, on_epoch=True, sync_dist=True)
        return loss + out["loss"]
