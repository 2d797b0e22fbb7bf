"""W-MSE (Ermolov, Siarohin, Sangineto & Sebe, ICML 2021), solo-learn conventions."""

from __future__ import annotations

import torch

from harl.config_values import Int, Num
from harl.heads import mlp
from harl.losses import wmse_loss
from harl.methods.base import BaseMethod
from harl.methods.projector import ProjectorMixin
from harl.methods.registry import METHODS
from harl.errors import ConfigError


@METHODS.register("wmse")
class WMSE(ProjectorMixin, BaseMethod):
    """Projector Linear–BN–ReLU–Linear; W-MSE over every pair of large crops.

    Per whitening iteration the local batch is shuffled (``torch.randperm``) and cut into sub-batches
    of ``whitening_size``; each view's projections are Cholesky-whitened within each sub-batch and the
    loss is the mean of 2 − 2·cos over view pairs and iterations (:func:`harl.losses.wmse_loss`).
    The whitening is per process (not gathered), so ``optimizer.batch_size`` (per device) must be a
    multiple of ``whitening_size``, and ``whitening_size`` must exceed ``proj_output_dim`` for the
    sub-batch covariance to be invertible (unless ``whitening_eps`` > 0 shrinks it towards I).
    """

    _DEFAULT_METHOD_KWARGS = {"proj_hidden_dim": 1024, "proj_output_dim": 64, "whitening_iters": 1,
                              "whitening_size": 128, "whitening_eps": 0.0}
    _METHOD_KWARG_VALUES = {"whitening_iters": Int(ge=1), "whitening_size": Int(ge=2),
                            "whitening_eps": Num(ge=0, lt=1)}

    def __init__(self, cfg):
        super().__init__(cfg)
        kw = cfg.method_kwargs
        self.whitening_iters = int(kw.whitening_iters)
        self.whitening_size = int(kw.whitening_size)
        self.whitening_eps = float(kw.whitening_eps)
        self.projector = mlp([self.features_dim, kw.proj_hidden_dim, kw.proj_output_dim])

    @classmethod
    def check_cfg(cls, cfg) -> None:
        super().check_cfg(cfg)

        kw = cfg.method_kwargs
        if cfg.num_large_crops < 2 or cfg.num_small_crops:
            raise ConfigError(f"{cfg.method} needs at least 2 large crops and no small crops, config gives "
                              f"{cfg.num_large_crops} large and {cfg.num_small_crops} small")
        batch, size = int(cfg.optimizer.batch_size), int(kw.whitening_size)
        if batch < size or batch % size:
            raise ConfigError(f"method_kwargs.whitening_size ({size}) must divide the per-device batch "
                              f"(optimizer.batch_size = {batch}): W-MSE whitens sub-batches of that size")
        if size <= int(kw.proj_output_dim) and float(kw.whitening_eps) == 0:
            raise ConfigError(f"method_kwargs.whitening_size ({size}) must be larger than proj_output_dim "
                              f"({kw.proj_output_dim}) for the sub-batch covariance to be invertible "
                              f"(or set whitening_eps > 0)")

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        out = super().training_step(batch, batch_idx)
        z = out["z"][: self.num_large_crops]
        n = z[0].shape[0]
        perms = [torch.randperm(n, device=z[0].device) for _ in range(self.whitening_iters)]
        loss = wmse_loss(z, perms, self.whitening_size, self.whitening_eps)
        self.log("train_wmse_loss", loss, on_epoch=True, sync_dist=True)
        return loss + out["loss"]
