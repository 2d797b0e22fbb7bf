"""The projector head that most methods put on the backbone features, written once.

:class:`ProjectorMixin`: ``self.projector`` maps ``feats`` to ``z`` in :meth:`forward` and is trained
as the parameter group ``"projector"``. :class:`MomentumProjectorMixin` adds its frozen EMA copy
``self.momentum_projector`` (:meth:`make_momentum_projector`), paired in ``momentum_pairs`` and
applied in :meth:`momentum_forward`. A method lists the mixin before its base class
(``class VICReg(ProjectorMixin, BaseMethod)``) and builds ``self.projector`` in ``__init__``.
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch

from harl.heads import momentum_copy


class ProjectorMixin:
    """``forward`` adds ``z = projector(feats)``; the projector is the learnable group ``"projector"``."""

    @property
    def learnable_params(self) -> List[Dict[str, Any]]:
        return super().learnable_params + [{"name": "projector", "params": self.projector.parameters()}]

    def forward(self, X: torch.Tensor) -> Dict[str, torch.Tensor]:
        out = super().forward(X)
        return {**out, "z": self.projector(out["feats"])}


class MomentumProjectorMixin(ProjectorMixin):
    """:class:`ProjectorMixin` plus the projector's EMA copy (for a ``BaseMomentumMethod``)."""

    def make_momentum_projector(self) -> None:
        """``self.momentum_projector``: a frozen copy of ``self.projector`` (updated by EMA only)."""
        self.momentum_projector = momentum_copy(self.projector)

    @property
    def momentum_pairs(self):
        return super().momentum_pairs + [(self.projector, self.momentum_projector)]

    @torch.no_grad()
    def momentum_forward(self, X: torch.Tensor) -> Dict[str, torch.Tensor]:
        out = super().momentum_forward(X)
        return {**out, "z": self.momentum_projector(out["feats"])}
