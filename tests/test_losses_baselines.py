"""BYOL, NT-Xent and MoCo losses against naive loops."""

import math

import torch

from harl.losses import byol_loss, moco_loss, nt_xent_loss


def _cos(a, b):
    return float((a @ b) / (a.norm() * b.norm()))


def test_byol_loss_naive():
    torch.manual_seed(0)
    p, z = torch.randn(5, 7), torch.randn(5, 7)
    naive = 2 - 2 * sum(_cos(p[i], z[i]) for i in range(5)) / 5
    assert float(byol_loss(p, z)) == pytest_approx(naive)
    w = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0])
    naive_w = 2 - 2 * (_cos(p[0], z[0]) + _cos(p[2], z[2])) / 2
    assert float(byol_loss(p, z, w)) == pytest_approx(naive_w)


def test_byol_loss_stops_target_gradient():
    p = torch.randn(4, 3, requires_grad=True)
    z = torch.randn(4, 3, requires_grad=True)
    byol_loss(p, z).backward()
    assert p.grad is not None and z.grad is None


def pytest_approx(x, rel=1e-5):
    import pytest

    return pytest.approx(x, rel=rel, abs=1e-6)


def _naive_nt_xent(z, idx, T):
    n = z.shape[0]
    zn = [z[i] / z[i].norm() for i in range(n)]
    total = 0.0
    for i in range(n):
        pos = neg = 0.0
        for j in range(n):
            if j == i:
                continue
            s = math.exp(float(zn[i] @ zn[j]) / T)
            if idx[i] == idx[j]:
                pos += s
            else:
                neg += s
        total += -math.log(pos / (pos + neg))
    return total / n


def test_nt_xent_naive_two_and_three_views():
    torch.manual_seed(1)
    for views in (2, 3):
        b = 4
        z = torch.randn(views * b, 6)
        idx = torch.arange(b).repeat(views)
        assert float(nt_xent_loss(z, idx, 0.2)) == pytest_approx(_naive_nt_xent(z, idx, 0.2), rel=1e-4)


def test_nt_xent_gathered_offset_equals_full():
    torch.manual_seed(2)
    z_all = torch.randn(16, 5)
    idx_all = torch.arange(8).repeat(2)
    full = _naive_nt_xent(z_all, idx_all, 0.5)
    # rank 1 of 2 holds rows 8..15 locally; the mean of both ranks' losses equals the full loss
    l0 = nt_xent_loss(z_all[:8], idx_all[:8], 0.5, z_all, idx_all, offset=0)
    l1 = nt_xent_loss(z_all[8:], idx_all[8:], 0.5, z_all, idx_all, offset=8)
    assert float((l0 + l1) / 2) == pytest_approx(full, rel=1e-4)


def test_nt_xent_extra_negatives_join_denominator():
    torch.manual_seed(3)
    z = torch.randn(4, 3)
    idx = torch.tensor([0, 1, 0, 1])
    extra = torch.randn(4, 2)
    zn = torch.nn.functional.normalize(z, dim=1)
    total = 0.0
    for i in range(4):
        pos = neg = 0.0
        for j in range(4):
            if j != i:
                s = math.exp(float(zn[i] @ zn[j]) / 0.2)
                pos, neg = (pos + s, neg) if idx[i] == idx[j] else (pos, neg + s)
        neg += sum(math.exp(float(e)) for e in extra[i])
        total += -math.log(pos / (pos + neg))
    assert float(nt_xent_loss(z, idx, 0.2, extra_neg_logits=extra)) == pytest_approx(total / 4, rel=1e-4)


def test_moco_loss_naive_and_hard_negatives():
    torch.manual_seed(4)
    q, k = torch.randn(3, 4), torch.randn(3, 4)
    queue = torch.nn.functional.normalize(torch.randn(4, 5), dim=0)
    hard = torch.randn(3, 2, 4)
    T, alpha = 0.2, 2.0
    for use_hard in (False, True):
        total = 0.0
        for b in range(3):
            qn, kn = q[b] / q[b].norm(), k[b] / k[b].norm()
            logits = [float(qn @ kn) / T] + [float(qn @ queue[:, j]) / T for j in range(5)]
            if use_hard:
                logits += [alpha * float(qn @ (hard[b, m] / hard[b, m].norm())) / T for m in range(2)]
            total += -logits[0] + math.log(sum(math.exp(x) for x in logits))
        got = moco_loss(q, k, queue, T, hard if use_hard else None, alpha)
        assert float(got) == pytest_approx(total / 3, rel=1e-4)
