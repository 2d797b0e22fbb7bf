"""End-to-end pretraining on a tiny fashion-scenes tree: every baseline + HARL, checkpoints, resume."""

from __future__ import annotations

import csv
import glob
import json
import math
import os

import pytest
import torch
from lightning.pytorch import Callback

from harl.backbones import build_backbone
from harl.checkpoint import load_backbone, read_run_config
from harl.errors import CheckpointMismatchError
from harl.config import parse_cfg
from harl.errors import ConfigError
from harl.train import pretrain
from tests.conftest import scenes_cfg

METHODS = ["byol", "simclr", "mocov2plus", "harl"]


def _read_metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("method", METHODS)
def test_method_trains_and_writes_run_folder(method, scenes_root, tmp_path):
    cfg = scenes_cfg(method, scenes_root, str(tmp_path / "ckpt"), max_epochs=1,
                     **{"knn_eval.enabled": True, "knn_eval.distance_func": "cosine"})
    res = pretrain(cfg)
    assert os.path.isfile(os.path.join(res.run_dir, "args.json"))
    args = json.load(open(os.path.join(res.run_dir, "args.json")))
    assert args["method"] == method and args["optimizer"]["lr"] == pytest.approx(0.3 * 8 / 256)
    ckpts = glob.glob(os.path.join(res.run_dir, "*-ep=0.ckpt"))
    assert len(ckpts) == 1 and res.last_checkpoint == ckpts[0]
    assert not glob.glob(os.path.join(res.run_dir, "*.tmp*"))
    rows = _read_metrics(res.run_dir)
    losses = [float(r["train_class_loss_step"]) for r in rows if r.get("train_class_loss_step")]
    assert losses and all(math.isfinite(x) for x in losses)
    assert any(r.get("val_knn_acc1") for r in rows) and any(r.get("val_acc1") for r in rows)
    if method == "harl":
        assert any(r.get("train_loss_f_step") for r in rows) and any(r.get("alpha_step") for r in rows)
    state = torch.load(ckpts[0], map_location="cpu", weights_only=False)["state_dict"]
    assert any(k.startswith("backbone.conv1") for k in state)
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_checkpoint_round_trip_into_fresh_backbone(scenes_root, tmp_path):
    res = pretrain(scenes_cfg("byol", scenes_root, str(tmp_path / "ckpt"), max_epochs=1))
    cfg = read_run_config(res.last_checkpoint)
    assert cfg.backbone.kwargs.width == 8
    fresh = build_backbone("resnet18", width=8, cifar_stem=True)
    load_backbone(res.last_checkpoint, fresh)
    x = torch.randn(4, 3, 32, 32)
    fresh.eval()
    trained = res.model.backbone.eval()
    torch.testing.assert_close(fresh(x), trained(x.contiguous(memory_format=torch.channels_last)), rtol=1e-4, atol=1e-5)
    with pytest.raises(CheckpointMismatchError, match="shape mismatches"):
        load_backbone(res.last_checkpoint, build_backbone("resnet18", width=16, cifar_stem=True))
    with pytest.raises(CheckpointMismatchError, match="conv1.weight"):
        load_backbone(res.last_checkpoint, build_backbone("resnet18", width=8, cifar_stem=False))
    with pytest.raises(FileNotFoundError):
        load_backbone(str(tmp_path / "nope.ckpt"), fresh)


