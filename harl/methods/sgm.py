"""Saliency-guided masking (Chin et al., WACV 2024): ``sgm_mocov2`` and ``sgm_simclr``.

A contrastive base (MoCo v2+ or SimCLR) whose query views are masked with noise in cells chosen by
a saliency map, and whose loss gains *hard negatives*: copies of the key view with its salient
cells masked (docs/methods/sgm.md)::

    x̃_v  = HPF(x_v) (sgm_strategy hp) | x_v (blur, mean)       normalised views, v = 1, 2
    fg_v  = saliency(x_v)                                       B×G×G bool (source: sgm_saliency)
    q_v   = f_q(mask_pos(x̃_v, fg_v))                           query: fg/bg-balanced masking
    k_v   = f_k(x̃_v)                                            key: unmasked (enqueued)
    t_v,m = f_k(mask_neg(x̃_v, fg_v)), m = 1..M                 hard negatives, no gradient, not enqueued
    MoCo:   L = ½ Σ_v CE([q_v·k_v', q_v·Q_v', α·q_v·t_v',1..M] / T, 0)        (v' = the other view)
    SimCLR: NT-Xent(q_1, q_2) with α·q_v·t_v',m / T added to each anchor's denominator

The masking operators, the saliency rules and the filters are the pure functions of
:mod:`harl.data.masking_ops` and :mod:`harl.data.filters`; this file wires them into the two
methods. Saliency sources (``method_kwargs.sgm_saliency``, registry :data:`SALIENCY_SOURCES`):

* ``supervised_r50`` (faithful): a frozen torchvision ResNet-50 whose ImageNet weights the user
  supplies (``sgm_saliency_weights``; nothing is downloaded). Channel sum of its c5 map, a cell is
  fg iff ``A ≥ mean(A) − 0.6·std(A)``. Run on the un-filtered view, re-normalised to ImageNet
  statistics.
* ``checkpoint``: the same rule on a frozen backbone from any checkpoint (harl / solo-learn
  ``.ckpt``, a ``backbone.pth``, a torchvision or timm state dict); the architecture comes from
  ``sgm_saliency_backbone`` (+ ``sgm_saliency_backbone_kwargs``) or from the checkpoint's own run
  config.
* ``heuristic_mask`` (label-free): the view's joint mask (harl-masks output, or fashion-scenes'
  ground truth); a cell is fg iff its fg fraction > ``sgm_mask_threshold`` (0.5). Needs
  ``data.masks.enabled: true``; only this source makes the method read masks.
* ``online`` (label-free): the same channel-sum rule on the momentum encoder's c5 map of the
  encoder input x̃_v (MoCo: the key forward, so it costs nothing extra; SimCLR: a no-grad forward
  of the online encoder).

The frozen saliency network is not a sub-module: it is not trained, not averaged, not moved by
``.to()`` (it follows the batch's device on first use) and not written into checkpoints (it is
re-loaded from ``sgm_saliency_weights``).

A model trained on high-pass inputs applies the same filter in :meth:`SGMMixin.forward` (so the
online classifier and the kNN monitor see what the encoder was trained on) and records it in the
run config (``method_kwargs.sgm_strategy: hp``, ``hp_kernel``, ``hp_sigma``) and in the Lightning
checkpoint (``checkpoint["harl_input_filter"]``); ``harl-linear`` applies it to train and val.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from harl.data.filters import HighPass
from harl.data.registry import IMAGENET_MEAN, IMAGENET_STD
from harl.data.masking_ops import (
    SGMMaskConfig, hard_negative_logits, saliency_from_activation, saliency_from_mask, sgm_mask_batch,
)
from harl.losses import moco_loss
from harl.methods.base import BaseMethod, accuracy_at_k
from harl.methods.mocov2plus import MoCoV2Plus
from harl.methods.registry import METHODS
from harl.methods.simclr import SimCLR
from harl.registry import Registry, close_match_hint
from harl.utils.distributed import gather_no_grad
from harl.backbones import build_backbone
from harl.checkpoint import backbone_state_dict, read_state_dict, strict_load
from harl.data.loaders import dataset_stats
from harl.errors import ConfigError
from harl.eval.pretrained import infer_resnet_architecture, load_pretrained_backbone

log = logging.getLogger("harl")

__all__ = [
    "SGM_DEFAULT_KWARGS", "SALIENCY_SOURCES", "INPUT_FILTERS", "SaliencyContext", "SGMViews", "SGMMixin",
    "SGMMoCoV2", "SGMSimCLR", "input_filter_from_kwargs", "load_frozen_backbone",
]

#: ``method_kwargs`` shared by both SGM methods (docs/methods/sgm.md, plus the saliency-source settings)
SGM_DEFAULT_KWARGS: Dict[str, Any] = {
    "proj_hidden_dim": 2048, "proj_output_dim": 128, "temperature": 0.2,
    # fill strategy and filters
    "sgm_strategy": "hp", "hp_kernel": 11, "hp_sigma": 5.0, "fill_blur_kernel": 31, "fill_blur_sigma": 10.0,
    # saliency
    "sgm_saliency": "supervised_r50",
    "sgm_saliency_weights": None,          # supervised_r50 / checkpoint: the weights file
    "sgm_saliency_backbone": None,         # checkpoint: architecture (else from the checkpoint's run config)
    "sgm_saliency_backbone_kwargs": None,  # checkpoint: its backbone kwargs
    "sgm_saliency_input_size": None,       # frozen nets: resize views to this side first (None: as they are)
    "sgm_mask_threshold": 0.5,             # heuristic_mask: fg cell iff fg fraction > this
    "grid_size": 7, "fg_std_factor": 0.6,
    # masking
    "fg_cap": 0.55, "pos_ratio": [0.05, 0.25], "neg_ratio": [0.4, 0.7], "pos_noise_std": 0.18,
    "neg_noise_std": 0.14, "focal_prob": 0.2, "pos_focal_frac": 0.893, "neg_focal_frac": 0.580,
    "spatial_prob": 0.3, "noise_per_image": False,
    # hard negatives
    "hard_neg_scale": 2.0, "num_hard_negatives": 1,
}


def _config_error(msg: str):
    return ConfigError(msg)


# ---------------------------------------------------------------------------------------------
# input filter (what the encoder sees)
# ---------------------------------------------------------------------------------------------

#: sgm_strategy → builder(method_kwargs) of the encoder's input filter. ``hp`` trains on
#: high-passed views (masked cells get noise); ``blur`` / ``mean`` train on the views as they are.
INPUT_FILTERS: Registry = Registry("SGM input filter (sgm_strategy)")
INPUT_FILTERS.register("hp", lambda kw: HighPass(int(kw["hp_kernel"]), float(kw["hp_sigma"])))
INPUT_FILTERS.register("blur", lambda kw: nn.Identity())
INPUT_FILTERS.register("mean", lambda kw: nn.Identity())


def input_filter_from_kwargs(method_kwargs) -> nn.Module:
    """The module applied to normalised views before the encoder (``HighPass`` for ``hp``)."""
    return INPUT_FILTERS.get(str(method_kwargs["sgm_strategy"]))(method_kwargs)


# ---------------------------------------------------------------------------------------------
# saliency sources
# ---------------------------------------------------------------------------------------------


@dataclass
class SaliencyContext:
    """What a saliency source may look at for one training batch.

    raw: normalised, un-filtered views (each B×3×S×S); inputs: the encoder inputs (high-passed
    for ``hp``); extras: ``batch[3]`` (``{"masks": [B×1×S×S uint8], "coords": ...}``) or None;
    maps: c5 maps (B×C×h×w) of ``inputs[v]`` already computed by the momentum encoder this step.
    """

    raw: List[torch.Tensor]
    inputs: List[torch.Tensor]
    extras: Optional[Dict[str, Any]] = None
    maps: Dict[int, torch.Tensor] = field(default_factory=dict)


class SaliencySource:
    """Base class: ``source(method, ctx, view)`` → B×G×G bool fg cells of that view."""

    #: the source reads ``batch[3]["masks"]`` (requires data.masks.enabled)
    needs_masks: bool = False
    #: the source wants the momentum encoder's c5 map of the key input (MoCo computes it first)
    uses_key_maps: bool = False

    def __init__(self, cfg: DictConfig):
        kw = cfg.method_kwargs
        self.grid_size = int(kw.grid_size)
        self.std_factor = float(kw.fg_std_factor)

    @classmethod
    def check_cfg(cls, cfg: DictConfig) -> None:
        if cls.needs_masks and not cfg.data.masks.enabled:
            raise _config_error(f"method_kwargs.sgm_saliency '{cfg.method_kwargs.sgm_saliency}' reads the views' "
                                f"masks: set data.masks.enabled=true (and data.masks.root)")

    def __call__(self, method: "SGMMixin", ctx: SaliencyContext, view: int) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


SALIENCY_SOURCES: Registry = Registry("SGM saliency source (sgm_saliency)")


def _view_stats(cfg: DictConfig) -> List[Tuple[Tuple[float, ...], Tuple[float, ...]]]:
    """(mean, std) of every view, in batch order (pipelines in order, ``num_crops`` each)."""
    out = []
    for aug in cfg.augmentations:
        out += [dataset_stats(cfg.data.dataset, aug)] * int(aug.num_crops)
    return out


#: classifier-head keys of torchvision / timm weight files, dropped (by name) when the backbone has none
CLASSIFIER_HEAD_KEYS = ("fc.weight", "fc.bias", "head.fc.weight", "head.fc.bias")


def load_frozen_backbone(path: str, backbone_name: Optional[str] = None,
                         backbone_kwargs: Optional[Dict[str, Any]] = None
                         ) -> Tuple[nn.Module, Optional[Tuple[List[float], List[float]]]]:
    """A backbone from any weights file, loaded strictly, frozen, in eval mode.

    * harl / solo-learn ``.ckpt``, an exported ``backbone.pth``, any bare backbone state dict:
      :func:`harl.eval.pretrained.load_pretrained_backbone` (architecture from ``backbone_name`` /
      ``backbone_kwargs``, else the run config, else inferred from a ResNet's keys); the input
      normalisation is the pretraining's when its run config tells it.
    * a classifier's weights (torchvision / timm state dict with ``fc.*`` / ``head.fc.*``): those
      head keys are dropped by name, every other key must match; the architecture is
      ``backbone_name`` or inferred from a ResNet's keys; the input normalisation is ImageNet's.

    Returns:
        (backbone, (mean, std) it expects, or None when unknown).
    """
    if not path or not os.path.isfile(str(path)):
        raise FileNotFoundError(f"method_kwargs.sgm_saliency_weights: file '{path}' does not exist")
    path = str(path)
    sd = backbone_state_dict(read_state_dict(path))
    head = [k for k in CLASSIFIER_HEAD_KEYS if k in sd]
    if not head:
        net, info = load_pretrained_backbone(path, backbone_name, backbone_kwargs)
        stats = (info["mean"], info["std"]) if info.get("mean") and info.get("std") else None
    else:
        name, kwargs = backbone_name, dict(backbone_kwargs or {})
        if name is None:
            name, inferred = infer_resnet_architecture({k: v for k, v in sd.items() if k not in head})
            if name is None:
                raise _config_error(f"method_kwargs.sgm_saliency_backbone is not set and the architecture of "
                                    f"'{path}' cannot be inferred from its keys; name it")
            kwargs = {**inferred, **kwargs}
        net = build_backbone(name, **kwargs)
        own = net.state_dict()
        strict_load(net, sd, source=f"method_kwargs.sgm_saliency_weights '{path}'",
                    ignore=[k for k in head if k not in own])
        stats = (list(IMAGENET_MEAN), list(IMAGENET_STD))
    net.eval()
    for p in net.parameters():
        p.requires_grad = False
    return net, stats


class FrozenBackboneSaliency(SaliencySource):
    """Channel-sum saliency of a frozen network's c5 map (``supervised_r50``, ``checkpoint``)."""

    #: (mean, std) the network expects; None → what the weights file tells (else the views' own)
    net_stats: Optional[Tuple[Sequence[float], Sequence[float]]] = None

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        kw = cfg.method_kwargs
        self.net, stats = self.build(cfg)
        self.input_size = int(kw.sgm_saliency_input_size) if kw.sgm_saliency_input_size else None
        self.view_stats = _view_stats(cfg)
        if self.net_stats is not None:
            stats = self.net_stats
        self.target_stats = stats  # None: the network takes the views' normalisation as it is
        self._affine: Dict[Tuple[int, torch.device, torch.dtype], Tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def check_cfg(cls, cfg: DictConfig) -> None:
        super().check_cfg(cfg)
        kw = cfg.method_kwargs
        if not kw.sgm_saliency_weights:
            raise _config_error(f"method_kwargs.sgm_saliency '{kw.sgm_saliency}' needs method_kwargs."
                                f"sgm_saliency_weights (a local weights file; nothing is downloaded)")
        if kw.sgm_saliency_input_size is not None and int(kw.sgm_saliency_input_size) < 1:
            raise _config_error("method_kwargs.sgm_saliency_input_size must be a positive integer or null")

    def build(self, cfg: DictConfig):
        kw = cfg.method_kwargs
        bkw = kw.sgm_saliency_backbone_kwargs
        bkw = OmegaConf.to_container(bkw, resolve=True) if isinstance(bkw, DictConfig) else bkw
        return load_frozen_backbone(str(kw.sgm_saliency_weights), kw.sgm_saliency_backbone, bkw)

    def _renorm(self, x: torch.Tensor, view: int) -> torch.Tensor:
        """Views normalised with the dataset's (mean, std) → the network's normalisation."""
        if self.target_stats is None:
            return x
        key = (view, x.device, x.dtype)
        if key not in self._affine:
            m0, s0 = (torch.tensor(v, dtype=torch.float64) for v in self.view_stats[view])
            m1, s1 = (torch.tensor(v, dtype=torch.float64) for v in self.target_stats)
            scale, shift = s0 / s1, (m0 - m1) / s1  # (x·s0 + m0 − m1) / s1
            self._affine[key] = (scale.view(1, -1, 1, 1).to(x.device, x.dtype),
                                 shift.view(1, -1, 1, 1).to(x.device, x.dtype))
        scale, shift = self._affine[key]
        return x * scale + shift

    @torch.no_grad()
    def activation(self, x: torch.Tensor, view: int) -> torch.Tensor:
        """B×3×S×S normalised view → the frozen network's c5 map B×C×h×w."""
        ref = next(self.net.parameters())
        if ref.device != x.device:
            self.net.to(x.device)
            ref = next(self.net.parameters())
        self.net.eval()
        x = self._renorm(x, view)
        if self.input_size is not None and tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        act = self.net.forward_features(x.to(ref.dtype))
        if act.dim() != 4:
            raise ValueError(f"sgm_saliency: the saliency backbone's forward_features gave shape "
                             f"{tuple(act.shape)}; a convolutional B×C×h×w map is needed")
        return act

    def __call__(self, method, ctx: SaliencyContext, view: int) -> torch.Tensor:
        return saliency_from_activation(self.activation(ctx.raw[view], view), self.grid_size, self.std_factor)


@SALIENCY_SOURCES.register("supervised_r50")
class SupervisedR50Saliency(FrozenBackboneSaliency):
    """A torchvision ResNet-50 with the user's ImageNet-supervised weights (state dict file)."""

    net_stats = (tuple(IMAGENET_MEAN), tuple(IMAGENET_STD))

    def build(self, cfg: DictConfig):
        return load_frozen_backbone(str(cfg.method_kwargs.sgm_saliency_weights), "resnet50", {})


SALIENCY_SOURCES.register("checkpoint", FrozenBackboneSaliency)


@SALIENCY_SOURCES.register("heuristic_mask")
class MaskSaliency(SaliencySource):
    """fg cell iff the view's joint mask covers more than ``sgm_mask_threshold`` of the cell."""

    needs_masks = True

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self.threshold = float(cfg.method_kwargs.sgm_mask_threshold)

    @classmethod
    def check_cfg(cls, cfg: DictConfig) -> None:
        super().check_cfg(cfg)
        if not 0.0 <= float(cfg.method_kwargs.sgm_mask_threshold) < 1.0:
            raise _config_error("method_kwargs.sgm_mask_threshold must be in [0, 1)")

    def __call__(self, method, ctx: SaliencyContext, view: int) -> torch.Tensor:
        if ctx.extras is None or "masks" not in ctx.extras:
            raise ValueError("sgm_saliency 'heuristic_mask' got a batch without masks; set data.masks.enabled=true")
        mask = ctx.extras["masks"][view]
        return saliency_from_mask(mask.to(ctx.raw[view].device), self.grid_size, self.threshold)


@SALIENCY_SOURCES.register("online")
class OnlineSaliency(SaliencySource):
    """Channel-sum rule on the method's own (momentum) encoder c5 map of the encoder input."""

    uses_key_maps = True

    def __call__(self, method, ctx: SaliencyContext, view: int) -> torch.Tensor:
        fmap = ctx.maps.get(view)
        if fmap is None:
            with torch.no_grad():
                fmap = method.saliency_encoder.forward_features(method._prepare(ctx.inputs[view]))
        if fmap.dim() != 4:
            raise ValueError(f"sgm_saliency 'online' needs a convolutional feature map, got shape {tuple(fmap.shape)}")
        return saliency_from_activation(fmap, self.grid_size, self.std_factor)


# ---------------------------------------------------------------------------------------------
# the shared method logic
# ---------------------------------------------------------------------------------------------


@dataclass
class SGMViews:
    """Everything the SGM step feeds the encoders (two views, v = 0, 1).

    raw: normalised views; inputs: encoder inputs (high-passed for ``hp``) = the unmasked keys;
    fg: B×G×G bool saliency; queries / query_masks: ``pos``-masked inputs and their B×C×H×W
    pixel masks; hard / hard_masks: ``neg``-masked copies of the inputs, (M·B)×C×H×W with row
    m·B + b = negative m of image b (None when M = 0).
    """

    raw: List[torch.Tensor]
    inputs: List[torch.Tensor]
    fg: List[torch.Tensor]
    queries: List[torch.Tensor]
    query_masks: List[torch.Tensor]
    hard: List[Optional[torch.Tensor]]
    hard_masks: List[Optional[torch.Tensor]]


class SGMMixin:
    """Saliency, masking, input filter and hard negatives; mixed in before a contrastive base."""

    _DEFAULT_METHOD_KWARGS = SGM_DEFAULT_KWARGS

    @classmethod
    def check_cfg(cls, cfg: DictConfig) -> None:
        super().check_cfg(cfg)
        kw = cfg.method_kwargs
        if cfg.num_small_crops:
            raise _config_error(f"method '{cfg.method}' does not support small crops (multi-crop)")
        if cfg.num_large_crops != 2:
            raise _config_error(f"method '{cfg.method}' needs exactly 2 large crops, config gives {cfg.num_large_crops}")
        if kw.sgm_strategy not in INPUT_FILTERS:
            raise _config_error(f"method_kwargs.sgm_strategy = {kw.sgm_strategy!r} must be one of "
                                f"{sorted(INPUT_FILTERS.names())}{close_match_hint(kw.sgm_strategy, INPUT_FILTERS.names())}")
        try:
            SGMMaskConfig.from_kwargs(kw)
            if kw.sgm_strategy == "hp":
                HighPass(int(kw.hp_kernel), float(kw.hp_sigma))
        except (ValueError, TypeError, KeyError) as err:
            raise _config_error(f"method_kwargs: {err}") from None
        if kw.sgm_saliency not in SALIENCY_SOURCES:
            raise _config_error(f"method_kwargs.sgm_saliency = {kw.sgm_saliency!r} must be one of "
                                f"{sorted(SALIENCY_SOURCES.names())}"
                                f"{close_match_hint(kw.sgm_saliency, SALIENCY_SOURCES.names())}")
        SALIENCY_SOURCES.get(kw.sgm_saliency).check_cfg(cfg)
        n_hard = kw.num_hard_negatives
        if isinstance(n_hard, bool) or int(n_hard) != n_hard or int(n_hard) < 0:
            raise _config_error(f"method_kwargs.num_hard_negatives must be an integer ≥ 0, got {n_hard!r}")
        if not float(kw.hard_neg_scale) > 0:
            raise _config_error(f"method_kwargs.hard_neg_scale must be > 0, got {kw.hard_neg_scale!r}")
        crop = min(int(a.crop_size) for a in cfg.augmentations)
        if not 1 <= int(kw.grid_size) <= crop:
            raise _config_error(f"method_kwargs.grid_size ({kw.grid_size}) must be in [1, crop_size={crop}]")

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        kw = cfg.method_kwargs
        self.mask_cfg = SGMMaskConfig.from_kwargs(kw)
        self.sgm_strategy = str(kw.sgm_strategy)
        self.input_filter = input_filter_from_kwargs(kw)
        self.num_hard_negatives = int(kw.num_hard_negatives)
        self.hard_neg_scale = float(kw.hard_neg_scale)
        # a plain attribute, not a sub-module: frozen, outside the optimiser, EMA and checkpoints
        self.saliency_source: SaliencySource = SALIENCY_SOURCES.get(str(kw.sgm_saliency))(cfg)
        if cfg.data.masks.enabled and not self.saliency_source.needs_masks:
            log.warning("data.masks.enabled is true but sgm_saliency '%s' does not read masks; they are loaded "
                        "for nothing (and crop acceptance data.masks.min_fg_frac still applies)", kw.sgm_saliency)

    # ------------------------------------------------------------------ forward
    def forward(self, X: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Un-filtered normalised images B×3×H×W → outputs of the base (input filter applied)."""
        return self.encode(self.input_filter(X))

    def encode(self, X: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The base forward on encoder inputs (already filtered, possibly masked)."""
        return super().forward(X)

    def crop_forward(self, X: torch.Tensor, view: int) -> Dict[str, torch.Tensor]:
        return self.encode(X)

    @property
    def saliency_encoder(self) -> nn.Module:
        """The encoder whose c5 map the ``online`` source reads."""
        raise NotImplementedError

    @torch.no_grad()
    def encode_hard_negatives(self, x: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """(M·B)×3×H×W masked key copies → B×M×D embeddings (no gradient); None → None."""
        if x is None:
            return None
        t = self.hard_negative_embed(x)
        m = self.num_hard_negatives
        return t.view(m, t.shape[0] // m, -1).transpose(0, 1)

    def hard_negative_embed(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - per base
        raise NotImplementedError

    # ------------------------------------------------------------------ views
    @staticmethod
    def _batch_parts(batch) -> Tuple[torch.Tensor, List[torch.Tensor], torch.Tensor, Optional[Dict[str, Any]]]:
        X = batch[1]
        X = [X] if isinstance(X, torch.Tensor) else list(X)
        extras = batch[3] if len(batch) > 3 else None
        return batch[0], X, batch[2], extras

    def saliency(self, ctx: SaliencyContext) -> List[torch.Tensor]:
        """B×G×G bool fg cells for every view."""
        return [self.saliency_source(self, ctx, v).to(ctx.inputs[v].device) for v in range(len(ctx.inputs))]

    def prepare_views(self, X: Sequence[torch.Tensor], extras: Optional[Dict[str, Any]] = None,
                      inputs: Optional[Sequence[torch.Tensor]] = None,
                      maps: Optional[Dict[int, torch.Tensor]] = None,
                      generator: Optional[torch.Generator] = None) -> SGMViews:
        """Filter, saliency, ``pos`` masking of the queries and ``neg`` copies of every view.

        Args:
            X: normalised views, each B×3×S×S; extras: ``batch[3]`` or None.
            inputs: the filtered views when already computed; maps: c5 maps of ``inputs`` from the
                momentum encoder (reused by the ``online`` source).
            generator: optional ``torch.Generator`` (else the global RNG, re-seeded every epoch).
        """
        X = list(X)
        inputs = [self.input_filter(x) for x in X] if inputs is None else list(inputs)
        ctx = SaliencyContext(raw=X, inputs=inputs, extras=extras, maps=dict(maps or {}))
        with torch.no_grad():
            fg = self.saliency(ctx)
            queries, qmasks, hard, hmasks = [], [], [], []
            for x, f in zip(inputs, fg):
                q, qm = sgm_mask_batch(x, f, self.mask_cfg, "pos", generator)
                queries.append(q)
                qmasks.append(qm)
                if self.num_hard_negatives > 0:
                    negs = [sgm_mask_batch(x, f, self.mask_cfg, "neg", generator) for _ in range(self.num_hard_negatives)]
                    hard.append(torch.cat([n[0] for n in negs]))
                    hmasks.append(torch.cat([n[1] for n in negs]))
                else:
                    hard.append(None)
                    hmasks.append(None)
        return SGMViews(X, inputs, fg, queries, qmasks, hard, hmasks)

    def _log_views(self, views: SGMViews, extra: Optional[Dict[str, torch.Tensor]] = None) -> None:
        stats = {
            "train_sgm_fg_ratio": torch.stack([f.float().mean() for f in views.fg]).mean(),
            "train_sgm_query_masked": torch.stack([m.float().mean() for m in views.query_masks]).mean(),
        }
        if views.hard_masks[0] is not None:
            stats["train_sgm_hard_masked"] = torch.stack([m.float().mean() for m in views.hard_masks]).mean()
        stats.update(extra or {})
        self.log_dict(stats, on_epoch=True, sync_dist=True)

    def _hard_cos(self, z: List[torch.Tensor], t: List[Optional[torch.Tensor]]) -> Dict[str, torch.Tensor]:
        if t[0] is None:
            return {}
        with torch.no_grad():
            cos = torch.cat([hard_negative_logits(z[v].detach(), t[1 - v], 1.0, 1.0) for v in range(2)])
        return {"train_sgm_hard_cos": cos.mean()}

    # ------------------------------------------------------------------ checkpoint record
    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        kw = self.method_kwargs
        checkpoint["harl_input_filter"] = (
            {"name": "highpass", "kernel_size": int(kw.hp_kernel), "sigma": float(kw.hp_sigma)}
            if self.sgm_strategy == "hp" else None)


@METHODS.register("sgm_mocov2")
class SGMMoCoV2(SGMMixin, MoCoV2Plus):
    """MoCo v2+ with saliency-guided masking (docs/methods/sgm.md, the paper's MoCo v2 recipe).

    Symmetrised like harl's MoCo v2+ (each view is a query against the other view's key and
    queue); each direction's loss is the paper's ``CE([q·k, q·Q, α·q·t_1..M]/T, 0)``. Only the
    unmasked keys are enqueued.
    """

    @property
    def saliency_encoder(self) -> nn.Module:
        return self.momentum_backbone

    def hard_negative_embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.momentum_projector(self.momentum_backbone(self._prepare(x)))

    @torch.no_grad()
    def key_forward(self, inputs: List[torch.Tensor]) -> Dict[str, List[torch.Tensor]]:
        """Momentum encoder on the unmasked encoder inputs: c5 maps, pooled feats, normalised keys."""
        maps = [self.momentum_backbone.forward_features(self._prepare(x)) for x in inputs]
        feats = [self.momentum_backbone.pool(m) for m in maps]
        keys = [F.normalize(self.momentum_projector(f), dim=-1) for f in feats]
        return {"maps": maps, "feats": feats, "k": keys}

    def _momentum_classifier_loss(self, feats: List[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        logits = torch.cat([self.momentum_classifier(f.detach()) for f in feats])
        rep = targets.repeat(len(feats))
        loss = self._classifier_loss(logits, rep)
        acc1, acc5 = accuracy_at_k(logits, rep)
        self.log_dict({"train_momentum_class_loss": loss, "train_momentum_acc1": acc1, "train_momentum_acc5": acc5},
                      on_epoch=True, sync_dist=True)
        return loss

    def sgm_loss(self, z: List[torch.Tensor], k: List[torch.Tensor], t: List[Optional[torch.Tensor]]) -> torch.Tensor:
        """½[ℓ(q₁, k₂, Q₂, t₂) + ℓ(q₂, k₁, Q₁, t₁)] with α-scaled hard-negative columns."""
        queue = self.queue.clone().detach()
        a = self.hard_neg_scale
        return (moco_loss(z[0], k[1], queue[1], self.temperature, t[1], a)
                + moco_loss(z[1], k[0], queue[0], self.temperature, t[0], a)) / 2

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        idx, X, targets, extras = self._batch_parts(batch)
        inputs = [self.input_filter(x) for x in X]
        keys = self.key_forward(inputs)
        maps = dict(enumerate(keys["maps"])) if self.saliency_source.uses_key_maps else None
        views = self.prepare_views(X, extras, inputs=inputs, maps=maps)
        out = BaseMethod.training_step(self, [idx, views.queries, targets], batch_idx)
        loss_cls = out["loss"]
        if self.momentum_classifier is not None:
            loss_cls = loss_cls + self._momentum_classifier_loss(keys["feats"], targets)
        t = [self.encode_hard_negatives(h) for h in views.hard]
        k = keys["k"]
        loss = self.sgm_loss(out["z"], k, t)
        self.enqueue(torch.stack([gather_no_grad(k[0]), gather_no_grad(k[1])]))
        self.log("train_nce_loss", loss, on_epoch=True, sync_dist=True)
        self._log_views(views, self._hard_cos(out["z"], t))
        return loss + loss_cls


@METHODS.register("sgm_simclr")
class SGMSimCLR(SGMMixin, SimCLR):
    """SimCLR with saliency-guided masking (docs/methods/sgm.md "SimCLR port").

    Both masked views are anchors; anchor v's NT-Xent denominator gains α·q_v·t/T for the hard
    negatives t of the *other* view (its positive's view), encoded by the same encoder without
    gradient.
    """

    @property
    def saliency_encoder(self) -> nn.Module:
        return self.backbone

    def hard_negative_embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(self._prepare(x)))

    def hard_negative_logit_block(self, z: List[torch.Tensor], t: List[Optional[torch.Tensor]]) -> Optional[torch.Tensor]:
        """2B×M logits α·ẑ·t̂/T: rows of view-1 anchors use view 2's negatives and vice versa."""
        if t[0] is None:
            return None
        return torch.cat([hard_negative_logits(z[v], t[1 - v], self.hard_neg_scale, self.temperature)
                          for v in range(2)])

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        idx, X, targets, extras = self._batch_parts(batch)
        views = self.prepare_views(X, extras)
        out = BaseMethod.training_step(self, [idx, views.queries, targets], batch_idx)
        t = [self.encode_hard_negatives(h) for h in views.hard]
        loss = self.instance_loss(out["z"], idx, extra_neg_logits=self.hard_negative_logit_block(out["z"], t))
        self.log("train_nce_loss", loss, on_epoch=True, sync_dist=True)
        self._log_views(views, self._hard_cos(out["z"], t))
        return loss + out["loss"]
