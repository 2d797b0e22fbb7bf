"""MoCo v2+ (Chen et al., 2020; solo-learn's symmetric variant)."""

from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F

from harl.heads import simclr_mlp
from harl.losses import moco_loss
from harl.methods.base import BaseMomentumMethod
from harl.methods.projector import MomentumProjectorMixin
from harl.methods.registry import METHODS
from harl.utils.distributed import gather_no_grad
from harl.config import num_devices
from harl.errors import ConfigError


@METHODS.register("mocov2plus")
class MoCoV2Plus(MomentumProjectorMixin, BaseMomentumMethod):
    """Queries from the online projector, keys from the EMA projector, one queue per view.

    Loss: ½[CE([q₁·k₂, q₁·Q₂]/T, 0) + CE([q₂·k₁, q₂·Q₁]/T, 0)]; gathered k₁, k₂ are enqueued
    FIFO after the loss.
    """

    _DEFAULT_METHOD_KWARGS = {"proj_hidden_dim": 2048, "proj_output_dim": 256, "temperature": 0.2,
                              "queue_size": 65536}

    def __init__(self, cfg):
        super().__init__(cfg)
        kw = cfg.method_kwargs
        self.temperature = float(kw.temperature)
        self.queue_size = int(kw.queue_size)
        self.projector = simclr_mlp(self.features_dim, kw.proj_hidden_dim, kw.proj_output_dim)
        self.make_momentum_projector()
        self.register_buffer("queue", F.normalize(torch.randn(2, kw.proj_output_dim, self.queue_size), dim=1))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @classmethod
    def check_cfg(cls, cfg) -> None:
        super().check_cfg(cfg)

        global_batch = int(cfg.optimizer.batch_size) * num_devices(cfg) * int(cfg.num_nodes)
        if int(cfg.method_kwargs.queue_size) % global_batch != 0:
            raise ConfigError(f"method_kwargs.queue_size ({cfg.method_kwargs.queue_size}) must be divisible by the "
                              f"global batch size ({global_batch})")
        if cfg.num_large_crops != 2:
            raise ConfigError(f"{cfg.method} needs exactly 2 large crops, config gives {cfg.num_large_crops}")

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """keys: 2×B×D (per view) → queue[:, :, ptr:ptr+B]."""
        n = keys.shape[1]
        ptr = int(self.queue_ptr)
        if self.queue_size % n != 0:
            raise RuntimeError(f"queue_size {self.queue_size} is not divisible by the global batch {n}")
        self.queue[:, :, ptr:ptr + n] = keys.permute(0, 2, 1)
        self.queue_ptr[0] = (ptr + n) % self.queue_size

    def instance_loss(self, z: List[torch.Tensor], k: List[torch.Tensor]) -> torch.Tensor:
        queue = self.queue.clone().detach()
        return (moco_loss(z[0], k[1], queue[1], self.temperature) + moco_loss(z[1], k[0], queue[0], self.temperature)) / 2

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        out = super().training_step(batch, batch_idx)
        k = [F.normalize(x, dim=-1) for x in out["momentum_z"]]
        loss = self.instance_loss(out["z"], k)
        self.enqueue(torch.stack([gather_no_grad(k[0]), gather_no_grad(k[1])]))
        self.log("train_nce_loss", loss, on_epoch=True, sync_dist=True)
        return loss + out["loss"]
