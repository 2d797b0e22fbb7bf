"""File I/O for mask generation: walking image trees, reading images and masks, writing PNG masks.

Conventions (docs/masks.md):

- An image tree is walked recursively (symlinks followed, like torchvision's ``ImageFolder``, but
  each real folder once: :func:`harl.utils.walk.walk_unique`, so links cannot duplicate or loop);
  files with a common image extension (:data:`IMAGE_EXTENSIONS`, case-insensitive) are kept;
  hidden files and folders (name starting with ``.``) are skipped. Relative paths use ``/`` and
  are sorted as strings, so the order (and hence ``--shard i/n``) is the same on every machine.
- A mask lives at the image's relative path with the extension changed to ``.png``
  (:func:`mask_relpath`); it is an 8-bit single-channel PNG with values {0, 255}; a pixel is
  foreground iff its value is > 0 (or > a caller-given threshold).
- Images are read with the project's image reader (:func:`harl.utils.image_io.read_image`: RGB
  from grayscale, palette, RGBA, CMYK, 16-bit; EXIF orientation not applied), so a mask is
  computed on exactly the pixels the training loader sees.
- Existing masks in foreign formats (``import``, ``eval``) are read by
  :func:`harl.utils.image_io.read_mask_values` (re-exported here), which keeps the stored values so
  that a ``--threshold`` can be applied; it shares its decoder and value rule with the training
  loader's :func:`harl.utils.image_io.read_mask` (fg ⇔ value > 0, colour masks: any colour channel,
  palette masks: the index).
"""

from __future__ import annotations

import io
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from harl.utils.image_io import IMG_EXTENSIONS, read_image, read_mask_values  # noqa: F401  (re-exported)
from harl.utils.walk import walk_unique
from harl.errors import ImageReadError
from harl.errors import CorruptImageError

# the project's list (harl.utils.image_io.IMG_EXTENSIONS, torchvision ImageFolder's)
IMAGE_EXTENSIONS = IMG_EXTENSIONS
# formats accepted for *existing* masks (``harl-masks import`` / ``eval``): images plus numpy arrays
MASK_EXTENSIONS = IMAGE_EXTENSIONS + (".gif", ".npy")

TMP_RE = re.compile(r"\.tmp-\d+-[0-9a-f]+$")


# ---------------------------------------------------------------------------------------------
# walking
# ---------------------------------------------------------------------------------------------


