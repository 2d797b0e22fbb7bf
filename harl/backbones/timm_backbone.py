"""Any timm model by name, exposed with the backbone interface.

``build_timm_backbone("convnext_atto")`` returns the timm model itself (so checkpoint keys are
timm's own names) created with ``num_classes=0``, plus a ``pool(feat_map)`` method; its
``forward_features`` gives B×C×h×w for convolutional models.
"""

from __future__ import annotations

import types

import torch
from torch import nn

from harl.errors import ConfigError
from harl.registry import close_match_hint


def _pool(self, feat_map: torch.Tensor) -> torch.Tensor:
    return self.forward_head(feat_map, pre_logits=True)


def build_timm_backbone(name: str, **kwargs) -> nn.Module:
    import timm

    if not timm.is_model(name):
        raise ConfigError(f"unknown backbone '{name}'{close_match_hint(name, timm.list_models())}")
    kwargs.setdefault("pretrained", False)
    model = timm.create_model(name, num_classes=0, **kwargs)
    model.pool = types.MethodType(_pool, model)
    return model
