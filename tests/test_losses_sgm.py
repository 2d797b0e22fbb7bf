"""SGM's hard-negative logits (harl.losses.sgm; docs/methods/sgm.md)."""

from __future__ import annotations

import torch

from harl.losses.moco import moco_logits
from harl.losses.sgm import hard_negative_logits


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_hard_negative_logits_hand_computation():
    q = torch.tensor([[3.0, 4.0]])
    t = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    # q̂ = (0.6, 0.8); α·q̂·t̂/T = 2·0.6/0.2 = 6, 2·0.8/0.2 = 8
    assert torch.allclose(hard_negative_logits(q, t, 2.0, 0.2), torch.tensor([[6.0, 8.0]]))
    assert torch.allclose(hard_negative_logits(q, t[:, 0], 2.0, 0.2), torch.tensor([[6.0]]))


def test_hard_negative_logits_agree_with_moco_logits():
    g = gen(28)
    q, k = torch.randn(5, 16, generator=g), torch.randn(5, 16, generator=g)
    queue = torch.nn.functional.normalize(torch.randn(16, 10, generator=g), dim=0)
    t = torch.randn(5, 2, 16, generator=g)
    full = moco_logits(q, k, queue, 0.2, hard_negatives=t, hard_negative_scale=2.0)
    assert torch.allclose(full[:, 11:], hard_negative_logits(q, t, 2.0, 0.2), atol=1e-6)
    qg = q.clone().requires_grad_(True)
    tg = t.clone().requires_grad_(True)
    hard_negative_logits(qg, tg).sum().backward()
    assert qg.grad is not None and tg.grad is None  # stop-gradient on the hard negatives
