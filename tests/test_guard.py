"""The finite-training guard: a non-finite loss/gradient stops the run within a step (or is skipped
up to guard.max_bad_steps times); a non-finite learning rate stops it after the first update."""

from __future__ import annotations

import csv
import logging
import math
import os

import pytest
import torch
import yaml
from lightning.pytorch import Callback

from harl.config import parse_cfg
from harl.guard import nonfinite_terms
from harl.errors import NonFiniteTrainingError
from harl.train import pretrain
from tests.conftest import scenes_cfg

FAST = {"no_validation": True, "limit_train_batches": 4, "max_epochs": 1, "health.enabled": False}


class _InjectInf(Callback):
    """Puts an Inf into the first image of the batch at the given (epoch, batch) positions and keeps
    copies of the weights around the poisoned steps."""

    def __init__(self, at):
        self.at = set(at)
        self.before, self.after, self.module = {}, {}, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.module = pl_module
        key = (trainer.current_epoch, batch_idx)
        if key in self.at:
            batch[1][0][0, 0, 0, 0] = float("inf")
            self.before[key] = {k: v.clone() for k, v in pl_module.backbone.state_dict().items()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        key = (trainer.current_epoch, batch_idx)
        if key in self.at:
            self.after[key] = {k: v.clone() for k, v in pl_module.backbone.state_dict().items()}


def _all_finite(module):
    return all(torch.isfinite(p).all() for p in module.parameters())


def test_nonfinite_terms_names_loss_terms_first():
    vals = {"alpha": 0.5, "train_acc1": torch.tensor(float("nan")), "train_loss_f": torch.tensor(float("inf")),
            "train_loss_g": torch.tensor(1.0), "train_harl_loss": torch.tensor(float("nan"))}
    assert nonfinite_terms(vals) == ["train_harl_loss=nan", "train_loss_f=inf", "train_acc1=nan"]


def test_injected_inf_stops_within_the_step_and_names_it(scenes_root, tmp_path):
    inject = _InjectInf(at=[(0, 2)])
    cfg = scenes_cfg("byol", scenes_root, str(tmp_path / "ck"), **FAST)
    with pytest.raises(NonFiniteTrainingError) as info:
        pretrain(cfg, callbacks=[inject])
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("training stopped at optimizer step 3 (epoch 0, batch 2): non-finite loss nan")
    assert "train_class_loss=nan" in msg and "non-finite gradients in backbone." in msg
    assert "no checkpoint was written yet" in msg and "guard.max_bad_steps=N" in msg
    assert _all_finite(inject.module)  # the poisoned update never reached the weights


def test_stop_names_the_last_good_checkpoint(scenes_root, tmp_path):
    inject = _InjectInf(at=[(1, 0)])
    cfg = scenes_cfg("byol", scenes_root, str(tmp_path / "ck"), **{**FAST, "max_epochs": 2})
    with pytest.raises(NonFiniteTrainingError, match=r"last good checkpoint: '.*-ep=0\.ckpt'") as info:
        pretrain(cfg, callbacks=[inject])
    assert "optimizer step 5 (epoch 1, batch 0)" in str(info.value)


def test_bad_steps_are_skipped_counted_and_logged_when_allowed(scenes_root, tmp_path, caplog):
    inject = _InjectInf(at=[(0, 1), (0, 3)])
    cfg = scenes_cfg("byol", scenes_root, str(tmp_path / "ck"), **{**FAST, "guard.max_bad_steps": 2})
    with caplog.at_level(logging.WARNING, logger="harl"):
        res = pretrain(cfg, callbacks=[inject])
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped optimizer step")]
    assert len(skipped) == 2 and "bad step 2 of 2 allowed" in skipped[1]
    for key in inject.at:  # a skipped step leaves the weights exactly as they were
        for name, before in inject.before[key].items():
            assert torch.equal(before, inject.after[key][name]), name
    assert _all_finite(res.model)
    with open(os.path.join(res.run_dir, "metrics.csv")) as f:
        counts = [float(r["guard_skipped_steps"]) for r in csv.DictReader(f) if r.get("guard_skipped_steps")]
    assert counts[-1] == 2.0
    # one more bad step than allowed stops the run
    cfg = scenes_cfg("byol", scenes_root, str(tmp_path / "ck2"), **{**FAST, "guard.max_bad_steps": 1})
    with pytest.raises(NonFiniteTrainingError, match="1 bad step\\(s\\) allowed by guard.max_bad_steps"):
        pretrain(cfg, callbacks=[_InjectInf(at=[(0, 1), (0, 3)])])


def test_nan_learning_rate_stops_after_the_first_update(scenes_root, tmp_path):
    cfg = parse_cfg(scenes_cfg("byol", scenes_root, str(tmp_path / "ck"), **FAST))
    cfg.optimizer.lr = math.nan  # optimizer.lr=nan, after batch scaling
    with pytest.raises(NonFiniteTrainingError) as info:
        pretrain(cfg)
    msg = str(info.value)
    assert msg.startswith("training stopped at optimizer step 1 (epoch 0): the update made weights non-finite (")
    assert "learning rates now: " in msg and "nan" in msg.split("learning rates now: ")[1]


def test_cli_exit_code_2_with_one_line(scenes_root, tmp_path, capsys):
    from harl.cli.pretrain import main

    cfg = scenes_cfg("byol", scenes_root, str(tmp_path / "ck"), **FAST)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main([str(path), "optimizer.lr=1e30"]) == 2  # finite, absurd: the weights blow up
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: training stopped at optimizer step")
    assert "non-finite" in err[-1]
