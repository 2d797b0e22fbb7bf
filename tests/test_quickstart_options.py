"""Options of the quickstart and of the quality / diagnosis benchmarks that choose the demo data."""

import argparse

import pytest

from benchmarks import diagnosis, quality
from harl import quickstart
from harl.data.fashion_scenes import FashionScenesParams


def _args(**kw):
    base = dict(train=100, test=20, size=32, data_seed=3, scene=[])
    base.update(kw)
    return argparse.Namespace(**base)


def test_quickstart_scene_params_merge_preset_and_options(monkeypatch):
    monkeypatch.setattr(quickstart, "DEMO_SCENES", {"bg_dim": 0.5, "bg_pool": 2})
    p = quickstart.scene_params(_args(scene=["bg_dim=0.25", "scale=[0.5, 0.6]"]))
    assert p == {"bg_dim": 0.25, "bg_pool": 2, "scale": [0.5, 0.6], "n_train": 100, "n_test": 20, "size": 32,
                 "seed": 3}
    params = FashionScenesParams.from_dict(p)
    assert params.scale == (0.5, 0.6) and params.bg_dim == 0.25
    with pytest.raises(SystemExit, match="--train"):
        quickstart.scene_params(_args(scene=["n_train=5"]))
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        quickstart.scene_params(_args(scene=["bg_dim"]))
    with pytest.raises(ValueError, match="unknown fashion-scenes parameter"):
        FashionScenesParams.from_dict(quickstart.scene_params(_args(scene=["bg_dimm=0.3"])))


def test_quickstart_default_preset_is_a_valid_demo_set():
    FashionScenesParams.from_dict(quickstart.scene_params(_args()))


def test_quickstart_table_prints_the_gain_over_random_init(capsys):
    rows = [{"name": "harl", "linear_top1": 31.25, "knn_top1": 24.0},
            {"name": "random init", "linear_top1": 21.0, "knn_top1": 18.5}]
    text = quickstart.print_table(rows)
    assert "| **gain over random init** | **+10.2** | **+5.5** |" in text  # 10.25 rounds half to even
    assert "gain" not in quickstart.print_table(rows[:1])


def test_quality_scene_overrides_parse_yaml_values_and_reject_unknown_keys():
    assert quality.scene_overrides(["scale=[0.5,0.9]", "background=plain", "bg_pool=4"]) == {
        "scale": [0.5, 0.9], "background": "plain", "bg_pool": 4}
    with pytest.raises(SystemExit, match="bg_dim"):  # the message lists the known keys
        quality.scene_overrides(["bg_dimm=0.3"])
    with pytest.raises(SystemExit, match="key=value"):
        quality.scene_overrides(["n_train=5"])  # has its own option


def test_every_diagnosis_experiment_parses(tmp_path):
    """Each experiment's arguments are accepted by quality.py (report-only: nothing is trained)."""
    for i, e in diagnosis.EXPERIMENTS.items():
        argv = list(e["argv"]) + ["--compare", "baselines", "--methods", *e["methods"], "--out", str(tmp_path / i),
                                  "--report-only"]
        assert quality.main(argv) == 0
        scenes = [a for k, a in zip(e["argv"], e["argv"][1:]) if k == "--scene"]
        FashionScenesParams(**quality.scene_overrides(scenes))  # a valid demo set
    assert diagnosis.report(str(tmp_path)).count("\n") == 1  # header only: nothing finished
