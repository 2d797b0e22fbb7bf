"""Feature extraction: values, order, masks, input transform, cache reuse / invalidation / atomicity, maps."""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils.data import Dataset

from harl.backbones import build_backbone
from harl.eval import features as feats_mod
from harl.eval.features import (
    extract_feature_maps,
    extract_features,
    feature_cache_key,
    load_feature_cache,
    save_feature_cache,
)
from harl.ops.filters import HighPass


class ToyImages(Dataset):
    """n random 3×16×16 images with targets i % 3 (and optional 1×16×16 masks)."""

    def __init__(self, n=10, masks=False, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, 16, 16, generator=g)
        self.y = torch.arange(n) % 3
        self.m = (torch.rand(n, 1, 16, 16, generator=g) > 0.5).to(torch.uint8) if masks else None
        self.transform = "toy-transform"

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        if self.m is None:
            return self.x[i], int(self.y[i])
        return self.x[i], int(self.y[i]), self.m[i]


@pytest.fixture()
def net():
    torch.manual_seed(0)
    return build_backbone("resnet18", width=4, cifar_stem=True).eval()


def test_features_match_direct_forward_in_order(net):
    ds = ToyImages(10)
    net.train()  # extraction must switch to eval and restore the mode
    f, t = extract_features(net, ds, batch_size=4, progress=False, channels_last=False)
    assert net.training
    assert f.shape == (10, 32) and f.dtype == torch.float32 and t.dtype == torch.int64
    net.eval()
    with torch.no_grad():
        ref = net(ds.x)
    torch.testing.assert_close(f, ref, rtol=1e-5, atol=1e-6)
    assert t.tolist() == ds.y.tolist()
    # channels_last gives the same numbers
    f2, _ = extract_features(net, ds, batch_size=3, progress=False, channels_last=True)
    torch.testing.assert_close(f2, ref, rtol=1e-4, atol=1e-5)
    assert f.requires_grad is False


