"""A directory walk that follows symlinks at most once per real directory.

``os.walk(top, followlinks=True)`` enters a symlinked folder every time it meets a link to it: a
link back to an ancestor lists the same files again at every depth until the path grows too long,
and two links pointing at each other's ancestors make the walk run for hours. :func:`walk_unique`
has ``os.walk``'s interface (``(dirpath, dirnames, filenames)`` top-down; a caller may prune
``dirnames`` in place) and these rules:

- every real directory (same ``(st_dev, st_ino)``) is entered once, so each file is yielded once
  and any symlink loop ends;
- a real folder inside ``top`` is always listed under its real path: the plain folders are walked
  first and symlinked folders afterwards, each only if its target was not reached already;
- symlinked folders that point outside ``top`` are walked (under the link's path), once;
- unreadable folders are skipped, as ``os.walk`` does by default.

Only the standard library is used.
"""

from __future__ import annotations

import os
from typing import Iterator, List, Set, Tuple

Walk = Iterator[Tuple[str, List[str], List[str]]]


def _dir_key(path: str) -> Tuple[int, int]:
    st = os.stat(path)  # follows the link: the identity of the real directory
    return st.st_dev, st.st_ino


def walk_unique(top: str) -> Walk:
    """``os.walk(top, followlinks=True)`` without revisiting a real directory (see the module doc).

    ``dirnames`` and ``filenames`` are sorted; ``dirnames`` holds plain and symlinked folders
    (minus those already reached another way); removing a name from it skips that folder.
    """
    top = os.fspath(top)
    try:
        seen: Set[Tuple[int, int]] = {_dir_key(top)}
    except OSError:
        return
    links: List[str] = []  # symlinked folders met so far, walked after the plain tree
    roots = [top]
    while roots:
        stack = [roots.pop(0)]
        while stack:
            dirpath = stack.pop()
            try:
                with os.scandir(dirpath) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError:
                continue
            dirnames, filenames, is_link = [], [], {}
            for e in entries:
                try:
                    is_dir = e.is_dir()  # follows symlinks
                except OSError:
                    is_dir = False
                if is_dir:
                    dirnames.append(e.name)
                    is_link[e.name] = e.is_symlink()
                else:
                    filenames.append(e.name)
            # a plain sub-folder already reached (bind mount) or a link into it is dropped
            dirnames = [d for d in dirnames if is_link[d] or _mark(seen, os.path.join(dirpath, d))]
            yield dirpath, dirnames, filenames
            plain = [d for d in dirnames if not is_link.get(d, False)]
            links.extend(os.path.join(dirpath, d) for d in dirnames if is_link.get(d, False))
            stack.extend(os.path.join(dirpath, d) for d in reversed(plain))
        while links and not roots:
            link = links.pop(0)
            if _mark(seen, link):
                roots.append(link)


def _mark(seen: Set[Tuple[int, int]], path: str) -> bool:
    """Add ``path``'s real directory to ``seen``; False when it was there (or cannot be stat'ed)."""
    try:
        key = _dir_key(path)
    except OSError:
        return False
    if key in seen:
        return False
    seen.add(key)
    return True
