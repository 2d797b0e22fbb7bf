"""NNSiam (solo-learn's SimSiam with NNCLR's nearest-neighbour targets; Dwibedi et al., ICCV 2021 + Chen & He, 2021)."""

from __future__ import annotations

import torch

from harl.losses import simsiam_loss
from harl.methods.registry import METHODS
from harl.methods.simsiam import SimSiam
from harl.methods.support_set import SupportSet, check_support_set


@METHODS.register("nnsiam")
class NNSiam(SimSiam):
    """SimSiam's heads (constant-lr predictor); the target of each view is the support-set nearest
    neighbour of the other view's projection. The support set holds the unit projections of view 1.

    Loss: ½[−cos(p₁, nn(z₂)) − cos(p₂, nn(z₁))].
    """

    _DEFAULT_METHOD_KWARGS = {"proj_hidden_dim": 2048, "proj_output_dim": 2048, "pred_hidden_dim": 4096,
                              "queue_size": 65536}

    def __init__(self, cfg):
        super().__init__(cfg)
        self.support = SupportSet(int(cfg.method_kwargs.queue_size), int(cfg.method_kwargs.proj_output_dim))

    @classmethod
    def check_cfg(cls, cfg) -> None:
        super().check_cfg(cfg)
        check_support_set(cfg)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        out = super(SimSiam, self).training_step(batch, batch_idx)  # BaseMethod's: every crop + classifier
        targets = batch[2]
        (z1, z2), (p1, p2) = out["z"][:2], out["p"][:2]
        nn1, idx1 = self.support.nearest(z1)
        nn2, _ = self.support.nearest(z2)
        loss = (simsiam_loss(p1, nn2) + simsiam_loss(p2, nn1)) / 2
        nn_acc = self.support.accuracy(idx1, targets)
        self.support.push(z1, targets)
        self.log_dict({"train_neg_cos_sim": loss, "train_nn_acc": nn_acc}, on_epoch=True, sync_dist=True)
        return loss + out["loss"]
