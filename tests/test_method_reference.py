"""Reference values of every method's training step.

For one fixed small batch, each test runs the method's ``training_step`` (loss, logged branch
losses, gradients of a few parameters) and recomputes the same quantities with an independent
reference written here from the method's formulas. The reference may call the model's own
sub-modules (backbone, projector, predictor, pixel head, their EMA copies) but none of harl's
loss, pooling or grid helpers: losses, mask grids, region pooling, schedules and pairings are
written out below. Values agree to ~1e-5.

What this layer guards: the *wiring* of each method (which view's target a prediction regresses,
which mask pools which map, which head a branch goes through, which queue a query meets, which
weights and schedule values combine the branches). The pure losses have their own tests.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from harl.config import parse_cfg
from harl.methods import METHODS
from tests.conftest import tiny_cfg
from tests.test_hapicl_method import _spatial_loop

pytestmark = pytest.mark.filterwarnings("ignore:.*self.log.*")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is several times faster than two on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

B, S = 4, 32
K_STEP, K_TOTAL = 3, 10          # the step the schedules are evaluated at, and the run's length
LOSS_TOL = dict(rtol=1e-5, atol=1e-5)
GRAD_RTOL = 1e-4
#: parameters whose gradients are compared (those the model has)
GRAD_PARAMS = ("backbone.conv1.weight", "backbone.layer3.0.conv1.weight", "backbone.layer4.1.bn2.weight",
               "projector.0.weight", "projector.2.weight", "predictor.0.weight", "predictor.3.weight",
               "region_projector.0.weight", "pixel_head.0.weight", "pixel_head.3.weight")


# ---------------------------------------------------------------------------------------------
# building models and batches
# ---------------------------------------------------------------------------------------------


def method_kwargs(method: str, **extra) -> dict:
    kw = {"proj_hidden_dim": 32, "proj_output_dim": 16}
    if method in ("simclr", "mocov2plus", "sgm_simclr", "sgm_mocov2") or method.startswith("hapicl_s") \
            or method.startswith("hapicl_m"):
        kw["temperature"] = 0.3  # not the default, so a method reading the default is caught
    if method in ("byol", "harl", "hapicl_byol"):
        kw["pred_hidden_dim"] = 32
    if method in ("mocov2plus", "hapicl_mocov2plus", "sgm_mocov2"):
        kw["queue_size"] = 16
    if method.startswith("hapicl"):
        kw.update({"pix_hidden_dim": 24, "pix_output_dim": 12, "pix_weight": 0.5, "pix_temperature": 0.25})
    if method.startswith("sgm"):
        kw.update({"grid_size": 4, "hp_kernel": 5, "hp_sigma": 1.0, "sgm_saliency": "online",
                   "num_hard_negatives": 2, "hard_neg_scale": 1.5})
    kw.update(extra)
    return kw


def build(method: str, seed: int = 0, step: int = K_STEP, total: int = K_TOTAL, cfg_over=None, **kw):
    """(model in train mode attached to a stand-in trainer, dict the step's logs go to)."""
    over = {"optimizer.batch_size": B, "scheduler.warmup_epochs": 0, "momentum.base_tau": 0.9,
            **(cfg_over or {})}
    raw = tiny_cfg(method, method_kwargs=method_kwargs(method, **kw), **over)
    if METHODS.get(method).uses_masks:
        raw["data"]["masks"] = {"enabled": True, "root": "unused"}
    torch.manual_seed(seed)
    model = METHODS.get(method)(parse_cfg(raw))
    model.train()
    if hasattr(model, "momentum_pairs"):
        # as after some training: the EMA copies differ from the online networks, so a target
        # computed by an online network (or the other way round) changes the values
        with torch.no_grad():
            for _, target in model.momentum_pairs:
                for p in target.parameters():
                    p.add_(0.05 * torch.randn_like(p))
    model.trainer = SimpleNamespace(estimated_stepping_batches=total, global_step=step, current_epoch=0)
    logs: dict = {}
    model.log_dict = lambda d, **k: logs.update({key: float(torch.as_tensor(v).detach()) for key, v in d.items()})
    model.log = lambda key, v, **k: logs.update({key: float(torch.as_tensor(v).detach())})
    return model, logs


def _disc(cy: float, cx: float, r: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    return (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r).to(torch.uint8)


def fixed_masks():
    """Per view B×1×S×S uint8. Image 1 has no fg in view 2; image 2 is all fg in view 1 (no bg)."""
    empty, full = torch.zeros(S, S, dtype=torch.uint8), torch.ones(S, S, dtype=torch.uint8)
    v1 = [_disc(10, 12, 7), _disc(16, 16, 9), full, _disc(22, 8, 6)]
    v2 = [_disc(14, 18, 8), empty, _disc(12, 20, 10), _disc(8, 24, 7)]
    return [torch.stack(v1)[:, None], torch.stack(v2)[:, None]]


def fixed_batch(masks: bool = True, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    X = [torch.randn(B, 3, S, S, generator=g) for _ in range(2)]
    batch = [torch.arange(B) + 100, X, torch.tensor([3, -1, 7, 3])]
    if masks:
        # view 2's box is a horizontally flipped, shifted crop of view 1's
        c1 = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.1, 0.1, 0.9, 0.9], [0.0, 0.2, 0.8, 1.0], [0.2, 0.0, 1.0, 0.8]])
        c2 = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.2, 0.0, 1.0, 0.8], [0.9, 0.1, 0.1, 0.9], [0.0, 0.1, 0.7, 0.8]])
        batch.append({"masks": fixed_masks(), "coords": [c1, c2]})
    return batch


