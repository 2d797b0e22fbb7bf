"""The mask-generation runner: resumability, sharding, corrupt inputs, manifest, CLI."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from harl.masks.felzenszwalb import FelzenszwalbParams, felzenszwalb_mask
from harl.masks.io import (
    IMAGE_EXTENSIONS,
    find_mask_collisions,
    list_files,
    mask_relpath,
    parse_shard,
    read_mask,
    shard_select,
)
from harl.masks.runner import ImageGeneratorJob, RunOptions, fg_histogram, merge_manifests, read_manifest, run_job
from harl.errors import MetaMismatchError

PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "camera", "immunohistochemistry"]


def _photo(name: str, size=(112, 84)) -> Image.Image:
    from skimage import data

    arr = getattr(data, name)()
    return Image.fromarray(arr).resize(size, Image.BILINEAR)


@pytest.fixture
def six_images(tmp_path):
    """6 small photos in two class folders (grayscale 'camera' stays 1-channel on disk)."""
    root = tmp_path / "images"
    for i, name in enumerate(PHOTOS):
        d = root / ("cls_a" if i % 2 == 0 else "cls_b")
        d.mkdir(parents=True, exist_ok=True)
        _photo(name).save(d / f"{name}.{'jpg' if i % 3 else 'png'}")
    return str(root)


def _run(images, out, **kw):
    opts = RunOptions(progress=False, **kw)
    job = ImageGeneratorJob(images, "felzenszwalb", FelzenszwalbParams())
    meta = {"generator": "felzenszwalb", "params": {"test": 1}}
    return run_job(job, list_files(images), out, opts, meta=meta)


def _tree_bytes(out):
    res = {}
    for rel in list_files(out, (".png",)):
        with open(os.path.join(out, rel), "rb") as f:
            res[rel] = f.read()
    return res


def test_extension_list_matches_the_data_pipeline():
    from harl.data.image_io import IMG_EXTENSIONS

    assert tuple(IMAGE_EXTENSIONS) == tuple(IMG_EXTENSIONS)


def test_run_writes_masks_manifest_and_summary(six_images, tmp_path):
    out = str(tmp_path / "masks")
    s = _run(six_images, out)
    assert (s.total, s.done, s.skipped, s.failures) == (6, 6, 0, [])
    assert s.merged
    rows = read_manifest(os.path.join(out, "manifest.csv"))
    rels = list_files(six_images)
    assert [r["relpath"] for r in rows] == rels
    with open(os.path.join(out, "manifest.csv")) as f:
        assert next(csv.reader(f)) == ["relpath", "height", "width", "fg_fraction", "n_segments", "fallback"]
    for r in rows:
        m_path = os.path.join(out, mask_relpath(r["relpath"]))
        with Image.open(m_path) as im:
            assert im.mode == "L" and im.size == (112, 84)
            vals = set(np.unique(np.asarray(im)).tolist())
        assert vals <= {0, 255}
        m = read_mask(m_path)
        assert (r["height"], r["width"]) == (84, 112)
        assert r["fg_fraction"] == pytest.approx(m.mean(), abs=1e-6)
        # the written mask is exactly the generator's output on the decoded image
        from harl.masks.io import read_image_rgb

        expected, info = felzenszwalb_mask(read_image_rgb(os.path.join(six_images, r["relpath"])))
        np.testing.assert_array_equal(m, expected)
        assert r["n_segments"] == info["n_segments"] and r["fallback"] == info["fallback"]
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["images"] == 6 and summary["failed"] == 0
    assert sum(summary["fg_fraction_histogram"]["counts"]) == 6
    assert json.load(open(os.path.join(out, "meta.json")))["generator"] == "felzenszwalb"
    assert open(os.path.join(out, "failures.tsv")).read() == ""


def test_resume_redoes_only_missing_outputs(six_images, tmp_path):
    out = str(tmp_path / "masks")
    _run(six_images, out)
    first = _tree_bytes(out)
    manifest1 = open(os.path.join(out, "manifest.csv")).read()
    keep = sorted(first)[2:]
    stat_before = {r: os.stat(os.path.join(out, r)).st_mtime_ns for r in keep}
    removed = sorted(first)[:2]
    for r in removed:
        os.remove(os.path.join(out, r))
    # a stale temporary file of a killed write, next to one of the removed outputs
    stale = os.path.join(out, removed[0] + ".tmp-12345-abcdef")
    with open(stale, "wb") as f:
        f.write(b"partial")
    s = _run(six_images, out)
    assert (s.done, s.skipped, len(s.failures)) == (2, 4, 0)
    assert not os.path.exists(stale)
    assert _tree_bytes(out) == first
    assert open(os.path.join(out, "manifest.csv")).read() == manifest1
    for r in keep:  # untouched
        assert os.stat(os.path.join(out, r)).st_mtime_ns == stat_before[r]
    # a third run has nothing to do
    s = _run(six_images, out)
    assert (s.done, s.skipped) == (0, 6)


def test_resume_after_a_torn_journal(six_images, tmp_path):
    """Killed between the PNG rename and a complete journal line: that image is redone."""
    out = str(tmp_path / "masks")
    _run(six_images, out)
    first = _tree_bytes(out)
    journal = os.path.join(out, ".harl-masks", "journal-00000-of-00001.jsonl")
    lines = open(journal).read().splitlines(True)
    with open(journal, "w") as f:
        f.writelines(lines[:-1])
        f.write(lines[-1][: len(lines[-1]) // 2])  # torn last line
    s = _run(six_images, out)
    assert (s.done, s.skipped) == (1, 5)
    assert _tree_bytes(out) == first


def test_overwrite_redoes_everything(six_images, tmp_path):
    out = str(tmp_path / "masks")
    _run(six_images, out)
    s = _run(six_images, out, overwrite=True)
    assert (s.done, s.skipped) == (6, 0)


def test_meta_mismatch_is_refused(six_images, tmp_path):
    out = str(tmp_path / "masks")
    _run(six_images, out)
    job = ImageGeneratorJob(six_images, "felzenszwalb", FelzenszwalbParams(sigma=0.5))
    with pytest.raises(MetaMismatchError, match="params.sigma"):
        run_job(job, list_files(six_images), out, RunOptions(progress=False),
                meta={"generator": "felzenszwalb", "params": {"sigma": 0.5}})


def test_meta_volatile_keys(tmp_path):
    from harl.masks.runner import check_and_write_meta

    out = str(tmp_path)
    base = {"generator": "g", "params": {"a": 1, "device": "cpu"}, "volatile": ["params.device"]}
    check_and_write_meta(out, base)
    check_and_write_meta(out, {**base, "params": {"a": 1, "device": "cuda"}})  # allowed to differ
    with pytest.raises(MetaMismatchError, match="params.a: 1 here vs 2 now"):
        check_and_write_meta(out, {**base, "params": {"a": 2, "device": "cpu"}})
    check_and_write_meta(out, {**base, "params": {"a": 2}}, overwrite=True)
    assert json.load(open(os.path.join(out, "meta.json")))["params"] == {"a": 2}


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7])
def test_shard_select_partitions(n):
    items = [f"c{i % 3}/img{i:03d}.jpg" for i in range(23)]
    items.sort()
    parts = [shard_select(items, i, n) for i in range(n)]
    flat = [x for p in parts for x in p]
    assert sorted(flat) == items and len(flat) == len(set(flat))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert parts[0] == items[0::n]


def test_parse_shard():
    assert parse_shard("3/8") == (3, 8)
    for bad in ("8/8", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ValueError, match="i/n"):
            parse_shard(bad)


def test_sharded_runs_equal_one_run(six_images, tmp_path):
    whole = str(tmp_path / "whole")
    _run(six_images, whole)
    out = str(tmp_path / "sharded")
    seen = []
    for i in range(3):
        s = _run(six_images, out, shard=(i, 3))
        seen.append([r["relpath"] for r in s.rows])
        assert s.merged == (i == 2)  # merged automatically by the last shard
        assert os.path.exists(os.path.join(out, "manifest.csv")) == (i == 2)
    flat = [r for part in seen for r in part]
    assert sorted(flat) == list_files(six_images) and len(set(flat)) == 6
    assert open(os.path.join(out, "manifest.csv")).read() == open(os.path.join(whole, "manifest.csv")).read()
    assert _tree_bytes(out) == _tree_bytes(whole)
    # explicit merge gives the same file
    os.remove(os.path.join(out, "manifest.csv"))
    summary = merge_manifests(out)
    assert summary["missing_shards"] == [] and summary["images"] == 6
    assert open(os.path.join(out, "manifest.csv")).read() == open(os.path.join(whole, "manifest.csv")).read()


def test_two_workers_give_identical_results(six_images, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    _run(six_images, a, workers=1)
    s = _run(six_images, b, workers=2, chunksize=1)
    assert s.done == 6
    assert _tree_bytes(a) == _tree_bytes(b)
    assert open(os.path.join(a, "manifest.csv")).read() == open(os.path.join(b, "manifest.csv")).read()


def test_corrupt_and_odd_images(six_images, tmp_path):
    root = os.path.join(six_images, "cls_a")
    with open(os.path.join(root, "broken.jpg"), "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 not really a jpeg")
    full = _photo("coffee")
    buf_path = os.path.join(root, "truncated.png")
    full.save(buf_path)
    data = open(buf_path, "rb").read()
    with open(buf_path, "wb") as f:
        f.write(data[: len(data) // 2])
    # odd but valid modes: RGBA, palette, 16-bit grayscale
    _photo("rocket").convert("RGBA").save(os.path.join(root, "rgba.png"))
    _photo("astronaut").convert("P").save(os.path.join(root, "palette.png"))
    Image.fromarray((np.arange(84 * 112).reshape(84, 112) * 7 % 65536).astype(np.uint16)).save(
        os.path.join(root, "gray16.png"))
    out = str(tmp_path / "masks")
    s = _run(six_images, out)
    failed = dict(s.failures)
    assert set(failed) == {"cls_a/broken.jpg", "cls_a/truncated.png"}
    assert all(rel in msg for rel, msg in failed.items())  # the error names the file
    assert s.done == 9
    lines = open(os.path.join(out, "failures.tsv")).read().splitlines()
    assert [ln.split("\t")[0] for ln in lines] == ["cls_a/broken.jpg", "cls_a/truncated.png"]
    for rel in ("cls_a/rgba.png", "cls_a/palette.png", "cls_a/gray16.png"):
        assert os.path.isfile(os.path.join(out, rel))
    # failures are retried on the next run (and still fail), nothing else is redone
    s = _run(six_images, out)
    assert (s.done, s.skipped, len(s.failures)) == (0, 9, 2)


def test_mask_path_collisions_are_reported(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    _photo("coffee").save(root / "x.jpg")
    _photo("rocket").save(root / "x.png")
    assert find_mask_collisions(["x.jpg", "x.png"]) == {"x.png": "x.jpg"}
    s = _run(str(root), str(tmp_path / "m"))
    assert s.done == 1 and s.failures[0][0] == "x.png" and "already used" in s.failures[0][1]


def test_fg_histogram():
    assert fg_histogram([0.0, 0.05, 0.1, 0.55, 0.99, 1.0]) == [2, 1, 0, 0, 0, 1, 0, 0, 0, 2]


# --------------------------------------------------------------------------------------------- CLI


def test_cli_end_to_end(six_images, tmp_path, capsys):
    from harl.cli.masks import main

    with open(os.path.join(six_images, "cls_b", "bad.png"), "wb") as f:
        f.write(b"garbage")
    out = str(tmp_path / "masks")
    rc = main(["felzenszwalb", "--images", six_images, "--out", out, "--no-progress", "--shard", "0/2"])
    assert rc == 0
    txt = capsys.readouterr().out
    assert "shard 0/2" in txt and not os.path.exists(os.path.join(out, "manifest.csv"))
    rc = main(["felzenszwalb", "--images", six_images, "--out", out, "--no-progress", "--shard", "1/2",
               "--strict"])
    assert rc == 1  # bad.png failed and --strict
    assert os.path.exists(os.path.join(out, "manifest.csv"))
    assert "cls_b/bad.png" in open(os.path.join(out, "failures.tsv")).read()
    assert len(read_manifest(os.path.join(out, "manifest.csv"))) == 6
    assert main(["merge-manifests", out]) == 0
    # other parameters into the same folder: refused with exit status 2
    rc = main(["felzenszwalb", "--images", six_images, "--out", out, "--no-progress", "--sigma", "0.5"])
    assert rc == 2 and "sigma" in capsys.readouterr().err
    # output inside the image tree: refused
    assert main(["felzenszwalb", "--images", six_images, "--out", os.path.join(six_images, "m")]) == 2
    assert main(["felzenszwalb", "--images", str(tmp_path / "nope"), "--out", out]) == 2


def test_cli_file_list_and_limit(six_images, tmp_path):
    from harl.cli.masks import main

    lst = tmp_path / "list.txt"
    lst.write_text("cls_b/chelsea.jpg\n# comment\n\ncls_a/astronaut.png\n")
    out = str(tmp_path / "m")
    assert main(["felzenszwalb", "--images", six_images, "--out", out, "--no-progress",
                 "--file-list", str(lst), "--limit", "1"]) == 0
    rows = read_manifest(os.path.join(out, "manifest.csv"))
    assert [r["relpath"] for r in rows] == ["cls_a/astronaut.png"]
