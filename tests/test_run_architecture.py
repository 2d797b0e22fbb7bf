"""The run config records the architecture that was built, and every load path rebuilds exactly it.

HARL's ``method_kwargs.feature_map: c5_stride1`` changes the backbone (layer4 with stride 1, same
tensor shapes as stride 2): a load path that rebuilt a stride-2 layer4 would load the weights
without a word and compute different features.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from harl.config import parse_cfg
from harl.errors import ConfigError
from harl.eval.pretrained import architecture_from_run_config, load_pretrained_backbone
from harl.methods import METHODS
from harl.train import pretrain
from tests.conftest import scenes_cfg, tiny_cfg


def _harl_raw(**kw):
    raw = tiny_cfg("harl", **{f"method_kwargs.{k}": v for k, v in kw.items()})
    raw["data"]["masks"] = {"enabled": True, "root": "unused"}
    return raw


@pytest.mark.parametrize("backbone,dilate", [("resnet18", False), ("resnet50", True)])
def test_parse_cfg_records_the_c5_stride(backbone, dilate):
    raw = _harl_raw(feature_map="c5_stride1", c5_dilate=dilate)
    raw["backbone"] = {"name": backbone, "kwargs": {"width": 4}}
    cfg = parse_cfg(raw)
    assert cfg.backbone.kwargs.c5_stride1 is True and cfg.backbone.kwargs.c5_dilate is dilate
    model = METHODS.get("harl")(cfg)
    assert model.backbone.forward_features(torch.randn(2, 3, 32, 32)).shape[-1] == 9  # 5×5 at stride 2
    # the model's saved hyper-parameters say the same
    assert model.hparams["cfg"]["backbone"]["kwargs"]["c5_stride1"] is True
    # feeding the recorded config back is consistent (idempotent)
    again = parse_cfg({**raw, "backbone": {"name": backbone, "kwargs": dict(cfg.backbone.kwargs)}})
    assert again.backbone.kwargs == cfg.backbone.kwargs


def test_dilation_on_a_basic_block_resnet_is_a_config_error():
    """torchvision's BasicBlock has no dilation: one clear error instead of its NotImplementedError."""
    with pytest.raises(ConfigError, match="c5_dilate.*resnet50"):
        METHODS.get("harl")(parse_cfg(_harl_raw(feature_map="c5_stride1", c5_dilate=True)))


def test_contradicting_backbone_kwargs_are_a_config_error():
    raw = _harl_raw(feature_map="c5_stride1")
    raw["backbone"]["kwargs"]["c5_stride1"] = False
    with pytest.raises(ConfigError, match="backbone.kwargs.c5_stride1"):
        parse_cfg(raw)


def test_plain_c5_adds_nothing():
    cfg = parse_cfg(_harl_raw(feature_map="c5"))
    assert "c5_stride1" not in cfg.backbone.kwargs


def test_old_run_config_without_the_record_still_rebuilds_stride1():
    run_cfg = {"method": "harl", "backbone": {"name": "resnet18", "kwargs": {"width": 8}},
               "data": {"dataset": "cifar10"}, "method_kwargs": {"feature_map": "c5_stride1", "c5_dilate": True}}
    name, kwargs = architecture_from_run_config(run_cfg)
    assert name == "resnet18" and kwargs == {"width": 8, "c5_stride1": True, "c5_dilate": True, "cifar_stem": True}


@pytest.mark.slow
@pytest.mark.parametrize("feature_map,dilate", [("c5_stride1", False), ("c5", False)])
def test_pretrain_then_load_gives_the_same_map_and_features(feature_map, dilate, scenes_root, tmp_path):
    cfg = scenes_cfg("harl", scenes_root, str(tmp_path / "ckpt"), max_epochs=1, limit_train_batches=1,
                     no_validation=True, **{"method_kwargs.feature_map": feature_map, "method_kwargs.c5_dilate": dilate})
    res = pretrain(cfg)
    args = json.load(open(os.path.join(res.run_dir, "args.json")))
    if feature_map == "c5_stride1":
        assert args["backbone"]["kwargs"]["c5_stride1"] is True and args["backbone"]["kwargs"]["c5_dilate"] is dilate
    trained = res.model.backbone.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want = trained.forward_features(x.contiguous(memory_format=torch.channels_last))
    # every evaluation / export path goes through load_pretrained_backbone: from the run config…
    loaded, info = load_pretrained_backbone(res.last_checkpoint)
    with torch.no_grad():
        got = loaded.forward_features(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # …and from a run config written before the stride was recorded
    args["backbone"]["kwargs"].pop("c5_stride1", None)
    args["backbone"]["kwargs"].pop("c5_dilate", None)
    with open(os.path.join(res.run_dir, "args.json"), "w") as f:
        json.dump(args, f)
    loaded_old, _ = load_pretrained_backbone(res.last_checkpoint)
    with torch.no_grad():
        torch.testing.assert_close(loaded_old.forward_features(x), want, rtol=1e-4, atol=1e-5)
