"""BYOL (Grill et al., 2020), solo-learn conventions."""

from __future__ import annotations

from typing import Any, Dict, List

import torch

from harl.heads import BYOL_HEAD_KWARGS, byol_heads
from harl.losses import byol_loss
from harl.methods.base import BaseMomentumMethod
from harl.methods.registry import METHODS


@METHODS.register("byol")
class BYOL(BaseMomentumMethod):
    """Online backbone → projector → predictor regresses the EMA target's projection.

    Loss: Σ_{v1 < large crops} Σ_{v2 ≠ v1} 2 − 2·mean cos(p_{v2}, sg z′_{v1}).
    """

    _DEFAULT_METHOD_KWARGS = dict(BYOL_HEAD_KWARGS)

    def __init__(self, cfg):
        super().__init__(cfg)
        self.projector, self.momentum_projector, self.predictor = byol_heads(self.features_dim, cfg.method_kwargs)

    @property
    def learnable_params(self) -> List[Dict[str, Any]]:
        return super().learnable_params + [
            {"name": "projector", "params": self.projector.parameters()},
            {"name": "predictor", "params": self.predictor.parameters()},
        ]

    @property
    def momentum_pairs(self):
        return super().momentum_pairs + [(self.projector, self.momentum_projector)]

    def forward(self, X: torch.Tensor) -> Dict[str, torch.Tensor]:
        out = super().forward(X)
        z = self.projector(out["feats"])
        return {**out, "z": z, "p": self.predictor(z)}

    def multicrop_forward(self, X: torch.Tensor) -> Dict[str, torch.Tensor]:
        out = super().multicrop_forward(X)
        z = self.projector(out["feats"])
        return {**out, "z": z, "p": self.predictor(z)}

    @torch.no_grad()
    def momentum_forward(self, X: torch.Tensor) -> Dict[str, torch.Tensor]:
        out = super().momentum_forward(X)
        return {**out, "z": self.momentum_projector(out["feats"])}

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        out = super().training_step(batch, batch_idx)
        P, Z_target = out["p"], out["momentum_z"]
        loss = 0.0
        for v1 in range(self.num_large_crops):
            for v2 in range(self.num_crops):
                if v2 != v1:
                    loss = loss + byol_loss(P[v2], Z_target[v1])
        with torch.no_grad():
            z_std = torch.nn.functional.normalize(torch.stack(out["z"][: self.num_large_crops]), dim=-1).std(dim=1).mean()
        self.log_dict({"train_neg_cos_sim": loss, "train_z_std": z_std}, on_epoch=True, sync_dist=True)
        return loss + out["loss"]
