"""harl-report: discovery of runs and results, the method table (mean ± std over seeds, the
random-init baseline row), and the figures rendered from fixture logs (opened and measured)."""

from __future__ import annotations

import json
import math
import os
import time

import pytest
from PIL import Image

from harl.report import make_report
from harl.report.collect import PretrainRun, discover, read_metrics_csv
from harl.report.figures import view_grid_size
from harl.report.summary import Cell, markdown_table, method_table
from tests.test_finetune_fixtures import fake_pretrain_run, write_image_folder, write_metrics_csv


def _dump(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


@pytest.fixture(scope="module")
def fixture_runs(tmp_path_factory):
    """byol seeds 1 and 2, harl seed 1 (with masks), and evaluation results of every kind in the
    layouts harl-linear / harl-finetune / harl-transfer write."""
    root = str(tmp_path_factory.mktemp("runs"))
    data = write_image_folder(os.path.join(root, "data"), n_train=3, n_val=1, masks=True)
    tm = os.path.join(root, "trained_models")
    b1, c1 = fake_pretrain_run(root, "byol", seed=1)
    b2, c2 = fake_pretrain_run(root, "byol", seed=2)
    h1, ch = fake_pretrain_run(root, "harl", seed=1, train_path=os.path.join(data, "train"),
                               masks_root=os.path.join(data, "masks", "train"))
    write_metrics_csv(b1, "train_neg_cos_sim", [-0.2, -0.5, -0.7], [20.0, 30.0, 40.0], [25.0, 35.0, 45.0])
    write_metrics_csv(b2, "train_neg_cos_sim", [-0.3, -0.6, -0.8], [22.0, 32.0, 44.0], [24.0, 36.0, 47.0])
    write_metrics_csv(h1, "train_harl_loss", [3.0, 2.0, 1.5], [25.0, 35.0, 50.0], [30.0, 40.0, 52.0])
    # harl-linear results (pretrained info block, random-init baseline beside)
    for ver, ckpt, top1, base in (("offline-l1", c1, 60.0, 20.0), ("offline-l2", c2, 64.0, 22.0),
                                  ("offline-l3", ch, 70.0, None)):
        _dump(os.path.join(tm, "linear", ver, "results.json"),
              {"mode": "linear", "protocol": "augmented", "top1": top1, "top5": top1 + 20,
               "pretrained": {"path": ckpt, "method": "ignored-when-args-json-exists"},
               "random_init_baseline": None if base is None else {"top1": base, "top5": base + 10},
               "config": {"seed": 99}})
    _dump(os.path.join(tm, "knn", "offline-k1", "results.json"),
          {"mode": "knn", "top1": 41.0, "top5": 70.0, "pretrained": {"path": ch}})
    _dump(os.path.join(tm, "dense", "offline-d1", "results.json"),
          {"mode": "dense", "miou": 33.3, "iou_fg": 40.0, "pretrained": {"path": ch}})
    # harl-finetune / harl-transfer results
    for name, ckpt, top1 in (("ft-a", c1, 50.0), ("ft-b", c2, 54.0)):
        _dump(os.path.join(tm, "finetune", name, "results.json"),
              {"mode": "finetune", "protocol": "semi_supervised", "subset_label": "10%", "top1": top1,
               "top5": 90.0, "pretrained": ckpt, "method": "byol", "seed": 0})
    _dump(os.path.join(tm, "finetune", "ft-c", "results.json"),
          {"mode": "finetune", "protocol": "semi_supervised", "subset_label": "1%", "top1": 30.0,
           "pretrained": ch, "method": "harl"})
    _dump(os.path.join(tm, "transfer", "toy-1", "results.json"),
          {"mode": "transfer_linear", "dataset": "toy", "top1": 80.0, "mean_per_class": 79.0, "pretrained": ch})
    # things the reader must survive
    os.makedirs(os.path.join(tm, "junk"), exist_ok=True)
    with open(os.path.join(tm, "junk", "broken.json"), "w") as f:
        f.write("{not json")
    _dump(os.path.join(tm, "junk", "other.json"), {"hello": 1})
    return {"root": root, "tm": tm, "byol": (b1, b2), "harl": h1, "data": data}


def test_discover_reads_runs_results_and_links_them(fixture_runs):
    runs, results, notes = discover([fixture_runs["tm"]])
    assert sorted((r.method, r.seed) for r in runs) == [("byol", 1), ("byol", 2), ("harl", 1)]
    assert any("broken.json" in n for n in notes)
    linear = sorted((r.method, r.seed, r.value) for r in results if r.column == "linear top-1")
    assert linear == [("byol", 1, 60.0), ("byol", 2, 64.0), ("harl", 1, 70.0),
                      ("random init", 1, 20.0), ("random init", 2, 22.0)]
    semi = sorted((r.method, r.seed, r.column, r.value) for r in results if r.column.startswith("semi"))
    # method and seed come from the pretraining run's args.json, not from the results file
    assert semi == [("byol", 1, "semi-sup 10% top-1", 50.0), ("byol", 2, "semi-sup 10% top-1", 54.0),
                    ("harl", 1, "semi-sup 1% top-1", 30.0)]
    cols = {r.column for r in results}
    assert {"kNN top-1", "dense mIoU", "transfer toy top-1"} <= cols
    harl = [r for r in runs if r.method == "harl"][0]
    assert harl.masks_enabled and harl.epochs_done == 3
    assert harl.epoch_series("val_acc1") == [(0.0, 25.0), (1.0, 35.0), (2.0, 50.0)]


def test_epoch_series_falls_back_to_step_means(tmp_path):
    p = tmp_path / "metrics.csv"
    p.write_text("epoch,step,train_nce_loss_step,val_acc1\n0,0,4.0,\n0,1,2.0,\n0,1,,10\n1,2,1.0,\n1,3,0.5,\n")
    run = PretrainRun(str(tmp_path), {"method": "simclr"}, read_metrics_csv(str(p)))
    assert run.epoch_series("train_nce_loss") == [(0.0, 3.0), (1.0, 0.75)]
    assert run.last("val_acc1") == 10.0 and run.last("val_knn_acc1") is None


def test_method_table_mean_std_over_seeds_and_baseline_row(fixture_runs):
    runs, results, _ = discover([fixture_runs["tm"]])
    cols, rows = method_table(runs, results)
    assert cols == ["online linear", "online kNN", "linear top-1", "kNN top-1", "semi-sup 1% top-1",
                    "semi-sup 10% top-1", "transfer toy top-1", "dense mIoU"]
    labels = [r[0] for r in rows]
    assert labels == ["byol", "harl", "random init (baseline)"]
    byol = dict((r[0], r) for r in rows)["byol"]
    assert byol[1] == 2
    lin = byol[2]["linear top-1"]
    assert lin.mean == pytest.approx(62.0) and lin.std == pytest.approx(math.sqrt(8.0))  # sample std of 60, 64
    assert lin.text() == "62.0 ± 2.8"
    assert byol[2]["online linear"].text() == "42.0 ± 2.8"  # last val_acc1: 40, 44
    harl = dict((r[0], r) for r in rows)["harl"]
    assert harl[2]["linear top-1"].text() == "70.0"  # one seed: no std
    assert dict((r[0], r) for r in rows)["random init (baseline)"][2]["linear top-1"].text() == "21.0 ± 1.4"


def test_newest_result_wins_for_a_repeated_seed(fixture_runs, tmp_path):
    """byol seed 1 evaluated again later (61.0 instead of 60.0): the newer file counts, once."""
    run = fixture_runs["byol"][0]
    ckpt = [f for f in os.listdir(run) if f.endswith(".ckpt")][0]
    newer = tmp_path / "rerun" / "results.json"
    _dump(str(newer), {"mode": "linear", "top1": 61.0, "pretrained": {"path": os.path.join(run, ckpt)}})
    t = time.time() + 10
    os.utime(newer, (t, t))
    runs, results, _ = discover([fixture_runs["tm"], str(newer)])
    _, rows = method_table(runs, results)
    cell = dict((r[0], r) for r in rows)["byol"][2]["linear top-1"]
    assert sorted(cell.values) == [61.0, 64.0]


def test_markdown_table_is_aligned():
    t = markdown_table(["a", "value"], [["long name", "1.0"], ["b", "10.5 ± 0.3"]])
    lines = t.splitlines()
    assert len({len(ln) for ln in lines}) == 1
    assert lines[1].startswith("|:") and lines[1].endswith(":|")
    assert Cell([1.0, 2.0, 3.0]).text(2) == "2.00 ± 1.00"


def test_report_renders_markdown_and_pngs_of_the_expected_size(fixture_runs, tmp_path):
    out = str(tmp_path / "report")
    rep = make_report([fixture_runs["tm"]], out, n_images=3)
    md = open(rep.markdown).read()
    assert "| byol " in md and "62.0 ± 2.8" in md and "random init (baseline)" in md
    assert "![training curves](curves.png)" in md and "![example views](views.png)" in md
    assert "semi-sup 10% top-1" in md and "dense mIoU" in md and "broken.json" in md
    sizes = {os.path.basename(p): Image.open(p).size for p in rep.figures}
    assert sizes == {"curves.png": (1500, 420), "methods.png": (1200, 480), "views.png": view_grid_size(3, 2)}
    assert view_grid_size(3, 2) == (600, 600)
    for p in rep.figures:
        im = Image.open(p).convert("RGB")
        extrema = im.getextrema()
        assert any(lo < hi for lo, hi in extrema)  # not a blank canvas
    # the views panel shows the masks: their yellow outline (the fixture images hold no yellow)
    views = Image.open(os.path.join(out, "views.png")).convert("RGB")
    assert sum(1 for r, g, b in views.getdata() if r > 200 and g > 200 and b < 80) > 50
    assert not [f for f in os.listdir(out) if ".tmp" in f]


def test_report_without_the_images_still_renders_and_says_why(fixture_runs, tmp_path):
    # a copy of the harl run whose data path no longer exists
    import shutil

    moved = tmp_path / "runs" / "harl" / "offline-moved"
    shutil.copytree(fixture_runs["harl"], moved)
    args = json.load(open(moved / "args.json"))
    args["data"]["train_path"] = str(tmp_path / "gone")
    json.dump(args, open(moved / "args.json", "w"))
    rep = make_report([str(tmp_path / "runs")], str(tmp_path / "r1"))
    md = open(rep.markdown).read()
    assert "views of" in md and "gone" in md and "--data-path" in md
    assert sorted(os.path.basename(p) for p in rep.figures) == ["curves.png", "methods.png"]
    rep = make_report([str(tmp_path / "runs")], str(tmp_path / "r2"),
                      data_path=os.path.join(fixture_runs["data"], "train"), n_images=2)
    assert "views.png" in [os.path.basename(p) for p in rep.figures]


def test_report_cli_and_errors(fixture_runs, tmp_path, capsys):
    from harl.cli.report import main

    rc = main([fixture_runs["tm"], "--out", str(tmp_path / "r"), "--no-views"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "report.md" in out and "curves.png" in out and "views.png" not in out
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "--out", str(tmp_path / "r3")]) == 2
    assert "no pretraining run" in capsys.readouterr().err


def test_random_init_probes_of_one_seed_are_one_sample(tmp_path):
    """A random-init backbone probed twice (linear and kNN, as the quickstart does) is one seed, and
    a second init seed makes a second sample."""
    for i, (mode, top1, seed) in enumerate([("linear", 18.0, 0), ("knn", 15.0, 0), ("linear", 20.0, 1)]):
        _dump(str(tmp_path / f"r{i}" / "results.json"),
              {"mode": mode, "top1": top1, "pretrained": {"random_init": True}, "config": {"seed": seed}})
    runs, results, _ = discover([str(tmp_path)])
    _, rows = method_table(runs, results)
    label, n_seeds, cells = rows[0]
    assert label == "random init (baseline)" and n_seeds == 2
    assert cells["linear top-1"].text() == "19.0 ± 1.4" and cells["kNN top-1"].text() == "15.0"
