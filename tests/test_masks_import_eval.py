"""``harl-masks import`` (foreign formats, thresholds, missing/mis-sized masks) and ``eval`` metrics."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from harl.masks.evaluate import compare_one, evaluate_trees
from harl.masks.importer import ImportJob
from harl.masks.io import list_files, read_mask, read_mask_values
from harl.masks.ops import confusion_counts, metrics_from_counts
from harl.masks.runner import RunOptions, read_manifest, run_job

H, W = 12, 16


def _img(path, h=H, w=W):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(path)


@pytest.fixture
def trees(tmp_path):
    """Images and foreign masks; ``expected[rel]`` is the mask expected with threshold 0 / 100."""
    images, src = tmp_path / "images", tmp_path / "src"
    expected0, expected100 = {}, {}
    yy, xx = np.mgrid[0:H, 0:W]
    ramp = (xx * 16 + yy).astype(np.float64)            # 0 … 251 over the image

    # 1. PNG with values {0, 1}
    m = (xx < 5).astype(np.uint8)
    _img(str(images / "a" / "01.jpg"))
    os.makedirs(src / "a", exist_ok=True)
    Image.fromarray(m).save(src / "a" / "01.png")
    expected0["a/01.jpg"] = m > 0
    expected100["a/01.jpg"] = np.zeros((H, W), bool)
    # 2. 8-bit soft saliency map (0–251)
    _img(str(images / "a" / "02.JPEG"))
    Image.fromarray(ramp.astype(np.uint8)).save(src / "a" / "02.png")
    expected0["a/02.JPEG"] = ramp > 0
    expected100["a/02.JPEG"] = ramp > 100
    # 3. 16-bit PNG (values ×200)
    _img(str(images / "a" / "03.png"))
    Image.fromarray((ramp * 200).astype(np.uint16)).save(src / "a" / "03.png")
    expected0["a/03.png"] = ramp > 0
    expected100["a/03.png"] = ramp * 200 > 100
    # 4. float .npy in [0, 1]
    _img(str(images / "b" / "04.jpg"))
    os.makedirs(src / "b", exist_ok=True)
    np.save(src / "b" / "04.npy", ramp / 251.0)
    expected0["b/04.jpg"] = ramp > 0
    expected100["b/04.jpg"] = np.zeros((H, W), bool)
    # 5. palette PNG: indices {0, 2}, palette colour of index 2 = black (index, not colour, counts)
    _img(str(images / "b" / "05.jpg"))
    p = Image.fromarray(np.where(yy > 6, 2, 0).astype(np.uint8), mode="P")
    p.putpalette([0, 0, 0, 255, 255, 255, 0, 0, 0] + [0] * (256 * 3 - 9))
    p.save(src / "b" / "05.png")
    expected0["b/05.jpg"] = yy > 6
    expected100["b/05.jpg"] = np.zeros((H, W), bool)
    # 6. RGB mask: fg where any colour channel > threshold
    _img(str(images / "b" / "06.jpg"))
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:4, :, 2] = 200
    rgb[4:6, :, 0] = 50
    Image.fromarray(rgb).save(src / "b" / "06.bmp")
    expected0["b/06.jpg"] = (yy < 6)
    expected100["b/06.jpg"] = (yy < 4)
    # 7. half-size mask → resized with nearest
    _img(str(images / "c" / "07.jpg"))
    os.makedirs(src / "c", exist_ok=True)
    small = np.zeros((H // 2, W // 2), np.uint8)
    small[1:3, 2:6] = 255
    Image.fromarray(small).save(src / "c" / "07.png")
    big = np.kron(small, np.ones((2, 2), np.uint8)) > 0
    expected0["c/07.jpg"] = big
    expected100["c/07.jpg"] = big
    # 8. no mask at all
    _img(str(images / "c" / "08.jpg"))
    return str(images), str(src), expected0, expected100


@pytest.mark.parametrize("threshold", [0.0, 100.0])
def test_import(trees, tmp_path, threshold):
    images, src, exp0, exp100 = trees
    expected = exp0 if threshold == 0 else exp100
    out = str(tmp_path / f"out{int(threshold)}")
    job = ImportJob(images, src, threshold)
    s = run_job(job, list_files(images), out, RunOptions(progress=False), meta=job.describe())
    assert [r for r, _ in s.failures] == ["c/08.jpg"] and "no mask" in s.failures[0][1]
    assert s.done == 7
    rows = {r["relpath"]: r for r in read_manifest(os.path.join(out, "manifest.csv"))}
    for rel, exp in expected.items():
        got = read_mask(os.path.join(out, os.path.splitext(rel)[0] + ".png"))
        np.testing.assert_array_equal(got, exp, err_msg=rel)
        assert rows[rel]["fg_fraction"] == pytest.approx(exp.mean(), abs=1e-6)
        assert rows[rel]["fallback"] == ("resized" if rel == "c/07.jpg" else "")
    assert rows["c/07.jpg"]["n_segments"] == 1
    assert json.load(open(os.path.join(out, "meta.json")))["params"]["threshold"] == threshold


def test_import_cli(trees, tmp_path, capsys):
    from harl.cli.masks import main

    images, src, _, _ = trees
    out = str(tmp_path / "cli")
    assert main(["import", "--images", images, "--masks", src, "--out", out, "--no-progress"]) == 0
    assert "resized" in capsys.readouterr().err
    assert main(["import", "--images", images, "--masks", src, "--out", out, "--no-progress", "--strict"]) == 1
    assert main(["import", "--images", images, "--masks", str(tmp_path / "none"), "--out", out]) == 2


def test_mask_reader_agrees_with_the_data_pipeline(trees):
    from harl.data.image_io import read_mask as data_read_mask

    _, src, _, _ = trees
    for rel in list_files(src, (".png", ".bmp")):
        path = os.path.join(src, rel)
        np.testing.assert_array_equal(read_mask_values(path) > 0, data_read_mask(path) > 0, err_msg=rel)


# --------------------------------------------------------------------------------------------- eval


def test_metrics_by_hand():
    pred = np.array([[1, 1, 0, 0],
                     [1, 1, 0, 0],
                     [0, 0, 0, 0]], bool)
    gt = np.array([[0, 1, 1, 0],
                   [0, 1, 1, 0],
                   [0, 1, 1, 0]], bool)
    # tp = 2 (col 1, rows 0-1), fp = 2 (col 0), fn = 4 (col 2 ×3, col 1 row 2)
    assert confusion_counts(pred, gt) == (2, 2, 4, 4)
    m = metrics_from_counts(2, 2, 4)
    assert m == {"iou": 2 / 8, "precision": 2 / 4, "recall": 2 / 6}
    assert metrics_from_counts(0, 0, 0) == {"iou": 1.0, "precision": 1.0, "recall": 1.0}
    assert metrics_from_counts(0, 0, 5) == {"iou": 0.0, "precision": 1.0, "recall": 0.0}


def _save(root, rel, arr, scale=255):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray((np.asarray(arr) * scale).astype(np.uint8)).save(path)


def test_eval_against_hand_computation(tmp_path):
    pred, gt = str(tmp_path / "pred"), str(tmp_path / "gt")
    # image 1: tp 2, fp 2, fn 4 (above)
    _save(gt, "x/1.png", [[0, 1, 1, 0], [0, 1, 1, 0], [0, 1, 1, 0]])
    _save(pred, "x/1.png", [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    # image 2: perfect, gt stored with values {0, 1} and pred at half size (resized ×2 nearest)
    g2 = np.zeros((4, 4), np.uint8)
    g2[:2, :2] = 1
    _save(gt, "x/2.png", g2, scale=1)
    _save(pred, "x/2.png", [[1, 0], [0, 0]])
    # image 3: pred empty, gt has 3 fg pixels → IoU 0, precision 1 (0/0), recall 0
    _save(gt, "y/3.png", [[1, 1, 1, 0]])
    _save(pred, "y/3.png", [[0, 0, 0, 0]])
    # image 4: no prediction
    _save(gt, "y/4.png", [[1]])
    res = evaluate_trees(pred, gt)
    assert [r["relpath"] for r in res.per_image] == ["x/1.png", "x/2.png", "y/3.png"]
    assert res.failures == [("y/4.png", "no prediction")]
    assert res.n_resized == 1
    m = res.mean()
    assert m["iou"] == pytest.approx((2 / 8 + 1 + 0) / 3)
    assert m["precision"] == pytest.approx((2 / 4 + 1 + 1) / 3)
    assert m["recall"] == pytest.approx((2 / 6 + 1 + 0) / 3)
    # pooled: tp = 2 + 4 + 0, fp = 2 + 0 + 0, fn = 4 + 0 + 3
    p = res.pooled()
    assert p["iou"] == pytest.approx(6 / 15)
    assert p["precision"] == pytest.approx(6 / 8)
    assert p["recall"] == pytest.approx(6 / 13)
    # two workers: same numbers
    res2 = evaluate_trees(pred, gt, workers=2)
    assert res2.mean() == res.mean() and res2.pooled() == res.pooled()
    # thresholds apply to the stored values
    one = compare_one(pred, gt, "x/2.png", gt_threshold=1)   # gt {0,1} > 1 → empty
    assert (one["tp"], one["fp"], one["fn"]) == (0, 4, 0)


def test_eval_cli(tmp_path, capsys):
    from harl.cli.masks import main

    pred, gt = str(tmp_path / "pred"), str(tmp_path / "gt")
    _save(gt, "1.png", [[1, 1], [0, 0]])
    _save(pred, "1.png", [[1, 0], [0, 0]])
    _save(gt, "2.png", [[1, 1], [1, 1]])
    out = str(tmp_path / "r.json")
    csv_path = str(tmp_path / "per.csv")
    rc = main(["eval", "--pred", pred, "--gt", gt, "--json", out, "--per-image-csv", csv_path, "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "IoU" in text and "pooled" in text
    d = json.load(open(out))
    assert d["images"] == 1 and d["failed"] == 1 and d["failures"][0]["relpath"] == "2.png"
    assert d["per_image_mean"] == {"iou": 0.5, "precision": 1.0, "recall": 0.5}
    assert open(csv_path).read().splitlines()[1].startswith("1.png,0.500000,1.000000,0.500000,1,0,1")
    assert main(["eval", "--pred", pred, "--gt", gt, "--strict", "--no-progress"]) == 1
    assert main(["eval", "--pred", str(tmp_path / "nope"), "--gt", gt]) == 2
