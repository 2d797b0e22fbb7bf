"""Start-up value checks: every config value's type and range, one line naming key, value and expectation."""

import math
import re

import pytest

from harl.config import parse_cfg, validate_cfg
from harl.errors import ConfigError
from harl.config_values import Bool, Either, Int, Num, Seq, Str, check_values, spec_from_default
from tests.conftest import tiny_cfg


# --------------------------------------------------------------------------------------------- specs


@pytest.mark.parametrize("spec,good,bad", [
    (Num(gt=0), [1e-9, 1, 3.5], [0, -1, "abc", True, math.nan, math.inf, None, [1]]),
    (Num(ge=0, le=1), [0, 0.5, 1], [-1e-9, 1.0000001, "0.5"]),
    (Num(gt=0, lt=1, nullable=True), [None, 0.5], [0, 1]),
    (Int(ge=1), [1, 7], [0, 1.0, "1", False]),
    (Bool(), [True, False], [0, 1, "true", None]),
    (Str(["a", "b"]), ["a"], ["c", 1, None]),
    (Seq(Num(), length=3), [[0, 1.5, 2]], [[0, 1], (0, 1, "x"), "abc"]),
    (Either(Int(ge=-1), Str(), Seq(Int(ge=0), nonempty=True)), [1, -1, "auto", [0, 1]], [[], 1.5, [-1], None]),
])
def test_value_specs_accept_and_reject(spec, good, bad):
    for v in good:
        assert spec.ok(v), v
    for v in bad:
        assert not spec.ok(v), v


def test_expected_texts():
    assert Num(gt=0).expected() == "a finite number > 0"
    assert Num(ge=0, le=1, nullable=True).expected() == "a finite number in [0, 1] or null"
    assert Int(ge=1).expected() == "an integer >= 1"
    assert Seq(Num(gt=0), length=2).expected() == "a list of 2 finite numbers > 0"


def test_types_from_defaults():
    assert isinstance(spec_from_default(0.5), Num) and not spec_from_default(0.5).integer
    assert spec_from_default(4).integer
    assert isinstance(spec_from_default(True), Bool)
    assert isinstance(spec_from_default("x"), Str)
    assert spec_from_default(None).ok(object())


def test_list_items_are_named_by_index():
    with pytest.raises(ConfigError, match=r"config key 'augmentations\[1\].crop_size' = 0: expected an integer >= 1"):
        check_values({"augmentations": [{"crop_size": 3}, {"crop_size": 0}]}, {"augmentations[].crop_size": Int(ge=1)})


# --------------------------------------------------------------------------------------------- pretraining


@pytest.mark.parametrize("key,value,expected", [
    ("optimizer.lr", "abc", "a finite number > 0"),
    ("optimizer.lr", -1, "a finite number > 0"),
    ("optimizer.lr", math.nan, "a finite number > 0"),
    ("optimizer.batch_size", "abc", "an integer >= 1"),
    ("optimizer.weight_decay", "abc", "a finite number >= 0"),
    ("optimizer.classifier_lr", -0.1, "a finite number >= 0"),
    ("optimizer.kwargs.eta", "abc", "a finite number"),
    ("optimizer.kwargs.clip_lr", "yes", "true or false"),
    ("method_kwargs.proj_hidden_dim", "abc", "an integer >= 1"),
    ("method_kwargs.proj_hidden_dim", 0, "an integer >= 1"),
    ("momentum.base_tau", "abc", r"a finite number in \[0, 1\]"),
    ("momentum.final_tau", 1.5, r"a finite number in \[0, 1\]"),
    ("scheduler.warmup_epochs", -1, "a finite number >= 0"),
    ("scheduler.min_lr", "x", "a finite number >= 0"),
    ("scheduler.interval", "batch", r"one of \['step', 'epoch'\]"),
    ("scheduler.lr_decay_steps", [10, "x"], "a list of integers >= 0"),
    ("data.num_workers", -1, "an integer >= 0"),
    ("data.fraction", 2.0, "a finite number <= 1"),
    ("data.skip_corrupt", "maybe", "true or false"),
    ("data.verify", "fast", r"one of \['off', 'quick', 'full'\]"),
    ("data.masks.min_fg_frac", 3, r"a finite number in \[0, 1\] or null"),
    ("data.masks.max_tries", 0, "an integer >= 1"),
    ("data.masks.vflip_prob", -0.5, r"in \[0, 1\]"),
    ("checkpoint.frequency", 0, "an integer >= 1"),
    ("knn_eval.T", 0, "a finite number > 0"),
    ("seed", "abc", "an integer >= 0"),
    ("max_epochs", "abc", "an integer >= 1"),
    ("accumulate_grad_batches", 0, "an integer >= 1"),
])
def test_bad_pretrain_values_name_key_value_and_expectation(key, value, expected):
    with pytest.raises(ConfigError) as err:
        validate_cfg(tiny_cfg(**{key: value}))
    msg = str(err.value)
    assert "\n" not in msg
    assert f"config key '{key}' = {value!r}: expected " in msg
    assert re.search(expected, msg), msg


