"""Import of solo-learn / official HARL (MNCRL) / generic checkpoints: strict report, loud failures."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from harl.backbones import build_backbone
from harl.errors import CheckpointMismatchError
from harl.zoo.export import export_weights
from harl.zoo.importer import detect_flavour, import_checkpoint
from harl.zoo.models import features, load_backbone

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def _backbone(width=16, cifar_stem=False, seed=0):
    torch.manual_seed(seed)
    bb = build_backbone("resnet18", width=width, cifar_stem=cifar_stem)
    g = torch.Generator().manual_seed(seed)
    for m in bb.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return bb.eval()


def solo_learn_state(bb, fc=False):
    """Keys as solo-learn ≥ 1.0 writes them (fc = Identity, so no backbone.fc.*)."""
    sd = {f"backbone.{k}": v for k, v in bb.state_dict().items()}
    sd.update({f"momentum_backbone.{k}": v.clone() for k, v in bb.state_dict().items()})
    c = bb.num_features
    sd.update({"projector.0.weight": torch.randn(32, c), "projector.0.bias": torch.randn(32),
               "momentum_projector.0.weight": torch.randn(32, c), "predictor.0.weight": torch.randn(32, 32),
               "classifier.weight": torch.randn(10, c), "classifier.bias": torch.randn(10)})
    if fc:
        sd["backbone.fc.weight"] = torch.randn(10, c)
        sd["backbone.fc.bias"] = torch.randn(10)
    return sd


def mncrl_state(bb):
    """Keys of the authors' HARL PyTorch release: ResNet_MNCRL keeps a dead fc; classifier is a Sequential."""
    c = bb.num_features
    sd = {f"backbone.{k}": v for k, v in bb.state_dict().items()}
    sd.update({"backbone.fc.weight": torch.randn(100, c), "backbone.fc.bias": torch.randn(100)})
    sd.update({f"momentum_{k}": v.clone() for k, v in sd.items() if k.startswith("backbone.")})
    sd.update({"projector.1.weight": torch.randn(64, c), "projector.2.running_mean": torch.randn(64),
               "momentum_projector.1.weight": torch.randn(64, c), "predictor.0.weight": torch.randn(32, 32),
               "classifier.2.weight": torch.randn(100, c), "classifier.2.bias": torch.randn(100)})
    return sd


def _save(tmp_path, name, obj):
    path = str(tmp_path / name)
    torch.save(obj, path)
    return path


def _check_features(weights, bb, tmp_path):
    out = str(tmp_path / "imported.safetensors")
    export_weights(weights, "safetensors", out)
    assert torch.equal(features(load_backbone(out), X), features(bb, X))


def test_solo_learn_checkpoint(tmp_path):
    bb = _backbone()
    path = _save(tmp_path, "solo.ckpt", {"state_dict": solo_learn_state(bb), "epoch": 399,
                                         "hyper_parameters": {"cfg": {"backbone": {"name": "resnet18"}}}})
    weights, report = import_checkpoint(path)
    assert report.flavour == "solo-learn" and report.hparams_backbone == "resnet18"
    assert report.backbone == "resnet18" and report.backbone_kwargs == {"width": 16, "cifar_stem": False}
    assert report.kept == sorted(f"backbone.{k}" for k in bb.state_dict())
    assert sorted(report.dropped) == ["momentum (EMA) copy", "online linear probe", "prediction head",
                                      "projection head"]
    assert len(report.dropped["momentum (EMA) copy"]) == len(bb.state_dict()) + 1
    assert report.renamed == []
    text = report.to_text()
    assert f"kept: {len(bb.state_dict())} backbone tensors" in text and "dropped (projection head)" in text
    _check_features(weights, bb, tmp_path)


def test_official_harl_release_drops_dead_fc(tmp_path):
    bb = _backbone(width=64, cifar_stem=True, seed=3)
    hp = argparse.Namespace(backbone="resnet18_MNCRL", backbone_args={"cifar": True}, method="mncrl")
    path = _save(tmp_path, "mncrl.ckpt", {"state_dict": mncrl_state(bb), "hyper_parameters": hp})
    with pytest.raises(CheckpointMismatchError, match="--trust"):
        import_checkpoint(path)  # pickled Namespace: refused unless trusted
    weights, report = import_checkpoint(path, trust=True)
    assert report.flavour == "harl-official" and report.hparams_backbone == "resnet18_MNCRL"
    assert report.dropped["ResNet_MNCRL's fc layer, never called by its forward"] == ["backbone.fc.bias",
                                                                                     "backbone.fc.weight"]
    assert "backbone.fc.weight" not in report.kept and len(report.kept) == len(bb.state_dict())
    assert report.backbone_kwargs == {"width": 64, "cifar_stem": True}
    _check_features(weights, bb, tmp_path)


def test_official_harl_detected_from_keys_alone(tmp_path):
    bb = _backbone()
    assert detect_flavour(mncrl_state(bb), {}) == "harl-official"
    assert detect_flavour(solo_learn_state(bb), {}) == "solo-learn"
    assert detect_flavour(bb.state_dict(), {}) == "generic"


