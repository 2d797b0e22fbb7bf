"""HAPiCL methods (docs/methods/hapicl.md, docs/architecture.md): hapicl_simclr, hapicl_mocov2plus, hapicl_byol.

The pure pixel loss has its own loop tests (test_losses_hapicl.py); here the *method* is checked:
its logged pixel loss against a naive per-pixel loop on the method's own embeddings and on masks
gridded by hand, the degenerate masks, the spatial rule on hand-made boxes (flips included), the
public code's bugs (head trained, pixel loss optimised, names validated), and a real pretraining.
"""

from __future__ import annotations

import csv
import glob
import math
import os
import warnings

import pytest
import torch
import torch.nn.functional as F

from harl.config import load_yaml, parse_cfg
from harl.errors import ConfigError
from harl.methods import METHODS
from harl.methods.byol import BYOL
from harl.methods.hapicl import HAPiCL
from harl.methods.mocov2plus import MoCoV2Plus
from harl.methods.simclr import SimCLR
from tests.conftest import tiny_cfg

NAMES = ("hapicl_simclr", "hapicl_mocov2plus", "hapicl_byol")
BASES = {"hapicl_simclr": ("simclr", SimCLR), "hapicl_mocov2plus": ("mocov2plus", MoCoV2Plus),
         "hapicl_byol": ("byol", BYOL)}
MOMENTUM = {"hapicl_mocov2plus", "hapicl_byol"}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _kwargs(name: str, **extra) -> dict:
    kw = {"proj_hidden_dim": 32, "proj_output_dim": 16}
    if name.endswith("byol"):
        kw["pred_hidden_dim"] = 32
    if name.endswith("mocov2plus"):
        kw["queue_size"] = 64
    if name.startswith("hapicl"):
        kw.update({"pix_hidden_dim": 24, "pix_output_dim": 12})
    kw.update(extra)
    return kw


def _cfg(name: str, batch_size: int = 4, **kw):
    raw = tiny_cfg(name, method_kwargs=_kwargs(name, **kw), **{"optimizer.batch_size": batch_size,
                                                               "scheduler.warmup_epochs": 0})
    if METHODS.get(name).uses_masks:
        raw["data"]["masks"] = {"enabled": True, "root": "unused"}
    return parse_cfg(raw)


def _model(name: str, seed: int = 0, batch_size: int = 4, **kw):
    torch.manual_seed(seed)
    return METHODS.get(name)(_cfg(name, batch_size, **kw))


def _optimizer(model):
    """``configure_optimizers`` outside a fit (a stand-in trainer gives the step count)."""
    from types import SimpleNamespace

    model.trainer = SimpleNamespace(estimated_stepping_batches=10)
    (opt,), _ = model.configure_optimizers()
    return opt


def _capture(model) -> dict:
    logs = {}
    model.log_dict = lambda d, **k: logs.update({key: float(v) for key, v in d.items()})
    model.log = lambda key, v, **k: logs.update({key: float(v)})
    return logs


def _disc(size: int, cy: float, cx: float, r: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r).to(torch.uint8)


def _batch(masks1, masks2, coords1=None, coords2=None, size: int = 32, seed: int = 1):
    """masks: lists of S×S uint8 per image; coords: B×4 (default: the whole image, no flip)."""
    g = torch.Generator().manual_seed(seed)
    b = len(masks1)
    X = [torch.randn(b, 3, size, size, generator=g) for _ in range(2)]
    full = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).repeat(b, 1)
    extras = {"masks": [torch.stack(masks1)[:, None], torch.stack(masks2)[:, None]],
              "coords": [full.clone() if coords1 is None else coords1, full.clone() if coords2 is None else coords2]}
    return [torch.arange(b), X, torch.randint(0, 10, (b,), generator=g), extras]


