"""Export → load round trips (identical features), plain model classes, detectron2 key names, refusals."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from harl.backbones import build_backbone
from harl.errors import CheckpointMismatchError
from harl.zoo.export import EXPORTERS, detectron2_key, export_weights
from harl.zoo.models import build_model, features, load_backbone
from harl.errors import UnsupportedExport
from harl.zoo.weights import read_backbone_weights, read_safetensors_metadata

X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))  # small: the CPU is shared
X32 = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _randomise_bn(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
            m.num_batches_tracked.fill_(7)


def make_run(root, backbone="resnet18", kwargs=None, dataset="imagenet100", seed=0):
    """A harl run folder: args.json + a checkpoint with backbone and head keys. Returns (ckpt, model)."""
    torch.manual_seed(seed)
    build_kwargs = dict(kwargs or {})
    if dataset in ("fashion_scenes", "cifar10"):  # pretraining's default for small images
        build_kwargs.setdefault("cifar_stem", True)
    model = build_backbone(backbone, **build_kwargs)
    _randomise_bn(model, seed)
    model.eval()
    sd = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    sd.update({f"momentum_backbone.{k}": v.clone() for k, v in model.state_dict().items()})
    sd["projector.0.weight"] = torch.randn(8, model.num_features)
    sd["classifier.weight"] = torch.randn(10, model.num_features)
    run = os.path.join(str(root), "byol", f"offline-{seed:08d}")
    os.makedirs(run, exist_ok=True)
    ckpt = os.path.join(run, f"t-offline-{seed:08d}-ep=9.ckpt")
    torch.save({"state_dict": sd, "epoch": 9}, ckpt)
    cfg = {"name": "t", "method": "byol", "backbone": {"name": backbone, "kwargs": dict(kwargs or {})},
           "data": {"dataset": dataset}, "max_epochs": 10}
    with open(os.path.join(run, "args.json"), "w") as f:
        json.dump(cfg, f)
    return ckpt, model


@pytest.fixture(scope="module")
def r18(tmp_path_factory):
    """Stock width 64, 7×7 stem (what timm, detectron2 and a stock torchvision model accept)."""
    return make_run(tmp_path_factory.mktemp("r18"))


@pytest.fixture(scope="module")
def r18_cifar(tmp_path_factory):
    """Width 64 with the CIFAR stem that fashion-scenes pretraining uses by default."""
    return make_run(tmp_path_factory.mktemp("r18c"), dataset="fashion_scenes", seed=1)


@pytest.fixture(scope="module")
def r18_w16(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("r18w16"), kwargs={"width": 16}, seed=6)


@pytest.fixture(scope="module")
def r18_w16_cifar(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("r18w16c"), kwargs={"width": 16}, dataset="fashion_scenes", seed=7)


@pytest.mark.parametrize("fmt,which", [
    ("torchvision", "r18_w16"), ("torchvision", "r18_w16_cifar"), ("safetensors", "r18_w16"),
    ("safetensors", "r18_w16_cifar"), ("timm", "r18"), ("timm", "r18_cifar")])
def test_export_load_round_trip_identical_features(fmt, which, request, tmp_path):
    import timm.models.resnet
    import torchvision

    ckpt, model = request.getfixturevalue(which)
    weights = read_backbone_weights(ckpt)
    assert weights.kwargs["cifar_stem"] is which.endswith("cifar")
    out = str(tmp_path / f"b{EXPORTERS.get(fmt).extension}")
    res = export_weights(weights, fmt, out)
    assert os.listdir(tmp_path) == [os.path.basename(out)]  # no temporary file left
    load_fmt = "timm" if fmt == "timm" else "torchvision"
    plain = load_backbone(out, format=load_fmt)
    assert type(plain) is (timm.models.resnet.ResNet if fmt == "timm" else torchvision.models.ResNet)
    assert torch.equal(features(plain, X), features(model, X))
    if which.endswith("cifar"):
        assert any("CIFAR stem" in n for n in res.notes + plain.harl_changes)
        assert isinstance(plain.maxpool, torch.nn.Identity) and plain.conv1.kernel_size == (3, 3)


def test_torchvision_and_timm_files_load_into_stock_models(r18, tmp_path):
    import timm
    import torchvision

    weights = read_backbone_weights(r18[0])
    export_weights(weights, "torchvision", str(tmp_path / "tv.pth"))
    export_weights(weights, "timm", str(tmp_path / "timm.pth"))
    tv = torchvision.models.resnet18(weights=None)
    tv.fc = torch.nn.Identity()
    tv.load_state_dict(torch.load(str(tmp_path / "tv.pth"), weights_only=True), strict=True)
    tm = timm.create_model("resnet18", pretrained=False, num_classes=0)
    tm.load_state_dict(torch.load(str(tmp_path / "timm.pth"), weights_only=True), strict=True)
    ref = features(r18[1], X)
    assert torch.equal(features(tv, X), ref) and torch.equal(features(tm, X), ref)


def test_width_rebuilt_with_torchvision_pieces(r18_w16):
    import torchvision

    ckpt, model = r18_w16
    plain = load_backbone(ckpt)
    assert type(plain) is torchvision.models.ResNet
    assert plain.conv1.out_channels == 16 and plain.layer4[0].conv2.out_channels == 128
    assert any("width 16" in c for c in plain.harl_changes)
    assert torch.equal(features(plain, X), features(model, X))
    with pytest.raises(UnsupportedExport, match="width 16"):
        load_backbone(ckpt, format="timm")


def test_fp16_safetensors_carries_architecture(tmp_path):
    ckpt, model = make_run(tmp_path, kwargs={"width": 16, "c5_stride1": True}, seed=3)
    weights = read_backbone_weights(ckpt)
    out = str(tmp_path / "b.safetensors")
    export_weights(weights, "safetensors", out, dtype="float16")
    export_weights(weights, "safetensors", str(tmp_path / "again.safetensors"), dtype="float16")
    with open(out, "rb") as f1, open(str(tmp_path / "again.safetensors"), "rb") as f2:
        assert f1.read() == f2.read()  # equal weights → equal bytes (reproducible sha256)
    meta = read_safetensors_metadata(out)
    assert meta["harl.backbone"] == "resnet18"
    assert json.loads(meta["harl.backbone_kwargs"]) == {"c5_stride1": True, "cifar_stem": False, "width": 16}
    back = read_backbone_weights(out)
    assert back.kwargs == weights.kwargs and not back.arch_inferred
    # the fp16 file equals the model with fp16-rounded weights; c5_stride1 (no shape change) survived
    rounded = build_backbone("resnet18", width=16, c5_stride1=True)
    rounded.load_state_dict({k: (v.half().float() if v.is_floating_point() else v)
                             for k, v in model.state_dict().items()})
    plain = load_backbone(out)
    assert plain.layer4[0].conv1.stride == (1, 1)
    assert torch.equal(features(plain, X32), features(rounded.eval(), X32))
    harl_model = load_backbone(out, format="harl")
    assert type(harl_model).__name__ == "SSLResNet"
    with torch.no_grad():
        assert harl_model.forward_features(X32).shape[-1] == harl_model.forward_c4(X32).shape[-1] == 2  # stride-1 c5
    with pytest.raises(UnsupportedExport, match="c5_stride1"):
        load_backbone(out, format="timm")


def test_inferred_architecture_for_bare_state_dict(r18_w16_cifar, tmp_path):
    weights = read_backbone_weights(r18_w16_cifar[0])
    out = str(tmp_path / "tv.pth")
    export_weights(weights, "torchvision", out)
    back = read_backbone_weights(out)  # no args.json, no metadata: shapes tell
    assert back.arch_inferred and back.backbone == "resnet18"
    assert back.kwargs["cifar_stem"] is True and back.kwargs["width"] == 16


def detectron2_expected_keys(depth: int):
    """detectron2's ResNet parameter/buffer names (FrozenBN: weight, bias, running_mean, running_var)."""
    stages = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3]}[depth]
    bottleneck = depth >= 50
    norm = ["weight", "bias", "running_mean", "running_var"]
    keys = ["stem.conv1.weight"] + [f"stem.conv1.norm.{n}" for n in norm]
    convs = ["conv1", "conv2", "conv3"] if bottleneck else ["conv1", "conv2"]
    for stage, nblocks in zip(range(2, 6), stages):
        for b in range(nblocks):
            names = list(convs)
            if b == 0 and (bottleneck or stage > 2):  # R18/34 res2 keeps 64 channels: no projection
                names.append("shortcut")
            for c in names:
                keys.append(f"res{stage}.{b}.{c}.weight")
                keys += [f"res{stage}.{b}.{c}.norm.{n}" for n in norm]
    return sorted(keys)


