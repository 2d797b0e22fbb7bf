"""ReSSL (Zheng, You, Wang, Qian, Zhang & Xu, NeurIPS 2021), solo-learn conventions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harl.heads import simclr_mlp
from harl.losses import ressl_loss
from harl.methods.base import BaseMomentumMethod
from harl.methods.projector import MomentumProjectorMixin
from harl.methods.registry import METHODS
from harl.utils.distributed import gather_no_grad
from harl.config import num_devices
from harl.errors import ConfigError

#: method_kwargs that solo-learn's shipped ReSSL recipes carry from an older schema, and the
#: ``momentum`` keys they duplicate (harl reads the ``momentum`` block)
_LEGACY = {"base_tau_momentum": "base_tau", "final_tau_momentum": "final_tau", "momentum_classifier": "classifier"}


@METHODS.register("ressl")
class ReSSL(MomentumProjectorMixin, BaseMomentumMethod):
    """Relational self-supervised learning: the online projection q of view 1 (the strong
    augmentation) must reproduce, over a queue of earlier keys, the similarity distribution of the
    EMA projection k of view 2 (the weak augmentation), sharpened by a lower temperature.

    Loss: −Σ_j softmax(k·Q_j/τ_k) log softmax(q·Q_j/τ_q); k is enqueued (FIFO, gathered) after the loss.
    """

    _DEFAULT_METHOD_KWARGS = {"proj_hidden_dim": 4096, "proj_output_dim": 256, "temperature_q": 0.1,
                              "temperature_k": 0.04, "queue_size": 65536,
                              "base_tau_momentum": None, "final_tau_momentum": None, "momentum_classifier": None}

    def __init__(self, cfg):
        super().__init__(cfg)
        kw = cfg.method_kwargs
        self.temperature_q = float(kw.temperature_q)
        self.temperature_k = float(kw.temperature_k)
        self.queue_size = int(kw.queue_size)
        self.projector = simclr_mlp(self.features_dim, kw.proj_hidden_dim, kw.proj_output_dim)
        self.make_momentum_projector()
        self.register_buffer("queue", F.normalize(torch.randn(self.queue_size, kw.proj_output_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @classmethod
    def check_cfg(cls, cfg) -> None:
        super().check_cfg(cfg)

        kw = cfg.method_kwargs
        if cfg.num_large_crops != 2 or cfg.num_small_crops:
            raise ConfigError(f"{cfg.method} needs exactly 2 large crops (strong, weak) and no small crops, config "
                              f"gives {cfg.num_large_crops} large and {cfg.num_small_crops} small")
        global_batch = int(cfg.optimizer.batch_size) * num_devices(cfg) * int(cfg.num_nodes)
        if int(kw.queue_size) < 1 or int(kw.queue_size) % global_batch != 0:
            raise ConfigError(f"method_kwargs.queue_size ({kw.queue_size}) must be a positive multiple of the global "
                              f"batch size ({global_batch})")
        for legacy, key in _LEGACY.items():
            value = kw.get(legacy)
            if value is not None and value != cfg.momentum[key]:
                raise ConfigError(f"method_kwargs.{legacy} ({value}) disagrees with momentum.{key} "
                                  f"({cfg.momentum[key]}); harl reads momentum.{key}: set it there")

    @torch.no_grad()
    def enqueue(self, k: torch.Tensor) -> None:
        """k: N×D gathered unit keys → queue[ptr:ptr+N]."""
        n = k.shape[0]
        ptr = int(self.queue_ptr)
        self.queue[ptr:ptr + n] = k.to(self.queue.dtype)
        self.queue_ptr[0] = (ptr + n) % self.queue_size

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        out = super().training_step(batch, batch_idx)
        q, k = out["z"][0], out["momentum_z"][1]
        loss = ressl_loss(q, k, self.queue.clone(), self.temperature_q, self.temperature_k)
        self.enqueue(gather_no_grad(F.normalize(k.detach().float(), dim=-1)))
        self.log("train_ressl_loss", loss, on_epoch=True, sync_dist=True)
        return loss + out["loss"]