def test_method_declared_ranges_and_optional_kwargs():
    """A method may widen a shared range (SwAV: queue_size 0 = no queue, MoCo still needs >= 1), and a
    kwarg declared with a null default (SimSiam's temperature) may stay null, but a given value is checked."""
    validate_cfg(tiny_cfg("swav", **{"method_kwargs.queue_size": 0}))
    with pytest.raises(ConfigError, match=r"config key 'method_kwargs.queue_size' = -1: expected an integer >= 0"):
        validate_cfg(tiny_cfg("swav", **{"method_kwargs.queue_size": -1}))
    with pytest.raises(ConfigError, match=r"config key 'method_kwargs.queue_size' = 0: expected an integer >= 1"):
        validate_cfg(tiny_cfg("mocov2plus", **{"method_kwargs.queue_size": 0}))
    validate_cfg(tiny_cfg("simsiam", **{"method_kwargs.temperature": None}))
    with pytest.raises(ConfigError, match=r"config key 'method_kwargs.temperature' = -1: expected a finite number > 0"):
        validate_cfg(tiny_cfg("simsiam", **{"method_kwargs.temperature": -1}))
    with pytest.raises(ConfigError, match=r"config key 'method_kwargs.temperature' = None: expected a finite number"):
        validate_cfg(tiny_cfg("simclr", **{"method_kwargs.temperature": None}))


def test_guard_health_and_resume_age_values():
    validate_cfg(tiny_cfg(**{"auto_resume.max_hours": None}))
    validate_cfg(tiny_cfg(**{"auto_resume.max_hours": 0}))
    for key, value, expected in (("auto_resume.max_hours", -1, "a finite number >= 0 or null"),
                                 ("guard.max_bad_steps", -1, "an integer >= 0"),
                                 ("health.every_n_steps", 0, "an integer >= 1"),
                                 ("health.strict", "yes", "true or false")):
        with pytest.raises(ConfigError, match=re.escape(f"config key '{key}' = {value!r}: expected {expected}")):
            validate_cfg(tiny_cfg(**{key: value}))


@pytest.mark.parametrize("aug_key,value", [
    ("crop_size", "abc"), ("num_crops", 0), ("color_jitter.prob", 2), ("color_jitter.hue", 0.7),
    ("gaussian_blur.sigma_min", 0), ("solarization.prob", "x"), ("mean", [0.5, 0.5]), ("std", [1, 0, 1]),
    ("rrc.crop_min_scale", 0),
])
def test_bad_augmentation_values(aug_key, value):
    raw = tiny_cfg()
    node = raw["augmentations"][0]
    parts = aug_key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    with pytest.raises(ConfigError, match=rf"config key 'augmentations\[0\]\.{aug_key}' = "):
        validate_cfg(raw)


def test_ordered_pairs():
    raw = tiny_cfg()
    raw["augmentations"][0]["rrc"] = {"crop_min_scale": 0.9, "crop_max_scale": 0.5}
    with pytest.raises(ConfigError, match=r"'augmentations\[0\].rrc.crop_min_scale' = 0.9 is larger than"):
        validate_cfg(raw)


def test_lr_error_reports_the_value_as_given_not_scaled():
    # batch 16 / 256 would scale -1 to -0.0625: the message must show -1 and the key
    with pytest.raises(ConfigError) as err:
        parse_cfg(tiny_cfg(**{"optimizer.lr": -1, "optimizer.batch_size": 16}))
    assert "'optimizer.lr' = -1:" in str(err.value) and "0.0625" not in str(err.value)


def test_method_checks_run_before_any_dataset_is_listed(tmp_path):
    # harl needs exactly 2 large crops; the (missing) data folder must not be looked at first
    raw = tiny_cfg("harl", **{"data.dataset": "custom", "data.train_path": str(tmp_path / "missing"),
                              "data.masks.enabled": True, "data.masks.root": str(tmp_path / "m")})
    raw["augmentations"] = [{"crop_size": 32, "num_crops": 3}]
    with pytest.raises(ConfigError, match="2 large crops"):
        parse_cfg(raw)