class _KillAfterFirstEpoch(Callback):
    """Simulates a job killed after the first end-of-epoch checkpoint."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise SystemExit("killed")


@pytest.mark.parametrize("method", ["byol", "harl"])
def test_auto_resume_matches_uninterrupted_run(method, scenes_root, tmp_path):
    over = {"max_epochs": 2, "auto_resume.enabled": True}
    full = pretrain(scenes_cfg(method, scenes_root, str(tmp_path / "a"), **over))

    with pytest.raises(SystemExit):
        pretrain(scenes_cfg(method, scenes_root, str(tmp_path / "b"), **over), callbacks=[_KillAfterFirstEpoch()])
    run_dirs = glob.glob(str(tmp_path / "b" / method / "*"))
    assert len(run_dirs) == 1 and glob.glob(os.path.join(run_dirs[0], "*-ep=0.ckpt"))
    resumed = pretrain(scenes_cfg(method, scenes_root, str(tmp_path / "b"), **over))
    assert resumed.run_dir == run_dirs[0]  # continued in the same folder
    assert resumed.trainer.global_step == full.trainer.global_step
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{k} differs after resume")
    # the previous epoch's checkpoint was replaced, never left half-written
    ckpts = sorted(glob.glob(os.path.join(resumed.run_dir, "*.ckpt")))
    assert [os.path.basename(c).split("-ep=")[1] for c in ckpts] == ["1.ckpt"]


def test_auto_resume_ignores_runs_with_other_settings(scenes_root, tmp_path):
    pretrain(scenes_cfg("byol", scenes_root, str(tmp_path / "c"), max_epochs=1, **{"auto_resume.enabled": True}))
    other = pretrain(scenes_cfg("byol", scenes_root, str(tmp_path / "c"), max_epochs=1,
                                **{"auto_resume.enabled": True, "optimizer.lr": 0.5}))
    assert len(glob.glob(str(tmp_path / "c" / "byol" / "*"))) == 2
    assert other.trainer.global_step > 0


def test_resume_from_missing_checkpoint_is_a_clear_error(scenes_root, tmp_path):
    cfg = scenes_cfg("byol", scenes_root, str(tmp_path / "d"), resume_from_checkpoint=str(tmp_path / "x.ckpt"))
    with pytest.raises(ConfigError, match="does not exist"):
        pretrain(parse_cfg(cfg))


def test_mask_method_without_masks_is_a_clear_error(scenes_root, tmp_path):
    cfg = scenes_cfg("harl", scenes_root, str(tmp_path / "e"))
    cfg["data"]["masks"] = {"enabled": False}
    with pytest.raises(ConfigError, match="needs masks"):
        pretrain(cfg)


def _custom_folder(root, n=18, corrupt=1):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        d = os.path.join(root, f"class{i % 2}")
        os.makedirs(d, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(os.path.join(d, f"{i}.png"))
    for i in range(corrupt):
        with open(os.path.join(root, "class0", f"broken{i}.png"), "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)  # a truncated PNG
    return root


def test_corrupt_image_fails_clearly_or_is_counted_when_asked(tmp_path):
    folder = _custom_folder(str(tmp_path / "imgs"))
    cfg = scenes_cfg("byol", folder, str(tmp_path / "ck"), max_epochs=1)
    cfg["data"].update({"dataset": "custom", "val_path": None})
    with pytest.raises(Exception, match="broken0.png"):
        pretrain(cfg)
    cfg["data"]["skip_corrupt"] = True
    with pytest.warns(UserWarning, match="broken0.png"):
        res = pretrain(cfg)
    rows = _read_metrics(res.run_dir)
    assert [float(r["data_skipped_files"]) for r in rows if r.get("data_skipped_files")] == [1.0]


def test_empty_data_directory_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = scenes_cfg("byol", str(empty), str(tmp_path / "ck"), max_epochs=1)
    cfg["data"].update({"dataset": "custom", "val_path": None})
    with pytest.raises(Exception, match=str(empty)):
        pretrain(cfg)


def test_resumed_run_keeps_earlier_metrics_and_cli_quotes_checkpoint_names(scenes_root, tmp_path):
    from harl.cli.common import quote_override_values
    from harl.utils.io import metrics_files

    assert quote_override_values(["resume_from_checkpoint=run-ep=3.ckpt", "max_epochs=2", "x=[a=1]"]) == [
        "resume_from_checkpoint='run-ep=3.ckpt'", "max_epochs=2", "x=[a=1]"]
    over = {"max_epochs": 2, "auto_resume.enabled": True}
    with pytest.raises(SystemExit):
        pretrain(scenes_cfg("byol", scenes_root, str(tmp_path / "m"), **over), callbacks=[_KillAfterFirstEpoch()])
    res = pretrain(scenes_cfg("byol", scenes_root, str(tmp_path / "m"), **over))
    files = metrics_files(res.run_dir)
    assert [os.path.basename(f) for f in files] == ["metrics.before-resume-1.csv", "metrics.csv"]
    epochs = {int(float(r["epoch"])) for f in files for r in csv.DictReader(open(f)) if r.get("epoch")}
    assert epochs == {0, 1}


def test_channels_last_turned_off_on_cpu_for_too_narrow_backbones():
    """torch's CPU convolution hangs or corrupts the heap with channels_last at 4 channels: such a
    backbone trains contiguous on the CPU, with a warning; width 8 keeps channels_last."""
    import warnings

    from harl.config import parse_cfg
    from harl.methods import METHODS
    from tests.conftest import tiny_cfg

    for width, expect in ((4, False), (8, True)):
        cfg = tiny_cfg("byol", **{"backbone.kwargs.width": width})
        cfg["performance"] = {"disable_channel_last": False}
        model = METHODS.get("byol")(parse_cfg(cfg))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.on_fit_start()
        assert model.channels_last is expect
        assert any("channels_last is turned off" in str(w.message) for w in caught) is (not expect)
