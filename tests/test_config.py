"""Config validation: unknown/missing keys, defaults, solo-learn derivations."""

import pytest
from omegaconf import OmegaConf

from harl.config import parse_cfg, validate_cfg
from harl.errors import ConfigError
from tests.conftest import tiny_cfg


def test_defaults_are_filled():
    cfg = validate_cfg(tiny_cfg())
    assert cfg.scheduler.warmup_start_lr == 3e-5
    assert cfg.checkpoint.dir == "trained_models"
    assert cfg.knn_eval.k == 20
    assert cfg.method_kwargs.proj_layers == 2  # method default
    assert cfg.optimizer.kwargs.momentum == 0.9  # optimizer default
    assert cfg.data.masks.on_missing == "error"


@pytest.mark.parametrize("key,hint", [
    ("optimiser", "optimizer"),
    ("max_epoch", "max_epochs"),
])
def test_unknown_top_level_key_names_closest(key, hint):
    raw = tiny_cfg()
    raw[key] = 1
    with pytest.raises(ConfigError, match=rf"unknown config key '{key}'.*did you mean '{hint}'"):
        validate_cfg(raw)


def test_unknown_nested_key_names_path_and_closest():
    raw = tiny_cfg()
    raw["data"]["num_worker"] = 2
    with pytest.raises(ConfigError, match=r"'data.num_worker'.*did you mean 'num_workers'"):
        validate_cfg(raw)
    raw = tiny_cfg()
    raw["augmentations"][0]["colour_jitter"] = {"prob": 0.8}
    with pytest.raises(ConfigError, match=r"augmentations\[0\].colour_jitter.*color_jitter"):
        validate_cfg(raw)


def test_unknown_method_kwarg_and_optimizer_kwarg():
    raw = tiny_cfg(**{"method_kwargs.pred_hiden_dim": 8})
    with pytest.raises(ConfigError, match=r"method_kwargs.pred_hiden_dim.*pred_hidden_dim"):
        validate_cfg(raw)
    raw = tiny_cfg(**{"optimizer.kwargs.clip": True})
    with pytest.raises(ConfigError, match=r"optimizer.kwargs.clip.*clip_lr"):
        validate_cfg(raw)


@pytest.mark.parametrize("path", ["name", "method", "max_epochs", "optimizer.lr", "backbone.name", "data.dataset"])
def test_missing_required_key(path):
    raw = tiny_cfg()
    node = raw
    parts = path.split(".")
    for p in parts[:-1]:
        node = node[p]
    del node[parts[-1]]
    with pytest.raises(ConfigError, match=rf"missing required config key '{path}'"):
        validate_cfg(raw)


def test_unknown_method_and_dataset_hint():
    with pytest.raises(ConfigError, match=r"unknown method 'boyl'.*byol"):
        validate_cfg(tiny_cfg(method="boyl"))
    with pytest.raises(ConfigError, match=r"data.dataset.*cifar100|cifar10"):
        validate_cfg(tiny_cfg(**{"data.dataset": "cifar1000"}))


def test_trainer_kwargs_pass_and_forbidden():
    cfg = validate_cfg(tiny_cfg(log_every_n_steps=5))
    assert cfg.log_every_n_steps == 5
    with pytest.raises(ConfigError, match="callbacks"):
        validate_cfg(tiny_cfg(callbacks=[]))


def test_parse_cfg_scales_lr_and_counts_crops():
    raw = tiny_cfg(**{"optimizer.batch_size": 128, "optimizer.lr": 1.0, "optimizer.classifier_lr": 0.1,
                      "devices": [0, 1], "num_nodes": 2})
    raw["augmentations"] = [{"crop_size": 32, "num_crops": 2}, {"crop_size": 16, "num_crops": 4}]
    cfg = parse_cfg(raw)
    assert cfg.optimizer.lr == pytest.approx(1.0 * 128 * 2 * 2 / 256)
    assert cfg.optimizer.classifier_lr == pytest.approx(0.1 * 128 * 2 * 2 / 256)
    assert cfg.num_large_crops == 2 and cfg.num_small_crops == 4
    assert cfg.data.num_classes == 10


