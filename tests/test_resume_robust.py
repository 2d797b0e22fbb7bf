"""Resume that survives: torn and truncated checkpoints, two runs, age limit, stale temporary files,
read-back before the previous checkpoint is deleted. Run folders are built by hand (no training)
except for one end-to-end case."""

from __future__ import annotations

import glob
import json
import logging
import os
import time
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from harl.checkpoint import Checkpointer, checkpoint_problem, choose_resume, find_resumable, remove_stale_tmp
from harl.errors import CheckpointWriteError
from harl.config import parse_cfg
from harl.errors import ConfigError
from tests.conftest import scenes_cfg


def _cfg(tmp_path, **over):
    raw = scenes_cfg("byol", "/nonexistent-data", str(tmp_path / "ck"), **{"auto_resume.enabled": True, **over})
    raw["data"]["dataset"] = "cifar10"
    return parse_cfg(raw)


def _run(cfg, version, epochs, args_cfg=None, age_h=0.0):
    """A run folder with args.json and one small, complete checkpoint per epoch in ``epochs``."""
    run_dir = os.path.join(str(cfg.checkpoint.dir), cfg.method, version)
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "args.json"), "w") as f:
        json.dump(OmegaConf.to_container(args_cfg or cfg, resolve=True), f)
    paths = []
    for e in epochs:
        p = os.path.join(run_dir, f"{cfg.name}-{version}-ep={e}.ckpt")
        torch.save({"epoch": e, "state_dict": {"w": torch.randn(64, 64) + e}}, p)
        t = time.time() - age_h * 3600 - (len(epochs) - e)  # later epochs are newer
        os.utime(p, (t, t))
        paths.append(p)
    return run_dir, paths


def _tear(path):
    """Zero bytes inside the archive (what a power loss before fsync can leave): same size, bad data."""
    data = bytearray(open(path, "rb").read())
    mid = len(data) // 2
    data[mid:mid + 256] = bytes(256)
    open(path, "wb").write(bytes(data))


def _truncate(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 3])


def test_checkpoint_problem_detects_torn_truncated_and_empty_files(tmp_path):
    p = str(tmp_path / "a.ckpt")
    torch.save({"w": torch.randn(128, 64)}, p)
    assert checkpoint_problem(p) is None
    _tear(p)
    torch.load(p, weights_only=True)  # torch itself does not notice ...
    assert "CRC mismatch" in checkpoint_problem(p)  # ... the record checksums do
    torch.save({"w": torch.randn(128, 64)}, p)
    _truncate(p)
    assert "truncated" in checkpoint_problem(p)
    open(p, "wb").close()
    assert checkpoint_problem(p) == "empty file"
    assert "unreadable" in checkpoint_problem(str(tmp_path / "missing.ckpt"))


@pytest.mark.parametrize("damage", [_tear, _truncate])
def test_auto_resume_falls_back_past_a_damaged_newest_checkpoint(tmp_path, damage):
    cfg = _cfg(tmp_path)
    run_dir, paths = _run(cfg, "offline-aaaa", [0, 1, 2])
    damage(paths[2])
    choice = choose_resume(cfg)
    assert choice.ckpt == paths[1] and choice.run_dir == run_dir
    assert [p for p, _ in choice.torn] == [paths[2]]
    assert f"skipped torn checkpoint '{paths[2]}'" in choice.message and "2 of 2 epochs done" in choice.message
    assert os.path.exists(paths[2] + ".torn") and not os.path.exists(paths[2])  # kept, never picked again
    assert find_resumable(cfg) == (paths[1], run_dir)
    assert choose_resume(cfg).torn == []


def test_only_checkpoint_torn_starts_a_new_run_and_says_so(tmp_path):
    cfg = _cfg(tmp_path)
    _, paths = _run(cfg, "offline-aaaa", [0])
    _tear(paths[0])
    choice = choose_resume(cfg)
    assert choice.ckpt is None
    assert choice.message.startswith("auto-resume: starting a new run: no usable checkpoint")
    assert "skipped torn checkpoint" in choice.message


def test_two_runs_the_one_furthest_along_wins(tmp_path):
    cfg = _cfg(tmp_path, max_epochs=5)
    far_dir, far = _run(cfg, "offline-far", [3], age_h=2.0)  # older file, further along
    near_dir, near = _run(cfg, "offline-near", [1])  # newest file
    choice = choose_resume(cfg)
    assert choice.ckpt == far[0] and choice.run_dir == far_dir
    assert "furthest along of 2 runs with this config (others: 'offline-near' at epoch 1)" in choice.message
    assert "4 of 5 epochs done" in choice.message
    # a tie in epochs: the newest file wins, and the line says so
    _run(cfg, "offline-tie", [3])
    choice = choose_resume(cfg)
    assert os.path.basename(choice.run_dir) == "offline-tie"
    assert "newest of 3 runs with this config at epoch 3" in choice.message


def test_age_limit_is_an_option_and_is_reported(tmp_path, caplog):
    cfg = _cfg(tmp_path)
    run_dir, paths = _run(cfg, "offline-old", [0], age_h=40.0)
    choice = choose_resume(cfg)  # default max_hours: 36
    assert choice.ckpt is None
    assert f"ignored run '{run_dir}': its newest checkpoint is 40.0 h old > auto_resume.max_hours=36" in choice.message
    assert "auto_resume.max_hours=null" in choice.message
    for hours in (None, 0, 48):
        cfg.auto_resume.max_hours = hours
        assert choose_resume(cfg).ckpt == paths[0]


def test_runs_with_other_settings_are_named_with_the_differing_key(tmp_path):
    cfg = _cfg(tmp_path)
    other = _cfg(tmp_path, **{"optimizer.lr": 0.5})
    _run(cfg, "offline-other", [0], args_cfg=other)
    choice = choose_resume(cfg)
    assert choice.ckpt is None
    assert "none of the 1 run(s)" in choice.message and "'offline-other' differs in optimizer.lr" in choice.message


