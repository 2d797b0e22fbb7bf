"""SGM methods (``sgm_mocov2``, ``sgm_simclr``; docs/methods/sgm.md): training steps, hard negatives, queue,
saliency sources, filters, reproducibility, degenerate saliency, checkpoints.

The operators themselves (cell counts, focal masks, filters vs naive loops) are tested in
tests/test_ops_sgm_cells.py, tests/test_ops_sgm_masking.py and tests/test_ops_filters.py; here the
methods that wire them together are checked.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

from harl.backbones import build_backbone
from harl.checkpoint import load_backbone
from harl.config import parse_cfg
from harl.errors import CheckpointMismatchError, ConfigError
from harl.data.registry import IMAGENET_MEAN, IMAGENET_STD
from harl.methods import METHODS
from harl.methods.sgm import SGM_DEFAULT_KWARGS
from harl.ops.filters import gaussian_blur, highpass
from harl.ops.sgm_cells import saliency_from_activation
from tests.conftest import scenes_cfg, tiny_cfg

pytestmark = pytest.mark.filterwarnings("ignore:.*self.log.*")

B = 8
KW = {"proj_hidden_dim": 32, "proj_output_dim": 16, "grid_size": 4, "hp_kernel": 5, "hp_sigma": 1.0,
      "sgm_saliency": "online"}
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def sgm_raw_cfg(method: str, masks: bool = False, **kw) -> dict:
    mk = dict(KW)
    if method == "sgm_mocov2":
        mk["queue_size"] = 64
    mk.update(kw)
    over = {"method_kwargs": mk}
    if masks:
        over["data.masks"] = {"enabled": True}
    return tiny_cfg(method, **over)


def build(method: str, masks: bool = False, seed: int = 0, **kw):
    cfg = parse_cfg(sgm_raw_cfg(method, masks, **kw))
    torch.manual_seed(seed)
    return METHODS.get(method)(cfg)


def make_batch(seed: int = 0, masks=None):
    g = torch.Generator().manual_seed(seed)
    X = [torch.randn(B, 3, 32, 32, generator=g) for _ in range(2)]
    batch = [torch.arange(B), X, torch.randint(0, 10, (B,), generator=g)]
    if masks is not None:
        batch.append({"masks": [m.clone() for m in masks],
                      "coords": [torch.tensor([[0.0, 0.0, 1.0, 1.0]]).expand(B, 4).clone() for _ in range(2)]})
    return batch


def capture(model, name: str, store: list):
    """Wrap ``model.<name>`` so that every call appends (args, kwargs, result) to ``store``."""
    orig = getattr(model, name)

    def wrapped(*args, **kwargs):
        res = orig(*args, **kwargs)
        store.append((args, kwargs, res))
        return res

    setattr(model, name, wrapped)


def box_masks(fg_cols: int, value: int = 1):
    """B×1×32×32 uint8 masks whose first ``fg_cols`` columns are fg (all views alike)."""
    m = torch.zeros(B, 1, 32, 32, dtype=torch.uint8)
    m[..., :fg_cols] = value
    return [m, m.clone()]


# ------------------------------------------------------------------------------ registration


def test_registered_with_spec_defaults():
    for name in ("sgm_mocov2", "sgm_simclr"):
        d = METHODS.get(name).default_method_kwargs()
        spec = {"proj_hidden_dim": 2048, "proj_output_dim": 128, "temperature": 0.2, "sgm_strategy": "hp",
                "hp_kernel": 11, "hp_sigma": 5, "fill_blur_kernel": 31, "fill_blur_sigma": 10,
                "sgm_saliency": "supervised_r50", "grid_size": 7, "fg_std_factor": 0.6, "fg_cap": 0.55,
                "pos_ratio": [0.05, 0.25], "neg_ratio": [0.4, 0.7], "pos_noise_std": 0.18,
                "neg_noise_std": 0.14, "focal_prob": 0.2, "pos_focal_frac": 0.893, "neg_focal_frac": 0.580,
                "spatial_prob": 0.3, "noise_per_image": False, "hard_neg_scale": 2.0, "num_hard_negatives": 1}
        for key, value in spec.items():
            assert d[key] == value, (name, key)
    assert METHODS.get("sgm_mocov2").default_method_kwargs()["queue_size"] == 65536
    assert "queue_size" not in METHODS.get("sgm_simclr").default_method_kwargs()
    assert set(SGM_DEFAULT_KWARGS) <= set(METHODS.get("sgm_simclr").default_method_kwargs())


@pytest.mark.parametrize("over, match", [
    ({"sgm_saliency": "onlin"}, "did you mean 'online'"),
    ({"sgm_strategy": "hpf"}, "sgm_strategy"),
    ({"pos_ratio": [0.3, 0.1]}, "pos_ratio"),
    ({"num_hard_negatives": -1}, "num_hard_negatives"),
    ({"hard_neg_scale": 0.0}, "hard_neg_scale"),
    ({"hp_kernel": 4}, "kernel_size"),
    ({"grid_size": 40}, "grid_size"),
    ({"sgm_saliency": "supervised_r50"}, "sgm_saliency_weights"),
    ({"sgm_saliency": "checkpoint"}, "sgm_saliency_weights"),
    ({"sgm_saliency": "heuristic_mask"}, "data.masks.enabled"),
    ({"sgm_mask_thresh": 0.5}, "did you mean 'sgm_mask_threshold'"),
])
def test_config_errors_name_the_key(over, match):
    with pytest.raises(ConfigError, match=match):
        build("sgm_mocov2", **over)


def test_two_crops_required():
    raw = sgm_raw_cfg("sgm_simclr")
    raw["augmentations"] = [{"crop_size": 32, "num_crops": 3}]
    with pytest.raises(ConfigError, match="2 large crops"):
        METHODS.get("sgm_simclr")(parse_cfg(raw))


# ------------------------------------------------------------------------------ MoCo: hard negatives, queue


def _naive_moco_loss(q, k, queue, t, alpha, T):
    """CE over [q·k, q·queue_j, α·q·t_m] / T, one sample at a time."""
    total = 0.0
    for i in range(q.shape[0]):
        qi = F.normalize(q[i].double(), dim=0)
        ki = F.normalize(k[i].double(), dim=0)
        logits = [float(qi @ ki) / T]
        logits += [float(qi @ queue[:, j].double()) / T for j in range(queue.shape[1])]
        if t is not None:
            logits += [alpha * float(qi @ F.normalize(t[i, m].double(), dim=0)) / T for m in range(t.shape[1])]
        total += -logits[0] + math.log(sum(math.exp(v) for v in logits))
    return total / q.shape[0]


@pytest.mark.parametrize("num_hard", [1, 2])
def test_mocov2_hard_negatives_in_logits_and_not_enqueued(num_hard):
    model = build("sgm_mocov2", num_hard_negatives=num_hard, hard_neg_scale=2.0)
    batch = make_batch(1)
    views, losses = [], []
    capture(model, "prepare_views", views)
    capture(model, "sgm_loss", losses)
    queue0 = model.queue.clone()
    ptr0 = int(model.queue_ptr)
    loss = model.training_step(batch, 0)
    assert torch.isfinite(loss)

    (z, k, t), _, nce = losses[0][0], losses[0][1], losses[0][2]
    v = views[0][2]
    D = model.queue.shape[1]
    for view in range(2):
        assert t[view].shape == (B, num_hard, D)
        # the hard negatives are the momentum encoder's embeddings of the neg-masked key copies
        with torch.no_grad():
            ref = model.momentum_projector(model.momentum_backbone(v.hard[view]))
        ref = ref.view(num_hard, B, D).transpose(0, 1)
        torch.testing.assert_close(F.normalize(t[view], dim=-1), F.normalize(ref, dim=-1), rtol=1e-4, atol=1e-5)
    want = 0.5 * (_naive_moco_loss(z[0].detach(), k[1], queue0[1], t[1], 2.0, 0.2)
                  + _naive_moco_loss(z[1].detach(), k[0], queue0[0], t[0], 2.0, 0.2))
    assert float(nce.detach()) == pytest.approx(want, rel=1e-5)
    without = 0.5 * (_naive_moco_loss(z[0].detach(), k[1], queue0[1], None, 2.0, 0.2)
                     + _naive_moco_loss(z[1].detach(), k[0], queue0[0], None, 2.0, 0.2))
    assert float(nce.detach()) > without + 1e-3  # the hard negatives add (large) terms to the denominator

    # only the B unmasked keys per view went into the queue
    assert int(model.queue_ptr) == (ptr0 + B) % model.queue_size
    for view in range(2):
        torch.testing.assert_close(model.queue[view][:, ptr0:ptr0 + B], k[view].T)
        rest = torch.ones(model.queue_size, dtype=torch.bool)
        rest[ptr0:ptr0 + B] = False
        assert torch.equal(model.queue[view][:, rest], queue0[view][:, rest])
        # keys are the encoder outputs of the *unmasked* filtered views
        with torch.no_grad():
            ref_k = F.normalize(model.momentum_projector(model.momentum_backbone(v.inputs[view])), dim=-1)
        torch.testing.assert_close(k[view], ref_k, rtol=1e-4, atol=1e-5)


def test_mocov2_without_hard_negatives_is_masked_mocov2plus():
    cfg = parse_cfg({**sgm_raw_cfg("sgm_mocov2", num_hard_negatives=0), "momentum": {"classifier": True}})
    torch.manual_seed(0)
    model = METHODS.get("sgm_mocov2")(cfg)
    losses, mom = [], []
    capture(model, "sgm_loss", losses)
    capture(model, "_momentum_classifier_loss", mom)
    queue0 = model.queue.clone()
    total = model.training_step(make_batch(2), 0)
    (feats, targets), _, mom_loss = mom[0]
    assert len(feats) == 2 and torch.isfinite(mom_loss)
    assert float(total.detach()) > float(losses[0][2].detach())  # classifier CE terms included
    (z, k, t), _, nce = losses[0]
    assert t == [None, None]
    want = 0.5 * (_naive_moco_loss(z[0].detach(), k[1], queue0[1], None, 2.0, 0.2)
                  + _naive_moco_loss(z[1].detach(), k[0], queue0[0], None, 2.0, 0.2))
    assert float(nce.detach()) == pytest.approx(want, rel=1e-5)


# ------------------------------------------------------------------------------ SimCLR: hard negatives


def test_simclr_hard_negative_logits_in_denominator():
    model = build("sgm_simclr", hard_neg_scale=2.0, temperature=0.5, num_hard_negatives=2)
    views, calls = [], []
    capture(model, "prepare_views", views)
    capture(model, "instance_loss", calls)
    model.training_step(make_batch(3), 0)
    (z_views, idx), kw, loss = calls[0]
    extra = kw["extra_neg_logits"]
    assert extra.shape == (2 * B, 2)
    v = views[0][2]
    with torch.no_grad():
        t = [model.projector(model.backbone(h)).view(2, B, -1).transpose(0, 1) for h in v.hard]
    z = torch.cat([x.detach() for x in z_views]).double()
    zn = F.normalize(z, dim=-1)
    total = 0.0
    for i in range(2 * B):
        other_view = 1 - i // B  # anchor of view v takes the hard negatives of the other view
        pos = (i + B) % (2 * B)
        sims = [float(zn[i] @ zn[j]) / 0.5 for j in range(2 * B) if j != i]
        hard = [2.0 * float(zn[i] @ F.normalize(t[other_view][i % B, m].double(), dim=0)) / 0.5 for m in range(2)]
        assert extra[i].tolist() == pytest.approx(hard, rel=1e-4, abs=1e-5)
        total += -float(zn[i] @ zn[pos]) / 0.5 + math.log(sum(math.exp(s) for s in sims + hard))
    assert float(loss.detach()) == pytest.approx(total / (2 * B), rel=1e-5)
    plain = model.instance_loss(z_views, idx)
    assert float(loss.detach()) > float(plain.detach()) + 1e-3


# ------------------------------------------------------------------------------ views and filters


@pytest.mark.parametrize("method", ["sgm_mocov2", "sgm_simclr"])
def test_query_is_masked_hp_view_and_keys_are_unmasked_hp(method):
    model = build(method, focal_prob=0.0)
    batch = make_batch(4)
    views, online_in, momentum_in = [], [], []
    capture(model, "prepare_views", views)
    model.backbone.register_forward_pre_hook(lambda m, a: online_in.append(a[0].detach().clone()))
    if method == "sgm_mocov2":
        capture(model, "key_forward", momentum_in)
    model.training_step(batch, 0)
    v = views[0][2]
    X = batch[1]
    for view in range(2):
        hp = highpass(X[view], 5, 1.0)
        torch.testing.assert_close(v.inputs[view], hp)
        # the online encoder saw the masked queries: hp view outside the mask, something else inside
        torch.testing.assert_close(online_in[view], v.queries[view])
        m = v.query_masks[view]
        assert m.any() and not m.all()
        assert torch.equal(v.queries[view][~m], hp[~m])
        assert not torch.allclose(v.queries[view][m], hp[m])
        assert not torch.equal(v.queries[view], hp)
        # hard negatives are masked copies of the same (hp) view
        hm = v.hard_masks[view]
        assert torch.equal(v.hard[view][~hm], hp[~hm])
    if method == "sgm_mocov2":
        keys_in = momentum_in[0][0][0]
        for view in range(2):
            torch.testing.assert_close(keys_in[view], highpass(X[view], 5, 1.0))


@pytest.mark.parametrize("strategy", ["blur", "mean"])
def test_blur_and_mean_do_not_high_pass(strategy):
    model = build("sgm_mocov2", sgm_strategy=strategy, focal_prob=0.0, fill_blur_kernel=5, fill_blur_sigma=2.0)
    batch = make_batch(5)
    views, keys = [], []
    capture(model, "prepare_views", views)
    capture(model, "key_forward", keys)
    model.training_step(batch, 0)
    v = views[0][2]
    for view in range(2):
        x = batch[1][view]
        assert torch.equal(keys[0][0][0][view], x)  # keys: the view as it is
        assert torch.equal(v.inputs[view], x)
        m = v.query_masks[view]
        assert m.any()
        src = gaussian_blur(x, 5, 2.0) if strategy == "blur" else x.mean(dim=(2, 3), keepdim=True).expand_as(x)
        torch.testing.assert_close(v.queries[view][m], src[m])
        assert torch.equal(v.queries[view][~m], x[~m])
    model.eval()
    x = batch[1][0]
    torch.testing.assert_close(model(x)["feats"], model.backbone(x))


def test_forward_applies_highpass_for_hp_models():
    model = build("sgm_simclr").eval()
    x = make_batch(6)[1][0]
    out = model(x)
    torch.testing.assert_close(out["feats"], model.backbone(highpass(x, 5, 1.0)))
    assert not torch.allclose(out["feats"], model.backbone(x))
    assert set(out) >= {"feats", "logits", "z"}


# ------------------------------------------------------------------------------ reproducibility


@pytest.mark.parametrize("method", ["sgm_mocov2", "sgm_simclr"])
def test_reproducible_with_a_seed(method):
    batch = make_batch(7)
    runs = []
    for _ in range(2):
        model = build(method, seed=0)
        views = []
        capture(model, "prepare_views", views)
        torch.manual_seed(11)
        loss = model.training_step(batch, 0)
        runs.append((float(loss.detach()), views[0][2]))
    (l0, v0), (l1, v1) = runs
    assert l0 == l1
    for view in range(2):
        assert torch.equal(v0.queries[view], v1.queries[view])
        assert torch.equal(v0.hard[view], v1.hard[view])
    torch.manual_seed(12)
    v2 = model.prepare_views(batch[1])
    assert not all(torch.equal(v0.query_masks[i], v2.query_masks[i]) for i in range(2))
    # an explicit generator gives the same masks whatever the global RNG state
    model = build(method)
    torch.manual_seed(1)
    a = model.prepare_views(batch[1], generator=torch.Generator().manual_seed(3))
    torch.manual_seed(2)
    b = model.prepare_views(batch[1], generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(a.queries[i], b.queries[i]) for i in range(2))


# ------------------------------------------------------------------------------ heuristic_mask saliency


def test_heuristic_mask_fg_rule_by_hand_and_neg_masks_only_fg():
    # 12 fg columns on a 4×4 grid of 8-px cells: column 0 is 100 % fg, column 1 exactly 50 % (not > 0.5)
    model = build("sgm_mocov2", masks=True, sgm_saliency="heuristic_mask", focal_prob=0.0,
                  neg_ratio=[0.7, 0.7])
    masks = box_masks(12)
    views = []
    capture(model, "prepare_views", views)
    model.training_step(make_batch(8, masks), 0)
    v = views[0][2]
    want = torch.zeros(B, 4, 4, dtype=torch.bool)
    want[:, :, 0] = True
    for view in range(2):
        assert torch.equal(v.fg[view], want)
        # neg: only fg cells (column 0, pixels 0..7), n_fg = round(min(0.7·4/16, 0.55)·16) = 3 of 4 cells
        hm = v.hard_masks[view]
        assert not hm[..., 8:].any()
        per_channel = hm[:, :, :, :8].reshape(B, 3, 4, 8, 8).all(dim=(3, 4)).sum(dim=2)
        assert torch.equal(per_channel, torch.full((B, 3), 3))
    model_bad = build("sgm_mocov2", masks=True, sgm_saliency="heuristic_mask")
    with pytest.raises(ValueError, match="without masks"):
        model_bad.training_step(make_batch(8), 0)


@pytest.mark.parametrize("method", ["sgm_mocov2", "sgm_simclr"])
@pytest.mark.parametrize("fg_cols", [0, 32], ids=["all_bg", "all_fg"])
def test_all_bg_or_all_fg_saliency_is_finite(method, fg_cols):
    model = build(method, masks=True, sgm_saliency="heuristic_mask")
    views = []
    capture(model, "prepare_views", views)
    loss = model.training_step(make_batch(9, box_masks(fg_cols)), 0)
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name
    v = views[0][2]
    for view in range(2):
        assert bool(v.fg[view].all()) == (fg_cols == 32) and bool(v.fg[view].any()) == (fg_cols == 32)
        assert torch.isfinite(v.queries[view]).all() and torch.isfinite(v.hard[view]).all()


def test_online_saliency_uses_the_momentum_key_map():
    model = build("sgm_mocov2")
    views, keys = [], []
    capture(model, "prepare_views", views)
    capture(model, "key_forward", keys)
    model.training_step(make_batch(10), 0)
    maps = keys[0][2]["maps"]
    for view in range(2):
        assert torch.equal(views[0][2].fg[view], saliency_from_activation(maps[view], 4, 0.6))


# ------------------------------------------------------------------------------ frozen-backbone saliency


def _frozen_reference(net, x, grid=4):
    net.eval()
    with torch.no_grad():
        return saliency_from_activation(net.forward_features(x), grid, 0.6)


def test_checkpoint_saliency_from_a_run_checkpoint(tmp_path):
    torch.manual_seed(5)
    src = build_backbone("resnet18", width=8, cifar_stem=True)
    for mod in src.modules():  # non-trivial BN statistics, so eval mode differs from train mode
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 2.0)
    path = str(tmp_path / "run.ckpt")
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in src.state_dict().items()},
                "hyper_parameters": {"cfg": {"backbone": {"name": "resnet18", "kwargs": {"width": 8}},
                                             "data": {"dataset": "cifar10"},
                                             "augmentations": [{"crop_size": 32, "num_crops": 2}]}}}, path)
    model = build("sgm_mocov2", sgm_saliency="checkpoint", sgm_saliency_weights=path)
    batch = make_batch(11)
    views = []
    capture(model, "prepare_views", views)
    model.training_step(batch, 0)
    fg = views[0][2].fg
    for view in range(2):
        want = _frozen_reference(src, batch[1][view])
        assert torch.equal(fg[view], want)
        assert 0 < want.sum() < want.numel()
    # frozen and outside the model: no parameters, no state-dict keys, stays in eval mode
    net = model.saliency_source.net
    assert not any(p.requires_grad for p in net.parameters())
    own = {id(p) for p in model.parameters()}
    assert not any(id(p) in own for p in net.parameters())
    assert all(k.split(".")[0] != "saliency_source" for k in model.state_dict())
    model.train()
    assert not net.training


def test_checkpoint_saliency_explicit_architecture_and_strict_errors(tmp_path):
    src = build_backbone("resnet18", width=8, cifar_stem=True)
    path = str(tmp_path / "backbone.pth")
    torch.save(src.state_dict(), path)
    model = build("sgm_simclr", sgm_saliency="checkpoint", sgm_saliency_weights=path,
                  sgm_saliency_backbone="resnet18", sgm_saliency_backbone_kwargs={"width": 8, "cifar_stem": True})
    x = make_batch(12)[1]
    got = model.prepare_views(x)
    assert torch.equal(got.fg[0], _frozen_reference(src, x[0]))
    with pytest.raises(CheckpointMismatchError, match="shape mismatches"):
        build("sgm_simclr", sgm_saliency="checkpoint", sgm_saliency_weights=path,
              sgm_saliency_backbone="resnet18", sgm_saliency_backbone_kwargs={"width": 16, "cifar_stem": True})
    # a bare state dict without a run config: the architecture is read off its keys
    inferred = build("sgm_simclr", sgm_saliency="checkpoint", sgm_saliency_weights=path)
    assert torch.equal(inferred.prepare_views(x).fg[1], _frozen_reference(src, x[1]))
    assert inferred.saliency_source.target_stats is None  # unknown: the views' own normalisation
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build("sgm_simclr", sgm_saliency="checkpoint", sgm_saliency_weights=str(tmp_path / "nope.pth"))


def test_checkpoint_saliency_from_torchvision_classifier_weights(tmp_path):
    import torchvision

    tv = torchvision.models.resnet18()
    path = str(tmp_path / "resnet18_weights.pth")
    torch.save(tv.state_dict(), path)  # includes fc.weight / fc.bias: dropped by name
    model = build("sgm_simclr", sgm_saliency="checkpoint", sgm_saliency_weights=path)
    net = model.saliency_source.net
    assert net.num_features == 512 and not net.cifar_stem
    torch.testing.assert_close(net.layer4[1].conv2.weight, tv.layer4[1].conv2.weight)
    assert model.saliency_source.target_stats == (list(IMAGENET_MEAN), list(IMAGENET_STD))
    sd = tv.state_dict()
    sd["layer1.0.extra"] = torch.zeros(1)
    torch.save(sd, path)
    with pytest.raises(CheckpointMismatchError, match="layer1.0.extra"):
        build("sgm_simclr", sgm_saliency="checkpoint", sgm_saliency_weights=path)


def test_supervised_r50_saliency_from_a_torchvision_state_dict(tmp_path):
    import torchvision

    torch.manual_seed(6)
    tv = torchvision.models.resnet50()
    path = str(tmp_path / "resnet50_weights.pth")
    torch.save(tv.state_dict(), path)  # a torchvision weights file: includes fc.*
    model = build("sgm_simclr", sgm_saliency="supervised_r50", sgm_saliency_weights=path,
                  sgm_saliency_input_size=96)
    g = torch.Generator().manual_seed(0)
    X = [torch.randn(2, 3, 32, 32, generator=g) for _ in range(2)]
    got = model.prepare_views(X)
    tv.eval()
    for view in range(2):
        # independent: un-normalise CIFAR, normalise ImageNet, resize, torchvision layers by hand
        mean_c, std_c = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
        mean_i, std_i = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        x = ((X[view] * std_c + mean_c) - mean_i) / std_i
        x = F.interpolate(x, size=(96, 96), mode="bilinear", align_corners=False)
        with torch.no_grad():
            h = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
            act = tv.layer4(tv.layer3(tv.layer2(tv.layer1(h))))
        assert act.shape[-2:] == (3, 3)
        a = F.adaptive_avg_pool2d(act.double().sum(1, keepdim=True), 4)[:, 0]
        for b in range(2):
            flat = a[b].flatten()
            thr = flat.mean() - 0.6 * flat.std(correction=0)
            assert torch.equal(got.fg[view][b], a[b] >= thr - 1e-9 * flat.abs().max())
    assert not any("saliency" in k for k in model.state_dict())


# ------------------------------------------------------------------------------ end to end (Lightning)


def _metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("method, saliency, strategy", [("sgm_mocov2", "heuristic_mask", "hp"),
                                                         ("sgm_simclr", "online", "mean")])
def test_pretrain_writes_run_and_records_the_filter(method, saliency, strategy, scenes_root, tmp_path):
    from harl.train import pretrain

    kw = dict(KW, sgm_saliency=saliency, sgm_strategy=strategy)
    if method == "sgm_mocov2":
        kw["queue_size"] = 64
    cfg = scenes_cfg(method, scenes_root, str(tmp_path / "ckpt"), max_epochs=1, method_kwargs=kw,
                     limit_train_batches=3, limit_val_batches=1)
    if saliency == "heuristic_mask":
        cfg["data"]["masks"] = {"enabled": True, "min_fg_frac": None}
    res = pretrain(cfg)
    args = json.load(open(os.path.join(res.run_dir, "args.json")))
    assert args["method"] == method and args["method_kwargs"]["sgm_strategy"] == strategy
    assert args["method_kwargs"]["hp_kernel"] == 5 and args["method_kwargs"]["hp_sigma"] == 1.0
    ckpt_path = glob.glob(os.path.join(res.run_dir, "*-ep=0.ckpt"))[0]
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    if strategy == "hp":
        assert ckpt["harl_input_filter"] == {"name": "highpass", "kernel_size": 5, "sigma": 1.0}
    else:
        assert ckpt["harl_input_filter"] is None
    assert ckpt["hyper_parameters"]["cfg"]["method_kwargs"]["sgm_strategy"] == strategy
    assert not any("saliency" in k for k in ckpt["state_dict"])
    rows = _metrics(res.run_dir)
    nce = [float(r["train_nce_loss_step"]) for r in rows if r.get("train_nce_loss_step")]
    assert len(nce) == res.trainer.global_step > 0 and all(math.isfinite(v) for v in nce)
    fg = [float(r["train_sgm_fg_ratio_step"]) for r in rows if r.get("train_sgm_fg_ratio_step")]
    assert fg and all(0.0 < v < 1.0 for v in fg)
    assert any(r.get("train_sgm_hard_cos_step") for r in rows)
    fresh = build_backbone("resnet18", width=8, cifar_stem=True)
    load_backbone(ckpt_path, fresh)  # strict: backbone.* only, no saliency net


# ------------------------------------------------------------------------------ recipes


def test_recipes_validate_and_build(tmp_path):
    from harl.config import load_yaml

    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "pretrain")
    paths = sorted(glob.glob(os.path.join(root, "*", "sgm_*.yaml")))
    assert len(paths) == 6
    for path in paths:
        cfg = parse_cfg(load_yaml(path))
        assert cfg.method in ("sgm_mocov2", "sgm_simclr") and cfg.num_large_crops == 2, path
        assert os.path.isfile(path[:-len(".yaml")] + ".sh"), path
        kw = cfg.method_kwargs
        if kw.sgm_saliency == "heuristic_mask":
            assert cfg.data.masks.enabled and cfg.data.masks.min_fg_frac is None, path
        if "imagenet-100" in path:
            assert kw.sgm_saliency == "supervised_r50" and cfg.backbone.name == "resnet50"
            with pytest.raises(FileNotFoundError, match="sgm_saliency_weights"):
                METHODS.get(cfg.method)(cfg)  # the weights file is the user's
        elif "fashion-scenes" in path:
            model = METHODS.get(cfg.method)(cfg)
            assert model.mask_cfg.grid_size == 8 and model.sgm_strategy == "hp"
