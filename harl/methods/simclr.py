"""SimCLR (Chen et al., 2020), solo-learn conventions."""

from __future__ import annotations

from typing import Dict, List

import torch

from harl.heads import simclr_mlp
from harl.losses import nt_xent_loss
from harl.methods.base import BaseMethod
from harl.methods.projector import ProjectorMixin
from harl.methods.registry import METHODS
from harl.utils.distributed import gather_with_grad, rank


@METHODS.register("simclr")
class SimCLR(ProjectorMixin, BaseMethod):
    """Projector Linear–ReLU–Linear; NT-Xent over every crop, gathered across devices."""

    _DEFAULT_METHOD_KWARGS = {"proj_hidden_dim": 2048, "proj_output_dim": 256, "temperature": 0.2}

    def __init__(self, cfg):
        super().__init__(cfg)
        kw = cfg.method_kwargs
        self.temperature = float(kw.temperature)
        self.projector = simclr_mlp(self.features_dim, kw.proj_hidden_dim, kw.proj_output_dim)

    def multicrop_forward(self, X: torch.Tensor) -> Dict[str, torch.Tensor]:
        out = super().multicrop_forward(X)
        return {**out, "z": self.projector(out["feats"])}

    def instance_loss(self, z_views: List[torch.Tensor], indexes: torch.Tensor,
                      extra_neg_logits: torch.Tensor | None = None) -> torch.Tensor:
        """NT-Xent over the stacked views (each B×D), gathered across devices."""
        z = torch.cat(z_views)
        idx = indexes.repeat(len(z_views))
        z_all = gather_with_grad(z)
        idx_all = gather_with_grad(idx)
        return nt_xent_loss(z, idx, self.temperature, z_all, idx_all, offset=rank() * z.shape[0],
                            extra_neg_logits=extra_neg_logits)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        out = super().training_step(batch, batch_idx)
        loss = self.instance_loss(out["z"], batch[0])
        self.log("train_nce_loss", loss, on_epoch=True, sync_dist=True)
        return loss + out["loss"]
