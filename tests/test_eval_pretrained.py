"""load_pretrained_backbone: architecture from the run config, strict loading, file formats, info dict."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil

import pytest
import torch

from harl.backbones import build_backbone
from harl.errors import CheckpointMismatchError
from harl.eval.pretrained import (
    file_sha256,
    highpass_from_run_config,
    infer_resnet_architecture,
    load_pretrained_backbone,
)
from harl.train import pretrain
from tests.conftest import scenes_cfg


def shared_tiny_checkpoint(scenes_root: str, tmp_path_factory) -> str:
    """A real BYOL pretraining of 2 steps (resnet18 width 8, CIFAR stem from fashion_scenes), run
    once per test session under the session's base temp folder and shared by the eval test files.
    Tests must copy files out of its run folder before changing anything."""
    root = tmp_path_factory.getbasetemp() / "eval-tiny-byol"
    found = sorted(glob.glob(str(root / "byol" / "*" / "*.ckpt")))
    if found:
        return found[-1]
    cfg = scenes_cfg("byol", scenes_root, str(root), max_epochs=1, limit_train_batches=2, no_validation=True)
    return pretrain(cfg).last_checkpoint


class _Run:
    def __init__(self, ckpt: str):
        self.last_checkpoint = ckpt
        self.run_dir = os.path.dirname(ckpt)


@pytest.fixture(scope="module")
def tiny_run(scenes_root, tmp_path_factory):
    return _Run(shared_tiny_checkpoint(scenes_root, tmp_path_factory))


def _backbone_from_ckpt(path, prefix="backbone."):
    """Reference: the checkpoint's weights loaded by hand into the architecture pretraining used."""
    sd = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    ref = build_backbone("resnet18", width=8, cifar_stem=True)
    ref.load_state_dict({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)})
    return ref


def _x():
    torch.manual_seed(0)
    return torch.randn(3, 3, 32, 32)


def _same_outputs(a, b):
    x = _x()
    torch.testing.assert_close(a.eval()(x), b.eval()(x), rtol=1e-5, atol=1e-6)


def test_rebuilds_architecture_from_run_config(tiny_run):
    bb, info = load_pretrained_backbone(tiny_run.last_checkpoint)
    assert not bb.training
    assert info["backbone_name"] == "resnet18"
    assert info["backbone_kwargs"]["width"] == 8 and info["backbone_kwargs"]["cifar_stem"] is True
    assert info["arch_source"] == "run_config" and info["config_source"] == "args.json"
    assert info["method"] == "byol" and info["dataset"] == "fashion_scenes"
    assert info["num_features"] == 64 and info["random_init"] is False
    assert info["highpass"] is False
    from harl.data.fashion_scenes import SCENES_MEAN, SCENES_STD

    assert info["mean"] == pytest.approx(list(SCENES_MEAN)) and info["std"] == pytest.approx(list(SCENES_STD))
    assert info["sha256"] == hashlib.sha256(open(tiny_run.last_checkpoint, "rb").read()).hexdigest()
    json.dumps(info)  # JSON-serialisable
    _same_outputs(bb, _backbone_from_ckpt(tiny_run.last_checkpoint))


def test_wrong_architecture_names_keys(tiny_run):
    with pytest.raises(CheckpointMismatchError, match=r"shape mismatches.*conv1.weight"):
        load_pretrained_backbone(tiny_run.last_checkpoint, backbone_kwargs={"width": 16})
    with pytest.raises(CheckpointMismatchError, match=r"(missing|unexpected) keys.*layer1.0.conv3"):
        with pytest.warns(UserWarning, match="pretrained with 'resnet18'"):
            load_pretrained_backbone(tiny_run.last_checkpoint, "resnet50", {"width": 8, "cifar_stem": True})
    with pytest.raises(CheckpointMismatchError, match=r"conv1.weight: checkpoint \(8, 3, 3, 3\) vs model \(8, 3, 7, 7\)"):
        load_pretrained_backbone(tiny_run.last_checkpoint, backbone_kwargs={"cifar_stem": False})


