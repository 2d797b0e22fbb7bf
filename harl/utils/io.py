"""Atomic file writes (temporary name in the same folder, fsync, ``os.replace``); no heavy imports."""

from __future__ import annotations

import glob
import os
import re
import secrets
from typing import Any, List


def tmp_path(path: str) -> str:
    """A unique temporary name beside ``path`` (same filesystem, so the rename is atomic)."""
    return f"{path}.tmp-{os.getpid()}-{secrets.token_hex(3)}"


def atomic_write_bytes(path: str, data: bytes, fsync: bool = True) -> None:
    """Write ``data`` under a temporary name beside ``path``, then rename it into place: a kill leaves
    the old file or the new one, never a partial file. ``fsync=False`` for many small, regenerable
    files (masks)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def fsync_path(path: str) -> None:
    """Flush a file's (or a folder's: a rename inside it) data to disk; folders that cannot be
    opened for reading (some filesystems) are skipped."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if os.path.isdir(path) else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:
        if os.path.isdir(path):
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not os.path.isdir(path):
            raise
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str) -> None:
    import torch

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = tmp_path(path)
    try:
        torch.save(obj, tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def metrics_files(run_dir: str) -> List[str]:
    """A run's CSV logs in chronological order (earlier parts of resumed runs first)."""
    parts = glob.glob(os.path.join(glob.escape(run_dir), "metrics.before-resume-*.csv"))
    parts.sort(key=lambda p: int(re.search(r"-(\d+)\.csv$", p).group(1)))
    last = os.path.join(run_dir, "metrics.csv")
    return parts + ([last] if os.path.isfile(last) else [])
