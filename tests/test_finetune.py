"""Semi-supervised fine-tuning: subset selection, subset lists, the training loop (schedule,
resume), the protocol on a tiny image folder, and fine-tuning beating a frozen probe."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from harl.errors import ConfigError
from harl.data.sources import ArraySource, FolderSource
from harl.eval.finetune import (
    FinetuneModel,
    cosine_lr,
    evaluate_classifier,
    run_finetune,
    subset_label,
    train_classifier,
    validate_finetune_cfg,
)
from harl.eval.subsets import class_balanced_subset, holdout_split, read_subset_list, subset_summary, write_subset_list
from harl.errors import SubsetListError
from harl.eval.linear_config import set_dotted
from tests.test_finetune_fixtures import fake_pretrain_run, write_image_folder


# ---------------------------------------------------------------------------------------------
# subsets
# ---------------------------------------------------------------------------------------------


def _imbalanced_targets():
    rng = np.random.default_rng(0)
    t = np.concatenate([np.full(n, c) for c, n in enumerate([100, 250, 37, 613])])
    return t[rng.permutation(len(t))]


def test_fraction_subset_is_deterministic_and_class_balanced():
    t = _imbalanced_targets()
    a = class_balanced_subset(t, fraction=0.1, seed=3)
    b = class_balanced_subset(t, fraction=0.1, seed=3)
    c = class_balanced_subset(t, fraction=0.1, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len(a) == int(0.1 * len(t)) == len(np.unique(a))
    counts = np.bincount(t[a], minlength=4)
    # each class keeps its share: floor(0.1 * n_c) or one more
    for cnt, n in zip(counts, [100, 250, 37, 613]):
        assert math.floor(0.1 * n) <= cnt <= math.floor(0.1 * n) + 1
    assert class_balanced_subset(t, fraction=1.0).tolist() == list(range(len(t)))


def test_per_class_subset_takes_k_of_every_class_independently_of_other_classes():
    t = _imbalanced_targets()
    a = class_balanced_subset(t, per_class=13, seed=1)
    assert np.bincount(t[a]).tolist() == [13, 13, 13, 13]
    # dropping class 3 from the dataset does not change the picks of the other classes
    keep = np.flatnonzero(t != 3)
    b = keep[class_balanced_subset(t[keep], per_class=13, seed=1)]
    np.testing.assert_array_equal(np.sort(a[t[a] != 3]), b)
    with pytest.warns(UserWarning, match="fewer than 50"):
        s = class_balanced_subset(t, per_class=50, seed=1)
    assert np.bincount(t[s]).tolist() == [50, 50, 37, 50]


def test_subset_argument_errors():
    t = np.array([0, 1, 1])
    with pytest.raises(ValueError, match="exactly one"):
        class_balanced_subset(t)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        class_balanced_subset(t, fraction=1.5)
    with pytest.raises(ValueError, match="no label"):
        class_balanced_subset(np.array([0, -1]), fraction=0.5)


def test_holdout_split_is_stratified_and_keeps_every_class_in_train():
    t = np.array([0] * 13 + [1] * 12 + [2] * 1 + [3] * 2)
    tr, ho = holdout_split(t, 0.2, seed=0)
    assert sorted(np.concatenate([tr, ho]).tolist()) == list(range(len(t)))
    assert len(np.intersect1d(tr, ho)) == 0
    assert np.bincount(t[ho], minlength=4).tolist() == [3, 2, 0, 1]  # round(0.2·n), ≥1, ≤ n−1
    assert set(t[tr]) == {0, 1, 2, 3}
    tr2, ho2 = holdout_split(t, 0.2, seed=0)
    np.testing.assert_array_equal(ho, ho2)


def _folder_source():
    rel = [f"n0{c}/n0{c}_{i}.JPEG" for c in range(3) for i in range(5)]
    return FolderSource("/data/train", rel, [c for c in range(3) for _ in range(5)], ["n00", "n01", "n02"])


def test_subset_list_round_trip_and_simclr_file_names(tmp_path):
    src = _folder_source()
    idx = class_balanced_subset(src.targets, per_class=2, seed=0)
    p = str(tmp_path / "sub.txt")
    write_subset_list(p, src, idx, header="per_class=2 seed=0")
    lines = open(p).read().splitlines()
    assert lines[0].startswith("# ") and all("/" in ln for ln in lines[1:])
    np.testing.assert_array_equal(read_subset_list(p, src), idx)
    # SimCLR's lists hold bare file names, one per line
    simclr = tmp_path / "1percent.txt"
    simclr.write_text("n01_3.JPEG\nn00_0.JPEG\n\nn02_4.JPEG\n")
    assert read_subset_list(str(simclr), src).tolist() == [0, 8, 14]
    # array datasets: indices
    arr = ArraySource("toy", np.zeros((10, 4, 4), np.uint8), np.arange(10) % 2)
    write_subset_list(p, arr, [1, 4, 7])
    assert read_subset_list(p, arr).tolist() == [1, 4, 7]


def test_subset_list_errors_name_the_file_and_lines(tmp_path):
    src = _folder_source()
    p = tmp_path / "bad.txt"
    p.write_text("n00_0.JPEG\nn09_1.JPEG\n")
    with pytest.raises(SubsetListError, match=r"bad\.txt.*1 of 2.*n09_1\.JPEG"):
        read_subset_list(str(p), src)
    p.write_text("n00_0.JPEG\nn00/n00_0.JPEG\n")
    with pytest.raises(SubsetListError, match="more than once"):
        read_subset_list(str(p), src)
    dup = FolderSource("/d", ["a/x.png", "b/x.png"], [0, 1])
    p.write_text("x.png\n")
    with pytest.raises(SubsetListError, match="several folders"):
        read_subset_list(str(p), dup)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_subset_list(str(tmp_path / "missing.txt"), src)
    arr = ArraySource("toy", np.zeros((3, 2, 2), np.uint8), [0, 1, 0])
    p.write_text("0\n7\n")
    with pytest.raises(SubsetListError, match="indices 0..2"):
        read_subset_list(str(p), arr)


def test_subset_label_and_summary():
    assert subset_label({"fraction": 0.01}, 12811, 1281167) == "1%"
    assert subset_label({"fraction": 0.1}, 10, 100) == "10%"
    assert subset_label({"per_class": 13}, 130, 1000) == "13/class"
    assert subset_label({"file": "1percent.txt"}, 12811, 1281167) == "1% (list)"
    assert subset_summary([0, 0, 1, 1, 1], [0, 2, 3]) == {"size": 3, "classes": 2, "min_per_class": 1,
                                                          "max_per_class": 2}


# ---------------------------------------------------------------------------------------------
# training loop
# ---------------------------------------------------------------------------------------------


def test_cosine_lr_values():
    assert cosine_lr(0, 100, 0.1) == pytest.approx(0.1)
    assert cosine_lr(50, 100, 0.1) == pytest.approx(0.05)
    assert cosine_lr(100, 100, 0.1) == pytest.approx(0.0)
    assert cosine_lr(25, 100, 0.1) == pytest.approx(0.05 * (1 + math.cos(math.pi / 4)))
    # warm-up: linear to the base over the first steps, then cosine over the rest
    assert cosine_lr(0, 110, 0.1, warmup_steps=10) == pytest.approx(0.01)
    assert cosine_lr(9, 110, 0.1, warmup_steps=10) == pytest.approx(0.1)
    assert cosine_lr(60, 110, 0.1, warmup_steps=10) == pytest.approx(0.05)


class TinyBackbone(nn.Module):
    """conv 3→16 → BN → ReLU → global average pool; ``num_features`` = 16."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.num_features = 16

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x))).mean((2, 3))


