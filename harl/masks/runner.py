"""The shared mask-generation runner: walk → shard → skip done → worker pool → atomic PNGs → manifest.

Output tree ``OUT``::

    OUT/<image relpath with extension .png>      one {0,255} PNG per image
    OUT/manifest.csv     relpath,height,width,fg_fraction,n_segments,fallback  (image relpaths, sorted)
    OUT/failures.tsv     relpath<TAB>error  for every image that could not be done
    OUT/summary.json     counts, fallbacks, fg-fraction histogram
    OUT/meta.json        generator, parameters (and weights for saliency), written once
    OUT/.harl-masks/     per-shard state: journal-I-of-N.jsonl, manifest-I-of-N.csv,
                         failures-I-of-N.tsv, summary-I-of-N.json

Resumability: every finished image is appended to its shard's JSON-lines journal (one line per
image, flushed per chunk) after its PNG has been renamed into place. On restart an image counts
as done iff its PNG exists *and* a journal (of any shard layout) has a row for it; everything else
is redone, and stale ``*.tmp-*`` files of this shard's outputs are removed. Failed images are
retried on every run. ``manifest.csv``/``failures.tsv``/``summary.json`` are (re)written by
:func:`merge_manifests`, automatically at the end of a run once all ``N`` shard parts exist.

Sharding: shard ``i`` of ``n`` takes every n-th image of the sorted list starting at ``i``
(:func:`harl.masks.io.shard_select`).
"""

from __future__ import annotations

import csv
import glob
import io
import json
import multiprocessing as mp
import os
import re
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from harl.masks.io import (
    encode_mask_png,
    find_mask_collisions,
    is_tmp_name,
    mask_relpath,
    read_image_rgb,
    shard_select,
)
from harl.errors import MetaMismatchError, MissingSourceMaskError
from harl.errors import ImageReadError
from harl.masks.registry import GENERATORS, load_builtin_generators
from harl.utils.io import atomic_write_bytes, atomic_write_text
from harl.utils.procs import die_with_parent

STATE_DIR = ".harl-masks"
MANIFEST_FIELDS = ("relpath", "height", "width", "fg_fraction", "n_segments", "fallback")
HIST_BINS = 10


# ---------------------------------------------------------------------------------------------
# jobs: relpath -> (mask, info)
# ---------------------------------------------------------------------------------------------


class ImageGeneratorJob:
    """Read ``images_root/relpath`` as RGB and run a registered generator on it."""

    def __init__(self, images_root: str, generator: str, params: Any):
        self.images_root = images_root
        self.generator = generator
        self.params = params
        self._fn = None

    @property
    def uses_torch(self) -> bool:
        load_builtin_generators()
        return GENERATORS.get(self.generator).uses_torch

    def setup(self) -> None:
        load_builtin_generators()
        self._fn = GENERATORS.get(self.generator).build(self.params)

    def __call__(self, relpath: str) -> Tuple[np.ndarray, Dict[str, Any]]:
        if self._fn is None:
            self.setup()
        image = read_image_rgb(os.path.join(self.images_root, relpath))
        mask, info = self._fn(image)
        if mask.shape != image.shape[:2]:
            raise RuntimeError(f"generator '{self.generator}' returned a {mask.shape} mask for a "
                               f"{image.shape[:2]} image")
        return mask, info

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fn"] = None  # rebuilt in each worker
        return state


def _result_row(relpath: str, mask: np.ndarray, info: Dict[str, Any]) -> Dict[str, Any]:
    h, w = mask.shape
    return {
        "relpath": relpath,
        "height": int(h),
        "width": int(w),
        "fg_fraction": round(float(np.count_nonzero(mask)) / float(h * w), 6),
        "n_segments": int(info.get("n_segments", -1)),
        "fallback": str(info.get("fallback", "")),
    }


# ---------------------------------------------------------------------------------------------
# worker side
# ---------------------------------------------------------------------------------------------

_WORKER: Dict[str, Any] = {}


def _init_worker(job, out_root: str, torch_threads: int, parent_pid: Optional[int] = None) -> None:
    if parent_pid is not None:  # a pool worker: never outlive the command (kill -9 included)

        die_with_parent(parent_pid)
    if torch_threads > 0:
        try:
            import torch

            torch.set_num_threads(torch_threads)
        except ImportError:  # pragma: no cover
            pass
    job.setup()
    _WORKER["job"] = job
    _WORKER["out"] = out_root


def process_one(job, out_root: str, relpath: str) -> Dict[str, Any]:
    """Make, write (atomically) and describe the mask of one image; errors become failure records."""
    try:
        mask, info = job(relpath)
        atomic_write_bytes(os.path.join(out_root, mask_relpath(relpath)), encode_mask_png(mask), fsync=False)
        return {"ok": True, **_result_row(relpath, mask, info)}
    except KeyboardInterrupt:
        raise
    except Exception as err:  # noqa: BLE001 - one bad image must not stop the run

        msg = str(err) if isinstance(err, (ImageReadError, MissingSourceMaskError)) else f"{type(err).__name__}: {err}"
        return {"ok": False, "relpath": relpath, "error": " ".join(msg.split())}