def has_extension(name: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> bool:
    return name.lower().endswith(tuple(extensions))


def list_files(root: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> List[str]:
    """Sorted ``/``-separated relative paths of the files under ``root`` with one of ``extensions``.

    Hidden files and folders are skipped; symlinked folders are followed, each real folder once.
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder '{root}' does not exist")
    out = []
    for dirpath, dirnames, filenames in walk_unique(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = os.path.relpath(dirpath, root)
        for name in filenames:
            if name.startswith(".") or not has_extension(name, extensions):
                continue
            rel = name if rel_dir == "." else os.path.join(rel_dir, name)
            out.append(rel.replace(os.sep, "/"))
    out.sort()
    return out


def read_file_list(path: str) -> List[str]:
    """Relative paths from a text file (one per line; blank lines and ``#`` comments ignored), sorted."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"file list '{path}' does not exist")
    with open(path, encoding="utf-8") as f:
        rels = [ln.strip().replace("\\", "/") for ln in f]
    rels = sorted({r for r in rels if r and not r.startswith("#")})
    bad = [r for r in rels if r.startswith("/") or ".." in r.split("/")]
    if bad:
        raise ValueError(f"file list '{path}': paths must be relative to --images (e.g. '{bad[0]}')")
    return rels


def mask_relpath(relpath: str) -> str:
    """``'cls/img.JPEG'`` → ``'cls/img.png'``: where an image's mask lives in a masks tree."""
    return os.path.splitext(relpath)[0] + ".png"


def find_mask_collisions(relpaths: Sequence[str]) -> Dict[str, str]:
    """Images whose mask path is already taken by an earlier (sorted) image: ``{relpath: earlier}``.

    ``a.jpg`` and ``a.png`` in one folder would both write ``a.png``; the first one in sorted
    order keeps it and the others are reported.
    """
    owner: Dict[str, str] = {}
    clashes: Dict[str, str] = {}
    for rel in relpaths:
        key = mask_relpath(rel)
        if key in owner:
            clashes[rel] = owner[key]
        else:
            owner[key] = rel
    return clashes


def shard_select(relpaths: Sequence[str], index: int, count: int) -> List[str]:
    """Shard ``index`` of ``count``: every ``count``-th path starting at ``index`` (strided).

    Strided (not contiguous) so every shard sees every class folder; shards are disjoint and
    their union is the whole (sorted) list.
    """
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"invalid shard {index}/{count}: need 0 <= i < n")
    return list(relpaths[index::count])


def parse_shard(text: str) -> Tuple[int, int]:
    """``"3/8"`` → ``(3, 8)`` (0-based index); raises ``ValueError`` with the expected form."""
    try:
        i, n = (int(p) for p in str(text).split("/"))
    except ValueError:
        raise ValueError(f"--shard expects 'i/n' with 0 <= i < n (e.g. 0/4), got '{text}'") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard expects 'i/n' with 0 <= i < n (e.g. 0/4), got '{text}'")
    return i, n


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------


def read_image_rgb(path: str) -> np.ndarray:
    """Read an image as H×W×3 uint8 RGB with the project's one image reader
    (:func:`harl.utils.image_io.read_image`: same pixels as the training loader).

    Raises :class:`ImageReadError` naming the file (missing, truncated, corrupt, unsupported).
    """
    try:
        arr = np.asarray(read_image(path), dtype=np.uint8)
    except CorruptImageError as err:
        raise ImageReadError(str(err)) from err
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageReadError(f"'{path}': unexpected image shape {arr.shape}")
    return np.ascontiguousarray(arr)


def read_image_size(path: str) -> Tuple[int, int]:
    """(height, width) of an image from its header (the pixels are not decoded)."""
    try:
        with Image.open(path) as img:
            w, h = img.size
    except FileNotFoundError:
        raise ImageReadError(f"'{path}': file does not exist") from None
    except Exception as err:  # noqa: BLE001
        raise ImageReadError(f"'{path}': cannot read image ({type(err).__name__}: {err})") from err
    return int(h), int(w)


def read_mask(path: str, threshold: float = 0.0) -> np.ndarray:
    """Read a mask file as an H×W bool array: foreground iff value > ``threshold``."""
    return read_mask_values(path) > threshold


def find_mask_file(masks_root: str, relpath: str, extensions: Sequence[str] = MASK_EXTENSIONS) -> Optional[str]:
    """The mask for image ``relpath`` in ``masks_root``: same path, any mask extension (``.png`` first)."""
    stem = os.path.splitext(relpath)[0]
    candidates = [".png"] + [e for e in extensions if e != ".png"]
    for ext in candidates:
        for e in (ext, ext.upper()):
            p = os.path.join(masks_root, stem + e)
            if os.path.isfile(p):
                return p
    # same stem with the image's own extension (e.g. masks stored as .JPEG by mistake) or mixed case
    folder = os.path.join(masks_root, os.path.dirname(stem))
    base = os.path.basename(stem)
    if os.path.isdir(folder):
        for name in sorted(os.listdir(folder)):
            s, e = os.path.splitext(name)
            if s == base and e.lower() in extensions:
                return os.path.join(folder, name)
    return None


# ---------------------------------------------------------------------------------------------
# writing: masks are encoded here and written with harl.utils.io.atomic_write_bytes(fsync=False)
# (millions of small files; a rerun regenerates any file lost to a power failure). A stale
# ``*.tmp-*`` may remain after a kill; the runner removes those of its own shard on restart.
# ---------------------------------------------------------------------------------------------


def is_tmp_name(name: str) -> bool:
    return bool(TMP_RE.search(name))


def encode_mask_png(mask: np.ndarray) -> bytes:
    """H×W bool (or any numeric, fg = > 0) → bytes of an 8-bit grayscale PNG with values {0, 255}."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask must be H×W, got shape {mask.shape}")
    buf = io.BytesIO()
    Image.fromarray(np.where(mask > 0, 255, 0).astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()