def cfg_value(model, key):
    """A hyper-parameter as the config gives it (not the attribute the method derived from it)."""
    return float(model.cfg.method_kwargs[key])


def run_step(model, batch):
    """The method's total loss (detached) and the gradients of :data:`GRAD_PARAMS`."""
    model.zero_grad(set_to_none=True)
    loss = model.training_step(batch, 0)
    loss.backward()
    grads = _grads(model)
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def _grads(model):
    named = dict(model.named_parameters())
    return {n: (named[n].grad.clone() if named[n].grad is not None else torch.zeros_like(named[n]))
            for n in GRAD_PARAMS if n in named}


def ref_grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    grads = _grads(model)
    model.zero_grad(set_to_none=True)
    return grads


def assert_grads_close(got, want):
    assert got.keys() == want.keys()
    assert any(float(g.abs().sum()) > 0 for g in want.values())
    for name in want:
        # float32 noise of two different summation orders: bound the error by the gradient's scale
        err = float((got[name] - want[name]).abs().max())
        scale = float(want[name].abs().max())
        assert err <= GRAD_RTOL * scale + 1e-8, f"gradient of {name}: max error {err:.3g} at scale {scale:.3g}"


def close(got, want, what):
    torch.testing.assert_close(torch.as_tensor(float(got)), torch.as_tensor(float(want)), **LOSS_TOL,
                               msg=lambda m: f"{what}: {m}")


# ---------------------------------------------------------------------------------------------
# independent references of the formulas
# ---------------------------------------------------------------------------------------------


def cos_rows(a, b):
    return (a / a.norm(dim=1, keepdim=True)) .mul(b / b.norm(dim=1, keepdim=True)).sum(dim=1)


def byol_l(p, z, w=None):
    """2 − 2·Σ w cos / max(1, Σ w) (plain mean without w), exactly 0 when Σ w = 0."""
    c = cos_rows(p, z.detach())
    if w is None:
        return 2 - 2 * c.mean()
    if float(w.sum()) == 0:
        return (p * 0).sum()
    return 2 - 2 * (w * c).sum() / max(1.0, float(w.sum()))


def ntxent(z, idx, T, extra=None):
    """−mean_i log(Σ_{j≠i, same index} e^{s_ij} / (Σ_{j≠i} e^{s_ij} + Σ e^{extra_i})), s = ẑ·ẑ/T."""
    zn = z / z.norm(dim=1, keepdim=True)
    s = zn @ zn.T / T
    out = []
    for i in range(z.shape[0]):
        others = [j for j in range(z.shape[0]) if j != i]
        pos = sum(torch.exp(s[i, j]) for j in others if idx[j] == idx[i])
        den = sum(torch.exp(s[i, j]) for j in others)
        if extra is not None:
            den = den + torch.exp(extra[i]).sum()
        out.append(-torch.log(pos / den))
    return torch.stack(out).mean()


def moco_ce(q, k, queue, T, hard=None, alpha=1.0):
    """CE([q̂·k̂, q̂·queue, α·q̂·t̂_m] / T, 0), mean over rows; queue D×K, hard B×M×D."""
    qn = q / q.norm(dim=1, keepdim=True)
    kn = (k / k.norm(dim=1, keepdim=True)).detach()
    cols = [(qn * kn).sum(1, keepdim=True), qn @ queue]
    if hard is not None:
        tn = hard / hard.norm(dim=2, keepdim=True)
        cols.append(alpha * (qn[:, None, :] * tn).sum(2))
    logits = torch.cat(cols, 1) / T
    return (torch.logsumexp(logits, 1) - logits[:, 0]).mean()


def grid(mask, h, w, thr=0.0, soft=False):
    """fg fraction of each cell (adaptive bins) → (M_f, M_b), B×1×h×w."""
    a = F.adaptive_avg_pool2d((mask > 0).float(), (h, w))
    fg = a if soft else (a > thr).float()
    return fg, 1.0 - fg


