"""Labelled subsets for semi-supervised evaluation: seeded, class-balanced selection, a held-out
split for hyper-parameter search, and subset lists on disk.

- :func:`class_balanced_subset`: a fraction of every class (proportional, the remainder going to
  the classes with the largest fractional parts; ImageNet 1 % → 12 or 13 images per class) or a
  fixed number of images per class. Deterministic for a given ``(targets, seed)``.
- :func:`holdout_split`: a class-stratified held-out part of a (labelled) subset for choosing the
  learning rate; every class keeps at least one training image.
- :func:`write_subset_list` / :func:`read_subset_list`: one item per line, identified by its
  path relative to the dataset root (image folders) or by its index (array datasets such as
  CIFAR / Fashion-MNIST). Reading also accepts the standard ImageNet 1 % / 10 % lists of SimCLR
  (one bare file name per line, ``n01440764_10026.JPEG``), matched on the file's base name.
  Lines starting with ``#`` are comments.
"""

from __future__ import annotations

import os
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from harl.checkpoint import atomic_write_text
from harl.errors import ConfigError
from harl.data.sources import FolderSource, ImageSource, SubsetSource, stratified_subset
from harl.errors import SubsetListError


def _check_labelled(targets: np.ndarray, what: str) -> None:
    if len(targets) and int(targets.min()) < 0:
        raise ValueError(f"{what}: {int((targets < 0).sum())} item(s) have no label (target -1); a labelled "
                         "subset needs a labelled dataset")


def class_balanced_subset(targets: Sequence[int], *, fraction: Optional[float] = None,
                          per_class: Optional[int] = None, seed: int = 0) -> np.ndarray:
    """Sorted indices of a seeded, class-balanced subset of ``targets``.

    Exactly one of

    - ``fraction`` in (0, 1]: ⌊fraction·N⌋ items with each class's share kept (largest
      remainder; :func:`harl.data.sources.stratified_subset`); 1 → everything;
    - ``per_class`` ≥ 1: that many items of every class (a class with fewer keeps all of them,
      with a warning).

    The draw uses ``numpy.random.default_rng`` streams derived from ``seed`` only (the global RNG
    is untouched), so the same targets and seed always give the same subset.
    """
    targets = np.asarray(targets, dtype=np.int64)
    _check_labelled(targets, "class_balanced_subset")
    if (fraction is None) == (per_class is None):
        raise ValueError("give exactly one of fraction and per_class")
    if fraction is not None:
        fraction = float(fraction)
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        if fraction == 1.0:
            return np.arange(len(targets), dtype=np.int64)
        return stratified_subset(targets, fraction, seed=seed)
    per_class = int(per_class)
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    chosen: List[np.ndarray] = []
    short = []
    for c in np.unique(targets):
        idx = np.flatnonzero(targets == c)
        # one stream per class: a class's pick does not depend on which other classes exist
        rng = np.random.default_rng([int(seed), int(c)])
        if len(idx) < per_class:
            short.append(f"{int(c)} ({len(idx)})")
        chosen.append(idx[rng.permutation(len(idx))[:per_class]])
    if short:
        warnings.warn(f"class_balanced_subset: {len(short)} class(es) have fewer than {per_class} items and "
                      f"keep all of them: {', '.join(short[:10])}{' ...' if len(short) > 10 else ''}")
    if not chosen:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(chosen))


