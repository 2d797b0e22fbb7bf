"""Image sources: indexable (image, target) collections before any transform.

A source knows how to load image ``i`` (an RGB ``PIL.Image``), its target (``targets[i]``,
−1 when unlabeled), a name for messages (``describe(i)``: the file path), and where its mask
lives relative to a masks root (``mask_relpath(i, suffix)``):

- :class:`FolderSource` (ImageFolder trees and flat folders): the image's relative path with the
  extension replaced by ``suffix`` (``cls/img.JPEG`` → ``cls/img.png``);
- :class:`ArraySource` (torchvision sets, Fashion-MNIST): ``<index:06d><suffix>``;
- :class:`SubsetSource` keeps the base source's addressing (masks of a ``data.fraction`` subset
  are looked up by their index in the full set).

Paths are stored as one bytes blob + offsets (no per-item Python objects), so an ImageNet-size
listing costs tens of MB and is not duplicated by copy-on-access in forked loader workers.
"""

from __future__ import annotations

import os
from typing import List, Optional, Sequence

import numpy as np
from PIL import Image

from harl.data.image_io import IMG_EXTENSIONS, is_image_file, read_image
from harl.errors import DatasetNotFoundError
from harl.utils.walk import walk_unique


class PathList:
    """An immutable list of relative paths stored compactly (utf-8/fs-encoded blob + offsets)."""

    def __init__(self, paths: Sequence[str]):
        encoded = [os.fsencode(p) for p in paths]
        lengths = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded))
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self._offsets[1:])
        self._blob = np.frombuffer(b"".join(encoded), dtype=np.uint8) if encoded else np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> str:
        i = int(i)
        if i < 0:
            i += len(self)
        a, b = self._offsets[i], self._offsets[i + 1]
        return os.fsdecode(self._blob[a:b].tobytes())


class ImageSource:
    """Base class: ``len``, ``targets`` (int64 numpy), ``load_image``, ``describe``, ``mask_relpath``."""

    targets: np.ndarray
    #: label names, index = target (empty when unlabeled / unknown)
    classes: List[str] = []

    def __len__(self) -> int:
        return int(len(self.targets))

    def load_image(self, i: int) -> Image.Image:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self, i: int) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def mask_relpath(self, i: int, suffix: str) -> str:  # pragma: no cover - abstract
        raise NotImplementedError


class FolderSource(ImageSource):
    """Images under ``root`` at relative paths ``relpaths`` with integer ``targets``."""

    def __init__(self, root: str, relpaths: Sequence[str], targets: Sequence[int], classes: Sequence[str] = ()):
        self.root = os.fspath(root)
        self.relpaths = relpaths if isinstance(relpaths, PathList) else PathList(relpaths)
        self.targets = np.asarray(targets, dtype=np.int64)
        self.classes = list(classes)
        if len(self.relpaths) != len(self.targets):
            raise ValueError("relpaths and targets differ in length")

    def path(self, i: int) -> str:
        return os.path.join(self.root, self.relpaths[i])

    def load_image(self, i: int) -> Image.Image:
        return read_image(self.path(i))

    def describe(self, i: int) -> str:
        return self.path(i)

    def mask_relpath(self, i: int, suffix: str) -> str:
        return os.path.splitext(self.relpaths[i])[0] + suffix


class ArraySource(ImageSource):
    """In-memory uint8 images: N×H×W (grayscale), N×H×W×3, or N×3×H×W (``channels_first``)."""

    def __init__(self, name: str, images: np.ndarray, targets: Sequence[int], classes: Sequence[str] = (),
                 channels_first: bool = False):
        self.name = name
        self.images = images
        self.targets = np.asarray(targets, dtype=np.int64)
        self.classes = list(classes)
        self.channels_first = channels_first
        if len(images) != len(self.targets):
            raise ValueError(f"{name}: {len(images)} images but {len(self.targets)} targets")

    def load_image(self, i: int) -> Image.Image:
        arr = np.asarray(self.images[int(i)])
        if arr.ndim == 2:
            return Image.fromarray(arr, "L").convert("RGB")
        if self.channels_first:
            arr = np.ascontiguousarray(arr.transpose(1, 2, 0))
        return Image.fromarray(arr, "RGB")

    def describe(self, i: int) -> str:
        return f"{self.name}[{int(i)}]"

    def mask_relpath(self, i: int, suffix: str) -> str:
        return f"{int(i):06d}{suffix}"


class SubsetSource(ImageSource):
    """``base`` restricted to ``indices`` (masks and messages keep the base's addressing)."""

    def __init__(self, base: ImageSource, indices: Sequence[int]):
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        self.targets = base.targets[self.indices]
        self.classes = base.classes

    def load_image(self, i: int) -> Image.Image:
        return self.base.load_image(int(self.indices[i]))

    def describe(self, i: int) -> str:
        return self.base.describe(int(self.indices[i]))

    def mask_relpath(self, i: int, suffix: str) -> str:
        return self.base.mask_relpath(int(self.indices[i]), suffix)