def cosine_c(k, K):
    return (1 + math.cos(math.pi * min(k, K) / K)) / 2


def alpha_at(k, K, base):
    return 1 - (1 - base) * cosine_c(k, K)


def beta_at(k, K, base, beta_min=0.0):
    return max(beta_min, base * cosine_c(k, K))


def tau_at(k, K, base, final):
    return final - (final - base) * cosine_c(k, K)


def class_ce(model, feats, targets):
    logits = torch.cat([model.classifier(f.detach()) for f in feats])
    t = targets.repeat(len(feats))
    return F.cross_entropy(logits, t, ignore_index=-1)


# ---------------------------------------------------------------------------------------------
# baselines
# ---------------------------------------------------------------------------------------------


def test_byol_step():
    model, logs = build("byol")
    batch = fixed_batch(masks=False)
    loss, grads = run_step(model, batch)
    X, y = batch[1], batch[2]
    feats = [model.backbone(x) for x in X]
    p = [model.predictor(model.projector(f)) for f in feats]
    with torch.no_grad():
        zt = [model.momentum_projector(model.momentum_backbone(x)) for x in X]
    ssl = byol_l(p[1], zt[0]) + byol_l(p[0], zt[1])
    ref = ssl + class_ce(model, feats, y)
    close(logs["train_neg_cos_sim"], ssl, "BYOL loss")
    close(loss, ref, "total")
    assert_grads_close(grads, ref_grads(model, ref))


def test_simclr_step():
    model, logs = build("simclr")
    batch = fixed_batch(masks=False)
    loss, grads = run_step(model, batch)
    feats = [model.backbone(x) for x in batch[1]]
    z = torch.cat([model.projector(f) for f in feats])
    ssl = ntxent(z, batch[0].repeat(2), cfg_value(model, "temperature"))
    ref = ssl + class_ce(model, feats, batch[2])
    close(logs["train_nce_loss"], ssl, "NT-Xent")
    close(loss, ref, "total")
    assert_grads_close(grads, ref_grads(model, ref))


def _moco_keys(model, X):
    with torch.no_grad():
        return [F.normalize(model.momentum_projector(model.momentum_backbone(x)), dim=1) for x in X]


def test_mocov2plus_step_and_queue():
    model, logs = build("mocov2plus")
    batch = fixed_batch(masks=False)
    model.queue_ptr[0] = 8  # mid-queue, so the pointer's wrap-around is exercised
    queue0 = model.queue.clone()
    loss, grads = run_step(model, batch)
    X = batch[1]
    feats = [model.backbone(x) for x in X]
    q = [model.projector(f) for f in feats]
    k = _moco_keys(model, X)
    T = cfg_value(model, "temperature")
    ssl = (moco_ce(q[0], k[1], queue0[1], T) + moco_ce(q[1], k[0], queue0[0], T)) / 2
    ref = ssl + class_ce(model, feats, batch[2])
    close(logs["train_nce_loss"], ssl, "MoCo loss")
    close(loss, ref, "total")
    assert_grads_close(grads, ref_grads(model, ref))
    # queue: each view's keys land in its own queue at columns 8..11, the rest is untouched
    want = queue0.clone()
    for v in range(2):
        want[v, :, 8:12] = k[v].T
    torch.testing.assert_close(model.queue, want, rtol=1e-6, atol=1e-6)
    assert int(model.queue_ptr) == 12
    model.queue_ptr[0] = 12
    run_step(model, batch)
    assert int(model.queue_ptr) == 0  # 12 + 4 wraps to the start of a 16-column queue


# ---------------------------------------------------------------------------------------------
# HARL
# ---------------------------------------------------------------------------------------------


def _harl_maps(model, backbone, x):
    if model.feature_map == "c4":
        c4 = backbone.forward_c4(x)
        return backbone.layer4(c4), c4
    c5 = backbone.forward_features(x)
    return c5, c5


def _pool_region(region, m, pooling, eps):
    if pooling == "masked_mean":
        return (region * m).sum((2, 3)) / (m.sum((2, 3)) + eps)
    if pooling == "gap_masked":
        return (region * m).sum((2, 3)) / float(region.shape[2] * region.shape[3])
    # pixel shuffle: channel k = c·4 + δ_y·2 + δ_x pools the fine-mask sub-grid (δ_y, δ_x)
    sub = torch.stack([m[:, 0, dy::2, dx::2] for dy in range(2) for dx in range(2)], 1)  # B×4×h×w
    idx = torch.arange(region.shape[1]) % 4
    return (region * sub[:, idx]).sum((2, 3)) / (m.sum((1, 2, 3)) / 4 + eps)[:, None]


