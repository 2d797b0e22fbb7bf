"""MoCo v3 (Chen, Xie & He, ICCV 2021), solo-learn conventions; ResNet or ViT backbones."""

from __future__ import annotations

from typing import Any, Dict, List

import torch

from harl.heads import mlp, momentum_copy
from harl.losses import mocov3_loss
from harl.methods.base import BaseMomentumMethod, require_two_large_crops
from harl.methods.registry import METHODS
from harl.utils.distributed import gather_no_grad, rank


def _is_vit(backbone) -> bool:
    return hasattr(backbone, "patch_embed") and hasattr(backbone, "blocks")


@METHODS.register("mocov3")
class MoCoV3(BaseMomentumMethod):
    """Online backbone → projector → predictor gives queries; the EMA backbone + projector give keys;
    the other images of the global batch are the negatives (no queue).

    Heads as in the paper: Linear layers without bias, BN + ReLU on hidden layers, a BN without
    affine after the projector's output. The projector has 2 layers on a ResNet (solo-learn) and 3
    on a ViT; the predictor has 2.
    Loss: ctr(q₁, k₂) + ctr(q₂, k₁), ctr(q, k) = 2T · CE(q̂ k̂ᵀ / T, diagonal).
    """

    _DEFAULT_METHOD_KWARGS = {"proj_hidden_dim": 4096, "proj_output_dim": 256, "pred_hidden_dim": 4096,
                              "temperature": 0.2}

    def __init__(self, cfg):
        super().__init__(cfg)
        kw = cfg.method_kwargs
        self.temperature = float(kw.temperature)
        hidden, out_dim = int(kw.proj_hidden_dim), int(kw.proj_output_dim)
        proj_dims = [self.features_dim, hidden, out_dim]
        if _is_vit(self.backbone):
            proj_dims = [self.features_dim, hidden, hidden, out_dim]
        self.projector = mlp(proj_dims, bias=False, last_bn=True)
        self.momentum_projector = momentum_copy(self.projector)
        self.predictor = mlp([out_dim, int(kw.pred_hidden_dim), out_dim], bias=False)

    @classmethod
    def check_cfg(cls, cfg) -> None:
        super().check_cfg(cfg)

        require_two_large_crops(cfg)

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
        return {**out, "z": z, "q": self.predictor(z)}

    @torch.no_grad()
    def momentum_forward(self, X: torch.Tensor) -> Dict[str, torch.Tensor]:
        out = super().momentum_forward(X)
        return {**out, "z": self.momentum_projector(out["feats"])}

    def contrastive(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return mocov3_loss(q, k, self.temperature, gather_no_grad(k), offset=rank() * q.shape[0])

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        out = super().training_step(batch, batch_idx)
        q, k = out["q"], out["momentum_z"]
        loss = self.contrastive(q[0], k[1]) + self.contrastive(q[1], k[0])
        self.log("train_nce_loss", loss, on_epoch=True, sync_dist=True)
        return loss + out["loss"]
