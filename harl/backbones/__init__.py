"""Backbones: torchvision ResNets (registered by name) and any timm model.

Every backbone is an ``nn.Module`` with

- ``forward(x)``: B×3×H×W → pooled features B×C,
- ``forward_features(x)``: B×3×H×W → feature map B×C×h×w (convolutional models),
- ``pool(feat_map)``: B×C×h×w → B×C,
- ``num_features``: C.
"""

from __future__ import annotations

from torch import nn

from harl.backbones import resnet_spec  # noqa: F401  (registers resnet18/34/50)
from harl.backbones import vit  # noqa: F401  (registers vit_tiny/small/base/large)
from harl.backbones.registry import BACKBONES
from harl.backbones.resnet import SSLResNet
from harl.backbones.timm_backbone import build_timm_backbone

TIMM_PREFIX = "timm/"


def build_backbone(name: str, **kwargs) -> nn.Module:
    """Build a backbone by registered name, ``timm/<model>``, or any timm model name."""
    if name in BACKBONES:
        return BACKBONES.get(name)(**kwargs)
    if name.startswith(TIMM_PREFIX):
        return build_timm_backbone(name[len(TIMM_PREFIX):], **kwargs)
    try:
        import timm

        if timm.is_model(name):
            return build_timm_backbone(name, **kwargs)
    except ImportError:  # pragma: no cover - timm is a dependency
        pass
    BACKBONES.get(name)  # raises with a close-match hint
    raise AssertionError("unreachable")


__all__ = ["BACKBONES", "SSLResNet", "build_backbone", "build_timm_backbone"]