def harl_reference(model, batch, alpha, beta):
    """(total SSL loss, {branch: loss}) of HARL written from the paper's formulas."""
    kw = model.method_kwargs
    X, masks = batch[1], batch[3]["masks"]
    weights_by_type = {
        "byol": lambda a, g: {"g": 1.0},
        "mask": lambda a, g: {"f": a, "b": 1 - a},
        "hybrid": lambda a, g: {"g": g, "f": (1 - g) * a, "b": (1 - g) * (1 - a)},
        "byol_f": lambda a, g: {"g": g, "f": 1 - g},
        "f": lambda a, g: {"f": 1.0},
    }
    gamma = beta if kw.hybrid_mode == "cosine_decay_global" else 1 - float(kw.mask_weight)
    weights = weights_by_type[kw.loss_type](alpha, gamma)
    online = [_harl_maps(model, model.backbone, x) for x in X]
    with torch.no_grad():
        target = [_harl_maps(model, model.momentum_backbone, x) for x in X]
    scale = 2 if kw.feature_map == "c5_pixel_shuffle" else 1
    grids = []
    for m, (_, region) in zip(masks, online):
        grids.append(grid(m, region.shape[2] * scale, region.shape[3] * scale, float(kw.mask_threshold),
                          soft=kw.mask_mode == "soft"))
    exclude = kw.empty_mask_policy == "exclude"
    region_w = {}
    for r, key in enumerate(("f", "b")):
        valid = (grids[0][r].sum((1, 2, 3)) > 0) & (grids[1][r].sum((1, 2, 3)) > 0)
        region_w[key] = valid.float() if exclude else torch.ones(B)
    proj = {"g": (model.projector, model.momentum_projector)}
    if model.region_projector is not None:
        proj["f"] = proj["b"] = (model.region_projector, model.momentum_region_projector)
    else:
        proj["f"] = proj["b"] = proj["g"]

    def vectors(c5, region, v, key):
        if key == "g":
            return c5.mean((2, 3))
        m = grids[v][0 if key == "f" else 1]
        h = _pool_region(region, m, kw.pooling, float(kw.pool_eps))
        if exclude:
            h = torch.where(region_w[key][:, None] > 0, h, region.mean((2, 3)))
        return h

    branch = {}
    for key in weights:
        on_proj, tg_proj = proj[key]
        p = [model.predictor(on_proj(vectors(*online[v], v, key))) for v in range(2)]
        with torch.no_grad():
            z = [tg_proj(vectors(*target[v], v, key)) for v in range(2)]
        w = None if key == "g" else region_w[key]
        branch[key] = byol_l(p[0], z[1], w) + byol_l(p[1], z[0], w)
    total = sum(wk * branch[k] for k, wk in weights.items())
    return total, branch, online


HARL_CASES = {
    "byol": {"loss_type": "byol"},
    "mask": {"loss_type": "mask"},
    "hybrid": {"loss_type": "hybrid"},
    "byol_f": {"loss_type": "byol_f"},
    "f": {"loss_type": "f"},
    "faithful": {"loss_type": "hybrid", "empty_mask_policy": "faithful"},
    "c5_stride1": {"feature_map": "c5_stride1"},
    "c4": {"feature_map": "c4"},
    "c5_pixel_shuffle": {"feature_map": "c5_pixel_shuffle", "pooling": "pixel_shuffle"},
    "gap_masked": {"pooling": "gap_masked"},
    "fixed_mask_weight": {"hybrid_mode": "fixed_mask_weight", "mask_weight": 0.3},
    "soft": {"mask_mode": "soft"},
    "threshold": {"mask_threshold": 0.5, "alpha_base": 0.4, "lambda_base": 0.9, "beta_min": 0.75},
}


@pytest.mark.parametrize("case", list(HARL_CASES))
def test_harl_step(case):
    kw = HARL_CASES[case]
    model, logs = build("harl", **kw)
    mk = model.method_kwargs
    batch = fixed_batch()
    loss, grads = run_step(model, batch)
    alpha = alpha_at(K_STEP, K_TOTAL, float(mk.alpha_base))
    beta = beta_at(K_STEP, K_TOTAL, float(mk.lambda_base), float(mk.beta_min))
    assert model.alpha == pytest.approx(alpha, abs=1e-12) and model.beta == pytest.approx(beta, abs=1e-12)
    assert logs["alpha"] == pytest.approx(alpha) and logs["beta"] == pytest.approx(beta)
    ssl, branch, online = harl_reference(model, batch, alpha, beta)
    feats = [c5.mean((2, 3)) for c5, _ in online]
    ref = ssl + class_ce(model, feats, batch[2])
    for key, value in branch.items():
        close(logs[f"train_loss_{key}"], value, f"L_{key}")
    assert set(branch) <= {k[len("train_loss_"):] for k in logs if k.startswith("train_loss_")}
    close(logs["train_harl_loss"], ssl, "HARL total")
    close(loss, ref, "total")
    assert_grads_close(grads, ref_grads(model, ref))


