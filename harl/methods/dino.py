"""DINO (Caron et al., ICCV 2021), solo-learn conventions; ResNet or ViT backbones, multi-crop."""

from __future__ import annotations

from typing import Any, Dict, List

import torch
import torch.distributed as dist

from harl.heads import DINOHead, momentum_copy
from harl.losses import dino_loss
from harl.methods.base import BaseMomentumMethod
from harl.methods.registry import METHODS
from harl.utils.distributed import is_distributed, world_size
from harl.errors import ConfigError


def teacher_temperature_at(epoch: int, warmup_temperature: float, temperature: float, warmup_epochs: int) -> float:
    """Linear warm-up of the teacher temperature from ``warmup_temperature`` to ``temperature``
    over ``warmup_epochs`` epochs (epoch 0 → warmup value), constant afterwards."""
    if warmup_epochs <= 0 or epoch >= warmup_epochs:
        return temperature
    return warmup_temperature + (temperature - warmup_temperature) * epoch / warmup_epochs


@METHODS.register("dino")
class DINO(BaseMomentumMethod):
    """Self-distillation: the student (online backbone + :class:`~harl.heads.DINOHead`) sees every
    crop, the EMA teacher sees the large crops; loss = mean over (teacher crop t, student crop
    s ≠ t) of CE(softmax((g_t − c)/τ_t), softmax(g_s/τ_s)). The centre c follows the mean teacher
    output with momentum 0.9; τ_t warms up linearly. The last layer gets no gradient during the
    first ``freeze_last_layer`` epochs; ``clip_grad`` > 0 clips each parameter's gradient norm.
    """

    _DEFAULT_METHOD_KWARGS = {"proj_hidden_dim": 2048, "proj_output_dim": 256, "num_prototypes": 4096,
                              "norm_last_layer": True, "clip_grad": 0.0, "freeze_last_layer": 1,
                              "student_temperature": 0.1, "teacher_temperature": 0.07,
                              "warmup_teacher_temperature": 0.04, "warmup_teacher_temperature_epochs": 50,
                              "center_momentum": 0.9}

    def __init__(self, cfg):
        super().__init__(cfg)
        kw = cfg.method_kwargs
        self.clip_grad = float(kw.clip_grad)
        self.freeze_last_layer = int(kw.freeze_last_layer)
        self.student_temperature = float(kw.student_temperature)
        self.center_momentum = float(kw.center_momentum)
        self.head = DINOHead(self.features_dim, kw.proj_hidden_dim, kw.proj_output_dim, kw.num_prototypes,
                             norm_last_layer=bool(kw.norm_last_layer))
        self.momentum_head = momentum_copy(self.head)
        self.register_buffer("center", torch.zeros(1, int(kw.num_prototypes)))

    @classmethod
    def check_cfg(cls, cfg) -> None:
        super().check_cfg(cfg)

        kw = cfg.method_kwargs
        if cfg.num_large_crops < 2:
            raise ConfigError(f"{cfg.method} needs at least 2 large crops, config gives {cfg.num_large_crops}")
        for key in ("student_temperature", "teacher_temperature", "warmup_teacher_temperature"):
            if float(kw[key]) <= 0:
                raise ConfigError(f"method_kwargs.{key} must be > 0, got {kw[key]}")
        if not 0.0 <= float(kw.center_momentum) < 1.0:
            raise ConfigError(f"method_kwargs.center_momentum must be in [0, 1), got {kw.center_momentum}")

    @property
    def teacher_temperature(self) -> float:
        kw = self.method_kwargs
        return teacher_temperature_at(self.current_epoch, float(kw.warmup_teacher_temperature),
                                      float(kw.teacher_temperature), int(kw.warmup_teacher_temperature_epochs))

    @property
    def learnable_params(self) -> List[Dict[str, Any]]:
        return super().learnable_params + [{"name": "head", "params": self.head.parameters()}]

    @property
    def momentum_pairs(self):
        return super().momentum_pairs + [(self.head, self.momentum_head)]

    def forward(self, X: torch.Tensor) -> Dict[str, torch.Tensor]:
        out = super().forward(X)
        return {**out, "p": self.head(out["feats"])}

    def multicrop_forward(self, X: torch.Tensor) -> Dict[str, torch.Tensor]:
        out = super().multicrop_forward(X)
        return {**out, "p": self.head(out["feats"])}

    @torch.no_grad()
    def momentum_forward(self, X: torch.Tensor) -> Dict[str, torch.Tensor]:
        out = super().momentum_forward(X)
        return {**out, "p": self.momentum_head(out["feats"])}

    @torch.no_grad()
    def update_center(self, teacher: List[torch.Tensor]) -> None:
        """c ← m·c + (1 − m)·mean of the teacher outputs over every large crop and device."""
        t = torch.cat(teacher).float()
        batch_sum = t.sum(dim=0, keepdim=True)
        count = torch.tensor(float(t.shape[0]), device=t.device)
        if is_distributed() and world_size() > 1:
            dist.all_reduce(batch_sum)
            dist.all_reduce(count)
        self.center.mul_(self.center_momentum).add_(batch_sum / count, alpha=1 - self.center_momentum)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        out = super().training_step(batch, batch_idx)
        tau_t = self.teacher_temperature
        loss = dino_loss(out["p"], out["momentum_p"], self.center, self.student_temperature, tau_t)
        self.update_center(out["momentum_p"])
        self.log_dict({"train_dino_loss": loss, "teacher_temperature": tau_t}, on_epoch=True, sync_dist=True)
        return loss + out["loss"]

    def on_after_backward(self) -> None:
        if self.current_epoch < self.freeze_last_layer:
            for p in self.head.last_layer.parameters():
                p.grad = None

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.clip_grad > 0:
            for p in self.backbone.parameters():
                if p.grad is not None:
                    norm = p.grad.detach().norm(2)
                    scale = self.clip_grad / (norm + 1e-6)
                    if scale < 1:
                        p.grad.mul_(scale)