def test_renamed_key_is_named(tiny_run, tmp_path):
    sd = torch.load(tiny_run.last_checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    sd["backbone.layer9.weight"] = sd.pop("backbone.layer2.0.bn1.weight")
    path = str(tmp_path / "renamed.pth")
    torch.save(sd, path)
    shutil.copy(os.path.join(tiny_run.run_dir, "args.json"), tmp_path / "args.json")
    with pytest.raises(CheckpointMismatchError) as err:
        load_pretrained_backbone(path)
    msg = str(err.value)
    assert "missing keys (1): layer2.0.bn1.weight" in msg and "unexpected keys (1): layer9.weight" in msg


def test_legacy_encoder_prefix_and_bare_pth(tiny_run, tmp_path):
    sd = torch.load(tiny_run.last_checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    ref, _ = load_pretrained_backbone(tiny_run.last_checkpoint)
    legacy = {("encoder." + k[len("backbone."):]) if k.startswith("backbone.") else k: v for k, v in sd.items()}
    assert not any(k.startswith("backbone.") for k in legacy)
    torch.save({"state_dict": legacy}, tmp_path / "legacy.ckpt")
    bb, info = load_pretrained_backbone(str(tmp_path / "legacy.ckpt"), "resnet18", {"width": 8, "cifar_stem": True})
    _same_outputs(bb, ref)
    assert info["arch_source"] == "explicit" and info["config_source"] is None and info["method"] is None
    # a bare backbone .pth without args.json: the architecture is inferred from the keys
    bare = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    torch.save(bare, tmp_path / "backbone.pth")
    bb, info = load_pretrained_backbone(str(tmp_path / "backbone.pth"))
    assert info["arch_source"] == "state_dict" and info["backbone_name"] == "resnet18"
    assert info["backbone_kwargs"] == {"width": 8, "cifar_stem": True}
    _same_outputs(bb, ref)


def test_safetensors_and_momentum_prefix(tiny_run, tmp_path):
    from safetensors.torch import save_file

    sd = torch.load(tiny_run.last_checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    ref, _ = load_pretrained_backbone(tiny_run.last_checkpoint)
    bare = {k[len("backbone."):]: v.contiguous() for k, v in sd.items() if k.startswith("backbone.")}
    save_file(bare, str(tmp_path / "model.safetensors"))
    bb, _ = load_pretrained_backbone(str(tmp_path / "model.safetensors"), "resnet18")
    _same_outputs(bb, ref)
    mom, info = load_pretrained_backbone(tiny_run.last_checkpoint, prefix="momentum_backbone.")
    assert info["prefix"] == "momentum_backbone."
    _same_outputs(mom, _backbone_from_ckpt(tiny_run.last_checkpoint, "momentum_backbone."))


def test_config_from_checkpoint_hyperparameters(tiny_run, tmp_path):
    """Without args.json the Lightning checkpoint's hyper_parameters tell the architecture."""
    path = str(tmp_path / "moved.ckpt")
    shutil.copy(tiny_run.last_checkpoint, path)
    bb, info = load_pretrained_backbone(path)
    assert info["config_source"] == "checkpoint" and info["backbone_kwargs"]["cifar_stem"] is True
    assert info["method"] == "byol"


def test_random_init_same_architecture(tiny_run):
    rnd, info = load_pretrained_backbone(tiny_run.last_checkpoint, random_init=True, seed=3)
    ref, _ = load_pretrained_backbone(tiny_run.last_checkpoint)
    assert info["random_init"] is True and info["backbone_kwargs"]["width"] == 8
    assert set(rnd.state_dict()) == set(ref.state_dict())
    assert not torch.equal(rnd.conv1.weight, ref.conv1.weight)
    again, _ = load_pretrained_backbone(None, "resnet18", {"width": 8, "cifar_stem": True}, seed=3)
    torch.testing.assert_close(again.conv1.weight, rnd.conv1.weight)  # same seed, same init
    with pytest.raises(ValueError, match="backbone_name"):
        load_pretrained_backbone(None)
    with pytest.raises(FileNotFoundError):
        load_pretrained_backbone("/nonexistent/x.ckpt")


def test_unknown_architecture_is_a_clear_error(tmp_path):
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "w.pth")
    with pytest.raises(CheckpointMismatchError, match="pass backbone_name"):
        load_pretrained_backbone(str(tmp_path / "w.pth"))


@pytest.mark.parametrize("method,kwargs,expected", [
    ("sgm_mocov2", {"sgm_strategy": "hp", "hp_kernel": 7, "hp_sigma": 3.0}, (True, 7, 3.0)),
    ("sgm_simclr", {}, (True, 11, 5.0)),  # hp is SGM's default strategy
    ("sgm_mocov2", {"sgm_strategy": "blur"}, (False, None, None)),
    ("mocov2plus", {"sgm_strategy": "hp"}, (False, None, None)),
])
def test_highpass_detection(method, kwargs, expected):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"method": method, "method_kwargs": kwargs, "data": {"dataset": "cifar10"}})
    assert highpass_from_run_config(cfg) == expected


def test_highpass_info_from_sgm_run_folder(tiny_run, tmp_path):
    run = tmp_path / "sgm"
    run.mkdir()
    shutil.copy(tiny_run.last_checkpoint, run / "sgm.ckpt")
    args = json.load(open(os.path.join(tiny_run.run_dir, "args.json")))
    args["method"] = "sgm_mocov2"
    args["method_kwargs"] = {"sgm_strategy": "hp", "hp_kernel": 5, "hp_sigma": 2.0}
    (run / "args.json").write_text(json.dumps(args))
    _, info = load_pretrained_backbone(str(run / "sgm.ckpt"))
    assert (info["method"], info["highpass"], info["hp_kernel"], info["hp_sigma"]) == ("sgm_mocov2", True, 5, 2.0)


def test_infer_resnet_architecture_layouts():
    for name, width, stem in (("resnet18", 16, True), ("resnet34", 8, False), ("resnet50", 8, True)):
        sd = build_backbone(name, width=width, cifar_stem=stem).state_dict()
        assert infer_resnet_architecture(sd) == (name, {"width": width, "cifar_stem": stem})


def test_file_sha256_tracks_changes(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"abc")
    assert file_sha256(str(p)) == hashlib.sha256(b"abc").hexdigest()
    os.utime(p, ns=(1, 1))
    p.write_bytes(b"abcd")
    assert file_sha256(str(p)) == hashlib.sha256(b"abcd").hexdigest()
