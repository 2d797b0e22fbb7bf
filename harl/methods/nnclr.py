"""NNCLR (Dwibedi, Aytar, Tompson, Sermanet & Zisserman, ICCV 2021), solo-learn conventions."""

from __future__ import annotations

from typing import Any, Dict, List

import torch

from harl.heads import mlp
from harl.losses import nnclr_loss
from harl.methods.base import BaseMethod
from harl.methods.registry import METHODS
from harl.methods.support_set import SupportSet, check_support_set
from harl.utils.distributed import gather_with_grad, rank


@METHODS.register("nnclr")
class NNCLR(BaseMethod):
    """Projector (3 layers, BN on every layer) and predictor (Linear–BN–ReLU–Linear); the positive of
    view 1 is the nearest neighbour of its projection in a support set (a FIFO queue of earlier
    projections of view 1, gathered over devices), contrasted against the predictions of view 2.

    Loss: ½[CE(nn(z₁)·p₂ᵀ/T) + CE(nn(z₂)·p₁ᵀ/T)] with in-batch negatives; z₁ is enqueued after the loss.
    """

    _DEFAULT_METHOD_KWARGS = {"proj_hidden_dim": 2048, "proj_output_dim": 256, "pred_hidden_dim": 4096,
                              "temperature": 0.2, "queue_size": 65536}

    def __init__(self, cfg):
        super().__init__(cfg)
        kw = cfg.method_kwargs
        self.temperature = float(kw.temperature)
        self.queue_size = int(kw.queue_size)
        out_dim = int(kw.proj_output_dim)
        self.projector = mlp([self.features_dim, kw.proj_hidden_dim, kw.proj_hidden_dim, out_dim])
        self.projector.append(torch.nn.BatchNorm1d(out_dim))
        self.predictor = mlp([out_dim, kw.pred_hidden_dim, out_dim])
        self.support = SupportSet(self.queue_size, out_dim)

    @classmethod
    def check_cfg(cls, cfg) -> None:
        super().check_cfg(cfg)
        check_support_set(cfg)

    @property
    def learnable_params(self) -> List[Dict[str, Any]]:
        return super().learnable_params + [
            {"name": "projector", "params": self.projector.parameters()},
            {"name": "predictor", "params": self.predictor.parameters()},
        ]

    def forward(self, X: torch.Tensor) -> Dict[str, torch.Tensor]:
        out = super().forward(X)
        z = self.projector(out["feats"])
        return {**out, "z": z, "p": self.predictor(z)}

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        out = super().training_step(batch, batch_idx)
        targets = batch[2]
        (z1, z2), (p1, p2) = out["z"][:2], out["p"][:2]
        nn1, idx1 = self.support.nearest(z1)
        nn2, _ = self.support.nearest(z2)
        offset = rank() * p1.shape[0]
        loss = (nnclr_loss(nn1, p2, self.temperature, gather_with_grad(p2), offset)
                + nnclr_loss(nn2, p1, self.temperature, gather_with_grad(p1), offset)) / 2
        nn_acc = self.support.accuracy(idx1, targets)
        self.support.push(z1, targets)
        self.log_dict({"train_nnclr_loss": loss, "train_nn_acc": nn_acc}, on_epoch=True, sync_dist=True)
        return loss + out["loss"]
