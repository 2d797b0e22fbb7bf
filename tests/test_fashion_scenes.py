"""fashion-scenes generator: determinism, mask/image alignment, split hygiene, resume, refusal, CLI.

Uses a tiny synthetic Fashion-MNIST (written with write_idx) so the tests do not depend on the
Debian package; one test checks SCENES_MEAN/STD against the real data when it is installed.
"""

import csv
import hashlib
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

import harl.data.fashion_scenes.generate as fs
from harl.cli.scenes import build_parser, main
from harl.data.fashion_mnist import CLASS_NAMES, DEFAULT_ROOT, write_idx
from harl.data.fashion_scenes import (
    SCENES_MEAN, SCENES_STD, FashionScenesParams, SceneContext, generate_fashion_scenes, read_meta,
    render_background, render_scene,
)
from harl.errors import SceneTreeMismatchError

N_TRAIN, N_TEST = 50, 20


def _fake_items(rng, n, labels):
    """Random-intensity rectangles on black: every item distinct, with real background pixels."""
    x = np.zeros((n, 28, 28), dtype=np.uint8)
    for i in range(n):
        y0, x0 = rng.integers(0, 10, size=2)
        h, w = rng.integers(10, 18, size=2)
        x[i, y0:y0 + h, x0:x0 + w] = rng.integers(40, 256, size=(h, w))
    return x, np.asarray(labels, dtype=np.uint8)


@pytest.fixture(scope="module")
def fmnist_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmnist")
    rng = np.random.default_rng(123)
    xtr, ytr = _fake_items(rng, 80, np.arange(80) % 10)          # 8 per class
    xte, yte = _fake_items(rng, 30, (np.arange(30) * 7) % 10)    # 3 per class
    write_idx(str(root / "train-images-idx3-ubyte.gz"), xtr)
    write_idx(str(root / "train-labels-idx1-ubyte.gz"), ytr)
    write_idx(str(root / "t10k-images-idx3-ubyte"), xte)
    write_idx(str(root / "t10k-labels-idx1-ubyte"), yte)
    return str(root)


def _params(**kw):
    base = dict(n_train=N_TRAIN, n_test=N_TEST, test_variants=("black",))
    base.update(kw)
    return FashionScenesParams(**base)


def _gen(out, root, workers=1, **kw):
    force = kw.pop("force", False)
    chunk = kw.pop("chunk_size", None)
    return generate_fashion_scenes(str(out), _params(**kw), workers=workers, force=force, progress=False,
                                   fmnist_root=root, chunk_size=chunk)


