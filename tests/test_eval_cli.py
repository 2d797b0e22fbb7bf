"""harl-linear: config validation, the shipped YAMLs, the high-pass rule, and end-to-end CLI runs."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

from harl.cli.linear import main
from harl.config import load_yaml
from harl.errors import ConfigError
from harl.eval.linear_config import parse_linear_cfg, set_dotted, validate_linear_cfg
from tests.test_eval_pretrained import shared_tiny_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINEAR_SCRIPTS = os.path.join(ROOT, "scripts", "linear")
OUR_CONFIGS = sorted(p for p in glob.glob(os.path.join(LINEAR_SCRIPTS, "*", "*.yaml"))
                     if not os.path.basename(p).startswith("finetune"))


@pytest.fixture(scope="module")
def tiny_ckpt(scenes_root, tmp_path_factory):
    return shared_tiny_checkpoint(scenes_root, tmp_path_factory)


def raw(ckpt="dummy.ckpt", **over):
    cfg = {"name": "t", "pretrained_feature_extractor": ckpt,
           "data": {"dataset": "fashion_scenes", "train_path": "a", "val_path": "b"}}
    for k, v in over.items():
        set_dotted(cfg, k, v)
    return cfg


@pytest.fixture()
def dummy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dummy.ckpt").write_bytes(b"x")
    return str(tmp_path / "dummy.ckpt")


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------


def test_defaults_follow_spec(dummy):
    cfg = parse_linear_cfg(raw())
    assert (cfg.mode, cfg.protocol, cfg.finetune) == ("linear", "augmented", False)
    assert (cfg.optimizer.name, cfg.optimizer.batch_size, cfg.optimizer.weight_decay) == ("sgd", 256, 0.0)
    assert cfg.optimizer.lr == pytest.approx(0.1) and cfg.max_epochs == 100
    assert cfg.scheduler.name == "step" and list(cfg.scheduler.lr_decay_steps) == [60, 80]
    assert (cfg.knn.k, cfg.knn.T, cfg.knn.distance_func) == (20, 0.07, "cosine")
    assert cfg.eval_highpass is None and cfg.data.num_classes == 10
    assert cfg.optimizer.kwargs.momentum == 0.9
    # lr × batch · devices / 256, once
    cfg = parse_linear_cfg(raw(**{"optimizer.batch_size": 128, "optimizer.lr": 0.4, "devices": [0, 1]}))
    assert cfg.optimizer.lr == pytest.approx(0.4)
    again = parse_linear_cfg(cfg)
    assert again.optimizer.lr == pytest.approx(0.4)


@pytest.mark.parametrize("key,value,pattern", [
    ("optimzer", {}, r"unknown config key 'optimzer'.*did you mean 'optimizer'"),
    ("data.trian_path", "x", r"unknown config key 'data.trian_path'.*did you mean 'train_path'"),
    ("knn.distance", "cosine", r"'knn.distance'.*did you mean 'distance_func'"),
    ("optimizer.kwargs.momentun", 0.9, r"optimizer.kwargs.momentun.*did you mean 'momentum'"),
    ("mode", "lienar", r"'mode' = 'lienar' must be one of.*did you mean 'linear'"),
    ("protocol", "cache", r"'protocol'.*did you mean 'cached'"),
    ("data.dataset", "cifar1O", r"'data.dataset'.*did you mean 'cifar10'"),
    ("dense.loss", "dice", r"'dense.loss'"),
    ("knn.k", [10, 0], r"'knn.k' must be a positive integer"),
    ("eval_highpass", "yes", r"'eval_highpass' must be true, false or null"),
    ("hp_kernel", 4, r"'hp_kernel' must be a positive odd integer"),
])
def test_bad_keys_and_values_are_named(dummy, key, value, pattern):
    with pytest.raises(ConfigError, match=pattern):
        validate_linear_cfg(raw(**{key: value}))


def test_missing_and_inconsistent_keys(dummy, tmp_path):
    with pytest.raises(ConfigError, match="missing required config key 'name'"):
        cfg = raw()
        del cfg["name"]
        validate_linear_cfg(cfg)
    with pytest.raises(ConfigError, match="missing required config key 'pretrained_feature_extractor'"):
        validate_linear_cfg(raw(ckpt="None"))  # solo-learn's YAML placeholder
    with pytest.raises(ConfigError, match="missing required config key 'data.val_path'"):
        validate_linear_cfg(raw(**{"data.val_path": None}))
    with pytest.raises(ConfigError, match=r"file '.*nope.ckpt' does not exist"):
        validate_linear_cfg(raw(ckpt=str(tmp_path / "nope.ckpt")))
    with pytest.raises(ConfigError, match="cannot be combined with finetune"):
        validate_linear_cfg(raw(protocol="cached", finetune=True))
    with pytest.raises(ConfigError, match="needs backbone.name"):
        validate_linear_cfg(raw(ckpt=None, random_init=True))
    with pytest.raises(ConfigError, match="set by harl itself"):
        validate_linear_cfg(raw(logger=False))
    # random_init with an architecture needs no checkpoint; Trainer arguments pass through
    cfg = validate_linear_cfg(raw(ckpt=None, random_init=True, limit_train_batches=2, **{"backbone.name": "resnet18"}))
    assert cfg.limit_train_batches == 2


def test_stock_solo_learn_linear_yaml_validates(dummy, tmp_path):
    """solo-learn's scripts/linear/imagenet-100/byol.yaml, as published (DALI, precision 16)."""
    (tmp_path / "wandb").mkdir()
    (tmp_path / "wandb" / "private.yaml").write_text("enabled: False\nentity: null\nproject: x\n")
    (tmp_path / "byol.yaml").write_text("""defaults:
  - _self_
  - wandb: private.yaml
  - override hydra/hydra_logging: disabled
  - override hydra/job_logging: disabled
hydra:
  output_subdir: null
  run:
    dir: .
name: "byol-imagenet100-linear"
pretrained_feature_extractor: None
backbone:
  name: "resnet18"
pretrain_method: "byol"
data:
  dataset: imagenet100
  train_path: "./datasets/imagenet-100/train"
  val_path: "./datasets/imagenet-100/val"
  format: "dali"
  num_workers: 4
optimizer:
  name: "sgd"
  batch_size: 256
  lr: 0.3
  weight_decay: 0
scheduler:
  name: "step"
  lr_decay_steps: [60, 80]
checkpoint:
  enabled: True
  dir: "trained_models"
  frequency: 1
auto_resume:
  enabled: True
max_epochs: 100
devices: [0]
sync_batchnorm: True
accelerator: "gpu"
strategy: "ddp"
precision: 16
""")
    cfg = load_yaml(str(tmp_path / "byol.yaml"), [f"pretrained_feature_extractor={dummy}"])
    with pytest.warns(UserWarning, match="dali"):
        cfg = parse_linear_cfg(cfg)
    assert cfg.data.format == "image_folder" and cfg.optimizer.lr == pytest.approx(0.3)
    assert cfg.data.num_classes == 100 and cfg.precision == 16


