"""SupCon (Khosla et al., NeurIPS 2020): supervised contrastive pretraining, solo-learn conventions."""

from __future__ import annotations

from typing import Dict

import torch

from harl.heads import simclr_mlp
from harl.losses import supcon_loss
from harl.methods.base import BaseMethod
from harl.methods.projector import ProjectorMixin
from harl.methods.registry import METHODS
from harl.utils.distributed import gather_no_grad, gather_with_grad, rank
from harl.errors import ConfigError


@METHODS.register("supcon")
class SupCon(ProjectorMixin, BaseMethod):
    """Projector Linear–ReLU–Linear (2048 → 128); the supervised contrastive loss over every crop.

    Positives of an anchor are every other crop with its label — its own other views and the views of
    every same-class image — in the batch gathered from every device (embeddings with gradient, labels
    alongside); :func:`harl.losses.supcon_loss`. Needs labels: ``data.no_labels`` is a config error and
    a batch with unlabelled samples (target −1) stops the step. Multi-crop supported.
    """

    _DEFAULT_METHOD_KWARGS = {"proj_hidden_dim": 2048, "proj_output_dim": 128, "temperature": 0.1}

    def __init__(self, cfg):
        super().__init__(cfg)
        kw = cfg.method_kwargs
        self.temperature = float(kw.temperature)
        self.projector = simclr_mlp(self.features_dim, kw.proj_hidden_dim, kw.proj_output_dim)

    @classmethod
    def check_cfg(cls, cfg) -> None:
        super().check_cfg(cfg)

        if cfg.data.no_labels:
            raise ConfigError(f"{cfg.method} is supervised: it needs labels, but data.no_labels is true")
        if cfg.num_large_crops + cfg.num_small_crops < 2:
            raise ConfigError(f"{cfg.method} needs at least 2 crops per image (the other views are positives)")

    def multicrop_forward(self, X: torch.Tensor) -> Dict[str, torch.Tensor]:
        out = super().multicrop_forward(X)
        return {**out, "z": self.projector(out["feats"])}

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        targets = batch[2]
        if bool((targets < 0).any()):
            raise ValueError(f"{self.cfg.method} needs a label for every sample, the batch has "
                             f"{int((targets < 0).sum())} unlabelled (target -1)")
        out = super().training_step(batch, batch_idx)
        z = torch.cat(out["z"])
        labels = targets.repeat(len(out["z"]))
        loss = supcon_loss(z, labels, self.temperature, gather_with_grad(z), gather_no_grad(labels),
                           offset=rank() * z.shape[0])
        self.log("train_supcon_loss", loss, on_epoch=True, sync_dist=True)
        return loss + out["loss"]