def test_masks_and_input_transform(net):
    ds = ToyImages(7, masks=True)
    hp = HighPass(5, 2.0)
    f, t, m = extract_features(net, ds, batch_size=4, progress=False, input_transform=hp, channels_last=False)
    assert m.shape == (7, 1, 16, 16) and m.dtype == torch.uint8 and torch.equal(m, ds.m)
    with torch.no_grad():
        ref = net(hp(ds.x))
        plain = net(ds.x)
    torch.testing.assert_close(f, ref, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(f, plain)


def test_cache_is_reused_and_invalidated(net, tmp_path, monkeypatch):
    ds = ToyImages(6)
    path = str(tmp_path / "c.safetensors")
    key = feature_cache_key("sha-a", str(tmp_path), "train", "eval", "resnet18")
    f1, t1 = extract_features(net, ds, batch_size=4, progress=False, cache_path=path, cache_key=key)
    assert os.path.isfile(path)
    calls = []
    orig = feats_mod._run
    monkeypatch.setattr(feats_mod, "_run", lambda *a, **k: calls.append(1) or orig(*a, **k))
    # same key: read back, no forward pass (even with another backbone: the key is the identity)
    other = build_backbone("resnet18", width=4, cifar_stem=True)
    f2, t2 = extract_features(other, ds, batch_size=4, progress=False, cache_path=path, cache_key=key)
    assert calls == [] and torch.equal(f1, f2) and torch.equal(t1, t2)
    # any key field changed: recomputed and the file rewritten with the new key
    for changed in (feature_cache_key("sha-b", str(tmp_path), "train", "eval", "resnet18"),
                    feature_cache_key("sha-a", str(tmp_path), "val", "eval", "resnet18"),
                    feature_cache_key("sha-a", str(tmp_path), "train", "eval+highpass", "resnet18"),
                    feature_cache_key("sha-a", str(tmp_path / "x"), "train", "eval", "resnet18"),
                    feature_cache_key("sha-a", str(tmp_path), "train", "eval", "resnet50")):
        calls.clear()
        f3, _ = extract_features(other, ds, batch_size=4, progress=False, cache_path=path, cache_key=changed)
        assert calls == [1]
        assert load_feature_cache(path, {**changed, "kind": "pooled", "n_items": 6}) is not None
    assert not torch.allclose(f3, f1)  # really the other backbone's features now
    # a dataset of another length never matches a cache of the same key
    calls.clear()
    extract_features(other, ToyImages(5), batch_size=4, progress=False, cache_path=path, cache_key=changed)
    assert calls == [1]


def test_default_key_tracks_weights_and_transform(net, tmp_path, monkeypatch):
    ds = ToyImages(5)
    path = str(tmp_path / "c.pt")  # torch-file format
    extract_features(net, ds, batch_size=8, progress=False, cache_path=path)
    calls = []
    orig = feats_mod._run
    monkeypatch.setattr(feats_mod, "_run", lambda *a, **k: calls.append(1) or orig(*a, **k))
    extract_features(net, ds, batch_size=8, progress=False, cache_path=path)
    assert calls == []
    with torch.no_grad():
        net.conv1.weight.mul_(1.5)
    extract_features(net, ds, batch_size=8, progress=False, cache_path=path)
    assert calls == [1]
    extract_features(net, ds, batch_size=8, progress=False, cache_path=path, input_transform=HighPass(3, 1.0))
    assert calls == [1, 1]


def test_cache_write_is_atomic(tmp_path, monkeypatch):
    path = str(tmp_path / "c.safetensors")
    good = {"feats": torch.ones(2, 3), "targets": torch.tensor([0, 1])}
    save_feature_cache(path, {"k": 1}, good)
    before = open(path, "rb").read()

    import safetensors.torch as st

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(st, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_feature_cache(path, {"k": 2}, {"feats": torch.zeros(2, 3), "targets": torch.tensor([1, 0])})
    assert open(path, "rb").read() == before  # the old cache is intact
    assert os.listdir(tmp_path) == ["c.safetensors"]  # no temporary file left behind
    assert torch.equal(load_feature_cache(path, {"k": 1})["feats"], good["feats"])
    assert load_feature_cache(path, {"k": 2}) is None


def test_damaged_cache_is_rebuilt(net, tmp_path):
    path = tmp_path / "c.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.warns(UserWarning, match="unreadable"):
        f, _ = extract_features(net, ToyImages(4), progress=False, cache_path=str(path), cache_key={"a": 1})
    assert load_feature_cache(str(path), {"a": 1, "kind": "pooled", "n_items": 4}) is not None and f.shape[0] == 4


def test_feature_maps_shapes_pooling_memory_guard_and_cache(net, tmp_path):
    ds = ToyImages(5, masks=True)
    maps, t, m = extract_feature_maps(net, ds, batch_size=2, progress=False, channels_last=False)
    # CIFAR stem: 16 → 18 (pad 2) → 9 → 5 → 3
    assert maps.shape == (5, 32, 3, 3) and maps.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(maps, net.forward_features(ds.x), rtol=1e-4, atol=1e-5)  # batches of 2 vs 5: other conv kernels
    assert torch.equal(m, ds.m) and t.tolist() == ds.y.tolist()
    half, _, _ = extract_feature_maps(net, ds, batch_size=2, progress=False, dtype=torch.float16, pool_to=(1, 1))
    assert half.shape == (5, 32, 1, 1) and half.dtype == torch.float16
    torch.testing.assert_close(half[:, :, 0, 0].float(), maps.mean(dim=(2, 3)), rtol=1e-2, atol=1e-2)
    with pytest.raises(MemoryError, match="float16"):
        extract_feature_maps(net, ds, progress=False, max_bytes=5 * 32 * 9 * 4 - 1)
    path = str(tmp_path / "maps.safetensors")
    a = extract_feature_maps(net, ds, progress=False, cache_path=path, cache_key={"x": 1})
    b = extract_feature_maps(net, ds, progress=False, cache_path=path, cache_key={"x": 1})
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    # the pooled and the map caches of one key never collide
    assert load_feature_cache(path, {"x": 1, "kind": "pooled", "n_items": 5}) is None