@pytest.mark.parametrize("validate", [validate_cfg, parse_cfg])
def test_bad_method_choice_is_found_before_the_missing_dataset(tmp_path, validate, monkeypatch):
    # a HARL loss_type that does not exist, and a data folder that does not exist either: the
    # method's check runs in validate_cfg, before any dataset is listed (os.scandir never called)
    import os

    def no_listing(*a, **k):
        raise AssertionError("a dataset folder was listed before the method's checks ran")

    monkeypatch.setattr(os, "scandir", no_listing)
    monkeypatch.setattr(os, "listdir", no_listing)
    raw = tiny_cfg("harl", **{"data.dataset": "custom", "data.train_path": str(tmp_path / "missing"),
                              "data.masks.enabled": True, "data.masks.root": str(tmp_path / "m"),
                              "method_kwargs.loss_type": "hybird"})
    with pytest.raises(ConfigError, match=r"method_kwargs.loss_type = 'hybird' must be one of .*did you mean 'hybrid'"):
        validate(raw)


def test_good_config_still_validates():
    cfg = parse_cfg(tiny_cfg(**{"optimizer.lr": 1, "data.fraction": -1, "devices": "1", "precision": 32}))
    assert cfg.optimizer.lr == pytest.approx(8 / 256)


# --------------------------------------------------------------------------------------------- command lines


def _write_yaml(tmp_path, raw):
    import yaml

    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


@pytest.mark.parametrize("override,key", [
    ("optimizer.lr=abc", "optimizer.lr"),
    ("optimizer.batch_size=abc", "optimizer.batch_size"),
    ("optimizer.weight_decay=abc", "optimizer.weight_decay"),
    ("method_kwargs.alpha_base=abc", "method_kwargs.alpha_base"),
    ("momentum.base_tau=abc", "momentum.base_tau"),
])
def test_pretrain_cli_bad_override_is_one_line_exit_2(tmp_path, capsys, override, key):
    from harl.cli.pretrain import main

    path = _write_yaml(tmp_path, tiny_cfg("harl", **{"data.masks.enabled": True}))
    assert main([path, override, "data.train_path=" + str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"config key '{key}' = 'abc'" in err


def test_linear_and_finetune_bad_values(tmp_path, monkeypatch):
    from harl.eval.finetune import validate_finetune_cfg
    from harl.eval.linear_config import validate_linear_cfg

    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.ckpt").write_bytes(b"x")
    lin = {"name": "t", "pretrained_feature_extractor": "m.ckpt",
           "data": {"dataset": "fashion_scenes", "train_path": "a", "val_path": "b"}}
    for key, value in (("optimizer", {"lr": "abc"}), ("data", {**lin["data"], "num_workers": "x"}),
                       ("label_smoothing", 1.5), ("cache", {"enabled": "no"})):
        with pytest.raises(ConfigError, match=r"config key '[a-z_.]+' = .*: expected"):
            validate_linear_cfg({**lin, key: value})
    ft = {"name": "t", "pretrained_feature_extractor": "m.ckpt", "subset": {"fraction": 0.1},
          "data": {"dataset": "custom", "train_path": "a", "val_path": "b"}}
    for key, value in (("optimizer", {"lr": "abc"}), ("search", {"holdout_fraction": 1.0}),
                       ("max_epochs", "abc"), ("optimizer", {"momentum": 1.5})):
        with pytest.raises(ConfigError, match=r"config key '[a-z_.]+' = .*: expected"):
            validate_finetune_cfg({**ft, key: value})


@pytest.mark.parametrize("main_path,argv,flag", [
    ("harl.cli.transfer", ["--random-init", "--backbone", "resnet18", "--train", "a", "--test", "b",
                           "--val-fraction", "5"], "--val-fraction"),
    ("harl.cli.transfer", ["--random-init", "--backbone", "resnet18", "--train", "a", "--test", "b",
                           "--batch-size", "0"], "--batch-size"),
    ("harl.cli.masks", ["eval", "--pred", "a", "--gt", "b", "--pred-threshold", "nan"], "--pred-threshold"),
    ("harl.cli.masks", ["felzenszwalb", "--images", "a", "--out", "b", "--chunksize", "-1"], "--chunksize"),
    ("harl.cli.zoo", ["download", "x", "--timeout", "-1"], "--timeout"),
    ("harl.cli.scenes", ["--out", "x", "--train", "-5"], "--train"),
    ("harl.cli.scenes", ["--out", "x", "--scale", "0.5", "3"], "--scale"),
])
def test_option_ranges_of_the_other_commands(capsys, main_path, argv, flag):
    import importlib

    main = importlib.import_module(main_path).main
    with pytest.raises(SystemExit) as ex:
        main(argv)
    assert ex.value.code == 2
    assert f"argument {flag}: " in capsys.readouterr().err