@pytest.mark.parametrize("backbone,depth", [("resnet50", 50), ("resnet18", 18)])
def test_detectron2_keys_and_values(backbone, depth, tmp_path):
    # key names do not depend on the width: 16 keeps the ResNet-50 small
    ckpt, model = make_run(tmp_path, backbone=backbone, kwargs={"width": 16}, seed=4)
    out = str(tmp_path / "d2.pkl")
    res = export_weights(read_backbone_weights(ckpt), "detectron2", out)
    with open(out, "rb") as f:
        obj = pickle.load(f, encoding="latin1")  # how detectron2 reads .pkl
    assert obj["__author__"] == "harl" and obj["matching_heuristics"] is True
    d2 = obj["model"]
    assert sorted(d2) == detectron2_expected_keys(depth) == res.keys
    import numpy as np

    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in d2.values())
    for k in ("stem.conv1.norm.running_mean", "res3.0.shortcut.norm.running_var", "res5.1.conv2.weight"):
        assert k in d2
    np.testing.assert_array_equal(d2["stem.conv1.weight"], model.conv1.weight.detach().numpy())
    np.testing.assert_array_equal(d2["stem.conv1.norm.running_var"], model.bn1.running_var.numpy())
    np.testing.assert_array_equal(d2["res3.0.shortcut.weight"], model.layer2[0].downsample[0].weight.detach().numpy())
    np.testing.assert_array_equal(d2["res3.0.shortcut.norm.bias"], model.layer2[0].downsample[1].bias.detach().numpy())
    np.testing.assert_array_equal(d2["res2.1.conv2.norm.running_mean"], model.layer1[1].bn2.running_mean.numpy())
    assert any("STRIDE_IN_1X1 False" in n and "STEM_OUT_CHANNELS 16" in n for n in res.notes)


