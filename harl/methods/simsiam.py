"""SimSiam (Chen & He, CVPR 2021), solo-learn conventions."""

from __future__ import annotations

import warnings
from typing import Any, Dict, List

import torch

from harl.heads import mlp
from harl.losses import simsiam_loss
from harl.methods.base import BaseMethod, require_two_large_crops
from harl.methods.registry import METHODS


@METHODS.register("simsiam")
class SimSiam(BaseMethod):
    """Projector (3 layers, BN on every layer, the output BN without affine) and predictor
    (Linear–BN–ReLU–Linear bottleneck); no momentum encoder, the stop-gradient prevents collapse.

    Loss: ½[−cos(p₁, sg z₂) − cos(p₂, sg z₁)]. The predictor keeps a constant learning rate
    (``static_lr``), as in the paper.
    """

    #: ``temperature`` is accepted because solo-learn's shipped SimSiam recipes set it; SimSiam has none
    _DEFAULT_METHOD_KWARGS = {"proj_hidden_dim": 2048, "proj_output_dim": 2048, "pred_hidden_dim": 512,
                              "temperature": None}

    def __init__(self, cfg):
        super().__init__(cfg)
        kw = cfg.method_kwargs
        if kw.temperature is not None:
            warnings.warn("method_kwargs.temperature has no meaning for simsiam (solo-learn's recipes set it and "
                          "ignore it); it is ignored")
        self.projector = mlp([self.features_dim, kw.proj_hidden_dim, kw.proj_hidden_dim, kw.proj_output_dim],
                             bias=False, last_bn=True)
        self.predictor = mlp([kw.proj_output_dim, kw.pred_hidden_dim, kw.proj_output_dim], bias=False)

    @classmethod
    def check_cfg(cls, cfg) -> None:
        super().check_cfg(cfg)

        require_two_large_crops(cfg)

    @property
    def learnable_params(self) -> List[Dict[str, Any]]:
        return super().learnable_params + [
            {"name": "projector", "params": self.projector.parameters()},
            {"name": "predictor", "params": self.predictor.parameters(), "static_lr": True},
        ]

    def forward(self, X: torch.Tensor) -> Dict[str, torch.Tensor]:
        out = super().forward(X)
        z = self.projector(out["feats"])
        return {**out, "z": z, "p": self.predictor(z)}

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        out = super().training_step(batch, batch_idx)
        (z1, z2), (p1, p2) = out["z"][:2], out["p"][:2]
        loss = (simsiam_loss(p1, z2) + simsiam_loss(p2, z1)) / 2
        with torch.no_grad():
            z_std = torch.nn.functional.normalize(torch.stack([z1, z2]), dim=-1).std(dim=1).mean()
        self.log_dict({"train_neg_cos_sim": loss, "train_z_std": z_std}, on_epoch=True, sync_dist=True)
        return loss + out["loss"]