def test_stale_tmp_files_are_removed_and_a_complete_one_is_finished(tmp_path):
    cfg = _cfg(tmp_path)
    run_dir, paths = _run(cfg, "offline-aaaa", [0])
    # a complete write of epoch 1 killed before its rename: reused
    done_tmp = os.path.join(run_dir, f"{cfg.name}-offline-aaaa-ep=1.ckpt.tmp")
    torch.save({"epoch": 1, "state_dict": {"w": torch.ones(8)}}, done_tmp)
    choice = choose_resume(cfg)
    assert choice.ckpt == done_tmp[:-4] and not os.path.exists(done_tmp)
    assert "finished interrupted checkpoint write(s)" in choice.message
    # an incomplete write (and an atomic-write leftover): removed when the run starts again
    half = os.path.join(run_dir, f"{cfg.name}-offline-aaaa-ep=2.ckpt.tmp")
    with open(half, "wb") as f:
        f.write(b"PK\x03\x04 half")
    leftover = os.path.join(run_dir, "args.json.tmp-123-abcdef")
    open(leftover, "w").close()
    assert choose_resume(cfg).ckpt == done_tmp[:-4]  # the half file is never a candidate
    assert sorted(remove_stale_tmp(run_dir)) == sorted([half, leftover])
    assert sorted(os.listdir(run_dir)) == sorted(["args.json", os.path.basename(paths[0]),
                                                  os.path.basename(done_tmp[:-4])])


class _FakeTrainer:
    is_global_zero = True

    def __init__(self, epoch):
        self.current_epoch = epoch
        self.strategy = SimpleNamespace(barrier=lambda name=None: None)
        self.saved = []

    def save_checkpoint(self, path, weights_only=False):
        torch.save({"epoch": self.current_epoch, "w": torch.randn(32, 32)}, path)
        self.saved.append(path)


def test_previous_checkpoint_is_kept_until_the_new_one_reads_back(tmp_path, monkeypatch):
    import harl.checkpoint as ck

    cfg = OmegaConf.create({"name": "t"})
    cp = Checkpointer(cfg, str(tmp_path), "v1")
    cp.save(_FakeTrainer(0))
    first = cp.last_ckpt
    assert checkpoint_problem(first) is None and not glob.glob(str(tmp_path / "*.tmp"))
    synced = []
    real_fsync = ck.fsync_path
    monkeypatch.setattr(ck, "fsync_path", lambda p: (synced.append(p), real_fsync(p)))
    monkeypatch.setattr(ck, "checkpoint_problem", lambda p: "corrupt bytes in record 'x' (CRC mismatch)")
    with pytest.raises(CheckpointWriteError, match="does not read back.*previous checkpoint .*ep=0.ckpt' is kept"):
        cp.save(_FakeTrainer(1))
    assert os.path.exists(first)  # the previous one survives a bad write
    assert synced[0].endswith("ep=1.ckpt.tmp") and synced[1] == str(tmp_path)  # file, then folder
    monkeypatch.setattr(ck, "checkpoint_problem", lambda p: None)
    cp.save(_FakeTrainer(2))
    assert [os.path.basename(p) for p in ck.list_checkpoints(str(tmp_path))] == ["t-v1-ep=2.ckpt"]


def test_torn_resume_from_checkpoint_is_a_clear_error(tmp_path):
    from harl.train import pretrain

    p = str(tmp_path / "x-ep=0.ckpt")
    torch.save({"w": torch.randn(64, 64)}, p)
    _truncate(p)
    cfg = scenes_cfg("byol", "/nonexistent-data", str(tmp_path / "ck"), resume_from_checkpoint=p)
    cfg["data"]["dataset"] = "cifar10"
    with pytest.raises(ConfigError, match="is not a complete checkpoint \\(truncated"):
        pretrain(cfg)


@pytest.mark.slow
def test_end_to_end_torn_checkpoint_and_stale_tmp(scenes_root, tmp_path, caplog):
    """Two epochs with keep_prev; the newest checkpoint is torn and a partial write is left behind:
    the next start resumes from epoch 0, names the torn file, removes the partial one and ends with
    a complete checkpoint of epoch 1."""
    from harl.train import pretrain

    over = {"max_epochs": 2, "auto_resume.enabled": True, "checkpoint.keep_prev": True}
    cfg = scenes_cfg("byol", scenes_root, str(tmp_path / "ck"), **over)
    cfg["checkpoint"]["keep_prev"] = True
    first = pretrain(cfg)
    ckpts = sorted(glob.glob(os.path.join(first.run_dir, "*.ckpt")))
    assert len(ckpts) == 2
    _tear(ckpts[1])
    stale = ckpts[1].replace("ep=1", "ep=7") + ".tmp"
    with open(stale, "wb") as f:
        f.write(b"PK\x03\x04 interrupted")
    cfg["checkpoint"]["keep_prev"] = False
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="harl"):
        res = pretrain(cfg)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("auto-resume")]
    assert len(lines) == 1 and f"from '{os.path.basename(ckpts[0])}'" in lines[0]
    assert f"skipped torn checkpoint '{ckpts[1]}'" in lines[0]
    assert res.run_dir == first.run_dir and res.trainer.global_step == first.trainer.global_step
    assert not os.path.exists(stale) and os.path.exists(ckpts[1] + ".torn")
    assert any("interrupted write" in r.getMessage() for r in caplog.records)
    assert sorted(glob.glob(os.path.join(res.run_dir, "*.ckpt"))) == [ckpts[1]]
    assert checkpoint_problem(ckpts[1]) is None
