"""solo-learn compatibility: solo-learn-format YAMLs (tests/data/solo_learn_yamls, written from solo-learn's
documented schema) validate and build their method unchanged; harl's own recipes for the new baselines
validate and build; each new baseline pretrains end to end through ``pretrain``."""

from __future__ import annotations

import glob
import json
import math
import os
import warnings

import pytest
import torch

from harl.config import AUGMENTATION_SCHEMA, load_yaml, parse_cfg
from harl.errors import ConfigError
from harl.methods import METHODS
from tests.conftest import scenes_cfg, tiny_cfg

pytestmark = pytest.mark.filterwarnings("ignore:.*self.log.*")

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SOLO_DIR = os.path.join(HERE, "data", "solo_learn_yamls")
SOLO_YAMLS = sorted(glob.glob(os.path.join(SOLO_DIR, "*.yaml")))
NEW_METHODS = ["barlow_twins", "vicreg", "simsiam", "mocov3", "swav", "dino", "nnclr", "nnbyol", "nnsiam", "ressl",
               "wmse", "vibcreg", "supcon", "deepclusterv2"]
DATASETS = ["cifar", "imagenet-100", "imagenet", "fashion-scenes"]


def _parse_quietly(cfg):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = parse_cfg(cfg)
    return out, [str(w.message) for w in caught]


def test_the_folder_covers_every_new_method():
    methods = {load_yaml(p).method for p in SOLO_YAMLS}
    assert set(NEW_METHODS) <= methods


@pytest.mark.parametrize("path", SOLO_YAMLS, ids=[os.path.basename(p) for p in SOLO_YAMLS])
def test_solo_learn_yaml_validates_and_builds_unchanged(path):
    raw = load_yaml(path)
    cfg, messages = _parse_quietly(raw)
    assert cfg.method == raw.method and cfg.backbone.name == raw.backbone.name
    # every method_kwarg the YAML gives keeps its value
    for key, value in raw.method_kwargs.items():
        assert cfg.method_kwargs[key] == value, key
    # augmentation blocks keep solo-learn's meaning: the 'enabled' flags are accepted, prob decides
    for aug_raw, aug in zip(raw.augmentations, cfg.augmentations):
        for block in ("color_jitter", "grayscale", "gaussian_blur", "solarization", "horizontal_flip"):
            assert aug[block].prob == aug_raw[block].get("prob", AUGMENTATION_SCHEMA[block]["prob"])
            assert aug[block].enabled == aug_raw[block].get("enabled", True)
    if raw.data.format == "dali":
        assert any("'dali' is not supported" in m for m in messages) and cfg.data.format == "image_folder"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = METHODS.get(cfg.method)(cfg)
    assert model.num_crops == sum(a.num_crops for a in raw.augmentations)


def test_disabled_block_with_a_probability_warns_and_follows_solo_learn():
    raw = tiny_cfg("byol", augmentations=[{"crop_size": 32, "num_crops": 2,
                                           "color_jitter": {"enabled": False, "prob": 0.8, "brightness": 0.4}}])
    with pytest.warns(UserWarning, match=r"color_jitter.enabled is False but its prob is 0.8"):
        cfg = parse_cfg(raw)
    assert cfg.augmentations[0].color_jitter.prob == 0.8
    with pytest.raises(ConfigError, match="did you mean 'enabled'"):
        parse_cfg(tiny_cfg("byol", augmentations=[{"crop_size": 32, "num_crops": 2, "grayscale": {"enable": True}}]))


