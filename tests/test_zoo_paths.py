"""The zoo manifest names no path of the machine that trained an entry, and carries what a
downstream user needs to feed the backbone (input size, mean/std, backbone kwargs)."""

from __future__ import annotations

import copy

import pytest

from harl.zoo.manifest import absolute_paths, load_manifest, manifest_from_dict, scrub_paths
from harl.errors import ManifestError


def test_published_manifest_has_no_absolute_paths_and_input_specs():
    m = load_manifest()
    assert m.entries
    for e in m.entries:
        raw = e.to_dict()
        assert absolute_paths(raw) == [], (e.name, absolute_paths(raw))
        assert isinstance(e.input_size, int) and e.input_size >= 8
        assert len(e.mean) == 3 and len(e.std) == 3 and all(s > 0 for s in e.std)
        assert e.backbone_kwargs, e.name  # the exact kwargs (width, stem) needed to rebuild it
        crop = e.config["augmentations"][0]["crop_size"]
        assert e.input_size == crop


@pytest.mark.parametrize("value", ["/work/data/scenes", "~/data", "C:\\data\\scenes", "\\\\server\\share"])
def test_absolute_paths_found_and_scrubbed(value):
    cfg = {"data": {"train_path": value, "val_path": "./datasets/x", "masks": {"root": value}},
           "checkpoint": {"dir": value}, "name": "run", "urls": ["https://example.org/w"]}
    found = absolute_paths(cfg)
    assert sorted(f.split(" = ")[0] for f in found) == ["checkpoint.dir", "data.masks.root", "data.train_path"]
    clean = scrub_paths(cfg)
    assert absolute_paths(clean) == []
    assert clean["data"]["train_path"].startswith("./datasets/")
    assert clean["data"]["masks"]["root"].startswith("./masks/")
    assert clean["checkpoint"]["dir"] == "./trained_models"
    assert clean["data"]["val_path"] == "./datasets/x" and clean["urls"] == cfg["urls"]


def test_manifest_with_an_absolute_path_is_rejected():
    m = load_manifest()
    data = m.to_dict()
    bad = copy.deepcopy(data)
    bad["entries"][0]["config"]["data"]["train_path"] = "/home/someone/fashion-scenes"
    with pytest.raises(ManifestError, match=r"absolute paths.*config\.data\.train_path"):
        manifest_from_dict(bad, m.path)
    missing = copy.deepcopy(data)
    del missing["entries"][0]["input_size"]
    with pytest.raises(ManifestError, match="input_size"):
        manifest_from_dict(missing, m.path)
    wrong = copy.deepcopy(data)
    wrong["entries"][0]["std"] = [0.2, 0.0, 0.2]
    with pytest.raises(ManifestError, match="'std'"):
        manifest_from_dict(wrong, m.path)
