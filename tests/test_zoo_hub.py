"""``harl-zoo add`` into a test manifest, then torch.hub (source="local") and ``harl.load_backbone``."""

from __future__ import annotations

import json
import os

import pytest
import torch

import harl
from harl.backbones import build_backbone
from harl.zoo.download import sha256_file
from harl.zoo.manifest import load_manifest, repo_root
from harl.errors import ManifestError
from harl.zoo.models import features
from harl.zoo.readme import readme_is_current

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
NAME = "harl_resnet18_fashion_scenes"
CFG = {"name": "harl-r18", "method": "harl", "backbone": {"name": "resnet18", "kwargs": {"width": 16}},
       "data": {"dataset": "fashion_scenes", "train_path": "datasets/fashion-scenes"}, "max_epochs": 10,
       "optimizer": {"name": "lars", "lr": 1.0}, "augmentations": [{"crop_size": 32, "num_crops": 2}]}


def _run(root, seed, cfg=CFG, epoch=9):
    """A harl run folder (args.json + checkpoint); returns (ckpt, backbone with fp16-rounded weights)."""
    torch.manual_seed(seed)
    bb = build_backbone("resnet18", width=16, cifar_stem=True).eval()  # fashion_scenes → CIFAR stem
    g = torch.Generator().manual_seed(seed)
    for m in bb.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    run = os.path.join(str(root), "harl", f"offline-{seed:08d}")
    os.makedirs(run, exist_ok=True)
    sd = {f"backbone.{k}": v for k, v in bb.state_dict().items()}
    sd["projector.0.weight"] = torch.randn(8, bb.num_features)
    ckpt = os.path.join(run, f"harl-r18-offline-{seed:08d}-ep={epoch}.ckpt")
    torch.save({"state_dict": sd, "epoch": epoch}, ckpt)
    with open(os.path.join(run, "args.json"), "w") as f:
        json.dump(cfg, f)
    with torch.no_grad():
        for p in list(bb.parameters()) + [b for b in bb.buffers() if b.is_floating_point()]:
            p.copy_(p.half().float())
    return ckpt, bb


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """A test manifest holding NAME (added through the CLI) and a second entry."""
    from harl.cli.zoo import main

    root = tmp_path_factory.mktemp("zoo")
    manifest = root / "zoo" / "manifest.yaml"
    manifest.parent.mkdir()
    manifest.write_text("version: 1\nentries: []\n")
    metrics = root / "metrics.json"
    metrics.write_text(json.dumps({"linear_top1": 41.5, "knn_top1": 38.25, "dense_miou": 52.0}))
    ckpt, bb = _run(root, 0)
    assert main(["add", "--manifest", str(manifest), "--checkpoint", ckpt, "--name", NAME, "--metrics", str(metrics),
                 "--license", "MIT", "--device", "NVIDIA H100 80GB", "--hours", "0.5", "--device-count", "1"]) == 0
    ckpt2, bb2 = _run(root, 1, cfg=dict(CFG, method="byol"), epoch=4)
    assert main(["add", "--manifest", str(manifest), "--checkpoint", ckpt2, "--name", "byol_r18_tiny",
                 "--metrics", str(metrics), "--license", "MIT"]) == 0
    return {"manifest": str(manifest), "root": str(root), "ckpt": ckpt, "bb": bb, "bb2": bb2,
            "metrics": str(metrics)}


@pytest.fixture
def env(zoo, monkeypatch, tmp_path):
    monkeypatch.setenv("HARL_ZOO_MANIFEST", zoo["manifest"])
    monkeypatch.setenv("HARL_CACHE", str(tmp_path / "cache"))
    return zoo


def test_add_writes_verified_fp16_file_and_regenerates_readme(zoo):
    from safetensors import safe_open

    m = load_manifest(zoo["manifest"])
    assert m.names == [NAME, "byol_r18_tiny"]
    e = m.get(NAME)
    assert e.file == f"weights/{NAME}.safetensors" and e.urls == [] and e.dtype == "float16"
    assert os.path.getsize(e.local_path) == e.size <= 25_000_000 and sha256_file(e.local_path) == e.sha256
    assert (e.method, e.backbone, e.dataset, e.epochs) == ("harl", "resnet18", "fashion_scenes", 10)
    assert e.backbone_kwargs == {"width": 16, "cifar_stem": True}
    assert e.config == CFG  # the exact config from args.json
    assert (e.input_size, e.mean, e.std) == (32, [0.4773, 0.4175, 0.3989], [0.2261, 0.2083, 0.2179])
    assert e.metrics == {"linear_top1": 41.5, "knn_top1": 38.25, "dense_miou": 52.0}
    assert e.hardware == {"device": "NVIDIA H100 80GB", "hours": 0.5, "count": 1}
    assert m.get("byol_r18_tiny").epochs == 5 and m.get("byol_r18_tiny").method == "byol"
    with safe_open(e.local_path, framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys() if "num_batches" not in k} == {torch.float16}
    assert readme_is_current(m)
    with open(os.path.join(os.path.dirname(zoo["manifest"]), "README.md")) as f:
        assert f"| `{NAME}` | harl | resnet18 | fashion_scenes | 10 | 41.50 | 38.25 | 52.00 |" in f.read()


def test_hub_load_local(env):
    model = torch.hub.load(repo_root(), NAME, source="local", verbose=False)
    import torchvision

    assert type(model) is torchvision.models.ResNet
    assert torch.equal(features(model, X), features(env["bb"], X))
    harl_model = torch.hub.load(repo_root(), NAME, source="local", format="harl", verbose=False)
    assert type(harl_model).__name__ == "SSLResNet"
    assert torch.equal(features(harl_model, X), features(env["bb"], X))


