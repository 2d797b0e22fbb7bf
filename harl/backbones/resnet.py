"""torchvision ResNets as SSL backbones (random init, optional CIFAR stem, optional width).

The module *is* a ``torchvision.models.ResNet`` (same attribute names, so checkpoint keys are
``backbone.conv1.weight``, ``backbone.layer1.0.bn1.weight``, ...) with ``fc = Identity`` and two
extra methods:

- ``forward_features(x)``: B×3×H×W → feature map B×C×h×w (the c5 map);
- ``forward(x)``: B×3×H×W → pooled B×C.

``num_features`` is C. With the default width (64) its state dict loads strictly into a
plain ``torchvision.models.resnet18/50``.
"""

from __future__ import annotations

from typing import List, Optional, Type, Union

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from harl.backbones.registry import BACKBONES
from harl.errors import ConfigError
from harl.registry import close_match_hint


class SSLResNet(ResNet):
    """A torchvision ResNet whose stage widths scale with ``width`` (64 = torchvision)."""

    def __init__(
        self,
        block: Type[Union[BasicBlock, Bottleneck]],
        layers: List[int],
        width: int = 64,
        cifar_stem: bool = False,
        zero_init_residual: bool = False,
        c5_stride1: bool = False,
        c5_dilate: bool = False,
    ):
        if width == 64 and not c5_stride1:
            super().__init__(block, layers, zero_init_residual=zero_init_residual)
        else:
            self._build_custom(block, layers, width, zero_init_residual, c5_stride1, c5_dilate)
        self.width = width
        self.fc = nn.Identity()
        self.num_features = width * 8 * block.expansion
        if cifar_stem:
            # 3×3 stride-1 conv with padding 2 and no max-pool (solo-learn): 32 px → 5×5 c5 map
            self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=2, bias=False)
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
            self.maxpool = nn.Identity()
        self.cifar_stem = cifar_stem

    def _build_custom(self, block, layers, width, zero_init_residual, c5_stride1, c5_dilate):
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes = width
        self.dilation = 1
        self.groups = 1
        self.base_width = 64  # torchvision's per-group width (BasicBlock requires 64)
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        if c5_stride1 and c5_dilate:
            self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2, dilate=True)
        else:
            self.layer4 = self._make_layer(block, width * 8, layers[3], stride=1 if c5_stride1 else 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck) and m.bn3.weight is not None:
                    nn.init.constant_(m.bn3.weight, 0)
                elif isinstance(m, BasicBlock) and m.bn2.weight is not None:
                    nn.init.constant_(m.bn2.weight, 0)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward_c4(self, x: torch.Tensor) -> torch.Tensor:
        """B×3×H×W → conv4 (layer3) map B×(4·width·expansion)×h4×w4."""
        return self.layer3(self.layer2(self.layer1(self.stem(x))))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """B×3×H×W → c5 feature map B×C×h×w."""
        return self.layer4(self.forward_c4(x))

    def pool(self, feat_map: torch.Tensor) -> torch.Tensor:
        """B×C×h×w → B×C (global average)."""
        return torch.flatten(self.avgpool(feat_map), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_features(x))


def _resnet(block, layers):
    def build(cifar_stem: bool = False, width: int = 64, zero_init_residual: bool = False,
              c5_stride1: bool = False, c5_dilate: bool = False, **unexpected) -> SSLResNet:
        if unexpected:
            key = next(iter(unexpected))
            valid = ["cifar_stem", "width", "zero_init_residual", "c5_stride1", "c5_dilate"]
            raise ConfigError(f"unknown config key 'backbone.kwargs.{key}'{close_match_hint(key, valid)}")
        if c5_dilate and c5_stride1 and block is BasicBlock:
            raise ConfigError("backbone.kwargs.c5_dilate (HARL method_kwargs.c5_dilate) needs a Bottleneck ResNet "
                              "(resnet50): torchvision's BasicBlock (resnet18/34) has no dilation; use c5_stride1 "
                              "without c5_dilate")
        return SSLResNet(block, layers, width=width, cifar_stem=cifar_stem,
                         zero_init_residual=zero_init_residual, c5_stride1=c5_stride1, c5_dilate=c5_dilate)

    return build


BACKBONES.register("resnet18", _resnet(BasicBlock, [2, 2, 2, 2]))
BACKBONES.register("resnet34", _resnet(BasicBlock, [3, 4, 6, 3]))
BACKBONES.register("resnet50", _resnet(Bottleneck, [3, 4, 6, 3]))