def test_generic_prefixes_are_renamed_and_reported(tmp_path):
    bb = _backbone(seed=4)
    sd = {f"module.encoder.{k}": v for k, v in bb.state_dict().items()}
    sd["module.projector.0.weight"] = torch.randn(4, bb.num_features)
    path = _save(tmp_path, "ddp.pth", sd)
    weights, report = import_checkpoint(path)
    assert report.flavour == "solo-learn"  # a legacy solo-learn encoder.* under DDP
    n = len(bb.state_dict())
    assert sorted(report.renamed) == [("encoder.", "backbone.", n), ("module.", "", n + 1)]
    assert report.dropped == {"projection head": ["projector.0.weight"]}
    assert "renamed: module.* → * " in report.to_text()
    _check_features(weights, bb, tmp_path)


def test_generic_bare_torchvision_classifier(tmp_path):
    bb = _backbone(width=64, seed=5)
    sd = dict(bb.state_dict())
    sd["fc.weight"], sd["fc.bias"] = torch.randn(1000, 512), torch.randn(1000)
    weights, report = import_checkpoint(_save(tmp_path, "tv.pth", sd))
    assert report.flavour == "generic" and report.arch_inferred
    assert report.dropped == {"classification layer (not part of the feature extractor)": ["fc.bias", "fc.weight"]}
    _check_features(weights, bb, tmp_path)


def test_renamed_key_fails_loudly(tmp_path):
    bb = _backbone()
    sd = solo_learn_state(bb)
    sd["backbone.layer2.0.shortcut.weight"] = sd.pop("backbone.layer2.0.downsample.0.weight")
    with pytest.raises(CheckpointMismatchError) as exc:
        import_checkpoint(_save(tmp_path, "renamed.ckpt", {"state_dict": sd}))
    msg = str(exc.value)
    assert "failed the strict load" in msg
    assert "missing keys (1): layer2.0.downsample.0.weight" in msg
    assert "unexpected keys (1): layer2.0.shortcut.weight" in msg


def test_missing_key_fails_loudly(tmp_path):
    sd = solo_learn_state(_backbone())
    del sd["backbone.layer4.1.bn2.running_var"]
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \(1\): layer4.1.bn2.running_var"):
        import_checkpoint(_save(tmp_path, "missing.ckpt", {"state_dict": sd}), flavour="solo-learn")


def test_solo_learn_with_fc_is_unexpected(tmp_path):
    path = _save(tmp_path, "fc.ckpt", {"state_dict": solo_learn_state(_backbone(), fc=True)})
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys \(2\): fc.bias, fc.weight"):
        import_checkpoint(path, flavour="solo-learn")


def test_depth_disagreement_and_missing_prefix(tmp_path):
    path = _save(tmp_path, "r.ckpt", {"state_dict": solo_learn_state(_backbone()),
                                      "hyper_parameters": {"backbone": "resnet50"}})
    with pytest.raises(CheckpointMismatchError, match="shapes say resnet18.*'resnet50'"):
        import_checkpoint(path)
    bare = _save(tmp_path, "bare.pth", dict(_backbone().state_dict()))
    with pytest.raises(CheckpointMismatchError, match="no 'backbone.\\*'.*--from generic"):
        import_checkpoint(bare, flavour="solo-learn")
    with pytest.raises(KeyError, match="did you mean 'solo-learn'"):
        import_checkpoint(bare, flavour="solo_learn")


def test_cli_import_writes_file_and_report(tmp_path, capsys):
    from harl.cli.zoo import main

    bb = _backbone(seed=6)
    path = _save(tmp_path, "solo.ckpt", {"state_dict": solo_learn_state(bb)})
    out, rep = str(tmp_path / "b.pth"), str(tmp_path / "report.json")
    assert main(["import", path, "--from", "solo-learn", "--out", out, "--format", "torchvision",
                 "--report", rep]) == 0
    text = capsys.readouterr().out
    assert "flavour: solo-learn" in text and f"wrote {out} (torchvision" in text
    with open(rep) as f:
        report = json.load(f)
    assert report["kept"] == sorted(f"backbone.{k}" for k in bb.state_dict())
    assert torch.equal(features(load_backbone(out), X), features(bb, X))
    sd = solo_learn_state(bb)
    sd["backbone.conv1.weight"] = sd["backbone.conv1.weight"][:, :, :3, :3]  # wrong shape
    bad = _save(tmp_path, "bad.ckpt", {"state_dict": sd})
    assert main(["import", bad, "--out", str(tmp_path / "x.safetensors"), "--backbone", "resnet18",
                 "--backbone-kwargs", '{"width": 16}']) == 2
    err = capsys.readouterr().err
    assert "shape mismatches (1): conv1.weight: checkpoint (16, 3, 3, 3) vs model (16, 3, 7, 7)" in err
    assert not (tmp_path / "x.safetensors").exists()
