"""The saliency generator (docs/masks.md): head, inference geometry, label-free training, CLI."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from harl.backbones import BACKBONES, build_backbone
from harl.masks.io import list_files, read_mask
from harl.masks.saliency import SaliencyParams, SaliencyPredictor
from harl.masks.saliency_model import (
    HEAD_FORMAT, SaliencyHead, SaliencyModel, load_saliency_model, predict_probability, read_head_file,
)
from harl.errors import SaliencyWeightsError
from harl.masks.saliency_train import SaliencyTrainConfig, soft_targets, train_saliency_head


class PixelColour(nn.Module):
    """A test backbone: 4×4 average pooling followed by a 1×1 conv (identity at init): colour features."""

    num_features = 3

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            self.proj.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.proj.bias.zero_()

    def forward_features(self, x):
        return self.proj(nn.functional.avg_pool2d(x, 4))


if "test_pixel_colour" not in BACKBONES:
    BACKBONES.register("test_pixel_colour", lambda **kw: PixelColour())


def _save_ckpt(backbone: nn.Module, path: str, args: dict = None) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in backbone.state_dict().items()},
                "epoch": 1}, path)
    if args is not None:
        with open(os.path.join(os.path.dirname(path), "args.json"), "w") as f:
            json.dump(args, f)
    return path


@pytest.fixture
def tiny_set(tmp_path):
    """6 images 48×64: a yellow rectangle on a noisy dark-blue background; its mask is the pseudo-mask."""
    rng = np.random.default_rng(0)
    images, masks = tmp_path / "images" / "c", tmp_path / "pseudo" / "c"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    for i in range(6):
        img = np.zeros((48, 64, 3), np.float64)
        img[...] = (30, 40, 90)
        m = np.zeros((48, 64), np.uint8)
        y, x = int(rng.integers(4, 20)), int(rng.integers(4, 30))
        img[y:y + 20, x:x + 28] = (230, 200, 40)
        m[y:y + 20, x:x + 28] = 255
        img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(images / f"{i}.png")
        Image.fromarray(m).save(masks / f"{i}.png")
    return str(tmp_path / "images"), str(tmp_path / "pseudo")


# --------------------------------------------------------------------------------------------- model


class FixedMap(nn.Module):
    num_features = 1

    def __init__(self, fmap):
        super().__init__()
        self.register_buffer("fmap", torch.as_tensor(fmap, dtype=torch.float32)[None, None])

    def forward_features(self, x):
        return self.fmap.expand(x.shape[0], -1, -1, -1)


def test_head_is_a_1x1_conv_with_sigmoid_and_bilinear_upsampling():
    head = SaliencyHead(1)
    with torch.no_grad():
        head.conv.weight.fill_(1.0)
        head.conv.bias.fill_(0.0)
    model = SaliencyModel(FixedMap([[10.0, -10.0], [-10.0, 10.0]]), head).eval()
    image = np.zeros((64, 96, 3), np.uint8)
    p = predict_probability(model, image, short_side=32)
    assert p.shape == (64, 96) and p.dtype == np.float32
    # bilinear (align_corners=False) from 2×2: the outer quarter of each cell is the cell's value
    assert p[:16, :24] == pytest.approx(torch.sigmoid(torch.tensor(10.0)).item(), abs=1e-6)
    assert p[48:, 72:] == pytest.approx(p[0, 0], abs=1e-6)
    assert p[:16, 72:] == pytest.approx(torch.sigmoid(torch.tensor(-10.0)).item(), abs=1e-6)
    mask = p > 0.5
    expected = np.zeros((64, 96), bool)
    expected[:32, :48] = expected[32:, 48:] = True
    np.testing.assert_array_equal(mask, expected)
    # the backbone is frozen
    assert all(not q.requires_grad for q in model.backbone.parameters())


def test_soft_targets_are_cell_fractions():
    m = torch.zeros(1, 1, 4, 4)
    m[0, 0, :2, :1] = 1
    m[0, 0, 2:, 2:] = 1
    t = soft_targets(m, (2, 2))
    assert t[0, 0].tolist() == [[0.5, 0.0], [0.0, 1.0]]


# --------------------------------------------------------------------------------------------- training


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def test_head_learns_from_pseudo_masks(tiny_set, tmp_path):
    images, pseudo = tiny_set
    ckpt = _save_ckpt(PixelColour(), str(tmp_path / "ckpt" / "last.ckpt"))
    out = str(tmp_path / "head.pt")
    cfg = SaliencyTrainConfig(images=images, pseudo_masks=pseudo, out=out, backbone="test_pixel_colour",
                              checkpoint=ckpt, epochs=40, batch_size=6, lr=0.1, short_side=48, crop=48,
                              num_workers=0, progress=False)
    rec = train_saliency_head(cfg)
    assert rec["pairs"] == 6 and rec["steps"] == 40
    assert rec["epoch_loss"][0] == pytest.approx(np.log(2), abs=0.05)  # zero-initialised head
    assert rec["epoch_loss"][-1] < 0.5 * rec["epoch_loss"][0]
    obj = read_head_file(out)
    assert obj["format"] == HEAD_FORMAT and obj["backbone"] == "test_pixel_colour"
    assert obj["checkpoint"] == os.path.abspath(ckpt) and len(obj["checkpoint_sha256"]) == 64
    assert "backbone_state_dict" not in obj
    pred = SaliencyPredictor(SaliencyParams(weights=out, device="cpu"))
    ious = []
    for rel in list_files(images):
        img = np.asarray(Image.open(os.path.join(images, rel)).convert("RGB"))
        mask, info = pred(img)
        assert mask.shape == (48, 64) and info["n_segments"] >= 1
        ious.append(_iou(mask, read_mask(os.path.join(pseudo, rel))))
    # colour features separate the object perfectly; the 4×4 feature cells blur its edges by ≤ 2 px
    assert np.mean(ious) > 0.8


def test_random_backbone_is_stored_and_reproduced(tiny_set, tmp_path):
    images, pseudo = tiny_set
    out = str(tmp_path / "head.pt")
    cfg = SaliencyTrainConfig(images=images, pseudo_masks=pseudo, out=out, backbone="resnet18",
                              backbone_kwargs={"width": 8}, epochs=1, batch_size=3, short_side=32, crop=32,
                              num_workers=0, progress=False)
    with pytest.warns(UserWarning, match="random-init"):
        train_saliency_head(cfg)
    obj = read_head_file(out)
    assert obj["checkpoint"] is None and "backbone_state_dict" in obj
    m1, _ = load_saliency_model(out)
    m2, _ = load_saliency_model(out)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(m1(x), m2(x))


def test_wrong_checkpoint_is_refused(tiny_set, tmp_path):
    images, pseudo = tiny_set
    ckpt = _save_ckpt(PixelColour(), str(tmp_path / "a" / "a.ckpt"))
    out = str(tmp_path / "head.pt")
    train_saliency_head(SaliencyTrainConfig(images=images, pseudo_masks=pseudo, out=out, backbone="test_pixel_colour",
                                            checkpoint=ckpt, epochs=1, batch_size=6, short_side=48, crop=48,
                                            num_workers=0, progress=False))
    other = PixelColour()
    with torch.no_grad():
        other.proj.bias.fill_(0.5)
    other_ckpt = _save_ckpt(other, str(tmp_path / "b" / "b.ckpt"))
    with pytest.raises(SaliencyWeightsError, match="not the one"):
        load_saliency_model(out, checkpoint=other_ckpt)
    # a checkpoint of another architecture does not load (strict)
    bad = _save_ckpt(build_backbone("resnet18", width=8), str(tmp_path / "c" / "c.ckpt"))
    from harl.errors import CheckpointMismatchError

    with pytest.raises(CheckpointMismatchError):
        load_saliency_model(out, checkpoint=bad, verify_checkpoint=False)
    with pytest.raises(SaliencyWeightsError, match="not a harl saliency head"):
        torch.save({"x": 1}, str(tmp_path / "junk.pt"))
        read_head_file(str(tmp_path / "junk.pt"))


# --------------------------------------------------------------------------------------------- CLI


def test_cli_train_and_generate(tiny_set, tmp_path, capsys):
    from harl.cli.masks import main

    images, pseudo = tiny_set
    torch.manual_seed(0)
    # a solo-learn style run folder: the backbone is read from args.json beside the checkpoint
    ckpt = _save_ckpt(build_backbone("resnet18", width=8), str(tmp_path / "run" / "byol-ep=1.ckpt"),
                      args={"backbone": {"name": "resnet18", "kwargs": {"width": 8}}})
    head = str(tmp_path / "head.pt")
    rc = main(["train-saliency", "--images", images, "--pseudo-masks", pseudo, "--checkpoint", ckpt,
               "--out", head, "--epochs", "2", "--batch-size", "3", "--short-side", "32",
               "--num-workers", "0", "--no-progress"])
    assert rc == 0 and "epoch BCE" in capsys.readouterr().out
    obj = read_head_file(head)
    assert obj["backbone"] == "resnet18" and obj["backbone_kwargs"] == {"width": 8, "cifar_stem": False}  # as pretraining built it
    assert obj["short_side"] == 32 and obj["num_features"] == 64

    # 3 images, 2 worker processes (spawned: torch)
    sub = tmp_path / "three"
    for rel in list_files(images)[:3]:
        os.makedirs(sub / os.path.dirname(rel), exist_ok=True)
        os.link(os.path.join(images, rel), sub / rel)
    out = str(tmp_path / "sal")
    rc = main(["saliency", "--images", str(sub), "--out", out, "--weights", head, "--device", "cpu",
               "--workers", "2", "--no-progress"])
    assert rc == 0
    rows = open(os.path.join(out, "manifest.csv")).read().splitlines()
    assert len(rows) == 4
    for rel in list_files(str(sub)):
        with Image.open(os.path.join(out, rel)) as im:
            assert im.size == (64, 48) and set(np.unique(np.asarray(im))) <= {0, 255}
    meta = json.load(open(os.path.join(out, "meta.json")))
    assert meta["generator"] == "saliency" and len(meta["weights_sha256"]) == 64
    assert meta["checkpoint"] == os.path.abspath(ckpt) and meta["short_side"] == 32
    # same masks in-process (workers=1) as with the worker pool
    out1 = str(tmp_path / "sal1")
    assert main(["saliency", "--images", str(sub), "--out", out1, "--weights", head, "--device", "cpu",
                 "--no-progress"]) == 0
    for rel in list_files(out, (".png",)):
        assert open(os.path.join(out, rel), "rb").read() == open(os.path.join(out1, rel), "rb").read()
    # resuming with another device string and a copy of the head elsewhere: same identity, all skipped
    import shutil

    moved = str(tmp_path / "moved_head.pt")
    shutil.copy(head, moved)
    capsys.readouterr()
    assert main(["saliency", "--images", str(sub), "--out", out1, "--weights", moved, "--device", "auto",
                 "--no-progress"]) == 0
    assert "3 already done, 0 done now" in capsys.readouterr().out
    # missing weights: a clear error, exit status 2
    assert main(["saliency", "--images", str(sub), "--out", str(tmp_path / "x"), "--weights",
                 str(tmp_path / "none.pt"), "--no-progress"]) == 2
    assert "train-saliency" in capsys.readouterr().err
