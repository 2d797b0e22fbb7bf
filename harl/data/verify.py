"""``data.verify``: a pre-flight check of every image (and mask) before the first training step.

Modes:

- ``quick``: every file's header — it exists, is not empty, PIL recognises its format and reads
  its size; a mask exists (``on_missing=error``) and has its image's size (``on_size_mismatch=error``).
  A file truncated after a valid header passes ``quick``.
- ``full``: every image and mask is decoded completely with the project's readers
  (:func:`~harl.data.image_io.read_image`, :func:`~harl.data.image_io.read_mask`), so anything
  that would fail during training fails here.

Files are checked in parallel (``data.num_workers`` threads; decoding releases the GIL) with a
progress bar on a terminal. Results are cached per file by size and modification time in
``<checkpoint.dir>/verify_cache/`` (a ``full`` result also answers ``quick``), so a second start
re-reads only files that changed. Every bad file is reported at once: without
``data.skip_corrupt`` the run does not start (:class:`DataVerifyError` lists them, exit code 2);
with it, the bad items are skipped from the first step, with one warning that names them.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from PIL import Image

from harl.errors import ConfigError
from harl.data.image_io import _open_any, read_image, read_mask
from harl.data.sources import FolderSource, ImageSource, SubsetSource
from harl.utils.io import atomic_write_text
from harl.errors import DataVerifyError

LEVELS = {"quick": 1, "full": 2}
_CACHE_VERSION = 1


@dataclass
class Problem:
    index: int  # dataset item
    path: str  # the file at fault
    reason: str


def image_path(source: ImageSource, i: int) -> Optional[str]:
    """The file of item ``i`` (None for in-memory sources)."""
    i = int(i)
    while isinstance(source, SubsetSource):
        i, source = int(source.indices[i]), source.base
    return source.path(i) if isinstance(source, FolderSource) else None


def _probe(path: str, kind: str, level: int) -> Tuple[Optional[str], Optional[Tuple[int, int]]]:
    """(reason or None, (W, H) or None) of one file; ``kind``: image | mask."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)", None
    except FileNotFoundError:
        return "file not found", None
    except OSError as err:
        return f"cannot stat: {err}", None
    try:
        if level >= LEVELS["full"]:
            if kind == "image":
                return None, read_image(path).size
            arr = read_mask(path)
            return None, (int(arr.shape[1]), int(arr.shape[0]))
        with open(path, "rb") as f:
            img = _open_any(f, path)
            return None, img.size
    except Exception as err:  # noqa: BLE001 - any failure is this file's problem
        text = str(err)
        prefix = f"cannot read image '{path}': "
        return (text[len(prefix):] if text.startswith(prefix) else f"{type(err).__name__}: {text}"), None


class _Cache:
    """path → [size, mtime_ns, level, reason, W, H] for files whose size and mtime did not change."""

    def __init__(self, path: Optional[str]):
        self.path = path
        self.rows: Dict[str, list] = {}
        if path and os.path.isfile(path):
            try:
                with open(path) as f:
                    data = json.load(f)
                if data.get("version") == _CACHE_VERSION:
                    self.rows = data["files"]
            except (OSError, ValueError, KeyError, TypeError):
                self.rows = {}
        self.dirty = False

    @staticmethod
    def _stat(path: str) -> Optional[Tuple[int, int]]:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return int(st.st_size), int(st.st_mtime_ns)

    def get(self, path: str, level: int):
        row = self.rows.get(path)
        st = self._stat(path)
        if row is None or st is None or (row[0], row[1]) != st or row[2] < level:
            return None
        return row[3], (tuple(row[4:6]) if row[4] is not None else None)

    def put(self, path: str, level: int, reason: Optional[str], size: Optional[Tuple[int, int]]) -> None:
        st = self._stat(path)
        if st is None:  # missing files are not cached
            return
        w, h = size if size is not None else (None, None)
        self.rows[path] = [st[0], st[1], level, reason, w, h]
        self.dirty = True

    def save(self) -> None:
        if self.path and self.dirty:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            atomic_write_text(self.path, json.dumps({"version": _CACHE_VERSION, "files": self.rows}))


