"""LARS, parameter groups and the per-step warm-up cosine schedule against hand computations."""

import math

import pytest
import torch

from harl.optim import LARS, WarmupCosine, build_optimizer, split_bias_and_norm, warmup_cosine_lr
from harl.optim.schedulers import StepDecay, cosine_increase


def _naive_lars_step(w, g, buf, lr, wd, eta, eps, clip, exclude, momentum=0.9):
    """One LARS step written out element by element (solo-learn semantics)."""
    w = w.clone()
    d = g.clone()
    if not (exclude and w.ndim == 1):
        pn = math.sqrt(sum(float(x) ** 2 for x in w.flatten()))
        gn = math.sqrt(sum(float(x) ** 2 for x in g.flatten()))
        if pn > 0 and gn > 0:
            local = eta * pn / (gn + wd * pn + eps)
            if clip:
                local = min(local / lr, 1.0)
            d = (g + wd * w) * local
    buf = d.clone() if buf is None else buf * momentum + d
    return w - lr * buf, buf


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("exclude", [False, True])
def test_lars_matches_naive(clip, exclude):
    torch.manual_seed(0)
    w2 = torch.randn(3, 4)
    b = torch.randn(4)
    p2, pb = torch.nn.Parameter(w2.clone()), torch.nn.Parameter(b.clone())
    opt = LARS([p2, pb], lr=0.5, weight_decay=0.01, eta=0.02, clip_lr=clip, exclude_bias_n_norm=exclude)
    ref_w, ref_b, buf_w, buf_b = w2.clone(), b.clone(), None, None
    for step in range(3):
        g2, gb = torch.randn(3, 4), torch.randn(4)
        p2.grad, pb.grad = g2.clone(), gb.clone()
        opt.step()
        ref_w, buf_w = _naive_lars_step(ref_w, g2, buf_w, 0.5, 0.01, 0.02, 1e-8, clip, exclude)
        # excluded 1-D params: plain SGD momentum, no weight decay
        ref_b, buf_b = _naive_lars_step(ref_b, gb, buf_b, 0.5, 0.01, 0.02, 1e-8, clip, exclude)
        torch.testing.assert_close(p2.detach(), ref_w, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(pb.detach(), ref_b, rtol=1e-5, atol=1e-6)


def test_lars_excluded_bias_gets_no_weight_decay():
    p = torch.nn.Parameter(torch.ones(3))
    opt = LARS([p], lr=1.0, weight_decay=10.0, momentum=0.0, exclude_bias_n_norm=True)
    p.grad = torch.zeros(3)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.ones(3))  # zero grad, no decay → unchanged


def test_split_bias_and_norm_and_build():
    m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    groups = split_bias_and_norm([{"name": "m", "params": m.parameters(), "lr": 0.1}])
    assert len(groups) == 2
    assert groups[1]["weight_decay"] == 0.0 and all(p.ndim == 1 for p in groups[1]["params"])
    assert groups[0]["lr"] == groups[1]["lr"] == 0.1
    opt = build_optimizer("sgd", groups, lr=1.0, weight_decay=1e-4)
    assert opt.param_groups[0]["weight_decay"] == 1e-4 and opt.param_groups[1]["weight_decay"] == 0.0
    with pytest.raises(KeyError, match="did you mean 'lars'"):
        build_optimizer("lasr", groups, lr=1.0, weight_decay=0)


def test_warmup_cosine_closed_form():
    # W = 5 warm-up steps from 0.01 to 1.0, then cosine to 0.1 at K = 15
    vals = [warmup_cosine_lr(k, 1.0, 5, 15, 0.01, 0.1) for k in range(16)]
    assert vals[0] == pytest.approx(0.01)
    assert vals[2] == pytest.approx(0.01 + 2 * 0.99 / 4)
    assert vals[4] == pytest.approx(1.0)
    assert vals[5] == pytest.approx(1.0)  # cosine starts at the base lr
    assert vals[10] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 5 / 10)))
    assert vals[15] == pytest.approx(0.1)


def test_warmup_cosine_scheduler_steps_per_group_and_static():
    p1, p2 = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p1], "lr": 1.0}, {"params": [p2], "lr": 0.2}], lr=1.0)
    sched = WarmupCosine(opt, warmup_steps=2, total_steps=6, warmup_start_lr=0.0, min_lr=0.0, static_groups=[1])
    seen = []
    for _ in range(6):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert [s[0] for s in seen] == pytest.approx([warmup_cosine_lr(k, 1.0, 2, 6) for k in range(6)])
    assert all(s[1] == 0.2 for s in seen)


def test_step_decay_and_cosine_increase():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = StepDecay(opt, [2, 4])
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    assert cosine_increase(0, 10, 0.99, 1.0) == pytest.approx(0.99)
    assert cosine_increase(5, 10, 0.99, 1.0) == pytest.approx(0.995)
    assert cosine_increase(10, 10, 0.99, 1.0) == pytest.approx(1.0)
