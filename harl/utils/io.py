"""Atomic file writes (temporary name in the same folder, fsync, ``os.replace``); no heavy imports."""

from __future__ import annotations

import glob
import os
import re
import secrets
from typing import Any, Callable, List, Optional


def tmp_path(path: str) -> str:
    """A unique temporary name beside ``path`` (same filesystem, so the rename is atomic)."""
    return f"{path}.tmp-{os.getpid()}-{secrets.token_hex(3)}"


def atomic_write_with(path: str, write: Callable[[str], Any], fsync: bool = True,
                      tmp: Optional[str] = None) -> None:
    """The project's one atomic writer: ``write(tmp)`` fills a temporary file beside ``path``
    (:func:`tmp_path`, or the given ``tmp``: Lightning checkpoints use ``<ckpt>.tmp``), which is
    fsynced (unless ``fsync=False``) and renamed into place, so a kill leaves the old file or the
    new one, never a partial file. The temporary file is removed when anything fails. ``write``
    gets a path (so ``torch.save``, safetensors and Lightning can write it).
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = tmp_path(path) if tmp is None else tmp
    try:
        write(tmp)
        if fsync:
            fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_bytes(path: str, data: bytes, fsync: bool = True) -> None:
    """Write ``data`` atomically (:func:`atomic_write_with`). ``fsync=False`` for many small,
    regenerable files (masks)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write_with(path, write, fsync=fsync)


def atomic_write_text(path: str, text: str, fsync: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


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

    atomic_write_with(path, lambda tmp: torch.save(obj, tmp))


def metrics_files(run_dir: str) -> List[str]:
    """A run's CSV logs in chronological order (earlier parts of resumed runs first)."""
    parts = glob.glob(os.path.join(glob.escape(run_dir), "metrics.before-resume-*.csv"))
    parts.sort(key=lambda p: int(re.search(r"-(\d+)\.csv$", p).group(1)))
    last = os.path.join(run_dir, "metrics.csv")
    return parts + ([last] if os.path.isfile(last) else [])