def verify_dataset(dataset: Any, mode: str = "quick", workers: int = 4, cache_path: Optional[str] = None,
                   progress: Optional[bool] = None, what: str = "data") -> List[Problem]:
    """Check every item of ``dataset`` (a :class:`~harl.data.datasets._SourceDataset`); returns all problems.

    ``progress``: None shows a bar only on a terminal.
    """
    if mode not in LEVELS:
        raise ValueError(f"verify mode must be one of {list(LEVELS)}, got {mode!r}")
    level = LEVELS[mode]
    source = dataset.source
    reader = getattr(dataset, "mask_reader", None)
    n = len(source)
    files: Dict[str, str] = {}  # path -> kind
    items: List[Tuple[Optional[str], Optional[str]]] = []
    for i in range(n):
        ip = image_path(source, i)
        mp = reader.path(source, i) if reader is not None else None
        if ip is not None:
            files[ip] = "image"
        if mp is not None:
            files[mp] = "mask"
        items.append((ip, mp))

    cache = _Cache(cache_path)
    results: Dict[str, Tuple[Optional[str], Optional[Tuple[int, int]]]] = {}
    todo = []
    for p, kind in files.items():
        hit = cache.get(p, level)
        if hit is not None:
            results[p] = hit
        else:
            todo.append((p, kind))
    if todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"verify {what} ({mode})", unit="file", dynamic_ncols=True,
                   file=sys.stderr, disable=None if progress is None else not progress)
        try:
            with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
                for (p, kind), res in zip(todo, pool.map(lambda t: _probe(t[0], t[1], level), todo)):
                    results[p] = res
                    cache.put(p, level, *res)
                    bar.update(1)
        finally:
            bar.close()
            cache.save()

    problems: List[Problem] = []
    for i, (ip, mp) in enumerate(items):
        if ip is not None and results[ip][0] is not None:
            problems.append(Problem(i, ip, results[ip][0]))
            continue
        if mp is None:
            continue
        reason, msize = results[mp]
        if reason == "file not found":
            if reader.on_missing == "error":
                problems.append(Problem(i, mp, f"mask not found for image '{ip or source.describe(i)}' "
                                               "(data.masks.on_missing=error)"))
        elif reason is not None:
            problems.append(Problem(i, mp, reason))
        elif ip is not None and reader.on_size_mismatch == "error" and msize != results[ip][1]:
            iw, ih = results[ip][1]
            problems.append(Problem(i, mp, f"mask is {msize[0]}×{msize[1]} (W×H) but its image '{ip}' is {iw}×{ih} "
                                           "(data.masks.on_size_mismatch=error)"))
    return problems


def cache_file(cfg: Any, dataset: Any, split: str) -> str:
    src = dataset.source
    while isinstance(src, SubsetSource):
        src = src.base
    roots = [os.path.abspath(str(getattr(src, "root", getattr(src, "name", "")))), split]
    reader = getattr(dataset, "mask_reader", None)
    if reader is not None:
        roots.append(os.path.abspath(reader.root))
    key = hashlib.sha1("\n".join(roots).encode()).hexdigest()[:16]
    return os.path.join(str(cfg.checkpoint.dir), "verify_cache", f"{key}.json")


def format_problems(problems: Sequence[Problem], total: int, mode: str, max_lines: int = 50) -> str:
    lines = [f"data.verify={mode} found {len(problems)} unreadable file(s) among {total} items:"]
    lines += [f"  {p.path}: {p.reason}" for p in problems[:max_lines]]
    if len(problems) > max_lines:
        lines.append(f"  ... and {len(problems) - max_lines} more")
    return "\n".join(lines)


def verify_for_training(cfg: Any, train_ds: Any, val_ds: Any = None) -> None:
    """Run ``cfg.data.verify`` on the training (and validation) set: raise listing every bad file,
    or with ``skip_corrupt`` warn once and skip them from the first step."""
    mode = str(cfg.data.verify)
    found = []
    for split, ds in (("train", train_ds), ("val", val_ds)):
        if ds is None:
            continue
        problems = verify_dataset(ds, mode, workers=max(1, int(cfg.data.num_workers)),
                                  cache_path=cache_file(cfg, ds, split), what=split)
        found.append((split, ds, problems))
    bad = [(split, ds, p) for split, ds, ps in found for p in ps]
    if not bad:
        return
    total = sum(len(ds) for _, ds, _ in found)
    text = format_problems([p for _, _, p in bad], total, mode)
    if not cfg.data.skip_corrupt:
        raise DataVerifyError(text + "\nfix or remove them, or set data.skip_corrupt=true to skip them")
    for split, ds, ps in found:
        ds.mark_unreadable([p.index for p in ps])
    warnings.warn(text + "\nthese items are skipped (data.skip_corrupt=true)")


__all__ = ["Problem", "verify_dataset", "verify_for_training", "format_problems", "LEVELS"]