def test_detectron2_key_rule():
    assert detectron2_key("conv1.weight") == "stem.conv1.weight"
    assert detectron2_key("bn1.running_var") == "stem.conv1.norm.running_var"
    assert detectron2_key("layer1.0.bn3.weight") == "res2.0.conv3.norm.weight"
    assert detectron2_key("layer4.0.downsample.0.weight") == "res5.0.shortcut.weight"
    assert detectron2_key("layer4.0.downsample.1.running_mean") == "res5.0.shortcut.norm.running_mean"


def test_refusals(r18_w16_cifar, tmp_path):
    weights = read_backbone_weights(r18_w16_cifar[0])
    with pytest.raises(UnsupportedExport, match="CIFAR-stem"):
        export_weights(weights, "detectron2", str(tmp_path / "x.pkl"))
    assert not os.path.exists(tmp_path / "x.pkl")
    with pytest.raises(KeyError, match="did you mean 'timm'"):
        export_weights(weights, "tim", str(tmp_path / "x.pth"))


def test_timm_backbone_keeps_timm_names(tmp_path):
    ckpt, model = make_run(tmp_path, backbone="mobilenetv3_small_050", seed=5)
    weights = read_backbone_weights(ckpt)
    assert "conv_stem.weight" in weights.state_dict
    with pytest.raises(UnsupportedExport, match="format='timm'"):
        build_model(weights, "torchvision")
    out = str(tmp_path / "m.pth")
    export_weights(weights, "timm", out)
    plain = load_backbone(out, format="timm", backbone="mobilenetv3_small_050")
    assert type(plain).__module__.startswith("timm.")
    assert torch.equal(features(plain, X), features(model, X))


def test_strict_load_names_missing_and_unexpected_keys(r18, tmp_path):
    sd = torch.load(r18[0], weights_only=True)["state_dict"]
    sd["backbone.layer1.0.conv1.weight_renamed"] = sd.pop("backbone.layer1.0.conv1.weight")
    bad = str(tmp_path / "bad.pth")
    torch.save({"state_dict": sd}, bad)
    with pytest.raises(CheckpointMismatchError) as exc:
        load_backbone(bad, backbone="resnet18")
    assert "layer1.0.conv1.weight" in str(exc.value) and "weight_renamed" in str(exc.value)


def test_cli_export(r18, tmp_path, capsys):
    from harl.cli.zoo import main

    out = str(tmp_path / "r18.pkl")
    assert main(["export", r18[0], "--format", "detectron2", "--out", out]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out} (detectron2, 100 tensors)" in text and "MODEL.RESNETS.DEPTH 18" in text
    assert main(["export", str(tmp_path / "nope.ckpt"), "--format", "timm", "--manifest",
                 str(tmp_path / "none.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "nope.ckpt" in err
