"""``BaseMethod`` and ``BaseMomentumMethod``: the solo-learn method contract on Lightning 2.

A method subclass declares its ``method_kwargs`` (``_DEFAULT_METHOD_KWARGS``, merged along the
class hierarchy), builds its heads in ``__init__``, extends ``learnable_params`` (and
``momentum_pairs``), and implements ``training_step`` by calling ``super().training_step`` (which
runs the backbone on every crop, trains the online linear classifier on detached features and
returns per-crop outputs) and adding its SSL loss.

Batches (from :mod:`harl.data`):

- image methods: ``[indexes, [X_1..X_n], targets]`` with ``X_v`` B×3×S×S;
- mask methods (``uses_masks = True``): ``[indexes, [X_1..X_n], targets, extras]`` where
  ``extras = {"masks": [B×1×S×S uint8]·n, "coords": [B×4]·n}``.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, ClassVar, Dict, List, Sequence, Tuple

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from harl.backbones import BACKBONES, build_backbone
from harl.backbones.resnet_spec import dataset_cifar_stem
from harl.errors import ConfigError
from harl.heads import momentum_copy
from harl.methods.knn_monitor import WeightedKNN
from harl.optim import StepDecay, WarmupCosine, build_optimizer, cosine_increase, split_bias_and_norm
from harl.registry import METHODS


def accuracy_at_k(logits: torch.Tensor, targets: torch.Tensor, topk: Sequence[int] = (1, 5)) -> List[torch.Tensor]:
    """Top-k accuracy in % over samples with target ≠ −1 (0 when there are none)."""
    keep = targets != -1
    logits, targets = logits[keep], targets[keep]
    n = targets.shape[0]
    out = []
    for k in topk:
        k = min(k, logits.shape[1])
        if n == 0:
            out.append(torch.zeros((), device=logits.device))
            continue
        pred = logits.topk(k, dim=1).indices
        out.append((pred == targets.view(-1, 1)).any(dim=1).float().mean() * 100.0)
    return out


def narrowest_conv(module: nn.Module) -> int:
    """Fewest output channels of any Conv2d in ``module`` (a large number if none)."""
    widths = [m.out_channels for m in module.modules() if isinstance(m, nn.Conv2d)]
    return min(widths, default=1 << 30)


def require_two_large_crops(cfg: DictConfig) -> None:
    """Raise a :class:`ConfigError` unless the config gives exactly 2 large crops and no small ones
    (the methods whose loss pairs the two views only)."""
    if cfg.num_large_crops != 2 or cfg.num_small_crops:
        raise ConfigError(f"{cfg.method} needs exactly 2 large crops and no small crops, config gives "
                          f"{cfg.num_large_crops} large and {cfg.num_small_crops} small")


def backbone_kwargs(cfg: DictConfig) -> Dict[str, Any]:
    """``backbone.kwargs`` with the CIFAR-stem default from the dataset table filled in."""
    kwargs = dict(OmegaConf.to_container(cfg.backbone.kwargs, resolve=True)) if cfg.backbone.kwargs else {}
    if cfg.backbone.name in BACKBONES and "cifar_stem" not in kwargs:
        kwargs["cifar_stem"] = dataset_cifar_stem(cfg.data.dataset)
    return kwargs


def apply_backbone_overrides(cfg: DictConfig) -> DictConfig:
    """Write the method's :meth:`BaseMethod.backbone_overrides` into ``cfg.backbone.kwargs`` in place.

    Only for harl's torchvision ResNets (other backbones get the method's own error). Idempotent; a
    ``backbone.kwargs`` value that contradicts the method's option is a :class:`ConfigError`.
    """
    if cfg.method not in METHODS or cfg.backbone.name not in BACKBONES:
        return cfg
    over = METHODS.get(cfg.method).backbone_overrides(cfg.method_kwargs)
    if not over:
        return cfg
    if cfg.backbone.kwargs is None:
        cfg.backbone.kwargs = {}
    for key, value in over.items():
        given = cfg.backbone.kwargs.get(key)
        if given is not None and given != value:
            raise ConfigError(f"backbone.kwargs.{key} = {given!r} contradicts the method's options, which build "
                              f"{key} = {value!r}; remove backbone.kwargs.{key} (the method sets it)")
        cfg.backbone.kwargs[key] = value
    return cfg


class BaseMethod(pl.LightningModule):
    """Backbone + online linear classifier + kNN monitor + optimizer/scheduler from config."""

    #: batches carry ``extras`` with per-view masks and crop coordinates
    uses_masks: ClassVar[bool] = False
    _DEFAULT_METHOD_KWARGS: ClassVar[Dict[str, Any]] = {}
    _REQUIRED_METHOD_KWARGS: ClassVar[Tuple[str, ...]] = ()
    #: ranges of this method's kwargs that differ from the shared table
    #: (``harl.config_values.METHOD_KWARG_VALUES``), e.g. SwAV's ``queue_size`` may be 0 (no queue)
    _METHOD_KWARG_VALUES: ClassVar[Dict[str, Any]] = {}

    @classmethod
    def default_method_kwargs(cls) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            out.update(copy.deepcopy(klass.__dict__.get("_DEFAULT_METHOD_KWARGS", {})))
        return out

    @classmethod
    def method_kwarg_values(cls) -> Dict[str, Any]:
        """Value specs of ``method_kwargs`` declared by this class and its parents (later classes win)."""
        out: Dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            out.update(klass.__dict__.get("_METHOD_KWARG_VALUES", {}))
        return out

    @classmethod
    def required_method_kwargs(cls) -> Tuple[str, ...]:
        req: List[str] = []
        for klass in reversed(cls.__mro__):
            for key in klass.__dict__.get("_REQUIRED_METHOD_KWARGS", ()):
                if key not in req:
                    req.append(key)
        return tuple(req)

    @classmethod
    def backbone_overrides(cls, method_kwargs: Any) -> Dict[str, Any]:
        """``backbone.kwargs`` that this method's ``method_kwargs`` imply (e.g. HARL's
        ``feature_map: c5_stride1`` → ``c5_stride1: true``). :func:`apply_backbone_overrides`
        writes them into the run config, so ``args.json`` records the architecture actually built
        and every load path rebuilds it."""
        return {}

    @classmethod
    def apply_backbone_overrides(cls, cfg: DictConfig) -> DictConfig:
        """:func:`apply_backbone_overrides` for a config of this method (what :mod:`harl.config` calls)."""
        return apply_backbone_overrides(cfg)

    @classmethod
    def check_cfg(cls, cfg: DictConfig) -> None:
        """Method-specific checks beyond key validation (override and call super); run by
        :func:`harl.config.validate_cfg` at start-up and again by the constructor."""
        if cls.uses_masks:
            if not cfg.data.masks.enabled:
                raise ConfigError(f"method '{cfg.method}' needs masks: set data.masks.enabled=true and data.masks.root")
            if cfg.num_small_crops:
                raise ConfigError(f"method '{cfg.method}' does not support small crops (multi-crop)")

    def __init__(self, cfg: DictConfig):
        super().__init__()
        self.check_cfg(cfg)
        self.cfg = cfg
        self.save_hyperparameters({"cfg": OmegaConf.to_container(cfg, resolve=True)})
        self.method_kwargs = cfg.method_kwargs

        self.backbone = build_backbone(cfg.backbone.name, **backbone_kwargs(cfg))
        self.features_dim = int(self.backbone.num_features)
        self.num_classes = int(cfg.data.num_classes)
        self.classifier = nn.Linear(self.features_dim, self.num_classes)

        self.num_large_crops = int(cfg.num_large_crops)
        self.num_small_crops = int(cfg.num_small_crops)
        self.num_crops = self.num_large_crops + self.num_small_crops
        self.max_epochs = int(cfg.max_epochs)
        self.accumulate_grad_batches = int(cfg.accumulate_grad_batches or 1)
        # solo-learn multiplies lr-like values by the accumulation factor
        self.lr = float(cfg.optimizer.lr) * self.accumulate_grad_batches
        self.classifier_lr = float(cfg.optimizer.classifier_lr) * self.accumulate_grad_batches
        self.weight_decay = float(cfg.optimizer.weight_decay)
        self.channels_last = not cfg.performance.disable_channel_last

        self.knn = None
        if cfg.knn_eval.enabled:
            self.knn = WeightedKNN(k=cfg.knn_eval.k, T=cfg.knn_eval.T, distance_func=cfg.knn_eval.distance_func)
        #: this training step's logged values (detached) and first-crop features, read by the
        #: finite-training guard and the health monitor (:mod:`harl.guard`, :mod:`harl.health`)
        self.step_values: Dict[str, Any] = {}
        self.health_feats: Any = None

    def log(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        """``LightningModule.log`` that also keeps the training step's values in ``step_values``."""
        if self._trainer is not None and self.trainer.training:
            self.step_values[name] = value.detach() if isinstance(value, torch.Tensor) else value
        super().log(name, value, *args, **kwargs)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.step_values = {}

    # ------------------------------------------------------------------ optimisation
    @property
    def learnable_params(self) -> List[Dict[str, Any]]:
        return [
            {"name": "backbone", "params": self.backbone.parameters()},
            {"name": "classifier", "params": self.classifier.parameters(), "lr": self.classifier_lr, "weight_decay": 0.0},
        ]

    def configure_optimizers(self):
        cfg = self.cfg
        groups = [dict(g) for g in self.learnable_params]
        if cfg.optimizer.exclude_bias_n_norm_wd:
            groups = split_bias_and_norm(groups)
        static = [i for i, g in enumerate(groups) if g.get("static_lr", False)]
        opt_kwargs = OmegaConf.to_container(cfg.optimizer.kwargs, resolve=True)
        optimizer = build_optimizer(cfg.optimizer.name, groups, lr=self.lr, weight_decay=self.weight_decay, **opt_kwargs)
        sched = cfg.scheduler
        if sched.name == "none":
            return optimizer
        per_step = sched.interval == "step"
        total = int(self.trainer.estimated_stepping_batches) if per_step else self.max_epochs
        steps_per_epoch = total / self.max_epochs if per_step else 1
        if sched.name in ("warmup_cosine", "cosine"):
            warmup = int(round(sched.warmup_epochs * steps_per_epoch)) if sched.name == "warmup_cosine" else 0
            scheduler = WarmupCosine(optimizer, warmup_steps=warmup, total_steps=total,
                                     warmup_start_lr=sched.warmup_start_lr if warmup else 0.0,
                                     min_lr=sched.min_lr, static_groups=static)
        else:  # step
            milestones = [int(round(e * steps_per_epoch)) for e in (sched.lr_decay_steps or [])]
            scheduler = StepDecay(optimizer, milestones, static_groups=static)
        return [optimizer], [{"scheduler": scheduler, "interval": sched.interval, "frequency": 1}]

    # ------------------------------------------------------------------ forward
    def on_fit_start(self) -> None:
        if self.channels_last and self.device.type == "cpu" and narrowest_conv(self.backbone) < 8:
            # torch 2.14's CPU convolution hangs or corrupts the heap on channels_last convs this
            # narrow (seen with a width-4 ResNet-18); contiguous tensors are safe
            warnings.warn(f"channels_last is turned off on the CPU for this backbone (a convolution with "
                          f"{narrowest_conv(self.backbone)} channels; fewer than 8 is unsafe there)")
            self.channels_last = False
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x

    def forward(self, X: torch.Tensor) -> Dict[str, torch.Tensor]:
        """B×3×H×W → {"feats": B×C, "logits": B×num_classes (on detached feats)}."""
        feats = self.backbone(self._prepare(X))
        return {"feats": feats, "logits": self.classifier(feats.detach())}

    def forward_with_map(self, X: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Like :meth:`forward`, plus ``feat_map`` (B×C×h×w, the c5 map) for mask methods."""
        feat_map = self.backbone.forward_features(self._prepare(X))
        feats = self.backbone.pool(feat_map)
        return {"feats": feats, "feat_map": feat_map, "logits": self.classifier(feats.detach())}

    def multicrop_forward(self, X: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {"feats": self.backbone(self._prepare(X))}

    def _classifier_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if (targets != -1).any():
            return F.cross_entropy(logits, targets, ignore_index=-1)
        return logits.sum() * 0.0

    # ------------------------------------------------------------------ steps
    def crop_forward(self, X: torch.Tensor, view: int) -> Dict[str, torch.Tensor]:
        """Forward of one large crop; mask methods override to use :meth:`forward_with_map`."""
        return self(X)

    def training_step(self, batch, batch_idx: int) -> Dict[str, Any]:
        """Run every crop; return per-crop lists plus ``loss`` = the online classifier's CE."""
        _, X, targets = batch[0], batch[1], batch[2]
        X = [X] if isinstance(X, torch.Tensor) else list(X)
        if len(X) != self.num_crops:
            raise ValueError(f"batch has {len(X)} crops, config says {self.num_crops}")
        outs: Dict[str, List[torch.Tensor]] = {}
        for v, x in enumerate(X[: self.num_large_crops]):
            for key, value in self.crop_forward(x, v).items():
                outs.setdefault(key, []).append(value)
        for x in X[self.num_large_crops:]:
            for key, value in self.multicrop_forward(x).items():
                outs.setdefault(key, []).append(value)

        logits = torch.cat(outs["logits"])
        rep_targets = targets.repeat(self.num_large_crops)
        class_loss = self._classifier_loss(logits, rep_targets)
        acc1, acc5 = accuracy_at_k(logits, rep_targets)
        self.log_dict({"train_class_loss": class_loss, "train_acc1": acc1, "train_acc5": acc5},
                      on_epoch=True, sync_dist=True)
        if self.knn is not None:
            self.knn(train_features=outs["feats"][0].detach(), train_targets=targets)
        self.health_feats = outs["feats"][0].detach()
        outs["loss"] = class_loss
        return outs

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0):
        X, targets = batch[0], batch[1]
        out = self(X)
        loss = self._classifier_loss(out["logits"], targets)
        acc1, acc5 = accuracy_at_k(out["logits"], targets)
        n = X.shape[0]
        self.log_dict({"val_loss": loss, "val_acc1": acc1, "val_acc5": acc5}, on_epoch=True,
                      sync_dist=True, batch_size=n)
        if self.knn is not None and not self.trainer.sanity_checking:
            self.knn(test_features=out["feats"].detach(), test_targets=targets)
        return loss

    def on_validation_epoch_end(self) -> None:
        if self.knn is not None and not self.trainer.sanity_checking:
            acc1, acc5 = self.knn.compute()
            self.knn.reset()
            if acc1 == acc1:  # not NaN: both banks had labelled samples
                self.log_dict({"val_knn_acc1": acc1, "val_knn_acc5": acc5}, sync_dist=True)


