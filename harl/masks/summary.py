"""The mask runner's outputs: manifest / failures files, the fg-fraction histogram, the shard's
:class:`RunSummary`, and :func:`merge_manifests` (shard parts → ``OUT/manifest.csv``,
``failures.tsv``, ``summary.json``)."""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from harl.masks.journal import _tag, state_dir
from harl.utils.io import atomic_write_text

MANIFEST_FIELDS = ("relpath", "height", "width", "fg_fraction", "n_segments", "fallback")
HIST_BINS = 10


# ---------------------------------------------------------------------------------------------
# manifest, failures, histogram
# ---------------------------------------------------------------------------------------------


def _csv_text(rows: Sequence[Dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=MANIFEST_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({**r, "fg_fraction": f"{float(r['fg_fraction']):.6f}"})
    return buf.getvalue()


def read_manifest(path: str) -> List[Dict[str, Any]]:
    """Rows of a ``manifest.csv`` with typed values."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in MANIFEST_FIELDS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"'{path}' is not a mask manifest (missing columns {missing})")
        rows = []
        for r in reader:
            rows.append({"relpath": r["relpath"], "height": int(r["height"]), "width": int(r["width"]),
                         "fg_fraction": float(r["fg_fraction"]), "n_segments": int(r["n_segments"]),
                         "fallback": r["fallback"] or ""})
    return rows


def _failures_text(failures: Sequence[Tuple[str, str]]) -> str:
    return "".join(f"{rel}\t{err}\n" for rel, err in failures)


def read_failures(path: str) -> List[Tuple[str, str]]:
    out = []
    if not os.path.isfile(path):
        return out
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line:
                rel, _, err = line.partition("\t")
                out.append((rel, err))
    return out


def fg_histogram(fractions: Sequence[float], bins: int = HIST_BINS) -> List[int]:
    """Counts of fg fractions in ``bins`` equal bins over [0, 1] (1.0 goes in the last bin)."""
    counts = np.zeros(bins, dtype=np.int64)
    if len(fractions):
        idx = np.minimum((np.asarray(fractions, dtype=np.float64) * bins).astype(np.int64), bins - 1)
        counts = np.bincount(np.maximum(idx, 0), minlength=bins)
    return [int(c) for c in counts]


def format_histogram(counts: Sequence[int], width: int = 40) -> str:
    bins = len(counts)
    top = max(max(counts), 1) if counts else 1
    lines = []
    for b, c in enumerate(counts):
        lo, hi = b / bins, (b + 1) / bins
        bar = "#" * int(round(width * c / top))
        lines.append(f"  [{lo:.1f}, {hi:.1f}{']' if b == bins - 1 else ')'} {c:>9d} {bar}")
    return "\n".join(lines)


def summarize_rows(rows: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    fallbacks: Dict[str, int] = {}
    for r in rows:
        if r["fallback"]:
            fallbacks[r["fallback"]] = fallbacks.get(r["fallback"], 0) + 1
    fr = [r["fg_fraction"] for r in rows]
    return {
        "images": len(rows),
        "fallbacks": dict(sorted(fallbacks.items())),
        "fg_fraction_mean": float(np.mean(fr)) if fr else None,
        "fg_fraction_histogram": {"bins": [i / HIST_BINS for i in range(HIST_BINS + 1)],
                                  "counts": fg_histogram(fr)},
    }


def _typed(rec: Dict[str, Any]) -> Dict[str, Any]:
    return {k: rec[k] for k in MANIFEST_FIELDS}


@dataclass
class RunSummary:
    shard: Tuple[int, int]
    total: int                   # images in this shard (incl. mask-path collisions)
    skipped: int                 # already done before this run
    done: int                    # done by this run
    failures: List[Tuple[str, str]] = field(default_factory=list)
    elapsed_s: float = 0.0
    rows: List[Dict[str, Any]] = field(default_factory=list)  # manifest rows of the shard (all done)
    merged: bool = False
    out_root: str = ""

    @property
    def images_per_s(self) -> float:
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> Dict[str, Any]:
        return {
            "shard": list(self.shard),
            "total": self.total,
            "skipped": self.skipped,
            "done": self.done,
            "failed": len(self.failures),
            "elapsed_s": round(self.elapsed_s, 3),
            "images_per_s": round(self.images_per_s, 3),
            **summarize_rows(self.rows),
        }

    def format(self) -> str:
        d = self.to_dict()
        i, n = self.shard
        lines = [
            f"harl-masks summary (shard {i}/{n}): {self.total} images, {self.skipped} already done, "
            f"{self.done} done now ({self.images_per_s:.2f} img/s, {self.elapsed_s:.1f} s), "
            f"{len(self.failures)} failed",
        ]
        if d["fallbacks"]:
            lines.append("  fallbacks: " + ", ".join(f"{k}={v}" for k, v in d["fallbacks"].items()))
        if self.rows:
            lines.append(f"  fg fraction (mean {d['fg_fraction_mean']:.3f}):")
            lines.append(format_histogram(d["fg_fraction_histogram"]["counts"]))
        if self.failures:
            where = os.path.join(self.out_root, "failures.tsv") if self.merged else \
                os.path.join(state_dir(self.out_root), f"failures-{_tag(*self.shard)}.tsv")
            lines.append(f"  failures listed in {where}; first: {self.failures[0][0]}: {self.failures[0][1]}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# merging shard parts
# ---------------------------------------------------------------------------------------------


_PART_RE = re.compile(r"manifest-(\d{5})-of-(\d{5})\.csv$")


def merge_manifests(out_root: str, count: Optional[int] = None) -> Dict[str, Any]:
    """Merge the shard parts in ``OUT/.harl-masks`` into ``OUT/manifest.csv``, ``failures.tsv``, ``summary.json``.

    ``count`` selects the shard layout (default: the layout of the newest part). Rows of other
    layouts are included too (newest part wins per image). Returns the merged summary dict,
    with ``missing_shards`` listing the shard indices of the layout that have no part yet.
    """
    sd = state_dir(out_root)
    parts = []
    for p in glob.glob(os.path.join(sd, "manifest-*-of-*.csv")):
        m = _PART_RE.search(os.path.basename(p))
        if m:
            parts.append((os.path.getmtime(p), int(m.group(1)), int(m.group(2)), p))
    if not parts:
        raise FileNotFoundError(f"no shard manifests in '{sd}' (run a generator first)")
    parts.sort()
    if count is None:
        count = parts[-1][2]
    have = {i for _, i, n, _ in parts if n == count}
    missing = [i for i in range(count) if i not in have]
    rows: Dict[str, Dict[str, Any]] = {}
    failures: Dict[str, str] = {}
    for _, i, n, p in parts:  # oldest first: newer parts overwrite
        for r in read_manifest(p):
            rows[r["relpath"]] = r
            failures.pop(r["relpath"], None)
        fpath = os.path.join(sd, f"failures-{_tag(i, n)}.tsv")
        for rel, err in read_failures(fpath):
            failures[rel] = err
            rows.pop(rel, None)
    ordered = [rows[k] for k in sorted(rows)]
    fails = sorted(failures.items())
    atomic_write_text(os.path.join(out_root, "manifest.csv"), _csv_text(ordered))
    atomic_write_text(os.path.join(out_root, "failures.tsv"), _failures_text(fails))
    summary = {"shards": count, "missing_shards": missing, "failed": len(fails), **summarize_rows(ordered)}
    atomic_write_text(os.path.join(out_root, "summary.json"), json.dumps(summary, indent=2) + "\n")
    return summary
