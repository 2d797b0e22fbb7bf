"""torchvision ResNets as SSL backbones (random init, optional CIFAR stem, optional width).

The module *is* a ``torchvision.models.ResNet`` (same attribute names, so checkpoint keys are
``backbone.conv1.weight``, ``backbone.layer1.0.bn1.weight``, ...) with ``fc = Identity`` and two
extra methods:

- ``forward_features(x)``: B×3×H×W → feature map B×C×h×w (the c5 map);
- ``forward(x)``: B×3×H×W → pooled B×C.

``num_features`` is C. With the default width (64) its state dict loads strictly into a
plain ``torchvision.models.resnet18/50``. The names ``resnet18/34/50`` and their ``backbone.kwargs``
are described (and registered) by :class:`harl.backbones.resnet_spec.ResNetSpec`.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Type, Union

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet


def cifar_stem_conv(width: int):
    """The CIFAR stem's ``conv1`` (3×3, stride 1, padding 2, no bias), PyTorch's default init."""
    return nn.Conv2d(3, width, kernel_size=3, stride=1, padding=2, bias=False)


def build_stages(model, block, layers: Sequence[int], width: int, c5_stride1: bool, c5_dilate: bool) -> Dict[str, Any]:
    """New ``conv1``, ``bn1``, ``layer1`` … ``layer4`` of a torchvision ``ResNet`` at ``width``.

    Made in that order with ``model._make_layer`` (which reads and updates ``model.inplanes`` /
    ``model.dilation``; both are reset here); ``layer4`` has stride 1 with ``c5_stride1``
    (dilation 2 with ``c5_dilate``). The caller assigns them (in its own registration order).
    """
    model.inplanes, model.dilation = width, 1
    out: Dict[str, Any] = {}
    out["conv1"] = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    out["bn1"] = nn.BatchNorm2d(width)
    out["layer1"] = model._make_layer(block, width, layers[0])
    out["layer2"] = model._make_layer(block, width * 2, layers[1], stride=2)
    out["layer3"] = model._make_layer(block, width * 4, layers[2], stride=2)
    if c5_stride1 and c5_dilate:
        out["layer4"] = model._make_layer(block, width * 8, layers[3], stride=2, dilate=True)
    else:
        out["layer4"] = model._make_layer(block, width * 8, layers[3], stride=1 if c5_stride1 else 2)
    return out


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
            self.conv1 = cifar_stem_conv(width)
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
            self.maxpool = nn.Identity()
        self.cifar_stem = cifar_stem

    def _build_custom(self, block, layers, width, zero_init_residual, c5_stride1, c5_dilate):
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.groups = 1
        self.base_width = 64  # torchvision's per-group width (BasicBlock requires 64)
        stages = build_stages(self, block, layers, width, c5_stride1, c5_dilate)
        self.conv1, self.bn1 = stages["conv1"], stages["bn1"]
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for key in ("layer1", "layer2", "layer3", "layer4"):
            setattr(self, key, stages[key])
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
