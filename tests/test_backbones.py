"""Backbones: shapes, CIFAR stem, torchvision-compatible keys, timm by name."""

import pytest
import torch
import torchvision

from harl.backbones import build_backbone
from harl.checkpoint import strict_load
from harl.errors import CheckpointMismatchError


def test_resnet18_cifar_stem_gives_5x5_map_at_32px():
    net = build_backbone("resnet18", cifar_stem=True, width=8)
    fmap = net.forward_features(torch.randn(2, 3, 32, 32))
    assert fmap.shape == (2, 64, 5, 5)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 64) == (2, net.num_features)


def test_resnet50_imagenet_stem_shapes():
    net = build_backbone("resnet50", width=8)
    assert net.forward_features(torch.randn(1, 3, 64, 64)).shape == (1, 256, 2, 2)
    assert net.forward_c4(torch.randn(1, 3, 64, 64)).shape == (1, 128, 4, 4)


def test_c5_stride1_doubles_map():
    net = build_backbone("resnet18", width=8, c5_stride1=True)
    assert net.forward_features(torch.randn(1, 3, 64, 64)).shape[-1] == 4  # 64/16


def test_default_width_state_dict_loads_strictly_into_torchvision():
    ours = build_backbone("resnet18")
    tv = torchvision.models.resnet18()
    tv.fc = torch.nn.Identity()
    strict_load(tv, ours.state_dict())
    x = torch.randn(2, 3, 64, 64)
    ours.eval(), tv.eval()
    torch.testing.assert_close(ours(x), tv(x))


def test_mismatched_architecture_names_keys():
    ours = build_backbone("resnet18", width=8)
    tv = torchvision.models.resnet18()
    tv.fc = torch.nn.Identity()
    with pytest.raises(CheckpointMismatchError, match=r"shape mismatches.*conv1.weight"):
        strict_load(tv, ours.state_dict())
    sd = ours.state_dict()
    sd["layer5.weight"] = torch.zeros(1)
    sd.pop("bn1.bias")
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \(1\): bn1.bias(.|\n)*unexpected keys \(1\): layer5.weight"):
        strict_load(build_backbone("resnet18", width=8), sd)


def test_timm_backbone_by_name_and_unknown_hint():
    net = build_backbone("timm/resnet10t").eval()
    x = torch.randn(2, 3, 32, 32)
    assert net.forward_features(x).ndim == 4
    assert net(x).shape == (2, net.num_features)
    assert net.pool(net.forward_features(x)).shape == (2, net.num_features)
    with pytest.raises(Exception, match="resnet18"):
        build_backbone("resnet19")
    with pytest.raises(Exception, match="did you mean"):
        build_backbone("resnet18", widht=8)