def _colour_set(n: int, seed: int) -> TensorDataset:
    """4 classes told apart by their mean colour (plus noise): linearly separable from colour."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    colours = torch.tensor([[1.0, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1]])
    x = colours[y][:, :, None, None] * 0.5 + 0.5 * torch.randn(n, 3, 12, 12, generator=g)
    return TensorDataset(x, y)


def test_finetuning_beats_the_frozen_linear_probe_on_a_separable_toy_set():
    """A backbone whose features are collapsed (BN scale 0: every image → the same vector): the
    frozen probe can do no better than chance; fine-tuning the whole network must revive the
    features and separate the classes."""
    from harl.eval.features import extract_features
    from harl.eval.transfer import Standardizer, fit_logistic_regression, top1_accuracy

    torch.manual_seed(0)
    bb = TinyBackbone()
    with torch.no_grad():
        bb.bn.weight.zero_()
        bb.bn.bias.fill_(0.5)
    train, test = _colour_set(64, 0), _colour_set(64, 1)
    ftr, ytr = extract_features(bb, train, progress=False, channels_last=False)
    fte, yte = extract_features(bb, test, progress=False, channels_last=False)
    st = Standardizer.fit(ftr)
    probe = fit_logistic_regression(st(ftr), ytr, 4, 1e-3)
    probe_acc = top1_accuracy(probe.decision_function(st(fte)), yte)
    assert probe_acc == pytest.approx(25.0)

    frozen_copy = [p.detach().clone() for p in bb.parameters()]
    model = FinetuneModel(bb, 4)
    hist = train_classifier(model, train, epochs=12, lr=0.1, batch_size=16, progress=False, seed=0)
    assert len(hist) == 12 and hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert any(not torch.equal(a, b) for a, b in zip(frozen_copy, bb.parameters()))  # the backbone moved
    ev = evaluate_classifier(model, test)
    assert ev["n"] == 64
    assert ev["top1"] >= probe_acc + 50.0


def test_training_resumes_to_the_same_weights_as_an_uninterrupted_run(tmp_path):
    data = _colour_set(40, 2)

    def make():
        torch.manual_seed(1)
        return FinetuneModel(TinyBackbone(), 4)

    ref = make()
    h_ref = train_classifier(ref, data, epochs=3, lr=0.05, batch_size=8, seed=7, progress=False)

    class Stop(Exception):
        pass

    def stop_after_first(row):
        if row["epoch"] == 0:
            raise Stop

    state = str(tmp_path / "state.pt")
    m = make()
    with pytest.raises(Stop):
        train_classifier(m, data, epochs=3, lr=0.05, batch_size=8, seed=7, progress=False, state_path=state,
                         on_epoch_end=stop_after_first)
    assert os.path.isfile(state) and not [f for f in os.listdir(tmp_path) if ".tmp" in f]
    m2 = make()  # a fresh process: fresh model, state from disk
    h = train_classifier(m2, data, epochs=3, lr=0.05, batch_size=8, seed=7, progress=False, state_path=state)
    assert [r["epoch"] for r in h] == [0, 1, 2]
    for a, b in zip(ref.state_dict().values(), m2.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert h[-1]["train_loss"] == pytest.approx(h_ref[-1]["train_loss"])


def test_nesterov_sgd_without_weight_decay_by_default():
    torch.manual_seed(0)
    m = FinetuneModel(TinyBackbone(), 4)
    seen = {}
    orig = torch.optim.SGD.__init__

    def spy(self, params, **kw):
        seen.update(kw)
        orig(self, params, **kw)

    torch.optim.SGD.__init__ = spy
    try:
        train_classifier(m, _colour_set(8, 0), epochs=1, lr=0.01, batch_size=8, progress=False)
    finally:
        torch.optim.SGD.__init__ = orig
    assert seen["nesterov"] is True and seen["momentum"] == 0.9 and seen["weight_decay"] == 0.0


# ---------------------------------------------------------------------------------------------
# config and the protocol end to end
# ---------------------------------------------------------------------------------------------


def _cfg(ckpt, data, **over):
    cfg = {
        "name": "ft-test",
        "pretrained_feature_extractor": ckpt,
        "data": {"dataset": "custom", "train_path": os.path.join(data, "train"),
                 "val_path": os.path.join(data, "val"), "num_workers": 0, "augmentations": {"crop_size": 32}},
        "subset": {"per_class": 4, "seed": 0},
        "search": {"lr": [0.01, 0.05], "holdout_fraction": 0.25},
        "optimizer": {"batch_size": 8},
        "max_epochs": 2,
        "accelerator": "cpu",
        "progress": False,
        "channels_last": False,
    }
    for k, v in over.items():
        set_dotted(cfg, k, v)
    return cfg


def test_config_errors_name_the_key(tmp_path):
    run, ckpt = fake_pretrain_run(str(tmp_path))
    with pytest.raises(ConfigError, match="pretrained_feature_extractor"):
        validate_finetune_cfg(_cfg(None, "/x"))
    with pytest.raises(ConfigError, match="does not exist"):
        validate_finetune_cfg(_cfg(str(tmp_path / "nope.ckpt"), "/x"))
    with pytest.raises(ConfigError, match="exactly one of 'subset.fraction'"):
        validate_finetune_cfg(_cfg(ckpt, "/x", **{"subset.fraction": 0.1}))
    with pytest.raises(ConfigError, match=r"unknown config key 'optimizer.lrr' \(did you mean 'lr'\?\)"):
        validate_finetune_cfg(_cfg(ckpt, "/x", **{"optimizer.lrr": 0.1}))
    with pytest.raises(ConfigError, match="search.lr"):
        validate_finetune_cfg(_cfg(ckpt, "/x", **{"search.lr": []}))
    # a list file replaces the launch config's fraction
    lst = tmp_path / "list.txt"
    lst.write_text("a.png\n")
    cfg = validate_finetune_cfg(_cfg(ckpt, "/x", **{"subset.per_class": None, "subset.fraction": 0.01,
                                                     "subset.file": str(lst)}))
    assert cfg.subset.fraction is None and cfg.subset.file == str(lst)


def test_run_finetune_end_to_end_writes_lists_results_and_resumes(tmp_path):
    data = write_image_folder(str(tmp_path / "data"), n_train=10, n_val=4)
    run, ckpt = fake_pretrain_run(str(tmp_path), seed=11)
    out = str(tmp_path / "ft")
    res = run_finetune(_cfg(ckpt, data, **{"checkpoint.run_dir": out}))
    assert res["mode"] == "finetune" and res["method"] == "byol" and res["seed"] == 11
    assert res["subset_label"] == "4/class" and res["subset"]["size"] == 12
    assert [r["lr"] for r in res["search"]] == [0.01, 0.05] and res["lr"] in (0.01, 0.05)
    assert res["lr_source"] == "search" and 0.0 <= res["top1"] <= 100.0 and res["num_val"] == 12
    on_disk = json.load(open(os.path.join(out, "results.json")))
    assert on_disk["top1"] == res["top1"]
    # subset lists: relative paths; the search split partitions the subset
    sub = [ln for ln in open(os.path.join(out, "subset_train.txt")).read().splitlines() if not ln.startswith("#")]
    tr = [ln for ln in open(os.path.join(out, "subset_search_train.txt")).read().splitlines() if not ln.startswith("#")]
    ho = [ln for ln in open(os.path.join(out, "subset_holdout.txt")).read().splitlines() if not ln.startswith("#")]
    assert len(sub) == 12 and sorted(tr + ho) == sorted(sub) and len(ho) == 3
    assert all(ln.startswith(("c0/", "c1/", "c2/")) for ln in sub)
    # the saved list reproduces the run: feeding it back gives the same subset
    res_list = run_finetune(_cfg(ckpt, data, **{"subset.per_class": None, "subset.file": os.path.join(out, "subset_train.txt"),
                                                "optimizer.lr": 0.05, "max_epochs": 1,
                                                "checkpoint.run_dir": str(tmp_path / "ft_list")}))
    sub2 = [ln for ln in open(tmp_path / "ft_list" / "subset_train.txt").read().splitlines() if not ln.startswith("#")]
    assert sub2 == sub and res_list["lr_source"] == "given" and res_list["search"] == []
    # finetuned.pth loads back strictly with harl's loader (architecture from the run's args.json)
    from harl.eval.pretrained import load_pretrained_backbone

    bb, info = load_pretrained_backbone(os.path.join(out, "finetuned.pth"))
    assert info["arch_source"] == "run_config" and info["backbone_kwargs"]["width"] == 8
    # running again finds every stage finished: same numbers, nothing retrained
    mtime = os.path.getmtime(os.path.join(out, "finetuned.pth"))
    again = run_finetune(_cfg(ckpt, data, **{"checkpoint.run_dir": out}))
    assert again["top1"] == res["top1"] and again["search"] == res["search"]
    assert os.path.getmtime(os.path.join(out, "finetuned.pth")) == mtime


def test_finetune_cli_accepts_checkpoint_names_with_equals_signs(tmp_path, capsys):
    from harl.cli.finetune import main

    data = write_image_folder(str(tmp_path / "data"), n_train=6, n_val=2)
    run, ckpt = fake_pretrain_run(str(tmp_path))
    assert "ep=" in ckpt
    cfg = tmp_path / "ft.yaml"
    cfg.write_text("name: cli\ndata:\n  dataset: custom\n  num_workers: 0\n  augmentations:\n    crop_size: 32\n"
                   "subset:\n  per_class: 2\noptimizer:\n  batch_size: 4\n  lr: 0.01\nmax_epochs: 1\n"
                   "accelerator: cpu\nprogress: false\npretrained_feature_extractor: null\n"
                   "checkpoint:\n  run_dir: null\n")
    rc = main([str(cfg), f"pretrained_feature_extractor={ckpt}", f"data.train_path={data}/train",
               f"data.val_path={data}/val", f"checkpoint.run_dir={tmp_path}/out"])
    assert rc == 0, capsys.readouterr().err
    assert "val top-1" in capsys.readouterr().out
    assert os.path.isfile(tmp_path / "out" / "results.json")
    rc = main([str(cfg), "subset.per_clas=3"])
    assert rc == 2 and "per_clas" in capsys.readouterr().err


def test_val_classes_must_match_train_classes(tmp_path):
    data = write_image_folder(str(tmp_path / "data"), n_train=4, n_val=1)
    _, ckpt = fake_pretrain_run(str(tmp_path))
    os.rename(os.path.join(data, "val", "c1"), os.path.join(data, "val", "c7"))
    with pytest.raises(ConfigError, match=r"only in train \['c1'\], only in val \['c7'\]"):
        run_finetune(_cfg(ckpt, data, **{"checkpoint.run_dir": str(tmp_path / "out")}))
