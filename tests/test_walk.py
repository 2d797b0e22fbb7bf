"""Directory walks with symlink loops: each real folder listed once, no hang, real paths preferred."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from PIL import Image

from harl.data.sources import list_image_folder
from harl.masks.io import list_files
from harl.utils.walk import walk_unique

pytestmark = pytest.mark.skipif(not hasattr(os, "symlink") or os.name == "nt", reason="needs POSIX symlinks")


def _img(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(path)


def _files(top):
    return sorted(os.path.relpath(os.path.join(d, f), top) for d, _, fs in walk_unique(top) for f in fs)


def _run_with_timeout(fn, seconds=20.0):
    """Run ``fn`` in a thread; fail (instead of hanging the suite) when it does not finish."""
    out = {}

    def target():
        out["value"] = fn()

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"walk did not finish within {seconds} s (symlink loop followed?)"
    return out["value"]


def _naive_walk_count(top, limit=10_000):
    """How many files os.walk(followlinks=True) yields (stops at ``limit``): the behaviour fixed here."""
    n = 0
    for _, _, fs in os.walk(top, followlinks=True):
        n += len(fs)
        if n >= limit:
            break
    return n


def test_loop_to_ancestor_lists_each_file_once(tmp_path):
    root = tmp_path / "data"
    _img(str(root / "cls" / "a.png"))
    _img(str(root / "cls" / "sub" / "b.png"))
    os.symlink(str(root), str(root / "cls" / "sub" / "back"))  # loop back to the top
    assert _naive_walk_count(str(root)) > 2  # the stdlib walk repeats the files
    assert _run_with_timeout(lambda: _files(str(root))) == ["cls/a.png", "cls/sub/b.png"]
    assert _run_with_timeout(lambda: list_files(str(root))) == ["cls/a.png", "cls/sub/b.png"]
    src = _run_with_timeout(lambda: list_image_folder(str(root)))
    assert sorted(src.relpaths[i] for i in range(len(src.relpaths))) == ["cls/a.png", "cls/sub/b.png"]


def test_two_crossed_loops_finish(tmp_path):
    root = tmp_path / "data"
    for d in ("x", "y"):
        for i in range(3):
            _img(str(root / d / f"{i}.png"))
    # x/to_y -> y and y/to_x -> x, plus each one back to the root: exponential for os.walk
    os.symlink(str(root / "y"), str(root / "x" / "to_y"))
    os.symlink(str(root / "x"), str(root / "y" / "to_x"))
    os.symlink(str(root), str(root / "x" / "up"))
    os.symlink(str(root), str(root / "y" / "up"))
    assert _naive_walk_count(str(root), limit=500) >= 500
    files = _run_with_timeout(lambda: _files(str(root)))
    assert files == [f"{d}/{i}.png" for d in ("x", "y") for i in range(3)]


def test_real_path_wins_and_outside_links_are_followed_once(tmp_path):
    outside = tmp_path / "outside"
    _img(str(outside / "o.png"))
    root = tmp_path / "data"
    _img(str(root / "z_real" / "r.png"))
    os.symlink(str(root / "z_real"), str(root / "a_link"))  # sorts before its target
    os.symlink(str(outside), str(root / "ext1"))
    os.symlink(str(outside), str(root / "ext2"))  # a second link to the same real folder
    assert _files(str(root)) == ["ext1/o.png", "z_real/r.png"]


def test_pruning_and_broken_links(tmp_path):
    root = tmp_path / "data"
    _img(str(root / "keep" / "k.png"))
    _img(str(root / ".hidden" / "h.png"))
    os.symlink(str(tmp_path / "missing"), str(root / "dangling"))
    out = []
    for d, dirnames, files in walk_unique(str(root)):
        dirnames[:] = [n for n in dirnames if not n.startswith(".")]
        out.extend(os.path.relpath(os.path.join(d, f), root) for f in files)
    assert sorted(out) == ["dangling", "keep/k.png"]  # a dangling link is a (non-dir) entry, like os.walk
    assert list(walk_unique(str(tmp_path / "nope"))) == []
