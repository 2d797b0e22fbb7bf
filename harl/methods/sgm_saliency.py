"""SGM's saliency sources: where a view's B×G×G foreground cells come from (docs/methods/sgm.md).

``method_kwargs.sgm_saliency`` picks one from :data:`SALIENCY_SOURCES`; each is built once per
method from the run config (:meth:`SaliencySource.check_cfg` runs at config time) and called per
view as ``source(method, ctx, view)`` with a :class:`SaliencyContext`:

* ``supervised_r50`` (faithful): a frozen torchvision ResNet-50 whose ImageNet weights the user
  supplies (``sgm_saliency_weights``; nothing is downloaded). Channel sum of its c5 map, a cell is
  fg iff ``A ≥ mean(A) − 0.6·std(A)``. Run on the un-filtered view, re-normalised to ImageNet
  statistics.
* ``checkpoint``: the same rule on a frozen backbone from any checkpoint (harl / solo-learn
  ``.ckpt``, a ``backbone.pth``, a torchvision or timm state dict); the architecture comes from
  ``sgm_saliency_backbone`` (+ ``sgm_saliency_backbone_kwargs``) or from the checkpoint's own run
  config (:func:`load_frozen_backbone`).
* ``heuristic_mask`` (label-free): the view's joint mask (harl-masks output, or fashion-scenes'
  ground truth); a cell is fg iff its fg fraction > ``sgm_mask_threshold`` (0.5). Needs
  ``data.masks.enabled: true``; only this source makes the method read masks.
* ``online`` (label-free): the same channel-sum rule on the momentum encoder's c5 map of the
  encoder input x̃_v (MoCo: the key forward, so it costs nothing extra; SimCLR: a no-grad forward
  of the online encoder).

The rules themselves are the pure functions :func:`harl.ops.sgm_cells.saliency_from_activation`
and :func:`harl.ops.sgm_cells.saliency_from_mask`. The frozen saliency network is not a
sub-module of the method: it is not trained, not averaged, not moved by ``.to()`` (it follows the
batch's device on first use) and not written into checkpoints (it is re-loaded from
``sgm_saliency_weights``). The methods are in :mod:`harl.methods.sgm`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from harl.errors import ConfigError
from harl.data.registry import IMAGENET_MEAN, IMAGENET_STD
from harl.ops.sgm_cells import saliency_from_activation, saliency_from_mask
from harl.registry import Registry


__all__ = [
    "SALIENCY_SOURCES", "SaliencyContext", "SaliencySource", "FrozenBackboneSaliency", "SupervisedR50Saliency",
    "MaskSaliency", "OnlineSaliency", "CLASSIFIER_HEAD_KEYS", "load_frozen_backbone",
]


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
            raise ConfigError(f"method_kwargs.sgm_saliency '{cfg.method_kwargs.sgm_saliency}' reads the views' "
                              f"masks: set data.masks.enabled=true (and data.masks.root)")

    def __call__(self, method: Any, ctx: SaliencyContext, view: int) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


SALIENCY_SOURCES: Registry = Registry("SGM saliency source (sgm_saliency)")


def _view_stats(cfg: DictConfig) -> List[Tuple[Tuple[float, ...], Tuple[float, ...]]]:
    """(mean, std) of every view, in batch order (pipelines in order, ``num_crops`` each)."""
    from harl.data.loaders import dataset_stats

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
      head keys are dropped by name, every other key must match
      (:func:`harl.checkpoint.load_backbone`, the one strict path); the architecture is
      ``backbone_name`` or inferred from a ResNet's keys; the input normalisation is ImageNet's.

    Returns:
        (backbone, (mean, std) it expects, or None when unknown).
    """
    from harl.backbones import build_backbone
    from harl.weights import load_backbone, read_backbone_state_dict
    from harl.eval.pretrained import infer_resnet_architecture, load_pretrained_backbone

    if not path or not os.path.isfile(str(path)):
        raise FileNotFoundError(f"method_kwargs.sgm_saliency_weights: file '{path}' does not exist")
    path = str(path)
    sd = read_backbone_state_dict(path)
    head = [k for k in CLASSIFIER_HEAD_KEYS if k in sd]
    if not head:
        net, info = load_pretrained_backbone(path, backbone_name, backbone_kwargs)
        stats = (info["mean"], info["std"]) if info.get("mean") and info.get("std") else None
    else:
        name, kwargs = backbone_name, dict(backbone_kwargs or {})
        if name is None:
            name, inferred = infer_resnet_architecture({k: v for k, v in sd.items() if k not in head})
            if name is None:
                raise ConfigError(f"method_kwargs.sgm_saliency_backbone is not set and the architecture of "
                                  f"'{path}' cannot be inferred from its keys; name it")
            kwargs = {**inferred, **kwargs}
        net = build_backbone(name, **kwargs)
        own = net.state_dict()
        load_backbone(path, net, ignore=[k for k in head if k not in own], state_dict=sd,
                      source=f"method_kwargs.sgm_saliency_weights '{path}'")
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
            raise ConfigError(f"method_kwargs.sgm_saliency '{kw.sgm_saliency}' needs method_kwargs."
                              f"sgm_saliency_weights (a local weights file; nothing is downloaded)")
        if kw.sgm_saliency_input_size is not None and int(kw.sgm_saliency_input_size) < 1:
            raise ConfigError("method_kwargs.sgm_saliency_input_size must be a positive integer or null")

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
            raise ConfigError("method_kwargs.sgm_mask_threshold must be in [0, 1)")

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