def holdout_split(targets: Sequence[int], fraction: float = 0.2, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Split positions ``0..len(targets)-1`` into (train, held-out), both sorted.

    Each class with n ≥ 2 items holds out ``clip(round(fraction·n), 1, n − 1)`` of them; a class
    with a single item keeps it for training. Seeded per class like :func:`class_balanced_subset`.
    """
    targets = np.asarray(targets, dtype=np.int64)
    fraction = float(fraction)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"held-out fraction must be in (0, 1), got {fraction}")
    train, held = [], []
    for c in np.unique(targets):
        idx = np.flatnonzero(targets == c)
        rng = np.random.default_rng([int(seed), int(c), 1])
        perm = idx[rng.permutation(len(idx))]
        n_out = 0 if len(idx) < 2 else int(np.clip(round(fraction * len(idx)), 1, len(idx) - 1))
        held.append(perm[:n_out])
        train.append(perm[n_out:])
    cat = lambda parts: np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)  # noqa: E731
    train_idx, held_idx = cat(train), cat(held)
    if len(held_idx) == 0:
        raise ValueError("held-out split is empty: every class has a single labelled item; give the learning "
                         "rate explicitly instead of searching it")
    return train_idx, held_idx


# ---------------------------------------------------------------------------------------------
# subset lists on disk
# ---------------------------------------------------------------------------------------------


def item_key(source: ImageSource, i: int) -> str:
    """How item ``i`` of ``source`` is named in a subset list: its path relative to the dataset
    root for image folders, else its index in the (full) dataset."""
    if isinstance(source, SubsetSource):
        return item_key(source.base, int(source.indices[i]))
    if isinstance(source, FolderSource):
        return source.relpaths[int(i)].replace(os.sep, "/")
    return str(int(i))


def write_subset_list(path: str, source: ImageSource, indices: Sequence[int], header: Optional[str] = None) -> None:
    """Write the items ``indices`` of ``source`` to ``path`` (one per line, atomically).

    ``header`` (e.g. ``"fraction=0.01 seed=0"``) goes into leading ``#`` comment lines.
    """
    lines = []
    if header:
        lines.extend(f"# {h}" for h in header.splitlines())
    lines.extend(item_key(source, int(i)) for i in indices)
    atomic_write_text(path, "\n".join(lines) + "\n")


def _read_lines(path: str) -> List[str]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"subset list '{path}' does not exist")
    with open(path, encoding="utf-8") as f:
        lines = [ln.strip() for ln in f]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def read_subset_list(path: str, source: ImageSource) -> np.ndarray:
    """Sorted indices into ``source`` of the items listed in ``path``.

    Image folders: a line is a path relative to the root (``n01440764/n01440764_10026.JPEG``) or
    a bare file name (SimCLR's lists), matched on the base name, which must then be unique in the
    dataset. Array datasets: a line is an integer index. Every line must match one item, and no
    item may be listed twice; otherwise :class:`SubsetListError` names the file and the first
    offending lines.
    """
    lines = _read_lines(path)
    if not lines:
        raise SubsetListError(f"subset list '{path}' lists no items")
    n = len(source)
    found: List[int] = []
    missing: List[str] = []
    if isinstance(source, FolderSource):
        by_rel: Dict[str, int] = {}
        by_base: Dict[str, int] = {}
        ambiguous = set()
        for i in range(n):
            rel = source.relpaths[i].replace(os.sep, "/")
            by_rel[rel] = i
            base = rel.rsplit("/", 1)[-1]
            if base in by_base:
                ambiguous.add(base)
            by_base[base] = i
        amb_used = []
        for ln in lines:
            key = ln.replace("\\", "/")
            key = key[2:] if key.startswith("./") else key
            if key in by_rel:
                found.append(by_rel[key])
            elif "/" not in key and key in by_base:
                if key in ambiguous:
                    amb_used.append(key)
                found.append(by_base[key])
            else:
                missing.append(ln)
        if amb_used:
            raise SubsetListError(f"subset list '{path}': {len(amb_used)} file name(s) occur in several folders of "
                                  f"'{source.root}' (write relative paths instead): {', '.join(amb_used[:5])}")
        where = f"'{source.root}'"
    else:
        for ln in lines:
            try:
                i = int(ln)
            except ValueError:
                missing.append(ln)
                continue
            if 0 <= i < n:
                found.append(i)
            else:
                missing.append(ln)
        where = f"the dataset ({n} items, indices 0..{n - 1})"
    if missing:
        raise SubsetListError(f"subset list '{path}': {len(missing)} of {len(lines)} line(s) match no item of "
                              f"{where}, e.g. {', '.join(repr(m) for m in missing[:5])}")
    arr = np.asarray(found, dtype=np.int64)
    uniq, counts = np.unique(arr, return_counts=True)
    if len(uniq) != len(arr):
        dup = [item_key(source, int(i)) for i in uniq[counts > 1][:5]]
        raise SubsetListError(f"subset list '{path}' lists {len(arr) - len(uniq)} item(s) more than once, "
                              f"e.g. {', '.join(dup)}")
    return uniq


def subset_summary(targets: Sequence[int], indices: Sequence[int]) -> Dict[str, int]:
    """``{"size", "classes", "min_per_class", "max_per_class"}`` of ``targets[indices]``."""
    t = np.asarray(targets, dtype=np.int64)[np.asarray(indices, dtype=np.int64)]
    if len(t) == 0:
        return {"size": 0, "classes": 0, "min_per_class": 0, "max_per_class": 0}
    _, counts = np.unique(t, return_counts=True)
    return {"size": int(len(t)), "classes": int(len(counts)), "min_per_class": int(counts.min()),
            "max_per_class": int(counts.max())}
