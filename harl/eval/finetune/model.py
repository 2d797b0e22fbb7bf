"""The fine-tuned model: a backbone and a linear classifier head."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn


class FinetuneModel(nn.Module):
    """``backbone`` (B×3×H×W → B×C) followed by a linear ``classifier`` (C → num_classes).

    State-dict keys are ``backbone.*`` and ``classifier.*`` (loadable by the harl loaders).
    ``input_transform`` (e.g. :class:`harl.ops.filters.HighPass`) is applied to the batch first;
    it has no parameters and is not part of the state dict.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, num_features: Optional[int] = None,
                 input_transform: Optional[Callable] = None):
        super().__init__()
        self.backbone = backbone
        c = int(num_features or getattr(backbone, "num_features", 0))
        if c < 1:
            raise ValueError("FinetuneModel: cannot tell the backbone's feature size; pass num_features")
        self.classifier = nn.Linear(c, int(num_classes))
        self._input_transform = [input_transform] if input_transform is not None else []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._input_transform:
            x = self._input_transform[0](x)
        return self.classifier(self.backbone(x))