def _varied_masks(b: int = 4, size: int = 32, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(2):
        view = []
        for _ in range(b):
            cy, cx = (torch.rand(2, generator=g) * (size * 0.6) + size * 0.2).tolist()
            r = float(torch.rand(1, generator=g)) * size * 0.2 + size * 0.12
            view.append(_disc(size, cy, cx, r))
        out.append(view)
    return out


# --------------------------------------------------------------------------- naive references


def _grid_loop(mask: torch.Tensor, h: int, w: int, thr: float):
    """fg cells (row-major) of an S×S mask: fg fraction of adaptive-pool bin (r, c) > thr."""
    S, S2 = mask.shape
    mask = mask.tolist()
    out = []
    for r in range(h):
        y0, y1 = (r * S) // h, -((-(r + 1) * S) // h)
        for c in range(w):
            x0, x1 = (c * S2) // w, -((-(c + 1) * S2) // w)
            n = fg = 0
            for y in range(y0, y1):
                for x in range(x0, x1):
                    n += 1
                    fg += int(mask[y][x] > 0)
            out.append(fg / n > thr)
    return out


def _spatial_loop(box1, box2, h: int, w: int, radius: float):
    """docs/methods/hapicl.md written out: cell centres in original-image coordinates, distance / max bin diagonal."""
    def centres(box):
        x0, y0, x1, y1 = box
        return [((c + 0.5) * (x1 - x0) / w + x0, (r + 0.5) * (y1 - y0) / h + y0) for r in range(h) for c in range(w)]

    def diag(box):
        x0, y0, x1, y1 = box
        return math.sqrt(((x1 - x0) / w) ** 2 + ((y1 - y0) / h) ** 2)

    c1, c2 = centres(box1), centres(box2)
    scale = max(diag(box1), diag(box2))
    return [[math.dist(p, q) / scale < radius for q in c2] for p in c1]


def _loss_loop(P1, P2, f1, f2, tau, variant, positives, skip, spatial=None):
    """Per image, per pixel pair, in float64. P: B×D×N; f: per image lists of fg bools."""
    b, d, n1 = P1.shape
    n2 = P2.shape[2]
    P1 = F.normalize(P1.double(), dim=1).tolist()
    P2 = F.normalize(P2.double(), dim=1).tolist()
    pos, neg, keep = [], [], []
    for n in range(b):
        sp = sn = 0.0
        cp = cn = 0
        for i in range(n1):
            for j in range(n2):
                s = math.exp(sum(P1[n][k][i] * P2[n][k][j] for k in range(d)) / tau)
                same = (f1[n][i] and f2[n][j]) or (positives == "fg_bg" and not f1[n][i] and not f2[n][j])
                is_pos = same and (spatial is None or spatial[n][i][j])
                if is_pos:
                    sp += s
                    cp += 1
                if not same:
                    sn += s
                    cn += 1
        pos.append(sp)
        neg.append(sn)
        keep.append((cp > 0 and cn > 0) if skip else True)
    idx = [n for n in range(b) if keep[n]]
    if not idx:
        return 0.0, 0.0
    if variant == "A":
        terms = [-math.log((pos[n] + 1) / (pos[n] + 1 + neg[n] + 1)) for n in idx]
    else:
        den = sum(pos[n] + neg[n] for n in idx)
        terms = [-math.log((pos[n] + 1e-5) / den) for n in idx]
    return sum(terms) / len(terms), len(idx) / b


@torch.no_grad()
def _embeddings(model, X, upsample: int):
    """The pixel embeddings recomputed from the model's own modules (train-mode BN: batch statistics)."""
    def embed(backbone, head, x):
        fmap = backbone.forward_features(x)
        if upsample > 1:
            fmap = F.interpolate(fmap, scale_factor=upsample, mode="bilinear", align_corners=False)
        return head(fmap).flatten(2)

    online = [embed(model.backbone, model.pixel_head, x) for x in X]
    target = None
    if hasattr(model, "momentum_pixel_head"):
        target = [embed(model.momentum_backbone, model.momentum_pixel_head, x) for x in X]
    return online, target


def _reference_pix_loss(model, batch, *, variant="A", positives="fg_bg", skip=True, thr=0.0, upsample=1,
                        spatial_boxes=None, radius=0.7):
    online, target = _embeddings(model, batch[1], upsample)
    h = w = int(round(math.sqrt(online[0].shape[2])))
    masks = batch[3]["masks"]
    f1 = [_grid_loop(m[0], h, w, thr) for m in masks[0]]
    f2 = [_grid_loop(m[0], h, w, thr) for m in masks[1]]
    spatial = None
    if spatial_boxes is not None:
        spatial = [_spatial_loop(b1, b2, h, w, radius) for b1, b2 in zip(*spatial_boxes)]
    tau = 0.2
    if target is None:
        return _loss_loop(online[0], online[1], f1, f2, tau, variant, positives, skip, spatial)
    l1, v1 = _loss_loop(online[0], target[1], f1, f2, tau, variant, positives, skip, spatial)
    l2, v2 = _loss_loop(target[0], online[1], f1, f2, tau, variant, positives, skip, spatial)
    assert v1 == v2
    return (l1 + l2) / 2, v1


def _step_logs(model, batch):
    logs = _capture(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = model.training_step(batch, 0)
    return loss, logs


# --------------------------------------------------------------------------- registry and config


def test_registered_with_instance_loss_fixed_by_name():
    for name in NAMES:
        cls = METHODS.get(name)
        base_name, base_cls = BASES[name]
        assert issubclass(cls, HAPiCL) and issubclass(cls, base_cls) and cls.uses_masks
        assert cls.default_method_kwargs()["instance_loss"] == base_name
        # one pixel implementation shared by all three
        assert cls.pixel_loss is HAPiCL.pixel_loss and cls.training_step is HAPiCL.training_step
        other = next(n for n in NAMES if n != name)
        with pytest.raises(ConfigError, match=f"use method: {other}"):
            METHODS.get(name)(_cfg(name, instance_loss=BASES[other][0]))
        with pytest.raises(ConfigError, match=f"did you mean '{base_name}'"):
            METHODS.get(name)(_cfg(name, instance_loss=base_name + "x"))


@pytest.mark.parametrize("key,value,match", [
    ("pix_variant", "C", "pix_variant"),
    ("pix_positives", "fg_bgg", "did you mean 'fg_bg'"),
    ("pix_positives", "fg-only", "did you mean 'fg_only'"),
    ("mask_mode", "soft", "binary fg/bg rule"),
    ("pix_upsample", 0, "pix_upsample"),
    ("pix_upsample", 1.5, "pix_upsample"),
    ("pix_temperature", 0.0, "pix_temperature"),
    ("pix_weight", -1.0, "pix_weight"),
    ("pix_spatial", "yes", "pix_spatial"),
    ("mask_threshold", 1.0, "mask_threshold"),
])
def test_bad_kwargs_are_config_errors(key, value, match):
    with pytest.raises(ConfigError, match=match):
        _model("hapicl_simclr", **{key: value})


def test_misspelt_kwarg_names_the_right_one_and_masks_are_required():
    with pytest.raises(ConfigError, match="did you mean 'pix_weight'"):
        _cfg("hapicl_byol", pix_wieght=1.0)
    raw = tiny_cfg("hapicl_byol", method_kwargs=_kwargs("hapicl_byol"))
    with pytest.raises(ConfigError, match="needs masks"):
        METHODS.get("hapicl_byol")(parse_cfg(raw))
    # the variant is case-insensitive, like the loss
    assert _model("hapicl_simclr", pix_variant="b").pix_variant == "B"


@pytest.mark.parametrize("name", NAMES)
def test_forward_keys_and_shapes_at_224_and_32_px(name):
    """c5 map 7×7 at 224 px (ImageNet stem), 5×5 at 32 px (CIFAR stem); ×2 upsampling doubles the pixel grid."""
    for size, stem, grid, up in ((224, False, 7, 2), (32, True, 5, 1)):
        cfg = _cfg(name, 2, pix_upsample=up)
        cfg.backbone.kwargs.cifar_stem = stem
        torch.manual_seed(0)
        model = METHODS.get(name)(cfg)
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            out = model(x)
            pix = model.crop_forward(x, 0)["pix"]
        want = {"feats", "feat_map", "logits", "z"} | ({"p"} if name.endswith("byol") else set())
        assert set(out) == want
        assert out["feat_map"].shape == (2, model.features_dim, grid, grid)
        assert pix.shape == (2, 12, grid * up, grid * up)
        if name in MOMENTUM:
            mom = model.momentum_crop_forward(x, 0)
            assert mom["pix"].shape == pix.shape and not mom["pix"].requires_grad


# --------------------------------------------------------------------------- the public code's bugs


@pytest.mark.parametrize("name", NAMES)
def test_pixel_head_is_optimised_and_averaged(name):
    model = _model(name)
    opt = _optimizer(model)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    head = list(model.pixel_head.parameters())
    assert head and all(id(p) in in_opt for p in head)
    assert "pixel_head" in [g["name"] for g in model.learnable_params]
    keys = model.state_dict().keys()
    assert any(k.startswith("pixel_head.") for k in keys)
    if name in MOMENTUM:
        assert any(a is model.pixel_head and b is model.momentum_pixel_head for a, b in model.momentum_pairs)
        assert not any(p.requires_grad for p in model.momentum_pixel_head.parameters())
        assert not any(id(p) in in_opt for p in model.momentum_pixel_head.parameters())
        assert any(k.startswith("momentum_pixel_head.") for k in keys)
        before = [p.clone() for p in model.momentum_pixel_head.parameters()]
        with torch.no_grad():
            for p in model.pixel_head.parameters():
                p.add_(1.0)
        model.ema_update(0.9)
        for b0, p, q in zip(before, model.momentum_pixel_head.parameters(), model.pixel_head.parameters()):
            torch.testing.assert_close(p, 0.9 * b0 + 0.1 * q)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_the_pixel_head(name):
    model = _model(name)
    m1, m2 = _varied_masks()
    loss, logs = _step_logs(model, _batch(m1, m2))
    assert logs["train_pix_frac_valid"] == 1.0 and logs["train_pix_loss"] > 0
    loss.backward()
    for pname, p in model.pixel_head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname
    if name in MOMENTUM:
        assert all(p.grad is None for p in model.momentum_pixel_head.parameters())
    # the optimised total contains the weighted pixel loss
    expected = logs["train_instance_loss"] + 1.0 * logs["train_pix_loss"] + logs["train_class_loss"]
    assert float(loss) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_pix_weight_zero_reduces_to_the_base_and_nonzero_changes_the_update(name):
    """One optimizer step from the same init: w_pix = 0 gives the base method's update, w_pix = 1 does not."""
    base_name = BASES[name][0]
    m1, m2 = _varied_masks()
    batch = _batch(m1, m2)

    def stepped(method, **kw):
        model = _model(method, seed=7, **({} if method == base_name else kw))
        opt = _optimizer(model)
        opt.zero_grad()
        b = batch if model.uses_masks else batch[:3]
        loss, logs = _step_logs(model, b)
        loss.backward()
        opt.step()
        return {k: v.detach().clone() for k, v in model.backbone.state_dict().items()}, logs

    base, _ = stepped(base_name)
    zero, logs0 = stepped(name, pix_weight=0.0)
    one, logs1 = stepped(name, pix_weight=1.0)
    assert logs0["train_pix_loss"] > 0  # still computed and logged
    assert logs0["train_pix_loss"] == pytest.approx(logs1["train_pix_loss"])
    for k in base:
        torch.testing.assert_close(zero[k], base[k], rtol=1e-5, atol=1e-6, msg=k)
    diff = max(float((one[k].float() - base[k].float()).abs().max()) for k in base)
    assert diff > 1e-4


# --------------------------------------------------------------------------- loss vs naive loops


LOOP_CASES = [("hapicl_simclr", "A", "fg_bg", 0.0, 1), ("hapicl_simclr", "B", "fg_bg", 0.5, 1),
              ("hapicl_simclr", "A", "fg_only", 0.5, 1), ("hapicl_simclr", "B", "fg_only", 0.0, 1),
              ("hapicl_simclr", "A", "fg_bg", 0.5, 2)]
LOOP_CASES += [(name, *case) for name in sorted(MOMENTUM)
               for case in (("A", "fg_bg", 0.0, 1), ("B", "fg_only", 0.5, 1), ("B", "fg_bg", 0.5, 2))]


@pytest.mark.parametrize("name,variant,positives,thr,upsample", LOOP_CASES)
def test_method_pixel_loss_matches_naive_loop(name, variant, positives, thr, upsample):
    model = _model(name, pix_variant=variant, pix_positives=positives, mask_threshold=thr, pix_upsample=upsample)
    m1, m2 = _varied_masks()
    batch = _batch(m1, m2)
    _, logs = _step_logs(model, batch)
    ref, frac = _reference_pix_loss(model, batch, variant=variant, positives=positives, thr=thr, upsample=upsample)
    assert frac > 0
    assert logs["train_pix_loss"] == pytest.approx(ref, rel=1e-4, abs=1e-6)
    assert logs["train_pix_frac_valid"] == pytest.approx(frac)


@pytest.mark.parametrize("name", NAMES)
def test_masks_without_fg_or_bg(name):
    S = 32
    zeros, ones = torch.zeros(S, S, dtype=torch.uint8), torch.ones(S, S, dtype=torch.uint8)
    disc = _disc(S, 14, 15, 8)
    # image 0: no fg anywhere; 1: all fg; 2: fg only in view 1; 3: fg in both
    m1 = [zeros, ones, disc, disc]
    m2 = [zeros, ones, zeros, _disc(S, 18, 12, 9)]
    batch = _batch(m1, m2)
    for positives, skip, variant, frac_expected in (("fg_bg", True, "A", 0.5), ("fg_only", True, "B", 0.25),
                                                    ("fg_bg", False, "B", 1.0), ("fg_only", False, "A", 1.0)):
        model = _model(name, pix_positives=positives, pix_skip_degenerate=skip, pix_variant=variant,
                       mask_threshold=0.5)
        loss, logs = _step_logs(model, batch)
        ref, frac = _reference_pix_loss(model, batch, variant=variant, positives=positives, skip=skip, thr=0.5)
        assert frac == frac_expected == pytest.approx(logs["train_pix_frac_valid"])
        assert math.isfinite(logs["train_pix_loss"])
        assert logs["train_pix_loss"] == pytest.approx(ref, rel=1e-4)

    # every image degenerate: the pixel term is 0 with zero, finite gradients; the instance loss still trains
    batch = _batch([zeros, ones], [zeros, ones])
    model = _model(name, batch_size=2)
    loss, logs = _step_logs(model, batch)
    assert logs["train_pix_loss"] == 0.0 and logs["train_pix_frac_valid"] == 0.0
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert all(float(p.grad.abs().sum()) == 0.0 for p in model.pixel_head.parameters())
    assert float(model.backbone.conv1.weight.grad.abs().sum()) > 0


def test_degenerate_masks_at_threshold_zero_are_counted():
    """thr = 0 makes any touched cell fg: a disc covering every cell leaves no bg → image skipped."""
    S = 32
    big = _disc(S, 15.5, 15.5, 30)  # touches all 25 cells of the 5×5 grid
    model = _model("hapicl_simclr", mask_threshold=0.0)
    _, logs = _step_logs(model, _batch([big, _disc(S, 8, 8, 5)], [big, _disc(S, 20, 20, 6)]))
    assert logs["train_pix_frac_valid"] == 0.5


# --------------------------------------------------------------------------- spatial positives


def _flip(box):
    x0, y0, x1, y1 = box
    return [x1, y0, x0, y1]


@pytest.mark.parametrize("name", NAMES)
def test_spatial_positives_on_hand_made_boxes(name):
    S, h = 32, 5
    full = [0.0, 0.0, 1.0, 1.0]
    inner = [0.3, 0.45, 0.7, 0.9]  # a zoom into view 1: asymmetric, so it catches swapped views
    far = [0.0, 0.0, 0.2, 0.2]
    corner = [0.8, 0.8, 1.0, 1.0]  # no cell of `far` is near a cell of `corner`
    boxes1 = [full, full, full, corner]
    boxes2 = [full, _flip(full), inner, far]
    # hand-derived: same box → only the same cell; mirrored box → only the mirrored cell
    same = _spatial_loop(full, full, h, h, 0.7)
    mirror = _spatial_loop(full, _flip(full), h, h, 0.7)
    for i in range(h * h):
        r, c = divmod(i, h)
        assert [j for j in range(h * h) if same[i][j]] == [i]
        assert [j for j in range(h * h) if mirror[i][j]] == [r * h + (h - 1 - c)]
    assert not any(any(row) for row in _spatial_loop(corner, far, h, h, 0.7))
    scale = max(math.hypot(0.2, 0.2), math.hypot(0.4 / h, 0.45 / h))
    margins = [abs(math.dist(p, q) / scale - 0.7)
               for p in [((c + .5) / h, (r + .5) / h) for r in range(h) for c in range(h)]
               for q in [((c + .5) * 0.4 / h + 0.3, (r + .5) * 0.45 / h + 0.45) for r in range(h) for c in range(h)]]
    assert min(margins) > 1e-3  # float32 vs float64 cannot flip a pair

    m1, m2 = _varied_masks()
    batch = _batch(m1, m2, torch.tensor(boxes1), torch.tensor(boxes2), size=S)
    for variant in ("A", "B"):
        model = _model(name, pix_spatial=True, pix_variant=variant, mask_threshold=0.5)
        _, logs = _step_logs(model, batch)
        ref, frac = _reference_pix_loss(model, batch, variant=variant, thr=0.5, spatial_boxes=(boxes1, boxes2))
        assert logs["train_pix_loss"] == pytest.approx(ref, rel=1e-4)
        assert logs["train_pix_frac_valid"] == pytest.approx(frac)
        assert frac == 0.75  # the disjoint pair has no positive left
        # the boxes matter: swapping the views' boxes changes the loss (the rule is not symmetric here)
        swapped = _batch(m1, m2, torch.tensor(boxes2), torch.tensor(boxes1), size=S)
        ref_swapped, _ = _reference_pix_loss(model, swapped, variant=variant, thr=0.5,
                                             spatial_boxes=(boxes2, boxes1))
        assert abs(ref_swapped - ref) > 1e-4


# --------------------------------------------------------------------------- precision


@pytest.mark.parametrize("name,dtype", [(n, torch.bfloat16) for n in NAMES] + [("hapicl_byol", torch.float16)])
def test_finite_under_half_precision_autocast(name, dtype):
    """The pixel head runs in half precision, the pixel loss in fp32 (its sums overflow fp16)."""
    model = _model(name)
    m1, m2 = _varied_masks()
    batch = _batch(m1, m2)
    with torch.autocast("cpu", dtype=dtype):
        assert model.crop_forward(batch[1][0], 0)["pix"].dtype == dtype
        loss, logs = _step_logs(model, batch)
    ref = _step_logs(_model(name), batch)[1]["train_pix_loss"]
    assert math.isfinite(logs["train_pix_loss"]) and logs["train_pix_loss"] == pytest.approx(ref, rel=0.05)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in model.pixel_head.parameters())


# --------------------------------------------------------------------------- real pretraining


@pytest.fixture(scope="module")
def tiny_scenes(tmp_path_factory) -> str:
    """A tiny fashion-scenes tree (40 train / 10 test scenes, 32 px) on a synthetic Fashion-MNIST."""
    import numpy as np

    from harl.data.fashion_mnist import write_idx
    from harl.data.fashion_scenes import FashionScenesParams, generate_fashion_scenes

    base = tmp_path_factory.mktemp("hapicl-scenes")
    rng = np.random.default_rng(0)
    fm = base / "fmnist"
    fm.mkdir()
    for split, n in (("train", 60), ("t10k", 20)):
        x = np.zeros((n, 28, 28), dtype=np.uint8)
        for i in range(n):
            y0, x0 = rng.integers(2, 12, size=2)
            x[i, y0:y0 + 10 + i % 5, x0:x0 + 8 + i % 7] = rng.integers(120, 256)
        write_idx(str(fm / f"{split}-images-idx3-ubyte.gz"), x)
        write_idx(str(fm / f"{split}-labels-idx1-ubyte.gz"), (np.arange(n) % 10).astype(np.uint8))
    out = str(base / "scenes")
    generate_fashion_scenes(out, FashionScenesParams(n_train=40, n_test=10, size=32), workers=1, progress=False,
                            fmnist_root=str(fm))
    return out


class _Snapshot:
    def __init__(self):
        from lightning.pytorch import Callback

        snap = self

        class CB(Callback):
            def on_train_start(self, trainer, pl_module):
                snap.before = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

        self.callback = CB()
        self.before = None


@pytest.mark.parametrize("name", NAMES)
def test_real_pretraining_trains_the_pixel_head(name, tiny_scenes, tmp_path):
    from harl.train import pretrain

    raw = tiny_cfg(name, method_kwargs=_kwargs(name), **{"optimizer.batch_size": 8, "max_epochs": 1,
                                                         "scheduler.warmup_epochs": 0})
    raw["data"].update({"dataset": "fashion_scenes", "train_path": tiny_scenes, "val_path": tiny_scenes,
                        "masks": {"enabled": True, "min_fg_frac": 0.3}})
    raw.update({"checkpoint": {"enabled": True, "dir": str(tmp_path), "frequency": 1}, "no_validation": True,
                "enable_progress_bar": False, "enable_model_summary": False, "log_every_n_steps": 1,
                "limit_train_batches": 3, "method_kwargs": {**raw["method_kwargs"], "mask_threshold": 0.5}})
    snap = _Snapshot()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = pretrain(parse_cfg(raw), callbacks=[snap.callback])
    after = res.model.state_dict()
    changed = lambda prefix: any(not torch.equal(snap.before[k], after[k].cpu()) for k in after  # noqa: E731
                                 if k.startswith(prefix) and after[k].is_floating_point())
    assert changed("pixel_head.") and changed("backbone.")
    if name in MOMENTUM:
        assert changed("momentum_pixel_head.")
    rows = list(csv.DictReader(open(os.path.join(res.run_dir, "metrics.csv"))))
    pix = [float(r["train_pix_loss_step"]) for r in rows if r.get("train_pix_loss_step")]
    frac = [float(r["train_pix_frac_valid_step"]) for r in rows if r.get("train_pix_frac_valid_step")]
    assert len(pix) == 3 and all(math.isfinite(v) for v in pix) and max(frac) > 0
    ckpt = torch.load(res.last_checkpoint, map_location="cpu", weights_only=False)
    assert any(k.startswith("pixel_head.") for k in ckpt["state_dict"])


# --------------------------------------------------------------------------- recipes


RECIPES = sorted(glob.glob(os.path.join(REPO, "scripts", "pretrain", "*", "hapicl_*.yaml")))


def test_every_dataset_has_the_three_recipes():
    for dataset in ("cifar", "imagenet-100", "imagenet", "fashion-scenes"):
        for name in NAMES:
            for ext in ("yaml", "sh"):
                path = os.path.join(REPO, "scripts", "pretrain", dataset, f"{name}.{ext}")
                assert os.path.isfile(path), path


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: os.path.relpath(p, REPO))
def test_recipe_validates(path):
    method = os.path.splitext(os.path.basename(path))[0]
    cfg = parse_cfg(load_yaml(path))
    assert cfg.method == method
    assert cfg.data.masks.enabled and cfg.data.masks.min_fg_frac == 0.3
    assert cfg.num_large_crops == 2 and cfg.num_small_crops == 0
    METHODS.get(method).check_cfg(cfg)
    sh = open(path[:-5] + ".sh").read()
    assert f"--config-name {method}.yaml" in sh