# ---------------------------------------------------------------------------------------------
# Listing image folders (torchvision ImageFolder order: classes by name, files by sorted os.walk)
# ---------------------------------------------------------------------------------------------


def check_dir(path: Optional[str], what: str) -> str:
    """``path`` must be set and be an existing directory; returns it (an error names it otherwise)."""
    if path is None or str(path) == "":
        raise DatasetNotFoundError(f"{what} is not set")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DatasetNotFoundError(f"{what} '{path}' does not exist")
    if not os.path.isdir(path):
        raise DatasetNotFoundError(f"{what} '{path}' is not a directory")
    return path


def _walk_images(top: str, rel_to: str) -> List[str]:
    out = []
    for dirpath, _, fnames in sorted(walk_unique(top)):
        for fname in sorted(fnames):
            if is_image_file(fname):
                out.append(os.path.relpath(os.path.join(dirpath, fname), rel_to))
    return out


def list_image_folder(root: str, labeled: bool = True, what: str = "image folder") -> FolderSource:
    """List an ImageFolder tree ``<root>/<class>/**/<img>`` (``labeled``) or every image under
    ``root`` recursively with target −1. Errors name the path when the folder is missing, empty,
    has no class folders, or a class folder holds no image."""
    root = check_dir(root, what)
    exts = ", ".join(IMG_EXTENSIONS)
    if not labeled:
        rel = _walk_images(root, root)
        if not rel:
            raise DatasetNotFoundError(f"{what} '{root}' contains no images (looked recursively for {exts})")
        return FolderSource(root, rel, np.full(len(rel), -1, dtype=np.int64))
    entries = list(os.scandir(root))
    classes = sorted(e.name for e in entries if e.is_dir())
    if not classes:
        n_flat = sum(1 for e in entries if e.is_file() and is_image_file(e.name))
        if n_flat:
            raise DatasetNotFoundError(
                f"{what} '{root}' has no class sub-folders but {n_flat} images directly in it; "
                "for an unlabeled flat folder set data.no_labels=true")
        raise DatasetNotFoundError(f"{what} '{root}' is empty (expected <class>/<image> sub-folders)")
    rel: List[str] = []
    targets: List[int] = []
    empty = []
    for t, cls in enumerate(classes):
        files = _walk_images(os.path.join(root, cls), root)
        if not files:
            empty.append(cls)
        rel.extend(files)
        targets.extend([t] * len(files))
    if not rel:
        raise DatasetNotFoundError(f"{what} '{root}' contains no images in its class folders (looked for {exts})")
    if empty:
        shown = ", ".join(repr(os.path.join(root, c)) for c in empty[:5])
        more = f" and {len(empty) - 5} more" if len(empty) > 5 else ""
        raise DatasetNotFoundError(f"{what} '{root}': class folder(s) without images: {shown}{more}")
    return FolderSource(root, rel, targets, classes)


# ---------------------------------------------------------------------------------------------
# data.fraction: seeded, class-stratified subset
# ---------------------------------------------------------------------------------------------

FRACTION_SEED = 42  # solo-learn's train_test_split(random_state=42)


def stratified_subset(targets: Sequence[int], fraction: float, seed: int = FRACTION_SEED) -> np.ndarray:
    """Sorted indices of a class-stratified subset holding ``floor(fraction·N)`` (≥ 1) samples.

    Each class c gets ⌊fraction·n_c⌋ samples, and the remaining ones go to the classes with the
    largest fractional parts (ties: lower class value first), so class proportions are kept to
    within one sample. Which samples of a class are kept is drawn with a private
    ``numpy.random.default_rng(seed)`` (the global RNG is untouched). Unlabeled (−1) samples form
    one stratum.
    """
    fraction = float(fraction)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"data.fraction must be in (0, 1) for a subset, got {fraction}")
    targets = np.asarray(targets, dtype=np.int64)
    n = len(targets)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    classes, inverse, counts = np.unique(targets, return_inverse=True, return_counts=True)
    total = max(1, int(np.floor(fraction * n)))
    quota = fraction * counts
    take = np.floor(quota).astype(np.int64)
    rest = total - int(take.sum())
    if rest > 0:
        order = np.argsort(-(quota - take), kind="stable")
        take[order[:rest]] += 1
    rng = np.random.default_rng(seed)
    chosen = []
    for k in range(len(classes)):
        idx = np.flatnonzero(inverse == k)
        chosen.append(idx[rng.permutation(len(idx))[: take[k]]])
    return np.sort(np.concatenate(chosen))
