"""Fault injection, fast cases: bad files, worker errors, clean stops, orphaned workers.

The longer cases (kill -9 at several points of pretraining and mask generation, disk full,
broken downloads) are run by ``benchmarks/faults.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from harl.errors import TrainingStopped
from harl.errors import DataFileError
from harl.data.verify import verify_dataset
from harl.errors import DataVerifyError
from tests.conftest import tiny_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _folder(root, n_per_class=8, size=32, seed=0):
    rng = np.random.default_rng(seed)
    for c in range(2):
        os.makedirs(os.path.join(root, f"c{c}"), exist_ok=True)
        for k in range(n_per_class):
            arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(os.path.join(root, f"c{c}", f"{k:02d}.png"))
    return str(root)


def _masks(img_root, mask_root):
    for d, _, files in os.walk(img_root):
        for f in files:
            rel = os.path.relpath(os.path.join(d, f), img_root)
            out = os.path.join(mask_root, os.path.splitext(rel)[0] + ".png")
            os.makedirs(os.path.dirname(out), exist_ok=True)
            w, h = Image.open(os.path.join(d, f)).size
            m = np.zeros((h, w), np.uint8)
            m[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 255
            Image.fromarray(m).save(out)
    return str(mask_root)


def _cfg(data, ckpt_dir, **over):
    cfg = tiny_cfg("byol", **{"data.dataset": "custom", "data.train_path": data, "data.num_workers": 0,
                              "checkpoint.enabled": True, "checkpoint.dir": str(ckpt_dir), "max_epochs": 1,
                              "optimizer.batch_size": 4, "auto_resume.enabled": True, **over})
    cfg.update({"no_validation": True, "enable_progress_bar": False, "enable_model_summary": False})
    return cfg


# --------------------------------------------------------------------------------------------- worker errors


def test_data_file_error_keeps_one_line_through_torch_reraise():
    from torch._utils import ExceptionWrapper

    try:
        raise DataFileError("cannot read image 'a/b.png': truncated")
    except DataFileError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(DataFileError) as err:
        wrapped.reraise()
    assert str(err.value) == "cannot read image 'a/b.png': truncated"


def test_missing_mask_in_a_loader_worker_is_one_line(tmp_path):
    from torch.utils.data import DataLoader

    from harl.data.datasets import ClassificationDataset
    from harl.data.mask_pairing import MaskReader
    from harl.data.sources import list_image_folder

    data = _folder(tmp_path / "img", n_per_class=2)
    masks = _masks(data, tmp_path / "m")
    os.remove(os.path.join(masks, "c1", "01.png"))
    ds = ClassificationDataset(list_image_folder(data), lambda img, m: (torch.zeros(1), torch.zeros(1)),
                               MaskReader(masks))
    with pytest.raises(DataFileError) as err:
        list(DataLoader(ds, batch_size=2, num_workers=2))
    msg = str(err.value)
    assert "\n" not in msg and "Traceback" not in msg
    assert os.path.join("c1", "01.png") in msg and "not found" in msg


# --------------------------------------------------------------------------------------------- clean stop


@pytest.mark.slow
def test_unreadable_file_stops_cleanly_and_resume_loses_no_step(tmp_path):
    """Reference run vs (stop on a corrupt file in a loader worker → fix → auto-resume): same weights."""
    from harl.train import pretrain

    data = _folder(tmp_path / "data")
    ref = pretrain(_cfg(data, tmp_path / "ref"))
    bad = os.path.join(data, "c1", "03.png")
    good = open(bad, "rb").read()
    with open(bad, "wb") as f:
        f.write(b"this is text, not a PNG")
    with pytest.raises(TrainingStopped) as err:
        pretrain(_cfg(data, tmp_path / "run", **{"data.num_workers": 2}))
    msg = str(err.value)
    assert "\n" not in msg and bad in msg and "state so far is saved in" in msg
    saved = msg.split("saved in '")[1].split("'")[0]
    state = torch.load(saved, map_location="cpu", weights_only=False)
    done = state["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["completed"]
    assert 0 < done < 4 and state["global_step"] == done  # it stopped mid-epoch and kept those steps
    with open(bad, "wb") as f:
        f.write(good)
    res = pretrain(_cfg(data, tmp_path / "run"))
    assert res.trainer.global_step == ref.trainer.global_step == 4
    a, b = ref.model.state_dict(), res.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_exit_code_2_and_one_line(tmp_path, capsys):
    import yaml

    from harl.cli.pretrain import main

    data = _folder(tmp_path / "data", n_per_class=4)
    open(os.path.join(data, "c0", "00.png"), "wb").close()  # zero bytes
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(_cfg(data, tmp_path / "ck")))
    assert main([str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "00.png" in err[0] and err[0].startswith("error: ")


# --------------------------------------------------------------------------------------------- data.verify


def _broken_tree(tmp_path):
    data = _folder(tmp_path / "data", n_per_class=6)
    masks = _masks(data, tmp_path / "masks")
    c0 = os.path.join(data, "c0")
    open(os.path.join(c0, "00.png"), "wb").close()  # empty
    with open(os.path.join(c0, "01.png"), "wb") as f:
        f.write(b"hello, I am text saved as an image")  # mislabelled
    png = open(os.path.join(c0, "02.png"), "rb").read()
    with open(os.path.join(c0, "02.png"), "wb") as f:
        f.write(png[: len(png) // 2])  # truncated after a valid header: only `full` sees it
    os.remove(os.path.join(masks, "c1", "00.png"))  # missing mask
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(os.path.join(masks, "c1", "01.png"))  # wrong size
    return data, masks


def _dataset(data, masks):
    from harl.data.datasets import ClassificationDataset
    from harl.data.mask_pairing import MaskReader
    from harl.data.sources import list_image_folder

    return ClassificationDataset(list_image_folder(data), lambda *a: a, MaskReader(masks))


def test_verify_reports_every_bad_file_at_once_and_caches(tmp_path, monkeypatch):
    import harl.data.verify as verify

    data, masks = _broken_tree(tmp_path)
    ds = _dataset(data, masks)
    cache = str(tmp_path / "cache.json")
    quick = {os.path.relpath(p.path, tmp_path) for p in verify_dataset(ds, "quick", workers=2, cache_path=cache)}
    assert quick == {"data/c0/00.png", "data/c0/01.png", "masks/c1/00.png", "masks/c1/01.png"}
    full = {os.path.relpath(p.path, tmp_path) for p in verify_dataset(ds, "full", workers=2, cache_path=cache)}
    assert full == quick | {"data/c0/02.png"}

    calls = []
    real = verify._probe
    monkeypatch.setattr(verify, "_probe", lambda *a: calls.append(a[0]) or real(*a))
    verify_dataset(ds, "full", workers=2, cache_path=cache)
    verify_dataset(ds, "quick", workers=2, cache_path=cache)  # answered by the full results
    assert calls == [os.path.join(masks, "c1", "00.png")] * 2  # only the missing file is looked at again
    calls.clear()
    changed = os.path.join(data, "c1", "05.png")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(changed)
    os.utime(changed, ns=(1, 1))
    verify_dataset(ds, "full", workers=2, cache_path=cache)
    assert sorted(calls) == sorted([changed, os.path.join(masks, "c1", "00.png")])


def test_pretrain_verify_stops_before_training_or_skips(tmp_path):
    from harl.train import pretrain

    data = _folder(tmp_path / "data", n_per_class=6)
    open(os.path.join(data, "c0", "00.png"), "wb").close()
    with open(os.path.join(data, "c1", "02.png"), "wb") as f:
        f.write(b"text")
    with pytest.raises(DataVerifyError) as err:
        pretrain(_cfg(data, tmp_path / "ck", **{"data.verify": "quick"}))
    assert "2 unreadable file(s)" in str(err.value)
    assert "c0/00.png" in str(err.value) and "c1/02.png" in str(err.value)
    assert not os.path.exists(tmp_path / "ck" / "byol")  # nothing started
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        res = pretrain(_cfg(data, tmp_path / "ck2", **{"data.verify": "full", "data.skip_corrupt": True}))
    assert res.trainer.global_step == 3  # 12 items (bad ones replaced by readable neighbours), batches of 4
    assert any("these items are skipped" in str(x.message) for x in w)
    assert not any("skipping unreadable file" in str(x.message) for x in w)  # known from the start


# --------------------------------------------------------------------------------------------- orphans


def _children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    st = f.read()
            except OSError:
                continue
            if int(st[st.rindex(")") + 2:].split()[1]) == pid:
                out.append(int(d))
    return out


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
    except OSError:
        return False
    return st[st.rindex(")") + 2] != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("command", ["masks", "scenes"])
def test_kill_9_of_the_parent_leaves_no_worker(tmp_path, command):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if command == "masks":
        imgs = _folder(tmp_path / "img", n_per_class=60, size=96)
        argv = ["-m", "harl.cli.masks", "felzenszwalb", "--images", imgs, "--out", str(tmp_path / "out"),
                "--workers", "2", "--chunksize", "1", "--no-progress"]
    else:
        from tests.conftest import write_synthetic_fashion_mnist

        fm = write_synthetic_fashion_mnist(str(tmp_path / "fm"))
        argv = ["-m", "harl.cli.scenes", "--out", str(tmp_path / "scenes"), "--train", "20000", "--test", "0",
                "--workers", "2", "--no-progress", "--fmnist-root", fm, "--size", "64"]
    proc = subprocess.Popen([sys.executable, *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t0 = time.time()
        kids = []
        while time.time() - t0 < 120 and len(kids) < 2 and proc.poll() is None:
            time.sleep(0.2)
            kids = _children(proc.pid)
        assert len(kids) >= 2, "the workers did not start"
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    t1 = time.time()
    while time.time() - t1 < 5 and any(_alive(k) for k in kids):
        time.sleep(0.1)
    survivors = [k for k in kids if _alive(k)]
    for k in survivors:  # do not leave them behind even when the test fails
        os.kill(k, signal.SIGKILL)
    assert not survivors, f"workers {survivors} outlived their parent"


def test_sampler_skip_resumes_inside_an_epoch():
    from harl.data.sampling import EpochShuffleSampler

    s = EpochShuffleSampler(10, seed=3)
    full = list(iter(s))
    s.epoch, s.skip = 0, 4
    assert list(iter(s)) == full[4:]
    assert s.skip == 0 and len(list(iter(s))) == 10  # once only


# --------------------------------------------------------------------------------------------- no unpickling


class _Planted:
    """Unpickling this object creates a marker file (what a malicious checkpoint could do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_pickle_is_never_executed(tmp_path, monkeypatch, capsys):
    from harl.checkpoint import read_run_config, read_state_dict
    from harl.cli.linear import main as linear_main

    marker = tmp_path / "PWNED"
    ckpt = tmp_path / "downloaded" / "model.ckpt"  # no args.json beside it
    ckpt.parent.mkdir()
    torch.save({"state_dict": {"backbone.w": torch.zeros(1)}, "hyper_parameters": {"cfg": _Planted(str(marker))}},
               str(ckpt))
    with pytest.warns(UserWarning, match="does not unpickle"):
        assert read_run_config(str(ckpt)) is None
    with pytest.raises(Exception):
        read_state_dict(str(ckpt))
    data = _folder(tmp_path / "data", n_per_class=2)
    monkeypatch.chdir(tmp_path)
    rc = linear_main([os.path.join(ROOT, "scripts", "linear", "fashion-scenes", "byol.yaml"),
                      f"pretrained_feature_extractor={ckpt}", "data.dataset=custom", f"data.train_path={data}",
                      f"data.val_path={data}", "max_epochs=1", "accelerator=cpu", "data.num_workers=0"])
    assert rc == 2 and not marker.exists()
    assert not marker.exists()


def test_write_failures_are_recognised_through_causes():
    import errno

    from harl.cli.common import write_failure

    assert write_failure(OSError(errno.ENOSPC, "No space left on device", "x.ckpt")).startswith("No space left")
    wrapped = RuntimeError("checkpoint failed")
    wrapped.__cause__ = OSError(errno.EFBIG, "File too large")
    assert write_failure(wrapped) == os.strerror(errno.EFBIG)
    assert write_failure(RuntimeError("[enforce fail at inline_container.cc] . PytorchStreamWriter failed "
                                      "writing file data/3: file write failed")) is not None
    assert write_failure(OSError(errno.EACCES, "Permission denied")) is None
    assert write_failure(ValueError("x")) is None