def _tree_hashes(root):
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            out[os.path.relpath(p, root)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def _read_manifest(root):
    with open(os.path.join(root, "manifest.csv"), newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def ref_tree(tmp_path_factory, fmnist_root):
    out = tmp_path_factory.mktemp("ref") / "scenes"
    meta = _gen(out, fmnist_root, workers=1, chunk_size=7)
    return str(out), meta


def test_determinism_across_workers_and_chunks(ref_tree, fmnist_root, tmp_path):
    ref, _ = ref_tree
    other = tmp_path / "w2"
    _gen(other, fmnist_root, workers=2, chunk_size=3)
    a, b = _tree_hashes(ref), _tree_hashes(str(other))
    assert len(a) == 2 * (N_TRAIN + 2 * N_TEST) + 3 + 3 and a == b
    # and the seed matters
    third = tmp_path / "seed1"
    _gen(third, fmnist_root, seed=1)
    c = _tree_hashes(str(third))
    diff = [k for k in a if k.startswith("images/") and a[k] != c.get(k)]
    assert len(diff) > N_TRAIN


def test_layout_class_folders_and_counts(ref_tree):
    ref, meta = ref_tree
    for split, n in (("train", N_TRAIN), ("test", N_TEST), ("test_black", N_TEST)):
        for top in ("images", "masks"):
            d = os.path.join(ref, top, split)
            assert sorted(e for e in os.listdir(d) if os.path.isdir(os.path.join(d, e))) == sorted(CLASS_NAMES)
            counts = {c: len(os.listdir(os.path.join(d, c))) for c in CLASS_NAMES}
            assert sum(counts.values()) == n
            # blocks of ten hold each class once → exactly balanced for multiples of 10
            assert set(counts.values()) == {n // 10}
        assert meta["counts"][split] == n
        assert meta["splits"][split]["class_counts"] == {c: n // 10 for c in CLASS_NAMES}
    rows = _read_manifest(ref)
    assert len(rows) == N_TRAIN + 2 * N_TEST
    for r in rows:
        assert r["relpath"].split("/")[0] == r["class_name"] == CLASS_NAMES[int(r["label"])]
        assert os.path.exists(os.path.join(ref, "images", r["split"], r["relpath"]))
    im = Image.open(os.path.join(ref, "images", "train", rows[0]["relpath"]))
    mk = Image.open(os.path.join(ref, "masks", "train", rows[0]["relpath"]))
    assert im.mode == "RGB" and im.size == (32, 32) and mk.mode == "L" and mk.size == (32, 32)
    assert os.path.exists(os.path.join(ref, "params.json"))
    assert read_meta(ref) == meta


def test_train_scenes_use_only_train_items(ref_tree, fmnist_root):
    ref, _ = ref_tree
    rows = _read_manifest(ref)
    from harl.data.fashion_mnist import read_fashion_mnist
    items = {s: read_fashion_mnist(fmnist_root, s) for s in ("train", "test")}
    for split, source in (("train", "train"), ("test", "test"), ("test_black", "test")):
        sub = [r for r in rows if r["split"] == split]
        assert {r["source_split"] for r in sub} == {source}
        idx = [int(r["source_index"]) for r in sub]
        assert len(set(idx)) == len(idx)  # no item used twice while items remain
        for r in sub:
            assert items[source][1][int(r["source_index"])] == int(r["label"])
    # test_black is the test scenes on another background: same items, same layout
    t = {r["index"]: r for r in rows if r["split"] == "test"}
    for r in (r for r in rows if r["split"] == "test_black"):
        for k in ("relpath", "source_index", "obj_x", "obj_y", "obj_size", "tint"):
            assert r[k] == t[r["index"]][k]


def _expected_mask(item, size, side, x, y, threshold):
    """Independent reconstruction of the silhouette from the raw 28×28 item and the manifest's layout."""
    v = np.asarray(Image.fromarray(item, "L").resize((side, side), Image.BILINEAR), dtype=np.float64)
    m = np.zeros((size, size), dtype=bool)
    m[y:y + side, x:x + side] = v / 255.0 > threshold
    return m, v


@pytest.mark.parametrize("split", ["train", "test"])
def test_mask_is_exactly_the_pasted_item(ref_tree, fmnist_root, split):
    ref, meta = ref_tree
    from harl.data.fashion_mnist import read_fashion_mnist
    x_items, _ = read_fashion_mnist(fmnist_root, split)
    thr = meta["params"]["threshold"]
    checked = 0
    for r in (r for r in _read_manifest(ref) if r["split"] == split):
        img = np.asarray(Image.open(os.path.join(ref, "images", split, r["relpath"])), dtype=np.int64)
        mask = np.asarray(Image.open(os.path.join(ref, "masks", split, r["relpath"]))) > 0
        assert set(np.unique(np.asarray(Image.open(os.path.join(ref, "masks", split, r["relpath"]))))) <= {0, 255}
        side, x0, y0 = int(r["obj_size"]), int(r["obj_x"]), int(r["obj_y"])
        exp, v = _expected_mask(x_items[int(r["source_index"])], 32, side, x0, y0, thr)
        np.testing.assert_array_equal(mask, exp)
        assert abs(float(r["fg_fraction"]) - mask.mean()) < 1e-6
        # pixels inside the mask are the tinted item: round(colour · v / 255)
        colour = np.array([int(r["tint"][i:i + 2], 16) for i in (1, 3, 5)])
        inner = img[y0:y0 + side, x0:x0 + side][exp[y0:y0 + side, x0:x0 + side]]
        want = np.round(colour[None, :] * v[exp[y0:y0 + side, x0:x0 + side]][:, None] / 255.0)
        np.testing.assert_array_equal(inner, want)  # c·v/255 is never exactly x.5 (255 is odd)
        if split == "test":
            # on the black variant the item is the only non-zero thing: non-zero ⇔ mask
            black = np.asarray(Image.open(os.path.join(ref, "images", "test_black", r["relpath"])), dtype=np.int64)
            bmask = np.asarray(Image.open(os.path.join(ref, "masks", "test_black", r["relpath"]))) > 0
            np.testing.assert_array_equal(bmask, mask)
            np.testing.assert_array_equal(black.max(-1) > 0, mask)
            np.testing.assert_array_equal(black[mask], img[mask])
        checked += 1
    assert checked == (N_TRAIN if split == "train" else N_TEST)


def test_background_outside_mask_is_untouched(ref_tree, fmnist_root):
    ref, meta = ref_tree
    ctx = SceneContext.load(FashionScenesParams.from_dict(meta["params"]), fmnist_root)
    for r in [r for r in _read_manifest(ref) if r["split"] == "train"][:10]:
        i = int(r["index"])
        img = np.asarray(Image.open(os.path.join(ref, "images", "train", r["relpath"])))
        mask = np.asarray(Image.open(os.path.join(ref, "masks", "train", r["relpath"]))) > 0
        bg, detail = render_background(ctx, "train", i)
        assert detail == r["bg_detail"] and detail.split(":")[0] in meta["params"]["photos"]
        np.testing.assert_array_equal(img[~mask], bg[~mask])
        assert (img[mask] != bg[mask]).any(axis=-1).mean() > 0.5  # the item really is pasted
        img2, mask2, rec = render_scene(ctx, "train", i)
        np.testing.assert_array_equal(img2, img)
        np.testing.assert_array_equal(mask2 > 0, mask)


def test_meta_statistics_match_images(ref_tree):
    ref, meta = ref_tree
    pix = []
    fg = []
    for r in (r for r in _read_manifest(ref) if r["split"] == "train"):
        pix.append(np.asarray(Image.open(os.path.join(ref, "images", "train", r["relpath"])), dtype=np.float64))
        fg.append((np.asarray(Image.open(os.path.join(ref, "masks", "train", r["relpath"]))) > 0).mean())
    allpix = np.stack(pix).reshape(-1, 3) / 255.0
    np.testing.assert_allclose(meta["mean"], allpix.mean(0), atol=2e-6)
    np.testing.assert_allclose(meta["std"], allpix.std(0), atol=2e-6)
    assert abs(meta["fg_fraction_mean"] - np.mean(fg)) < 2e-6
    assert meta["generator"] == "fashion-scenes" and meta["params"] == _params().to_dict()


def test_resume_after_interruption_and_damage(ref_tree, fmnist_root, tmp_path, monkeypatch):
    ref, _ = ref_tree
    want = _tree_hashes(ref)
    out = tmp_path / "resume"

    # 1. interrupt a run after 37 file writes: no meta.json, the tree is recognisably unfinished
    real_write = fs._atomic_write_bytes
    calls = {"n": 0}

    def flaky(path, data):
        calls["n"] += 1
        if calls["n"] > 37:
            raise KeyboardInterrupt("simulated interruption")
        real_write(path, data)

    monkeypatch.setattr(fs, "_atomic_write_bytes", flaky)
    with pytest.raises(KeyboardInterrupt):
        _gen(out, fmnist_root, chunk_size=5)
    monkeypatch.setattr(fs, "_atomic_write_bytes", real_write)
    assert not os.path.exists(out / "meta.json")
    with pytest.raises(FileNotFoundError, match="interrupted"):
        read_meta(str(out))
    partial = _tree_hashes(str(out))
    assert 0 < sum(k.endswith(".png") for k in partial) < len(want)

    # 2. leave a stale temp file, as a killed writer would
    some_dir = out / "images" / "train" / CLASS_NAMES[3]
    some_dir.mkdir(parents=True, exist_ok=True)
    (some_dir / f".000003.png{fs._TMP_MARK}99999").write_bytes(b"half a png")

    _gen(out, fmnist_root, workers=2, chunk_size=4)
    assert _tree_hashes(str(out)) == want

    # 3. damage a finished tree: delete images, masks, meta; rerun repairs it byte for byte
    rows = _read_manifest(str(out))
    for r in rows[::9]:
        os.remove(out / "images" / r["split"] / r["relpath"])
    for r in rows[4::11]:
        os.remove(out / "masks" / r["split"] / r["relpath"])
    _gen(out, fmnist_root)
    assert _tree_hashes(str(out)) == want
    os.remove(out / "meta.json")
    _gen(out, fmnist_root)
    assert _tree_hashes(str(out)) == want


def test_refuses_other_parameters_unless_forced(ref_tree, fmnist_root, tmp_path):
    ref, _ = ref_tree
    out = tmp_path / "copy"
    shutil.copytree(ref, out)
    before = _tree_hashes(str(out))
    with pytest.raises(SceneTreeMismatchError, match="n_train") as e:
        _gen(out, fmnist_root, n_train=30)
    assert "--force" in str(e.value)
    with pytest.raises(SceneTreeMismatchError, match="tint"):
        _gen(out, fmnist_root, tint="none")
    assert _tree_hashes(str(out)) == before  # nothing touched
    meta = _gen(out, fmnist_root, n_train=30, force=True)
    assert meta["counts"]["train"] == 30
    assert sum(len(os.listdir(out / "images" / "train" / c)) for c in CLASS_NAMES) == 30

    # a folder holding images/ without params.json is not ours: refuse too
    alien = tmp_path / "alien"
    (alien / "images").mkdir(parents=True)
    (alien / "images" / "keep.txt").write_text("x")
    with pytest.raises(SceneTreeMismatchError, match="params.json"):
        _gen(alien, fmnist_root)
    assert (alien / "images" / "keep.txt").exists()


def test_backgrounds_and_tints(fmnist_root, tmp_path):
    p = _params(background="plain", tint="none", n_train=10, n_test=0, test_variants=("noise",), size=24)
    ctx = SceneContext.load(p, fmnist_root)
    for i in range(10):
        img, mask, rec = render_scene(ctx, "train", i)
        assert img.shape == (24, 24, 3) and mask.shape == (24, 24)
        bg = img[mask == 0]
        assert (bg == bg[0]).all()  # one plain colour
        inner = img[mask > 0]
        assert (inner[:, 0] == inner[:, 1]).all() and (inner[:, 1] == inner[:, 2]).all()  # grayscale item
        side = rec["obj_size"]
        assert round(0.4 * 24) <= side <= round(0.75 * 24)
        nimg, nmask, _ = render_scene(ctx, "train", i, background="noise")
        np.testing.assert_array_equal(nmask, mask)
        assert len(np.unique(nimg[mask == 0].reshape(-1))) > 50
    ctx_r = SceneContext.load(p.replace(tint="random"), fmnist_root)
    tints = {render_scene(ctx_r, "train", i)[2]["tint"] for i in range(10)}
    assert len(tints) == 10
    ctx_p = SceneContext.load(p.replace(tint="palette"), fmnist_root)
    used = {render_scene(ctx_p, "train", i)[2]["tint"] for i in range(10)}
    assert used <= set(p.palette) and len(used) > 1


def test_64px_and_object_scale(fmnist_root, tmp_path):
    meta = _gen(tmp_path / "s64", fmnist_root, size=64, scale=(0.5, 0.5), n_train=10, n_test=10,
                test_variants=())
    rows = _read_manifest(str(tmp_path / "s64"))
    assert {int(r["obj_size"]) for r in rows} == {32}
    assert meta["params"]["size"] == 64 and meta["counts"] == {"train": 10, "test": 10}
    assert Image.open(tmp_path / "s64" / "images" / "train" / rows[0]["relpath"]).size == (64, 64)


def test_parameter_validation():
    with pytest.raises(ValueError, match="scale"):
        FashionScenesParams(scale=(0.8, 0.4))
    with pytest.raises(ValueError, match="background"):
        FashionScenesParams(background="sky")
    with pytest.raises(ValueError, match="tint"):
        FashionScenesParams(tint="rainbow")
    with pytest.raises(KeyError, match="did you mean"):
        FashionScenesParams(photos=("astronat",))
    with pytest.raises(ValueError, match="too dark"):
        FashionScenesParams(palette=("#101010",))
    with pytest.raises(ValueError, match="n_train"):
        FashionScenesParams(n_train=-1)
    with pytest.raises(TypeError, match="unknown"):
        FashionScenesParams().replace(colour="red")
    with pytest.raises(ValueError, match="unknown"):
        FashionScenesParams.from_dict({"size": 32, "bogus": 1})
    p = FashionScenesParams(scale=[0.5, 0.6], photos=["moon"])
    assert FashionScenesParams.from_dict(json.loads(json.dumps(p.to_dict()))) == p


def test_defaults_follow_the_trial_lessons():
    d = FashionScenesParams()
    assert d.size == 32 and 0.35 <= d.scale[0] <= d.scale[1] <= 0.8
    assert d.tint in ("palette", "none") and d.background == "photo"
    assert (d.n_train, d.n_test) == (60000, 10000)
    assert 10 <= len(d.photos) <= 15


def test_cli_help_lists_every_knob_and_runs(fmnist_root, tmp_path, capsys):
    help_text = build_parser().format_help()
    flags = {"size": "--size", "scale": "--scale", "background": "--background", "tint": "--tint",
             "n_train": "--train", "n_test": "--test", "seed": "--seed", "threshold": "--threshold",
             "bg_crop": "--bg-crop", "photos": "--photos", "palette": "--palette",
             "test_variants": "--test-variants", "unseen_photos": "--unseen-photos", "bg_pool": "--bg-pool",
             "bg_contrast": "--bg-contrast", "bg_dim": "--bg-dim"}
    import dataclasses
    assert set(flags) == {f.name for f in dataclasses.fields(FashionScenesParams)}
    for flag in list(flags.values()) + ["--workers", "--force", "--out"]:
        assert flag in help_text
    out = tmp_path / "cli"
    rc = main(["--out", str(out), "--train", "20", "--test", "10", "--workers", "2", "--seed", "3",
               "--fmnist-root", fmnist_root, "--no-progress", "--tint", "none", "--test-variants", "black"])
    assert rc == 0
    meta = read_meta(str(out))
    assert meta["params"]["seed"] == 3 and meta["params"]["tint"] == "none"
    assert meta["counts"] == {"train": 20, "test": 10, "test_black": 10}
    rc = main(["--out", str(out), "--train", "21", "--test", "10", "--fmnist-root", fmnist_root, "--no-progress"])
    assert rc == 2 and "different parameters" in capsys.readouterr().err
    rc = main(["--out", str(tmp_path / "x"), "--fmnist-root", str(tmp_path / "nowhere"), "--no-progress",
               "--train", "5", "--test", "0"])
    assert rc == 2 and "not found" in capsys.readouterr().err


@pytest.mark.skipif(not os.path.isdir(DEFAULT_ROOT), reason="Debian fashion-mnist package not installed")
def test_scenes_mean_std_constants_match_default_config():
    """The constants were measured on all 60k default train scenes; 1000 of them agree closely."""
    p = FashionScenesParams()
    ctx = SceneContext.load(p.replace(n_test=0))
    imgs = np.stack([render_scene(ctx, "train", i)[0] for i in range(1000)]).reshape(-1, 3) / 255.0
    np.testing.assert_allclose(imgs.mean(0), SCENES_MEAN, atol=0.015)
    np.testing.assert_allclose(imgs.std(0), SCENES_STD, atol=0.015)


def test_unseen_backgrounds_split_uses_only_held_out_photos(fmnist_root, tmp_path):
    from harl.data.fashion_scenes import DEFAULT_UNSEEN_PHOTOS, render_scene, scene_split_dirs

    params = _params(n_train=12, n_test=8, test_variants=("unseen_photo",))
    assert not set(DEFAULT_UNSEEN_PHOTOS) & set(params.photos)
    out = str(tmp_path / "unseen")
    meta = _gen(out, fmnist_root, n_train=12, n_test=8, test_variants=("unseen_photo",))
    assert meta["counts"]["test_unseen_photo"] == 8
    ctx = SceneContext.load(params, fmnist_root)
    for i in range(8):
        img_t, mask_t, rec_t = render_scene(ctx, "test", i)
        img_u, mask_u, rec_u = render_scene(ctx, "test", i, "unseen_photo")
        # same item and layout as the test scene, only the background differs
        assert np.array_equal(mask_t, mask_u) and rec_t["label"] == rec_u["label"]
        assert np.array_equal(img_t[mask_t > 0], img_u[mask_u > 0])
        assert rec_u["bg_detail"].split(":")[0] in DEFAULT_UNSEEN_PHOTOS
        assert rec_t["bg_detail"].split(":")[0] in params.photos
    images, masks = scene_split_dirs(out, "test_unseen_photo")
    assert len([f for _, _, fs_ in os.walk(images) for f in fs_ if f.endswith(".png")]) == 8
    with pytest.raises(ValueError, match="never used for training"):
        FashionScenesParams(unseen_photos=("moon",))
    with pytest.raises(ValueError, match="test variants only"):
        FashionScenesParams(background="unseen_photo")


def test_background_pool_shared_across_splits_and_deterministic(fmnist_root, tmp_path):
    """bg_pool = N: every photo background is one of N crops, the same N for train and test; the
    unseen-photo variant has its own pool of held-out photos; objects and layout do not change."""
    params = _params(n_train=40, n_test=20, bg_pool=3, test_variants=("unseen_photo",))
    ctx = SceneContext.load(params, fmnist_root)
    ctx0 = SceneContext.load(params.replace(bg_pool=0), fmnist_root)
    train = {render_scene(ctx, "train", i)[2]["bg_detail"] for i in range(40)}
    test = {render_scene(ctx, "test", i)[2]["bg_detail"] for i in range(20)}
    assert len(train) == 3 and test <= train
    unseen = {render_scene(ctx, "test", i, "unseen_photo")[2]["bg_detail"] for i in range(20)}
    assert len(unseen) <= 3 and not unseen & train
    assert all(u.split(":")[0] in params.unseen_photos for u in unseen)
    # identical background pixels wherever two scenes drew the same pool entry
    by_bg = {}
    for i in range(40):
        img, mask, rec = render_scene(ctx, "train", i)
        bg, _ = render_background(ctx, "train", i)
        assert np.array_equal(img[mask == 0], bg[mask == 0])
        by_bg.setdefault(rec["bg_detail"], []).append(bg)
        # the pool changes the background only: same item, place and tint as without a pool
        img0, mask0, rec0 = render_scene(ctx0, "train", i)
        assert np.array_equal(mask, mask0) and rec["tint"] == rec0["tint"] and rec["label"] == rec0["label"]
    for bgs in by_bg.values():
        assert all(np.array_equal(b, bgs[0]) for b in bgs)
    with pytest.raises(ValueError, match="bg_pool"):
        FashionScenesParams(bg_pool=-1)


def test_tree_from_before_bg_pool_is_still_accepted(ref_tree, fmnist_root, tmp_path):
    """A params.json written before ``bg_pool`` existed reads as bg_pool = 0: resuming it is no mismatch."""
    ref, _ = ref_tree
    out = tmp_path / "old"
    shutil.copytree(ref, out)
    ident = json.loads((out / "params.json").read_text())
    del ident["params"]["bg_pool"]
    (out / "params.json").write_text(json.dumps(ident))
    before = _tree_hashes(str(out / "images"))
    _gen(out, fmnist_root, workers=1)  # same parameters: complete tree, nothing regenerated
    assert _tree_hashes(str(out / "images")) == before
    with pytest.raises(SceneTreeMismatchError, match="bg_pool"):
        _gen(out, fmnist_root, bg_pool=2)


def test_background_contrast_scales_clutter_around_the_mean(fmnist_root):
    """bg_contrast = c: every background pixel = m + c·(x − m) (m: the crop's mean colour, integer
    rounding), checked against the full-contrast background by a naive per-pixel loop."""
    params = _params(n_train=6, n_test=0, test_variants=())
    full = SceneContext.load(params, fmnist_root)
    half = SceneContext.load(params.replace(bg_contrast=0.5), fmnist_root)
    flat = SceneContext.load(params.replace(bg_contrast=0.0), fmnist_root)
    for i in range(6):
        x, _ = render_background(full, "train", i)
        y, _ = render_background(half, "train", i)
        z, _ = render_background(flat, "train", i)
        h, w, _ = x.shape
        for ch in range(3):
            m = int(x[:, :, ch].astype(np.int64).sum()) // (h * w)
            assert (z[:, :, ch] == m).all()
            for r in range(0, h, 5):
                for c in range(0, w, 5):
                    want = min(255, max(0, m + ((int(x[r, c, ch]) - m) * 512 + 512) // 1024))
                    assert int(y[r, c, ch]) == want
        assert y.astype(float).std() < x.astype(float).std()
        # the object and its mask do not change
        a, ma, _ = render_scene(full, "train", i)
        b, mb, _ = render_scene(half, "train", i)
        assert np.array_equal(ma, mb) and np.array_equal(a[ma > 0], b[mb > 0])
    with pytest.raises(ValueError, match="bg_contrast"):
        FashionScenesParams(bg_contrast=1.5)
    # bg_dim scales the (contrast-adjusted) background towards black: round(x · k / 1024)
    dim = SceneContext.load(params.replace(bg_contrast=0.5, bg_dim=0.25), fmnist_root)
    for i in range(3):
        y, _ = render_background(half, "train", i)
        d, _ = render_background(dim, "train", i)
        want = (y.astype(np.int64) * 256 + 512) // 1024
        assert np.array_equal(d, want.astype(np.uint8))
    black = SceneContext.load(params.replace(bg_dim=0.0), fmnist_root)
    assert not render_background(black, "train", 0)[0].any()
    with pytest.raises(ValueError, match="bg_dim"):
        FashionScenesParams(bg_dim=-0.1)
