"""Zoo manifest schema (errors with hints), README generation (and that the repo's is current), CLI."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import yaml

from harl.zoo.download import verify_file
from harl.zoo.manifest import Manifest, load_manifest, manifest_from_dict, repo_root, save_manifest
from harl.errors import ManifestError
from harl.zoo.readme import readme_is_current, readme_path, render_readme

REPO_MANIFEST = os.path.join(repo_root(), "zoo", "manifest.yaml")

ENTRY = {
    "name": "harl_resnet18_demo", "method": "harl", "backbone": "resnet18",
    "backbone_kwargs": {"width": 64, "cifar_stem": True}, "dataset": "fashion_scenes", "epochs": 100,
    "config": {"method": "harl", "backbone": {"name": "resnet18", "kwargs": {}}, "max_epochs": 100},
    "metrics": {"linear_top1": 61.234, "knn_top1": 55.0, "dense_miou": None},
    "format": "safetensors", "dtype": "float16", "size": 23_400_000, "sha256": "ab" * 32,
    "file": "weights/harl_resnet18_demo.safetensors", "urls": ["https://example.org/a.safetensors"],
    "license": "CC-BY-4.0", "hardware": {"device": "NVIDIA H100 80GB", "count": 1, "hours": 0.25},
    "input_size": 32, "mean": [0.4773, 0.4175, 0.3989], "std": [0.2261, 0.2083, 0.2179],
}


def _manifest(*entries, path="/tmp/x/manifest.yaml"):
    return manifest_from_dict({"version": 1, "entries": [copy.deepcopy(e) for e in entries]}, path)


def _bad(change, match, path="/m/manifest.yaml"):
    entry = copy.deepcopy(ENTRY)
    change(entry)
    with pytest.raises(ManifestError, match=match):
        manifest_from_dict({"version": 1, "entries": [entry]}, path)


def test_repository_manifest_is_valid_current_and_its_files_verify():
    m = load_manifest(REPO_MANIFEST)
    assert readme_is_current(m), "zoo/README.md is stale: run `harl-zoo readme`"
    names = set()
    for e in m.entries:
        assert e.name not in names
        names.add(e.name)
        if e.file:  # files kept in the repository must match their checksum
            assert verify_file(e.local_path, e.sha256, e.size) is None, e.name


def test_published_weights_load_strictly_through_the_hub_and_match_their_config(monkeypatch):
    """Every entry kept in the repository loads offline through ``torch.hub`` (``source="local"``) into
    the architecture its config names, and gives finite features of the right width."""
    import torch

    monkeypatch.delenv("HARL_ZOO_MANIFEST", raising=False)
    m = load_manifest(REPO_MANIFEST)
    local = [e for e in m.entries if e.file]
    assert local, "the zoo publishes small fashion-scenes checkpoints in the repository (offline use)"
    for e in local:
        assert e.config["backbone"]["name"] == e.backbone and e.config["method"] == e.method, e.name
        for key in ("linear_top1", "knn_top1"):
            assert 0.0 <= e.metrics[key] <= 100.0, (e.name, key)
        model = torch.hub.load(repo_root(), e.name, source="local")
        model.eval()
        with torch.no_grad():
            feats = model(torch.randn(2, 3, 32, 32))
        width = e.backbone_kwargs.get("width", 64)
        assert feats.shape == (2, 8 * width) and torch.isfinite(feats).all(), e.name


def test_valid_entry_round_trips(tmp_path):
    m = _manifest(ENTRY, path=str(tmp_path / "manifest.yaml"))
    e = m.get("harl_resnet18_demo")
    assert e.local_path == str(tmp_path / "weights" / "harl_resnet18_demo.safetensors")
    assert e.extension == ".safetensors" and e.metrics["dense_miou"] is None
    save_manifest(m)
    again = load_manifest(str(tmp_path / "manifest.yaml"))
    assert again.to_dict() == m.to_dict() and again.entries == m.entries
    assert again.to_dict()["entries"][0] == ENTRY  # nothing added, nothing lost


def test_defaults_and_optional_fields():
    e = copy.deepcopy(ENTRY)
    for k in ("format", "dtype", "backbone_kwargs", "hardware", "file"):
        e.pop(k)
    entry = _manifest(e).entries[0]
    assert (entry.format, entry.dtype, entry.backbone_kwargs, entry.hardware, entry.file) == (
        "safetensors", "float32", {}, None, None)
    assert "file" not in entry.to_dict() and "hardware" not in entry.to_dict()


@pytest.mark.parametrize("change,match", [
    (lambda e: e.update(licence="MIT"), "unknown key 'licence' .*did you mean 'license'"),
    (lambda e: e.pop("sha256"), "missing required key 'sha256'"),
    (lambda e: e.update(license=None), "missing required key 'license'"),
    (lambda e: e.update(sha256="AB" * 32), "64 lowercase hex"),
    (lambda e: e.update(input_size=0), "'input_size' must be an integer ≥ 1"),
    (lambda e: e.update(mean=[0.5, 0.5]), "'mean' must be a list of 3 numbers"),
    (lambda e: e["config"].update(data={"train_path": "/data/scenes"}), "absolute paths.*config.data.train_path"),
    (lambda e: e.update(name="harl-r18"), "Python identifier"),
    (lambda e: e.update(epochs=-1), "'epochs' must be an integer"),
    (lambda e: e.update(size=True), "'size' must be an integer"),
    (lambda e: e.update(config=[1, 2]), "'config' must be a mapping"),
    (lambda e: e.update(format="pt"), "'format' must be one of safetensors, pth"),
    (lambda e: e.update(dtype="fp16"), "'dtype' must be one of"),
    (lambda e: e["metrics"].update(knn_top_1=3.0), "unknown key 'knn_top_1' .*did you mean 'knn_top1'"),
    (lambda e: e["metrics"].pop("knn_top1"), "missing 'knn_top1' \\(use null"),
    (lambda e: e["metrics"].update(linear_top1=0.61e3), "in \\[0, 100\\]"),
    (lambda e: e["metrics"].update(extra={"miou_black": "high"}), "extra.miou_black"),
    (lambda e: (e.pop("file"), e.update(urls=[])), "needs a 'file' .* or one or more 'urls'"),
    (lambda e: e.update(file="/abs/w.safetensors"), "relative to the manifest"),
    (lambda e: e.update(urls=["ftp://x/y"]), "must start with one of"),
    (lambda e: e.update(hardware={"gpu": "H100"}), "unknown key 'gpu'"),
    (lambda e: e.update(hardware={"hours": 1.0}), "'hardware.device'"),
    (lambda e: e.update(hardware={"device": "H100", "hours": -1}), "'hardware.hours'"),
])
def test_schema_errors_name_the_entry_and_field(change, match):
    _bad(change, "/m/manifest.yaml: entry 'harl|/m/manifest.yaml: entries\\[0\\]")  # where
    _bad(change, match)


def test_top_level_errors(tmp_path):
    with pytest.raises(ManifestError, match="unknown key 'entry' .*did you mean 'entries'"):
        manifest_from_dict({"version": 1, "entry": []}, "m.yaml")
    with pytest.raises(ManifestError, match="'version' must be 1"):
        manifest_from_dict({"version": 2, "entries": []}, "m.yaml")
    with pytest.raises(ManifestError, match="appears twice"):
        _manifest(ENTRY, ENTRY)
    with pytest.raises(ManifestError, match="no zoo manifest at"):
        load_manifest(str(tmp_path / "none.yaml"))
    (tmp_path / "broken.yaml").write_text("version: 1\nentries: [\n")
    with pytest.raises(ManifestError, match="could not read zoo manifest .*broken.yaml"):
        load_manifest(str(tmp_path / "broken.yaml"))
    with pytest.raises(KeyError, match="did you mean 'harl_resnet18_demo'"):
        _manifest(ENTRY).get("harl_resnet18_dem")


def test_env_var_selects_manifest(tmp_path, monkeypatch):
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "entries": [ENTRY]}))
    monkeypatch.setenv("HARL_ZOO_MANIFEST", str(path))
    assert load_manifest().names == ["harl_resnet18_demo"]
    monkeypatch.delenv("HARL_ZOO_MANIFEST")
    assert load_manifest().path == REPO_MANIFEST


def test_readme_rendering():
    second = dict(copy.deepcopy(ENTRY), name="byol_r18", method="byol", file=None, hardware=None,
                  metrics={"linear_top1": 58.0, "knn_top1": None, "extra": {"knn_top1_black": 40.5}},
                  urls=["https://a/b", "https://mirror/b"])
    m = _manifest(ENTRY, second)
    text = render_readme(m)
    assert text == render_readme(m)  # deterministic
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert rows[0] == ("| `harl_resnet18_demo` | harl | resnet18 | fashion_scenes | 100 | 61.23 | 55.00 | – | "
                       "23.4 MB | float16 | repo + 1 URL | CC-BY-4.0 |")
    assert rows[1].startswith("| `byol_r18` | byol |") and "| 58.00 | – | – |" in rows[1]
    assert "| 2 URLs |" in rows[1]
    assert f"- sha256: `{'ab' * 32}` (23400000 bytes, safetensors, float16)" in text
    assert "- trained on: 1× NVIDIA H100 80GB, 0.25 h" in text and "- knn_top1_black: 40.5" in text
    assert "No published weights yet." in render_readme(_manifest())


def test_cli_readme_check_list_verify(tmp_path, monkeypatch, capsys):
    from harl.cli.zoo import main

    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "entries": [ENTRY]}))
    monkeypatch.setenv("HARL_ZOO_MANIFEST", str(path))
    assert main(["readme", "--check"]) == 1
    assert main(["readme"]) == 0 and main(["readme", "--check"]) == 0
    assert readme_is_current(load_manifest()) and os.path.isfile(readme_path(load_manifest()))
    capsys.readouterr()
    assert main(["list", "--cache-dir", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["name", "method", "backbone", "dataset", "ep", "lin@1", "knn@1", "mIoU", "MB",
                              "on", "disk"]
    assert out[1].split() == ["harl_resnet18_demo", "harl", "resnet18", "fashion_scenes", "100", "61.23", "55.00",
                              "-", "23.4", "-"]
    assert main(["list", "--json"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)[0]["sha256"] == "ab" * 32
    # the repository file is absent: verify reports it and fails
    assert main(["verify"]) == 1
    assert "CORRUPT  harl_resnet18_demo [repo]" in capsys.readouterr().out
    path.write_text("version: 1\nentries:\n- name: x\n")
    assert main(["list"]) == 2
    assert "missing required key" in capsys.readouterr().err


def test_cheap_imports_and_lazy_load_backbone():
    code = ("import sys, harl, harl.zoo, harl.zoo.manifest, harl.zoo.download, harl.zoo.readme, harl.cli.zoo; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "f = harl.load_backbone; assert 'torch' in sys.modules; "
            "from harl.zoo.models import load_backbone; assert f is load_backbone; "
            "assert harl.zoo.load_manifest.__module__ == 'harl.zoo.manifest'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_manifest_object_api():
    m = Manifest(path="/x/manifest.yaml")
    assert m.names == [] and "a" not in m and m.root == "/x"
    assert m.to_dict() == {"version": 1, "entries": []}