def _process_chunk(relpaths: Sequence[str]) -> List[Dict[str, Any]]:
    job, out = _WORKER["job"], _WORKER["out"]
    return [process_one(job, out, r) for r in relpaths]


# ---------------------------------------------------------------------------------------------
# state files
# ---------------------------------------------------------------------------------------------


def _tag(index: int, count: int) -> str:
    return f"{index:05d}-of-{count:05d}"


def state_dir(out_root: str) -> str:
    return os.path.join(out_root, STATE_DIR)


def read_journal(path: str) -> Dict[str, Dict[str, Any]]:
    """Records of one journal (last record per relpath wins; torn or malformed lines are ignored)."""
    records: Dict[str, Dict[str, Any]] = {}
    if not os.path.isfile(path):
        return records
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("relpath"), str) and "ok" in rec:
                records[rec["relpath"]] = rec
    return records


def read_all_journals(out_root: str) -> Dict[str, Dict[str, Any]]:
    """Union of every shard's journal (any shard layout); newer files win on conflicts."""
    paths = sorted(glob.glob(os.path.join(state_dir(out_root), "journal-*.jsonl")), key=os.path.getmtime)
    records: Dict[str, Dict[str, Any]] = {}
    for p in paths:
        records.update(read_journal(p))
    return records


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


# ---------------------------------------------------------------------------------------------
# meta.json
# ---------------------------------------------------------------------------------------------


