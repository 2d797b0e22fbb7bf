"""BYOL's heads as one builder, for every method that has them (BYOL, NNBYOL's parent, HARL).

:func:`byol_heads` builds the online projector g_θ (B×C → B×D), its EMA copy g_ξ (frozen: the
optimiser never sees it, :meth:`~harl.methods.base.BaseMomentumMethod.ema_update` averages it) and
the predictor q_θ (B×D → B×D), in that order, so the random initialisation is the same whoever
calls it. The caller assigns them to ``projector`` / ``momentum_projector`` / ``predictor`` (the
state-dict names every BYOL-style checkpoint uses).
"""

from __future__ import annotations

import copy
from typing import Any, Dict, Mapping, NamedTuple

from torch import nn

from harl.heads.mlp import byol_mlp

__all__ = ["BYOL_HEAD_KWARGS", "BYOLHeads", "byol_heads", "momentum_copy"]

#: the ``method_kwargs`` of the BYOL heads and their defaults (BYOL paper: 4096 → 256, predictor 4096)
BYOL_HEAD_KWARGS: Dict[str, Any] = {"proj_hidden_dim": 4096, "proj_output_dim": 256, "pred_hidden_dim": 4096,
                                    "proj_layers": 2}


class BYOLHeads(NamedTuple):
    projector: nn.Sequential
    momentum_projector: nn.Sequential
    predictor: nn.Sequential


def momentum_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with ``requires_grad`` off: the EMA target of an online module."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad = False
    return target


def byol_heads(in_dim: int, method_kwargs: Mapping[str, Any]) -> BYOLHeads:
    """Projector ``byol_mlp(in_dim, proj_hidden_dim, proj_output_dim, proj_layers)``, its EMA copy and
    the predictor ``byol_mlp(proj_output_dim, pred_hidden_dim, proj_output_dim)``.

    Args:
        in_dim: C, the width of the pooled features the projector takes.
        method_kwargs: holds the :data:`BYOL_HEAD_KWARGS` keys.
    """
    kw = method_kwargs
    projector = byol_mlp(in_dim, kw["proj_hidden_dim"], kw["proj_output_dim"], kw["proj_layers"])
    momentum_projector = momentum_copy(projector)
    predictor = byol_mlp(kw["proj_output_dim"], kw["pred_hidden_dim"], kw["proj_output_dim"])
    return BYOLHeads(projector, momentum_projector, predictor)