def test_harl_fixture_has_empty_regions_that_matter():
    """The batch really exercises both empty-region policies (else the policy tests prove nothing)."""
    model, logs = build("harl")
    run_step(model, fixed_batch())
    assert logs["train_frac_valid_f"] == pytest.approx(0.75) and logs["train_frac_valid_b"] == pytest.approx(0.75)
    model2, logs2 = build("harl", empty_mask_policy="faithful")
    run_step(model2, fixed_batch())
    assert abs(logs2["train_loss_f"] - logs["train_loss_f"]) > 1e-4


def test_harl_feature_maps_have_the_expected_grids():
    sizes = {}
    for fm, pooling in (("c5", "masked_mean"), ("c5_stride1", "masked_mean"), ("c4", "masked_mean")):
        model, _ = build("harl", feature_map=fm, pooling=pooling)
        c5, region = _harl_maps(model, model.backbone, torch.randn(2, 3, S, S))
        sizes[fm] = (tuple(c5.shape[1:]), tuple(region.shape[1:]))
    assert sizes["c5"] == ((64, 5, 5), (64, 5, 5))
    assert sizes["c5_stride1"] == ((64, 9, 9), (64, 9, 9))
    assert sizes["c4"] == ((64, 5, 5), (32, 9, 9))


@pytest.mark.parametrize("feature_map,pooling", [("c5_pixel_shuffle", "masked_mean"), ("c5", "pixel_shuffle")])
def test_harl_pixel_shuffle_map_and_pooling_go_together(feature_map, pooling):
    """Found by the reference tests: c5_pixel_shuffle with the default pooling crashed at the first
    step with a mask-grid shape error; now it is a config error naming both keys."""
    from harl.errors import ConfigError

    with pytest.raises(ConfigError, match="pooling.*feature_map"):
        build("harl", feature_map=feature_map, pooling=pooling)


@pytest.mark.parametrize("step,total", [(0, 10), (5, 10), (10, 10), (13, 10)])
def test_harl_schedules_at_given_steps(step, total):
    model, _ = build("harl", step=step, total=total, alpha_base=0.6, lambda_base=0.8, beta_min=0.1)
    sched = model.current_schedules()
    c = (1 + math.cos(math.pi * min(step, total) / total)) / 2
    assert sched["alpha"] == pytest.approx(1 - 0.4 * c, abs=1e-12)
    assert sched["beta"] == pytest.approx(max(0.1, 0.8 * c), abs=1e-12)
    # hand values at the ends: α rises 0.6 → 1, β falls 0.8 → β_min
    if step == 0:
        assert (sched["alpha"], sched["beta"]) == (pytest.approx(0.6), pytest.approx(0.8))
    if step >= total:
        assert (sched["alpha"], sched["beta"]) == (pytest.approx(1.0), pytest.approx(0.1))


def test_harl_epoch_granularity_uses_epochs():
    model, _ = build("harl", step=7, total=10, schedule_granularity="epoch")
    model.trainer.current_epoch = 1  # tiny_cfg: max_epochs = 2
    sched = model.current_schedules()
    assert sched["alpha"] == pytest.approx(1 - 0.3 * 0.5) and sched["beta"] == pytest.approx(0.7 * 0.5)


# ---------------------------------------------------------------------------------------------
# HAPiCL
# ---------------------------------------------------------------------------------------------


def pix_ref(P1, P2, f1, f2, tau, variant, positives="fg_bg", skip=True, spatial=None):
    """L_pix over cell pairs of the same image across its two views (P: B×D×N, f: B×N bool)."""
    p1 = F.normalize(P1.float(), dim=1)
    p2 = F.normalize(P2.float(), dim=1)
    per, keep, totals = [], [], []
    for b in range(P1.shape[0]):
        sim = torch.exp(p1[b].T @ p2[b] / tau)                       # N1×N2
        same_fg = f1[b][:, None] & f2[b][None, :]
        same_bg = ~f1[b][:, None] & ~f2[b][None, :]
        pos_m = (same_fg | same_bg) if positives == "fg_bg" else same_fg
        neg_m = ~pos_m
        if spatial is not None:
            pos_m = pos_m & spatial[b]
        pos, neg = sim[pos_m].sum(), sim[neg_m].sum()
        keep.append(bool(pos_m.any() and neg_m.any()) if skip else True)
        per.append((pos, neg))
        totals.append(pos + neg)
    kept = [i for i, k in enumerate(keep) if k]
    if not kept:
        return P1.sum() * 0.0
    if variant == "A":
        terms = [-torch.log((per[i][0] + 1) / (per[i][0] + 1 + per[i][1] + 1)) for i in kept]
    else:
        den = sum(totals[i] for i in kept)
        terms = [-torch.log((per[i][0] + 1e-5) / den) for i in kept]
    return torch.stack(terms).mean()


