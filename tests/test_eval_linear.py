"""Linear probe: toy accuracy, frozen vs finetune, resume, random-init baseline, kNN against knn_predict."""

from __future__ import annotations

import csv
import glob
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from harl.eval.linear import (ClassificationTask, ProbeModule, _loader, fit_probe, linear_probe, optimizer_cfg,
                              scheduler_cfg, seed_head)
from harl.eval.linear_config import build_linear_cfg, parse_linear_cfg
from harl.eval.runner import EvalContext
from harl.eval.pretrained import load_pretrained_backbone
from harl.ops.knn import topk_accuracy
from tests.test_eval_pretrained import shared_tiny_checkpoint

ARCH = {"backbone": "resnet18", "backbone_kwargs": {"width": 4, "cifar_stem": True}}


def write_pattern_folder(root, n_train=16, n_val=8, size=16, seed=0):
    """An ImageFolder pair train/ val/ with 3 classes told apart by a stripe pattern (horizontal,
    vertical, checkerboard) under a random colour and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    patterns = [(yy // 2) % 2, (xx // 2) % 2, ((yy // 2) + (xx // 2)) % 2]
    for split, n in (("train", n_train), ("val", n_val)):
        for c, pattern in enumerate(patterns):
            d = os.path.join(root, split, f"class{c}")
            os.makedirs(d, exist_ok=True)
            for i in range(n):
                colour = rng.uniform(60, 200, 3)
                img = colour[None, None] * (0.5 + pattern[..., None]) * 0.8 + rng.normal(0, 15, (size, size, 3))
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(os.path.join(d, f"{i}.png"))
    return os.path.join(root, "train"), os.path.join(root, "val")


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    return write_pattern_folder(str(tmp_path_factory.mktemp("patterns")))


@pytest.fixture(scope="module")
def tiny_ckpt(scenes_root, tmp_path_factory):
    return shared_tiny_checkpoint(scenes_root, tmp_path_factory)


def _toy(colours, tmp_path, **kw):
    train, val = colours
    over = {"data.augmentations.crop_size": 16, **kw.pop("overrides", {})}
    return dict(dataset="custom", train_path=train, val_path=val, out_dir=str(tmp_path), progress=False,
                accelerator="cpu", overrides=over, **kw)


def _probe_ctx(tmp_path, num_classes, **over):
    cfg = build_linear_cfg("linear", None, "custom", "unused", "unused", backbone="resnet18", random_init=True,
                           overrides={"data.num_classes": num_classes, **over}, accelerator="cpu")
    cfg = parse_linear_cfg(cfg)
    return EvalContext(cfg, None, {}, None, str(tmp_path), "v0", checkpoints=False, progress=False)


def test_head_learns_separable_features_and_not_shuffled_ones(tmp_path):
    g = torch.Generator().manual_seed(0)
    centers = 4.0 * torch.randn(4, 16, generator=g)
    y = torch.arange(400) % 4
    x = centers[y] + torch.randn(400, 16, generator=g)
    over = {"max_epochs": 5, "optimizer.batch_size": 64, "optimizer.lr": 1.0, "scheduler.name": "cosine"}
    module = _fit_features(tmp_path / "a", x, y, 4, 320, **over)
    last = module.history[-1]
    assert last["val_acc1"] >= 99.0 and len(module.history) == 5
    # the logged accuracy is the head's accuracy over the whole validation set (80 samples, batches of 7)
    with torch.no_grad():
        acc1, acc5 = topk_accuracy(module.head(x[320:]), y[320:])
    assert last["val_acc1"] == pytest.approx(acc1) and last["val_acc5"] == pytest.approx(acc5)
    # control: train labels shuffled → no better than chance on the true val labels
    y_shuffled = y.clone()
    y_shuffled[:320] = y[:320][torch.randperm(320, generator=g)]
    module = _fit_features(tmp_path / "b", x, y_shuffled, 4, 320, **over)
    assert module.history[-1]["val_acc1"] <= 50.0


def test_batchnorm_head_makes_the_probe_scale_invariant(tmp_path):
    """head_norm=batchnorm: training on 1000·x + 5 follows the same trajectory as on x (the
    parameter-free BatchNorm removes any per-feature affine map), so one lr fits backbones with very
    different feature scales (why the CPU configs use it); the plain head does not."""
    g = torch.Generator().manual_seed(1)
    centers = 1.5 * torch.randn(4, 16, generator=g)
    y = torch.arange(400) % 4
    x = centers[y] + torch.randn(400, 16, generator=g)
    over = {"max_epochs": 4, "optimizer.batch_size": 64, "optimizer.lr": 1.0, "scheduler.name": "cosine",
            "head_norm": "batchnorm"}
    head = ClassificationTask(4, head_norm="batchnorm").make_head(16)
    assert isinstance(head[0], torch.nn.BatchNorm1d) and not head[0].affine
    a = _fit_features(tmp_path / "a", x, y, 4, 320, **over).history
    b = _fit_features(tmp_path / "b", 1000 * x + 5, y, 4, 320, **over).history
    assert [h["val_acc1"] for h in a] == [h["val_acc1"] for h in b]
    assert [h["val_loss"] for h in a] == pytest.approx([h["val_loss"] for h in b], rel=1e-3)
    assert a[-1]["val_acc1"] > 70.0
    over["head_norm"] = None
    c = _fit_features(tmp_path / "c", x, y, 4, 320, **over).history
    d = _fit_features(tmp_path / "d", 1000 * x + 5, y, 4, 320, **over).history
    assert [h["val_loss"] for h in c] != pytest.approx([h["val_loss"] for h in d], rel=0.1)


def _fit_features(tmp_path, x, y, num_classes, n_train, **over):
    ctx = _probe_ctx(tmp_path, num_classes, **over)
    cfg = ctx.cfg
    task = ClassificationTask(num_classes, head_norm=cfg.head_norm)
    seed_head(cfg)
    module = ProbeModule(task, x.shape[1], None, optimizer=optimizer_cfg(cfg),
                         scheduler=scheduler_cfg(cfg), max_epochs=int(cfg.max_epochs))
    tl = _loader(TensorDataset(x[:n_train], y[:n_train]), cfg, shuffle=True, workers=0, random_items=False)
    vl = DataLoader(TensorDataset(x[n_train:], y[n_train:]), batch_size=7)
    fit_probe(ctx, module, tl, vl, per_epoch_bar=True)
    return module


def test_pipeline_on_a_separable_toy_image_set(colours, tmp_path):
    res = linear_probe(None, random_init=True, max_epochs=20, lr=0.5, batch_size=16, **ARCH,
                       **_toy(colours, tmp_path, overrides={"scheduler.name": "cosine"}))
    assert res["top1"] >= 85.0 and res["top5"] == 100.0
    m = res["metrics"]
    assert m["n_train"] == 48 and m["n_val"] == 24 and m["epochs"] == 20 and len(m["history"]) == 20
    assert res["pretrained"]["random_init"] is True and res["protocol"] == "cached"
    # results.json == the returned dict; the CSV log has one validation row per epoch
    on_disk = json.load(open(res["results_path"]))
    assert on_disk["top1"] == res["top1"] and on_disk["config"]["optimizer"]["lr"] == pytest.approx(0.5 * 16 / 256)
    rows = [r for r in csv.DictReader(open(os.path.join(res["run_dir"], "metrics.csv"))) if r.get("val_acc1")]
    assert len(rows) == 20 and float(rows[-1]["val_acc1"]) == pytest.approx(res["top1"])
    assert m["history"][0]["val_acc1"] < res["top1"]  # it had to learn


def test_frozen_backbone_is_unchanged_and_finetune_changes_it(tiny_ckpt, scenes_root, tmp_path):
    ref = torch.load(tiny_ckpt, map_location="cpu", weights_only=False)["state_dict"]
    ref = {k: v for k, v in ref.items() if k.startswith("backbone.")}
    common = dict(dataset="fashion_scenes", train_path=scenes_root, val_path=scenes_root, protocol="augmented",
                  max_epochs=2, lr=1.0, batch_size=16, progress=False, accelerator="cpu",
                  limit_train_batches=2, limit_val_batches=1)
    frozen = linear_probe(tiny_ckpt, out_dir=str(tmp_path / "f"), **common)
    tuned = linear_probe(tiny_ckpt, out_dir=str(tmp_path / "t"), finetune=True, **common)
    for res, should_change in ((frozen, False), (tuned, True)):
        ckpt = glob.glob(os.path.join(res["run_dir"], "*-ep=1.ckpt"))[0]
        sd = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
        assert set(k for k in sd if k.startswith("backbone.")) == set(ref)
        changed = [k for k in ref if not torch.equal(sd[k].to(ref[k].dtype), ref[k])]
        if should_change:
            assert any("running_mean" in k for k in changed) and any(k.endswith("conv1.weight") for k in changed)
        else:
            assert changed == [], f"frozen backbone changed: {changed[:5]}"
    # the linear checkpoint loads back as a backbone (its args.json describes the architecture)
    ckpt = glob.glob(os.path.join(tuned["run_dir"], "*-ep=1.ckpt"))[0]
    bb, info = load_pretrained_backbone(ckpt)
    assert info["method"] == "byol" and info["backbone_kwargs"]["width"] == 8


def test_train_mode_keeps_frozen_backbone_in_eval():
    from harl.backbones import build_backbone

    bb = build_backbone("resnet18", width=4, cifar_stem=True)
    m = ProbeModule(ClassificationTask(3), 32, bb, optimizer={"name": "sgd", "lr": 0.1, "weight_decay": 0},
                    scheduler={"name": "none"}, max_epochs=1)
    m.train()
    assert m.head.training and not bb.training and not any(p.requires_grad for p in bb.parameters())
    m2 = ProbeModule(ClassificationTask(3), 32, build_backbone("resnet18", width=4), finetune=True,
                     optimizer={"name": "sgd", "lr": 0.1, "weight_decay": 0}, scheduler={"name": "none"}, max_epochs=1)
    m2.train()
    assert m2.backbone.training


def test_cached_probe_resumes_to_the_same_result(colours, tmp_path, monkeypatch):
    kw = dict(random_init=True, max_epochs=4, lr=1.0, batch_size=8, **ARCH)
    over = {"auto_resume.enabled": True}
    full = linear_probe(None, **kw, **_toy(colours, tmp_path / "a", overrides=over))

    orig = ProbeModule.on_train_epoch_start

    def kill(self):
        if self.current_epoch == 2:
            raise SystemExit("killed")
        return orig(self)

    monkeypatch.setattr(ProbeModule, "on_train_epoch_start", kill, raising=False)
    with pytest.raises(SystemExit):
        linear_probe(None, **kw, **_toy(colours, tmp_path / "b", overrides=over))
    monkeypatch.undo()
    run_dirs = glob.glob(str(tmp_path / "b" / "linear" / "*"))
    assert len(run_dirs) == 1 and glob.glob(os.path.join(run_dirs[0], "*-ep=1.ckpt"))
    assert not os.path.exists(os.path.join(run_dirs[0], "results.json"))
    resumed = linear_probe(None, **kw, **_toy(colours, tmp_path / "b", overrides=over))
    assert resumed["run_dir"] == run_dirs[0]
    assert [h["epoch"] for h in resumed["metrics"]["history"]] == list(range(4))
    assert resumed["metrics"]["history"] == full["metrics"]["history"]
    a = torch.load(glob.glob(os.path.join(full["run_dir"], "*.ckpt"))[0], weights_only=False)["state_dict"]
    b = torch.load(glob.glob(os.path.join(resumed["run_dir"], "*.ckpt"))[0], weights_only=False)["state_dict"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert os.path.isfile(os.path.join(run_dirs[0], "metrics.before-resume-1.csv"))
    # evaluating the finished run again reports the same results without retraining or touching its logs
    log = open(os.path.join(run_dirs[0], "metrics.csv")).read()
    again = linear_probe(None, **kw, **_toy(colours, tmp_path / "b", overrides=over))
    assert again["run_dir"] == run_dirs[0] and again["metrics"]["history"] == full["metrics"]["history"]
    assert open(os.path.join(run_dirs[0], "metrics.csv")).read() == log


def test_random_init_baseline_is_reported(tiny_ckpt, scenes_root, tmp_path):
    res = linear_probe(tiny_ckpt, dataset="fashion_scenes", train_path=scenes_root, val_path=scenes_root,
                       max_epochs=1, batch_size=32, out_dir=str(tmp_path), progress=False, accelerator="cpu",
                       random_init_baseline=True)
    base = res["random_init_baseline"]
    assert base is not None and {"top1", "top5", "history"} <= set(base)
    assert "random init" in res["summary"]
    assert os.path.isfile(os.path.join(res["run_dir"], "random_init", "metrics.csv"))
    caches = glob.glob(str(tmp_path / "feature_cache" / "*.safetensors"))
    assert len(caches) == 4  # train/val × pretrained/random-init