@pytest.mark.parametrize("path", OUR_CONFIGS, ids=lambda p: os.path.relpath(p, LINEAR_SCRIPTS))
def test_shipped_configs_validate(path, dummy):
    cfg = parse_linear_cfg(load_yaml(path, [f"pretrained_feature_extractor={dummy}"]))
    rel = os.path.relpath(path, LINEAR_SCRIPTS)
    expected_lr = {"imagenet/byol.yaml": 0.1, "imagenet-100/byol.yaml": 0.3, "imagenet-100/simclr.yaml": 1.0,
                   "imagenet-100/mocov2plus.yaml": 3.0, "imagenet/mocov2plus.yaml": 3.0, "cifar/byol.yaml": 0.3}
    if rel in expected_lr:
        assert cfg.optimizer.lr == pytest.approx(expected_lr[rel])
    if rel.startswith("fashion-scenes"):
        assert cfg.protocol == "cached" and cfg.random_init_baseline and cfg.precision == "32-true"
        assert cfg.head_norm == "batchnorm"
    else:
        assert (cfg.max_epochs, cfg.optimizer.batch_size, list(cfg.scheduler.lr_decay_steps)) == (100, 256, [60, 80])
    assert os.access(path[:-len(".yaml")] + ".sh", os.X_OK)


# ---------------------------------------------------------------------------------------------
# high-pass rule
# ---------------------------------------------------------------------------------------------


def _sgm_copy(tiny_ckpt, dst, strategy="hp"):
    os.makedirs(dst, exist_ok=True)
    path = os.path.join(dst, "sgm.ckpt")
    shutil.copy(tiny_ckpt, path)
    args = json.load(open(os.path.join(os.path.dirname(tiny_ckpt), "args.json")))
    args["method"] = "sgm_mocov2"
    args["method_kwargs"] = {"sgm_strategy": strategy, "hp_kernel": 5, "hp_sigma": 2.0}
    with open(os.path.join(dst, "args.json"), "w") as f:
        json.dump(args, f)
    return path