HAPICL_CASES = [
    ("hapicl_simclr", {"pix_variant": "A"}),
    ("hapicl_simclr", {"pix_variant": "B"}),
    ("hapicl_simclr", {"pix_variant": "A", "pix_spatial": True, "pix_pos_radius": 1.5}),
    ("hapicl_mocov2plus", {"pix_variant": "A"}),
    ("hapicl_mocov2plus", {"pix_variant": "B", "pix_spatial": True, "pix_pos_radius": 1.5}),
    ("hapicl_byol", {"pix_variant": "A"}),
    ("hapicl_byol", {"pix_variant": "B"}),
    ("hapicl_byol", {"pix_variant": "A", "pix_spatial": True, "pix_pos_radius": 1.5, "mask_threshold": 0.5,
                     "pix_positives": "fg_only"}),
]


@pytest.mark.parametrize("method,kw", HAPICL_CASES, ids=[f"{m}-{i}" for i, (m, _) in enumerate(HAPICL_CASES)])
def test_hapicl_step(method, kw):
    model, logs = build(method, **kw)
    mk = model.method_kwargs
    batch = fixed_batch()
    queue0 = model.queue.clone() if hasattr(model, "queue") else None
    loss, grads = run_step(model, batch)
    X, extras = batch[1], batch[3]
    maps = [model.backbone.forward_features(x) for x in X]
    feats = [m.mean((2, 3)) for m in maps]
    P = [model.pixel_head(m) for m in maps]
    h, w = P[0].shape[-2:]
    fg = [grid(m, h, w, float(mk.mask_threshold))[0].flatten(1) > 0 for m in extras["masks"]]
    spatial = None
    if mk.pix_spatial:
        c1, c2 = extras["coords"]
        spatial = torch.tensor([_spatial_loop(c1[b].tolist(), c2[b].tolist(), h, w, float(mk.pix_pos_radius))
                                for b in range(B)])
    args = dict(tau=float(mk.pix_temperature), variant=str(mk.pix_variant), positives=str(mk.pix_positives),
                spatial=spatial)
    if method == "hapicl_simclr":
        z = torch.cat([model.projector(f) for f in feats])
        inst = ntxent(z, batch[0].repeat(2), cfg_value(model, "temperature"))
        pix = pix_ref(P[0].flatten(2), P[1].flatten(2), fg[0], fg[1], **args)
    else:
        with torch.no_grad():
            tmaps = [model.momentum_backbone.forward_features(x) for x in X]
            Pt = [model.momentum_pixel_head(m).flatten(2) for m in tmaps]
            zt = [model.momentum_projector(m.mean((2, 3))) for m in tmaps]
        pix = (pix_ref(P[0].flatten(2), Pt[1], fg[0], fg[1], **args)
               + pix_ref(Pt[0], P[1].flatten(2), fg[0], fg[1], **args)) / 2
        if method == "hapicl_byol":
            p = [model.predictor(model.projector(f)) for f in feats]
            inst = byol_l(p[1], zt[0]) + byol_l(p[0], zt[1])
        else:
            q = [model.projector(f) for f in feats]
            T = cfg_value(model, "temperature")
            inst = (moco_ce(q[0], zt[1], queue0[1], T) + moco_ce(q[1], zt[0], queue0[0], T)) / 2
    ssl = inst + 0.5 * pix
    ref = ssl + class_ce(model, feats, batch[2])
    close(logs["train_instance_loss"], inst, "instance loss")
    close(logs["train_pix_loss"], pix, "pixel loss")
    close(logs["train_hapicl_loss"], ssl, "HAPiCL total")
    close(loss, ref, "total")
    assert_grads_close(grads, ref_grads(model, ref))
    if queue0 is not None:
        k = [F.normalize(z, dim=1) for z in zt]
        torch.testing.assert_close(model.queue[:, :, :B], torch.stack([k[0].T, k[1].T]), rtol=1e-6, atol=1e-6)
        assert int(model.queue_ptr) == B


def test_hapicl_spatial_fixture_drops_some_positives():
    """With the chosen radius the spatial rule removes some (not all) same-region pairs."""
    c1, c2 = fixed_batch()[3]["coords"]
    sp = torch.tensor([_spatial_loop(c1[b].tolist(), c2[b].tolist(), 5, 5, 1.5) for b in range(B)])
    assert 0.05 < sp.float().mean() < 0.95


# ---------------------------------------------------------------------------------------------
# saliency-guided masking
# ---------------------------------------------------------------------------------------------