def test_none_strings_and_hydra_keys_are_handled():
    raw = tiny_cfg()
    raw["defaults"] = ["_self_"]
    raw["hydra"] = {"run": {"dir": "."}}
    raw["data"]["val_path"] = "None"
    cfg = validate_cfg(OmegaConf.create(raw))
    assert cfg.data.val_path is None
    assert "hydra" not in cfg and "defaults" not in cfg


def test_wrong_types_are_errors():
    with pytest.raises(ConfigError, match="max_epochs"):
        validate_cfg(tiny_cfg(max_epochs=0))
    raw = tiny_cfg()
    raw["augmentations"] = []
    with pytest.raises(ConfigError, match="augmentations"):
        validate_cfg(raw)


def test_yaml_overrides_add_keys_and_switch_groups():
    import os

    from harl.config import load_yaml

    path = os.path.join(os.path.dirname(__file__), "..", "scripts", "pretrain", "cifar", "byol.yaml")
    cfg = load_yaml(path, ["max_epochs=3", "log_every_n_steps=7", "augmentations=symmetric.yaml",
                           "augmentations.0.rrc.crop_min_scale=0.3"])
    assert cfg.max_epochs == 3 and cfg.log_every_n_steps == 7
    assert len(cfg.augmentations) == 1 and cfg.augmentations[0].num_crops == 2  # the symmetric group
    assert cfg.augmentations[0].rrc.crop_min_scale == 0.3
    with pytest.raises(ConfigError, match="did you mean 'max_epochs'"):
        validate_cfg(load_yaml(path, ["max_epoch=3"]))


def test_every_shipped_pretrain_config_validates():
    import glob
    import os

    from harl.config import load_yaml

    root = os.path.join(os.path.dirname(__file__), "..", "scripts", "pretrain")
    paths = sorted(glob.glob(os.path.join(root, "*", "*.yaml")))
    assert len(paths) >= 16
    for path in paths:
        cfg = parse_cfg(load_yaml(path))
        stem = os.path.splitext(os.path.basename(path))[0]
        # <method>.yaml, or <method>_vit.yaml for a method's ViT recipe
        assert cfg.method in (stem, stem[:-len("_vit")] if stem.endswith("_vit") else stem), path


def test_harl_ablation_scripts_run_the_paper_grid(tmp_path):
    """Each dataset's harl_ablation.sh runs its own harl.sh six times (mask loss α_base and hybrid loss
    λ_base ∈ {0.3, 0.5, 0.7}) and passes the user's overrides to every run."""
    import glob
    import os
    import shutil
    import subprocess

    repo = os.path.join(os.path.dirname(__file__), "..")
    scripts = sorted(glob.glob(os.path.join(repo, "scripts", "pretrain", "*", "harl_ablation.sh")))
    assert {os.path.basename(os.path.dirname(p)) for p in scripts} >= {"imagenet", "imagenet-100", "fashion-scenes"}
    shutil.copy(os.path.join(repo, "scripts", "_harl_ablation.sh"), tmp_path / "_harl_ablation.sh")
    for script in scripts:
        here = tmp_path / "pretrain" / os.path.basename(os.path.dirname(script))
        here.mkdir(parents=True)
        shutil.copy(script, here / "harl_ablation.sh")
        (here / "harl.sh").write_text('echo "$*" >> "$(dirname "$0")/runs.txt"\n')
        subprocess.run(["bash", str(here / "harl_ablation.sh"), "max_epochs=3"], check=True)
        runs = (here / "runs.txt").read_text().splitlines()
        expected = [f"method_kwargs.loss_type=mask method_kwargs.alpha_base={v} name=harl-ablation-mask-alpha{v} "
                    "max_epochs=3" for v in ("0.3", "0.5", "0.7")]
        expected += [f"method_kwargs.loss_type=hybrid method_kwargs.lambda_base={v} "
                     f"name=harl-ablation-hybrid-lambda{v} max_epochs=3" for v in ("0.3", "0.5", "0.7")]
        assert runs == expected, script