def test_highpass_is_applied_automatically_for_sgm_hp(tiny_ckpt, scenes_root, tmp_path):
    from harl.eval.knn_probe import knn_eval

    sgm = _sgm_copy(tiny_ckpt, str(tmp_path / "sgm"))
    common = dict(dataset="fashion_scenes", train_path=scenes_root, val_path=scenes_root, progress=False,
                  out_dir=str(tmp_path / "out"))
    auto = knn_eval(sgm, **common)
    assert auto["highpass"] == {"applied": True, "kernel": 5, "sigma": 2.0}
    assert auto["config"]["eval_highpass"] is True and auto["pretrained"]["method"] == "sgm_mocov2"
    with pytest.warns(UserWarning, match=r"pretrained on high-pass inputs .* but eval_highpass=false"):
        off = knn_eval(sgm, eval_highpass=False, **common)
    assert off["highpass"]["applied"] is False
    plain = knn_eval(tiny_ckpt, **common)
    assert plain["highpass"]["applied"] is False
    forced = knn_eval(tiny_ckpt, eval_highpass=True, hp_kernel=3, **common)
    assert forced["highpass"] == {"applied": True, "kernel": 3, "sigma": 5.0}
    # the filter really reaches the features: one cached feature set per distinct input for the train split
    trains = glob.glob(str(tmp_path / "out" / "feature_cache" / "*-train-pooled-*.safetensors"))
    assert len(trains) == 3  # sgm+hp(5, 2), no filter (shared by 'off' and 'plain': same weights), hp(3, 5)
    blur = _sgm_copy(tiny_ckpt, str(tmp_path / "blur"), strategy="blur")
    assert knn_eval(blur, **common)["highpass"]["applied"] is False


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def _cli_args(tiny_ckpt, scenes_root, tmp_path, *extra):
    return [f"pretrained_feature_extractor={tiny_ckpt}", f"data.train_path={scenes_root}",
            f"data.val_path={scenes_root}", f"checkpoint.dir={tmp_path}", "accelerator=cpu",
            "enable_progress_bar=False", "data.num_workers=0", *extra]


def test_cli_linear_end_to_end(tiny_ckpt, scenes_root, tmp_path, capsys):
    rc = main([os.path.join(LINEAR_SCRIPTS, "fashion-scenes", "byol.yaml"),
               *_cli_args(tiny_ckpt, scenes_root, tmp_path, "max_epochs=3")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "harl-linear [linear/cached] byol-fashion-scenes-linear: top-1" in out and "random init:" in out
    path = out.strip().splitlines()[-1].split("results: ")[1]
    res = json.load(open(path))
    assert res["mode"] == "linear" and res["random_init_baseline"]["epochs"] == 3
    assert res["config"]["pretrained_sha256"] == res["pretrained"]["sha256"]
    run_dir = os.path.dirname(path)
    assert os.path.isfile(os.path.join(run_dir, "args.json")) and glob.glob(os.path.join(run_dir, "*-ep=2.ckpt"))
    assert not glob.glob(os.path.join(run_dir, "*.tmp*"))


def test_cli_dense_and_knn(tiny_ckpt, scenes_root, tmp_path, capsys):
    rc = main(["--config-path", os.path.join(LINEAR_SCRIPTS, "fashion-scenes"), "--config-name", "dense",
               *_cli_args(tiny_ckpt, scenes_root, tmp_path, "max_epochs=2", "random_init_baseline=false")])
    out = capsys.readouterr().out
    assert rc == 0 and "[dense/cached]" in out and "mIoU" in out
    with pytest.warns(UserWarning, match="pretrain_method 'harl' but the checkpoint's run config says 'byol'"):
        rc = main([os.path.join(LINEAR_SCRIPTS, "fashion-scenes", "harl.yaml"),
                   *_cli_args(tiny_ckpt, scenes_root, tmp_path, "mode=knn", "knn.k=[5,10]",
                              "random_init_baseline=false")])
    out = capsys.readouterr().out
    assert rc == 0 and "[knn]" in out
    res = json.load(open(out.strip().splitlines()[-1].split("results: ")[1]))
    assert [(r["k"]) for r in res["metrics"]["grid"]] == [5, 10]


def test_cli_errors_exit_2_with_the_key(tiny_ckpt, scenes_root, tmp_path, capsys):
    rc = main([os.path.join(LINEAR_SCRIPTS, "fashion-scenes", "byol.yaml"),
               *_cli_args(tiny_ckpt, scenes_root, tmp_path, "+optimzer.lr=1")])
    assert rc == 2 and "did you mean 'optimizer'" in capsys.readouterr().err
    rc = main([os.path.join(LINEAR_SCRIPTS, "fashion-scenes", "byol.yaml"), f"data.train_path={scenes_root}"])
    assert rc == 2 and "pretrained_feature_extractor" in capsys.readouterr().err
    rc = main([os.path.join(LINEAR_SCRIPTS, "fashion-scenes", "byol.yaml"),
               *_cli_args(tiny_ckpt, scenes_root, tmp_path, "backbone.kwargs.width=16")])
    err = capsys.readouterr().err
    assert rc == 2 and "shape mismatches" in err and "conv1.weight" in err


def test_launch_script_runs(tiny_ckpt, scenes_root, tmp_path):
    """The .sh wrapper finds harl-linear (PATH or .venv) and passes overrides through."""
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    proc = subprocess.run(["bash", os.path.join(LINEAR_SCRIPTS, "fashion-scenes", "byol.sh"),
                           *_cli_args(tiny_ckpt, scenes_root, tmp_path, "mode=knn", "random_init_baseline=false")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[knn] byol-fashion-scenes-linear: top-1" in proc.stdout