@pytest.mark.parametrize("method", NEW_METHODS)
def test_recipes_exist_validate_and_build(method):
    for ds in DATASETS:
        path = os.path.join(REPO, "scripts", "pretrain", ds, f"{method}.yaml")
        sh = path[:-len(".yaml")] + ".sh"
        assert os.path.isfile(path) and os.access(sh, os.X_OK), path
        assert f"--config-name {method}.yaml" in open(sh).read()
        # fashion-scenes recipes take the overrides benchmarks/quality.py gives every method
        over = (["seed=1", "max_epochs=2", "backbone.kwargs.width=8", "optimizer.batch_size=64",
                 "data.num_workers=0", "auto_resume.enabled=True", "knn_eval.enabled=False",
                 "scheduler.warmup_epochs=1", "enable_progress_bar=False"] if ds == "fashion-scenes" else [])
        cfg, _ = _parse_quietly(load_yaml(path, over))
        assert cfg.method == method
        if ds in ("cifar", "fashion-scenes"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                METHODS.get(method)(cfg)
    for path in glob.glob(os.path.join(REPO, "scripts", "pretrain", "*", f"{method}_vit.yaml")):
        cfg, _ = _parse_quietly(load_yaml(path))
        assert cfg.method == method and cfg.backbone.name.startswith("vit_")


@pytest.mark.parametrize("method", NEW_METHODS)
def test_new_method_pretrains_end_to_end(method, scenes_root, tmp_path):
    from harl.train import pretrain
    from tests.test_solo_methods import KW

    augs = [{"crop_size": 32, "num_crops": 2}]
    if method in ("swav", "dino", "supcon", "deepclusterv2"):
        augs.append({"crop_size": 16, "num_crops": 2})
    cfg = scenes_cfg(method, scenes_root, str(tmp_path / "ckpt"), max_epochs=1, method_kwargs=dict(KW[method]),
                     augmentations=augs, limit_train_batches=3, limit_val_batches=1)
    res = pretrain(cfg)
    args = json.load(open(os.path.join(res.run_dir, "args.json")))
    assert args["method"] == method
    state = torch.load(res.last_checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    assert any(k.startswith("backbone.conv1") for k in state)
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    import csv

    rows = list(csv.DictReader(open(os.path.join(res.run_dir, "metrics.csv"))))
    losses = [float(r["train_class_loss_step"]) for r in rows if r.get("train_class_loss_step")]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)


def test_vit_run_reloads_through_the_evaluation_path(scenes_root, tmp_path):
    """A MoCo v3 ViT run's checkpoint is rebuilt (solo-learn's ViT name + timm kwargs from args.json) and
    loaded strictly by the evaluation loader, giving the trained backbone's features."""
    from harl.backbones import build_backbone
    from harl.eval.pretrained import load_pretrained_backbone
    from harl.train import pretrain
    from tests.test_solo_methods import KW

    cfg = scenes_cfg("mocov3", scenes_root, str(tmp_path / "ckpt"), max_epochs=1, method_kwargs=dict(KW["mocov3"]),
                     backbone={"name": "vit_tiny", "kwargs": {"depth": 1, "patch_size": 8}},
                     limit_train_batches=2, limit_val_batches=1)
    res = pretrain(cfg)
    model, info = load_pretrained_backbone(res.last_checkpoint)
    assert info["backbone_name"] == "vit_tiny" and info["backbone_kwargs"]["patch_size"] == 8
    state = torch.load(res.last_checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    ref = build_backbone("vit_tiny", depth=1, patch_size=8)
    ref.load_state_dict({k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")})
    x = torch.randn(2, 3, 32, 32)
    model.eval(), ref.eval()
    assert torch.allclose(model(x), ref(x), atol=1e-5)


def test_deepclusterv2_clusters_between_epochs_through_pretrain(scenes_root, tmp_path):
    """Through Lightning: epoch 1 fills the memory bank (loss 0), epoch 2 starts with k-means, so its
    loss is positive and the saved prototypes are unit-norm centroids."""
    import csv

    from harl.train import pretrain
    from tests.test_solo_methods import KW

    cfg = scenes_cfg("deepclusterv2", scenes_root, str(tmp_path / "ckpt"), max_epochs=2,
                     method_kwargs=dict(KW["deepclusterv2"]), limit_train_batches=3, limit_val_batches=1)
    res = pretrain(cfg)
    rows = list(csv.DictReader(open(os.path.join(res.run_dir, "metrics.csv"))))
    per_epoch = {}
    for r in rows:
        if r.get("train_deepclusterv2_loss_step"):
            per_epoch.setdefault(int(r["epoch"]), []).append(float(r["train_deepclusterv2_loss_step"]))
    assert sorted(per_epoch) == [0, 1] and len(per_epoch[0]) == len(per_epoch[1]) == 3
    assert all(x == 0.0 for x in per_epoch[0]) and all(x > 0.0 for x in per_epoch[1])
    state = torch.load(res.last_checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    for h, k in enumerate([5, 4]):
        w = state[f"prototypes.{h}.weight"]
        assert w.shape == (k, 16) and torch.allclose(w.norm(dim=1), torch.ones(k), atol=1e-5)