def _flatten(d: Any, prefix: str = "") -> Dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: Dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def check_and_write_meta(out_root: str, meta: Dict[str, Any], overwrite: bool = False) -> None:
    """Write ``OUT/meta.json``; an existing one must describe the same generator and parameters.

    ``meta["volatile"]`` may list (dotted) keys that are allowed to differ between runs into the
    same folder (e.g. ``params.device``, or a weights *path* whose sha256 is compared instead).
    """
    path = os.path.join(out_root, "meta.json")
    meta = json.loads(json.dumps(meta))  # tuples → lists, as read back from the file
    if os.path.isfile(path) and not overwrite:
        with open(path, encoding="utf-8") as f:
            try:
                old = json.load(f)
            except ValueError:
                old = None
        if old is not None:
            volatile = tuple(meta.get("volatile", [])) + tuple(old.get("volatile", [])) + ("volatile",)

            def compared(d):
                return {k: v for k, v in _flatten(d).items()
                        if not any(k == x or k.startswith(x + ".") for x in volatile)}

            a, b = compared(old), compared(meta)
            if a != b:
                diff = ", ".join(f"{k}: {a.get(k, '<absent>')!r} here vs {b.get(k, '<absent>')!r} now"
                                 for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
                raise MetaMismatchError(
                    f"'{out_root}' holds masks made with other settings ({diff}); "
                    "use another --out, or --overwrite to redo them")
            return
    atomic_write_text(path, json.dumps(meta, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------------
# the runner
# ---------------------------------------------------------------------------------------------


@dataclass
class RunOptions:
    workers: int = 1             # 1 = in this process; N > 1 = N worker processes
    shard: Tuple[int, int] = (0, 1)
    overwrite: bool = False      # redo every image of the shard (and replace meta.json)
    progress: bool = True
    chunksize: int = 0           # images per task (0 = automatic)
    mp_context: Optional[str] = None  # None: 'spawn' for torch generators, else 'fork' where available
    merge: bool = True           # merge all shard parts into OUT/manifest.csv when complete


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


def _scan_outputs(out_root: str, mask_rels: Sequence[str]) -> set:
    """Existing mask relpaths among ``mask_rels``; removes stale temporary files of those outputs."""
    by_dir: Dict[str, set] = {}
    for m in mask_rels:
        d, _, name = m.rpartition("/")
        by_dir.setdefault(d, set()).add(name)
    existing = set()
    for d, names in by_dir.items():
        folder = os.path.join(out_root, d) if d else out_root
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            continue
        for e in entries:
            if e.name in names:
                existing.add(f"{d}/{e.name}" if d else e.name)
            elif is_tmp_name(e.name):
                base = e.name[:e.name.rindex(".tmp-")]
                if base in names:  # a temp file of one of *this shard's* outputs: left by a kill
                    try:
                        os.remove(e.path)
                    except FileNotFoundError:
                        pass
    return existing


def _mp_context(options: RunOptions, uses_torch: bool):
    if options.mp_context:
        return mp.get_context(options.mp_context)
    if uses_torch:
        return mp.get_context("spawn")
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def run_job(job, relpaths: Sequence[str], out_root: str, options: RunOptions = RunOptions(),
            meta: Optional[Dict[str, Any]] = None) -> RunSummary:
    """Run ``job`` (``relpath -> (mask, info)``, with ``setup()``) over this shard of ``relpaths``.

    ``relpaths`` is the full sorted image list (all shards); the shard is taken here.
    Returns the shard's :class:`RunSummary`; the merged files are written when all shards are done.
    """
    t0 = time.perf_counter()
    out_root = os.path.abspath(out_root)
    os.makedirs(state_dir(out_root), exist_ok=True)
    if meta is not None:
        check_and_write_meta(out_root, meta, overwrite=options.overwrite)
    index, count = options.shard
    collisions = find_mask_collisions(relpaths)
    mine = shard_select(relpaths, index, count)
    tag = _tag(index, count)
    journal_path = os.path.join(state_dir(out_root), f"journal-{tag}.jsonl")

    if options.overwrite:
        records: Dict[str, Dict[str, Any]] = {}
        if os.path.exists(journal_path):
            os.remove(journal_path)
    else:
        records = read_all_journals(out_root)
    candidates = [r for r in mine if r not in collisions]
    existing = _scan_outputs(out_root, [mask_relpath(r) for r in candidates])
    done_before = set()
    if not options.overwrite:
        done_before = {r for r in candidates
                       if records.get(r, {}).get("ok") and mask_relpath(r) in existing}
    todo = [r for r in candidates if r not in done_before]
    # journal rows of this shard, starting from what is already done
    shard_records: Dict[str, Dict[str, Any]] = {r: records[r] for r in done_before}
    mine_set = set(mine)
    for r in collisions:
        if r in mine_set:
            shard_records[r] = {"ok": False, "relpath": r,
                                "error": f"mask path '{mask_relpath(r)}' is already used by '{collisions[r]}'"}

    n_done = 0
    failures_now = 0
    bar = None
    if options.progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"masks {index}/{count}" if count > 1 else "masks",
                   unit="img", dynamic_ncols=True, file=sys.stderr)
    with open(journal_path, "a", encoding="utf-8") as journal:
        def consume(results):
            nonlocal n_done, failures_now
            for res in results:
                journal.write(json.dumps(res, sort_keys=True) + "\n")
                shard_records[res["relpath"]] = res
                if res["ok"]:
                    n_done += 1
                else:
                    failures_now += 1
            journal.flush()
            if bar is not None:
                bar.update(len(results))
                if failures_now:
                    bar.set_postfix(failed=failures_now, refresh=False)

        try:
            if options.workers <= 1 or len(todo) <= 1:
                job.setup()
                for r in todo:
                    consume([process_one(job, out_root, r)])
            else:
                _run_pool(job, todo, out_root, options, consume)
        finally:
            if bar is not None:
                bar.close()

    elapsed = time.perf_counter() - t0
    rows = sorted((rec for rec in shard_records.values() if rec.get("ok")), key=lambda r: r["relpath"])
    failures = sorted((rec["relpath"], rec["error"]) for rec in shard_records.values() if not rec.get("ok"))
    summary = RunSummary(shard=(index, count), total=len(mine), skipped=len(done_before), done=n_done,
                         failures=failures, elapsed_s=elapsed, rows=[_typed(r) for r in rows], out_root=out_root)
    # compact this shard's state: the journal keeps one line per image, the parts are rewritten
    sd = state_dir(out_root)
    atomic_write_text(journal_path, "".join(json.dumps(shard_records[r], sort_keys=True) + "\n"
                                            for r in sorted(shard_records)))
    atomic_write_text(os.path.join(sd, f"manifest-{tag}.csv"), _csv_text(summary.rows))
    atomic_write_text(os.path.join(sd, f"failures-{tag}.tsv"), _failures_text(failures))
    atomic_write_text(os.path.join(sd, f"summary-{tag}.json"), json.dumps(summary.to_dict(), indent=2) + "\n")
    if options.merge:
        parts = glob.glob(os.path.join(sd, f"manifest-*-of-{count:05d}.csv"))
        if len(parts) == count:
            merge_manifests(out_root, count=count)
            summary.merged = True
    return summary


def _typed(rec: Dict[str, Any]) -> Dict[str, Any]:
    return {k: rec[k] for k in MANIFEST_FIELDS}


def _run_pool(job, todo: Sequence[str], out_root: str, options: RunOptions, consume) -> None:
    workers = options.workers
    chunk = options.chunksize or max(1, min(16, len(todo) // (workers * 8)))
    chunks = [todo[i:i + chunk] for i in range(0, len(todo), chunk)]
    ctx = _mp_context(options, getattr(job, "uses_torch", False))
    torch_threads = max(1, (os.cpu_count() or 1) // workers) if getattr(job, "uses_torch", False) else 0
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(job, out_root, torch_threads, os.getpid())) as pool:
        pending = set()
        it = iter(chunks)
        try:
            for c in it:
                pending.add(pool.submit(_process_chunk, c))
                if len(pending) >= workers * 4:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in finished:
                        consume(f.result())
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in finished:
                    consume(f.result())
        except BrokenProcessPool as err:
            raise RuntimeError("a mask worker process failed to start or died (see its error above; "
                               "out of memory, a crash in a native library, or a generator that cannot "
                               "be built); finished masks are kept: rerun the same command to resume") from err
        except BaseException:
            for f in pending:
                f.cancel()
            raise


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


__all__ = [
    "ImageGeneratorJob", "RunOptions", "RunSummary", "check_and_write_meta",
    "fg_histogram", "format_histogram", "merge_manifests", "process_one", "read_all_journals",
    "read_failures", "read_journal", "read_manifest", "run_job", "summarize_rows",
]