def test_hub_lists_every_manifest_entry(env):
    import importlib.util

    # torch.hub.list only takes GitHub repos; list the entry points the way it does (dir + callable)
    spec = importlib.util.spec_from_file_location("hubconf_under_test", os.path.join(repo_root(), "hubconf.py"))
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    names = [f for f in dir(hubconf) if callable(getattr(hubconf, f)) and not f.startswith("_")]
    assert names == ["byol_r18_tiny", NAME]
    assert "byol_r18_tiny" in (hubconf.byol_r18_tiny.__doc__ or "")
    model = torch.hub.load(repo_root(), "byol_r18_tiny", source="local", verbose=False)
    assert torch.equal(features(model, X), features(env["bb2"], X))
    with pytest.raises(RuntimeError, match="Cannot find callable nope"):
        torch.hub.load(repo_root(), "nope", source="local", verbose=False)


def test_hub_pretrained_false_gives_architecture_only(env):
    model = torch.hub.load(repo_root(), NAME, source="local", pretrained=False, verbose=False)
    ref = env["bb"].state_dict()
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in ref.items()}
    assert not torch.equal(model.conv1.weight, ref["conv1.weight"])


def test_load_backbone_by_name_and_corrupt_file_refused(env, tmp_path):
    import shutil

    from harl.errors import ZooDownloadError

    model = harl.load_backbone(NAME)
    assert torch.equal(features(model, X), features(env["bb"], X))
    # a corrupted copy of the repository file is never used
    copy_root = tmp_path / "zoo2"
    shutil.copytree(os.path.dirname(env["manifest"]), copy_root)
    weights = copy_root / "weights" / f"{NAME}.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ZooDownloadError, match="in-repository file .*sha256"):
        harl.load_backbone(NAME, manifest=str(copy_root / "manifest.yaml"))
    with pytest.raises(FileNotFoundError, match="neither a file nor a zoo entry .*did you mean"):
        harl.load_backbone(NAME + "x")


def test_add_refusals(zoo, tmp_path):
    from harl.zoo.add import add_entry

    metrics = {"linear_top1": 1.0, "knn_top1": 2.0}
    with pytest.raises(ManifestError, match="exists; pass --force"):
        add_entry(zoo["ckpt"], NAME, metrics, "MIT", manifest_path=zoo["manifest"])
    with pytest.raises(ManifestError, match="over the 0 MB limit"):
        add_entry(zoo["ckpt"], "big", metrics, "MIT", manifest_path=zoo["manifest"], max_repo_bytes=1000)
    with pytest.raises(ManifestError, match="needs at least one --url"):
        add_entry(zoo["ckpt"], "hosted", metrics, "MIT", manifest_path=zoo["manifest"], local=False)
    with pytest.raises(ManifestError, match="missing 'knn_top1'"):
        add_entry(zoo["ckpt"], "x", {"linear_top1": 1.0}, "MIT", manifest_path=zoo["manifest"])
    assert load_manifest(zoo["manifest"]).names == [NAME, "byol_r18_tiny"]  # nothing changed
    assert not os.path.exists(os.path.join(os.path.dirname(zoo["manifest"]), "weights", "big.safetensors"))


def test_add_hosted_and_force_replace(tmp_path):
    from harl.zoo.add import add_entry

    manifest = tmp_path / "manifest.yaml"
    manifest.write_text("version: 1\nentries: []\n")
    ckpt, _ = _run(tmp_path, 2)
    e = add_entry(ckpt, "hosted", {"linear_top1": 1.0, "knn_top1": 2.0}, "MIT", manifest_path=str(manifest),
                  local=False, urls=["https://example.org/hosted.safetensors"], staging_dir=str(tmp_path / "up"))
    staged = tmp_path / "up" / "hosted.safetensors"
    assert e.file is None and sha256_file(str(staged)) == e.sha256 and not (tmp_path / "weights").exists()
    e2 = add_entry(ckpt, "hosted", {"linear_top1": 3.0, "knn_top1": 4.0}, "MIT", manifest_path=str(manifest),
                   force=True)
    m = load_manifest(str(manifest))
    assert m.names == ["hosted"] and m.get("hosted").file == "weights/hosted.safetensors"
    assert m.get("hosted").metrics["linear_top1"] == 3.0 and e2.sha256 == e.sha256  # same weights, same bytes
    add_entry(ckpt, "hosted", {"linear_top1": 3.0, "knn_top1": 4.0}, "MIT", manifest_path=str(manifest),
              force=True, local=False, urls=["https://example.org/h.safetensors"], staging_dir=str(tmp_path / "up"))
    assert not (tmp_path / "weights" / "hosted.safetensors").exists()  # unreferenced file removed
    assert load_manifest(str(manifest)).get("hosted").file is None


def test_cli_export_by_name_and_list(env, tmp_path, capsys):
    from harl.cli.zoo import main
    from harl.zoo.models import load_backbone

    out = str(tmp_path / "r18.pth")
    assert main(["export", NAME, "--format", "torchvision", "--out", out]) == 0
    assert f"wrote {out} (torchvision" in capsys.readouterr().out
    assert torch.equal(features(load_backbone(out), X), features(env["bb"], X))  # shapes → CIFAR stem, width 16
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[0] == NAME and lines[1].split()[-1] == "repo"