def _sgm_views(model, X, moco: bool):
    """Re-create the step's masked views from the same RNG state (the masking ops have their own
    tests); ``online`` saliency reads the momentum key maps (MoCo) or the online encoder (SimCLR)."""
    inputs = [model.input_filter(x) for x in X]
    maps = None
    if moco:
        with torch.no_grad():
            maps = {v: model.momentum_backbone.forward_features(x) for v, x in enumerate(inputs)}
    torch.manual_seed(1234)
    return inputs, model.prepare_views(X, None, inputs=inputs, maps=maps)


def test_sgm_simclr_step():
    model, logs = build("sgm_simclr")
    batch = fixed_batch(masks=False)
    torch.manual_seed(1234)
    loss, grads = run_step(model, batch)
    inputs, views = _sgm_views(model, batch[1], moco=False)
    M = int(cfg_value(model, "num_hard_negatives"))
    feats = [model.backbone(q) for q in views.queries]
    z = [model.projector(f) for f in feats]
    with torch.no_grad():
        t = [model.projector(model.backbone(hd)).view(M, B, -1) for hd in views.hard]  # m, b, D
    T, a = cfg_value(model, "temperature"), cfg_value(model, "hard_neg_scale")
    extra = []
    for v in range(2):
        zn = F.normalize(z[v], dim=1)
        tn = F.normalize(t[1 - v], dim=2)
        extra.append(a * torch.einsum("bd,mbd->bm", zn, tn) / T)  # anchor of view v: the other view's negatives
    ssl = ntxent(torch.cat(z), batch[0].repeat(2), T, extra=torch.cat(extra))
    ref = ssl + class_ce(model, feats, batch[2])
    close(logs["train_nce_loss"], ssl, "SGM SimCLR loss")
    close(loss, ref, "total")
    assert_grads_close(grads, ref_grads(model, ref))
    # the queries really are masked copies of the high-passed views
    assert not torch.allclose(views.queries[0], inputs[0])


def test_sgm_mocov2_step_and_queue():
    model, logs = build("sgm_mocov2")
    batch = fixed_batch(masks=False)
    queue0 = model.queue.clone()
    torch.manual_seed(1234)
    loss, grads = run_step(model, batch)
    inputs, views = _sgm_views(model, batch[1], moco=True)
    M = int(cfg_value(model, "num_hard_negatives"))
    feats = [model.backbone(q) for q in views.queries]
    q = [model.projector(f) for f in feats]
    with torch.no_grad():
        k = [F.normalize(model.momentum_projector(model.momentum_backbone(x)), dim=1) for x in inputs]
        t = [model.momentum_projector(model.momentum_backbone(hd)).view(M, B, -1).transpose(0, 1)
             for hd in views.hard]
    T, a = cfg_value(model, "temperature"), cfg_value(model, "hard_neg_scale")
    ssl = (moco_ce(q[0], k[1], queue0[1], T, t[1], a) + moco_ce(q[1], k[0], queue0[0], T, t[0], a)) / 2
    ref = ssl + class_ce(model, feats, batch[2])
    close(logs["train_nce_loss"], ssl, "SGM MoCo loss")
    close(loss, ref, "total")
    assert_grads_close(grads, ref_grads(model, ref))
    # only the unmasked keys are enqueued, each view into its own queue
    want = queue0.clone()
    want[0, :, :B], want[1, :, :B] = k[0].T, k[1].T
    torch.testing.assert_close(model.queue, want, rtol=1e-6, atol=1e-6)
    assert int(model.queue_ptr) == B


# ---------------------------------------------------------------------------------------------
# EMA, τ and the lr schedule inside a real fit with gradient accumulation
# ---------------------------------------------------------------------------------------------


MOMENTUM_CASES = [("byol", {}), ("mocov2plus", {}), ("harl", {"feature_map": "c4"}), ("hapicl_mocov2plus", {}),
                  ("hapicl_byol", {}), ("sgm_mocov2", {})]


@pytest.mark.parametrize("method,kw", MOMENTUM_CASES, ids=[m for m, _ in MOMENTUM_CASES])
def test_ema_update_covers_every_momentum_module(method, kw):
    """ξ ← τ·ξ + (1−τ)·θ for every ``momentum_<name>`` module against ``<name>``; buffers untouched."""
    model, _ = build(method, **kw)
    mods = dict(model.named_children())
    pairs = {name: name[len("momentum_"):] for name in mods
             if name.startswith("momentum_") and name != "momentum_classifier"}
    assert pairs, method
    before = {n: [p.detach().clone() for p in mods[n].parameters()] for n in pairs}
    bufs = {n: [b.detach().clone() for b in mods[n].buffers()] for n in pairs}
    with torch.no_grad():
        for n in pairs.values():
            for p in mods[n].parameters():
                p.add_(0.1)
    model.ema_update(0.75)
    for target, online in pairs.items():
        theta = [p.detach() for p in mods[online].parameters()]
        for got, old, th in zip(mods[target].parameters(), before[target], theta):
            torch.testing.assert_close(got.detach(), 0.75 * old + 0.25 * th, rtol=1e-6, atol=1e-7,
                                       msg=lambda m: f"{target} not averaged from {online}: {m}")
        for got, old in zip(mods[target].buffers(), bufs[target]):
            assert torch.equal(got, old)
        assert not any(p.requires_grad for p in mods[target].parameters())