class BaseMomentumMethod(BaseMethod):
    """Adds an EMA copy of the backbone (``momentum_backbone``) and the cosine τ schedule.

    ``momentum_pairs`` lists (online, target) module pairs; after every optimizer step
    ξ ← τ·ξ + (1−τ)·θ for their parameters (buffers are not averaged), with
    τ_k = final − (final − base)·(1 + cos(πk/K))/2, K = ``estimated_stepping_batches``.
    """

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self.momentum_backbone = momentum_copy(self.backbone)
        self.momentum_classifier = None
        if cfg.momentum.classifier:
            self.momentum_classifier = nn.Linear(self.features_dim, self.num_classes)
        self.base_tau = float(cfg.momentum.base_tau)
        self.final_tau = float(cfg.momentum.final_tau)
        self.cur_tau = self.base_tau
        self._last_step = 0

    @property
    def learnable_params(self) -> List[Dict[str, Any]]:
        params = super().learnable_params
        if self.momentum_classifier is not None:
            params.append({"name": "momentum_classifier", "params": self.momentum_classifier.parameters(),
                           "lr": self.classifier_lr, "weight_decay": 0.0})
        return params

    @property
    def momentum_pairs(self) -> List[Tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.momentum_backbone)]

    @torch.no_grad()
    def momentum_forward(self, X: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {"feats": self.momentum_backbone(self._prepare(X))}

    @torch.no_grad()
    def momentum_forward_with_map(self, X: torch.Tensor) -> Dict[str, torch.Tensor]:
        feat_map = self.momentum_backbone.forward_features(self._prepare(X))
        return {"feats": self.momentum_backbone.pool(feat_map), "feat_map": feat_map}

    def momentum_crop_forward(self, X: torch.Tensor, view: int) -> Dict[str, torch.Tensor]:
        return self.momentum_forward(X)

    def on_train_start(self) -> None:
        self._last_step = self.trainer.global_step
        self.cur_tau = self._tau_at(self.trainer.global_step)

    def _tau_at(self, step: int) -> float:
        total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 1
        return cosine_increase(step, total, self.base_tau, self.final_tau)

    def training_step(self, batch, batch_idx: int) -> Dict[str, Any]:
        outs = super().training_step(batch, batch_idx)
        X, targets = batch[1], batch[2]
        X = [X] if isinstance(X, torch.Tensor) else list(X)
        mom: Dict[str, List[torch.Tensor]] = {}
        for v, x in enumerate(X[: self.num_large_crops]):
            for key, value in self.momentum_crop_forward(x, v).items():
                mom.setdefault(key, []).append(value)
        for key, value in mom.items():
            outs[f"momentum_{key}"] = value
        if self.momentum_classifier is not None:
            logits = torch.cat([self.momentum_classifier(f.detach()) for f in mom["feats"]])
            rep = targets.repeat(self.num_large_crops)
            loss = self._classifier_loss(logits, rep)
            acc1, acc5 = accuracy_at_k(logits, rep)
            self.log_dict({"train_momentum_class_loss": loss, "train_momentum_acc1": acc1,
                           "train_momentum_acc5": acc5}, on_epoch=True, sync_dist=True)
            outs["loss"] = outs["loss"] + loss
        return outs

    @torch.no_grad()
    def ema_update(self, tau: float) -> None:
        for online, target in self.momentum_pairs:
            online_params = [p.detach() for p in online.parameters()]
            target_params = [p for p in target.parameters()]
            torch._foreach_mul_(target_params, tau)
            torch._foreach_add_(target_params, online_params, alpha=1.0 - tau)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        step = self.trainer.global_step
        if step > self._last_step:
            self.ema_update(self.cur_tau)
            self.log("tau", self.cur_tau)
            self.cur_tau = self._tau_at(step)
        self._last_step = step