@pytest.mark.parametrize("step,total", [(0, 10), (4, 10), (10, 10)])
def test_tau_at_given_steps(step, total):
    model, _ = build("byol", step=step, total=total, cfg_over={"momentum.base_tau": 0.9, "momentum.final_tau": 1.0})
    assert model._tau_at(step) == pytest.approx(tau_at(step, total, 0.9, 1.0), abs=1e-12)
    if step == 0:
        assert model._tau_at(step) == pytest.approx(0.9)
    if step == total:
        assert model._tau_at(step) == pytest.approx(1.0)


class _Batches(torch.utils.data.Dataset):
    def __init__(self, n):
        g = torch.Generator().manual_seed(5)
        self.x = [torch.randn(2, 3, S, S, generator=g) for _ in range(n)]

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return i, [self.x[i][0], self.x[i][1]], -1


def test_ema_and_lr_follow_optimizer_steps_under_gradient_accumulation(tmp_path):
    """4 micro-batches, accumulate_grad_batches = 2 → 2 optimizer steps; the EMA runs once after
    each optimizer step with τ(k) of that step, the lr follows warm-up + cosine per optimizer step."""
    import lightning.pytorch as pl

    torch.manual_seed(0)
    over = {"optimizer.batch_size": 2, "accumulate_grad_batches": 2, "momentum.base_tau": 0.5,
            "momentum.final_tau": 1.0, "max_epochs": 1, "optimizer.name": "sgd", "optimizer.kwargs": {},
            "optimizer.lr": 25.6, "scheduler.warmup_epochs": 0.5, "scheduler.warmup_start_lr": 0.0}
    cfg = parse_cfg(tiny_cfg("byol", method_kwargs=method_kwargs("byol"), **over))
    model = METHODS.get("byol")(cfg)
    records = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            # runs before the module's own hook (the EMA), right after the optimizer step
            records.append({"step": trainer.global_step, "lr": trainer.optimizers[0].param_groups[0]["lr"],
                            "online": [p.detach().clone() for p in online_params(pl_module)],
                            "target": [p.detach().clone() for p in target_params(pl_module)]})

    def online_params(m):
        return list(m.backbone.parameters()) + list(m.projector.parameters())

    def target_params(m):
        return list(m.momentum_backbone.parameters()) + list(m.momentum_projector.parameters())

    target0 = [p.detach().clone() for p in target_params(model)]
    loader = torch.utils.data.DataLoader(_Batches(8), batch_size=2)
    trainer = pl.Trainer(max_epochs=1, accumulate_grad_batches=2, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[Record()], default_root_dir=str(tmp_path))
    trainer.fit(model, loader)
    assert [r["step"] for r in records] == [0, 1, 1, 2]
    final = [p.detach() for p in target_params(model)]
    # target seen at record j+1 is the target after the module's hook of batch j
    seen = [r["target"] for r in records[1:]] + [final]
    prev = target0
    taus = []
    for j, r in enumerate(records):
        if r["step"] > (records[j - 1]["step"] if j else 0):
            tau = tau_at(len(taus), 2, 0.5, 1.0)
            taus.append(tau)
            want = [tau * t + (1 - tau) * o for t, o in zip(prev, r["online"])]
        else:
            want = prev
        for a, b in zip(seen[j], want):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        prev = seen[j]
    assert taus == [0.5, 0.75]  # τ(0), τ(1) of K = 2 optimizer steps
    assert not torch.allclose(final[0], target0[0])
    # lr: base 25.6 · 2/256 · accumulate 2 = 0.4; one warm-up step (0.5 epoch of 2 steps), then cosine
    # over K = 2 steps: lr(0) = 0.4 (warm-up of one step ends at the base), lr(1) = 0.2
    lrs = {r["step"]: r["lr"] for r in records}
    assert lrs[1] == pytest.approx(0.4 * 0.5 * (1 + math.cos(math.pi * 0 / 1)), rel=1e-9)
    assert lrs[2] == pytest.approx(0.4 * 0.5 * (1 + math.cos(math.pi * 1 / 1)) + 0.0, abs=1e-12)
