"""Writing a fashion-scenes tree: atomic PNG writes in worker processes, resume after a kill, refusal
of a tree made with other parameters, the manifest and ``meta.json`` (train mean / std)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import multiprocessing as mp
import os
import shutil
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from harl.data.fashion_mnist import CLASS_NAMES, NUM_CLASSES
from harl.data.fashion_scenes.params import (
    GENERATOR_NAME, GENERATOR_VERSION, FashionScenesParams, OutputSplit, output_splits, scene_relpath,
    scene_split_dirs,
)
from harl.data.fashion_scenes.render import SceneContext, render_scene
from harl.errors import SceneTreeMismatchError
from harl.utils.io import atomic_write_with
from harl.utils.procs import die_with_parent

# ----------------------------------------------------------------------------------------------
# Writing (atomic, resumable)
# ----------------------------------------------------------------------------------------------

_TMP_MARK = ".tmp."


def _atomic_write_bytes(path: str, data: bytes) -> None:
    """The project's atomic writer with a hidden temporary name (``.<name>.tmp.<pid>``: skipped by
    tree walks, removed as stale on resume) and no fsync (thousands of small PNGs)."""
    d, name = os.path.split(path)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write_with(path, write, fsync=False, tmp=os.path.join(d, f".{name}{_TMP_MARK}{os.getpid()}"))


def _png_bytes(arr: np.ndarray, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG")
    return buf.getvalue()


def _atomic_write_text(path: str, text: str) -> None:
    _atomic_write_bytes(path, text.encode("utf-8"))


_WORKER_CTX: Optional[SceneContext] = None
_WORKER_OUT: Optional[str] = None


def _init_pool_worker(parent_pid: int, ctx: SceneContext, out_dir: str) -> None:
    """Pool initializer: the worker exits when the generating process dies (kill -9 included)."""
    die_with_parent(parent_pid)
    _init_worker(ctx, out_dir)


def _init_worker(ctx: SceneContext, out_dir: str) -> None:
    global _WORKER_CTX, _WORKER_OUT
    _WORKER_CTX, _WORKER_OUT = ctx, out_dir


def _run_chunk(task: Tuple[str, str, Optional[str], int, int]) -> dict:
    """Render scenes [start, stop) of one output split; write those whose files are missing.

    Returns the scene records and exact integer pixel sums (so the totals do not depend on the
    order in which chunks finish).
    """
    ctx, out_dir = _WORKER_CTX, _WORKER_OUT
    split, source, style, start, stop = task
    img_dir, mask_dir = scene_split_dirs(out_dir, split)
    records = []
    ch_sum = np.zeros(3, dtype=np.int64)
    ch_sq = np.zeros(3, dtype=np.int64)
    written = 0
    for i in range(start, stop):
        image, mask, rec = render_scene(ctx, source, i, style)
        rel = scene_relpath(ctx.params, rec["label"], i)
        ipath, mpath = os.path.join(img_dir, rel), os.path.join(mask_dir, rel)
        if not os.path.exists(ipath):
            _atomic_write_bytes(ipath, _png_bytes(image, "RGB"))
            written += 1
        if not os.path.exists(mpath):
            _atomic_write_bytes(mpath, _png_bytes(mask, "L"))
        flat = image.reshape(-1, 3).astype(np.int64)
        ch_sum += flat.sum(0)
        ch_sq += (flat * flat).sum(0)
        rec.update(split=split, index=i, relpath=rel)
        records.append(rec)
    return {"split": split, "start": start, "records": records, "sum": ch_sum.tolist(),
            "sumsq": ch_sq.tolist(), "written": written}


# ----------------------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------------------

_OWNED = ("images", "masks", "manifest.csv", "meta.json", "params.json")
MANIFEST_FIELDS = ("split", "index", "relpath", "label", "class_name", "source_split", "source_index",
                   "height", "width", "fg_fraction", "background", "bg_detail", "obj_x", "obj_y",
                   "obj_size", "tint")


def _identity(params: FashionScenesParams) -> dict:
    return {"generator": GENERATOR_NAME, "version": GENERATOR_VERSION, "params": params.to_dict()}


#: parameters added after version 1.0, with the value that renders exactly what older trees hold
#: (a params.json written before a key existed is read as having this value)
_ADDED_DEFAULTS = {"bg_pool": 0, "bg_contrast": 1.0, "bg_dim": 1.0}


def _with_added_defaults(identity: dict) -> dict:
    if isinstance(identity, dict) and isinstance(identity.get("params"), dict):
        identity = dict(identity, params={**_ADDED_DEFAULTS, **identity["params"]})
    return identity


def _remove_owned(out_dir: str) -> None:
    for name in _OWNED:
        p = os.path.join(out_dir, name)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        elif os.path.lexists(p):
            os.remove(p)


def _check_existing(out_dir: str, params: FashionScenesParams, force: bool) -> None:
    """Refuse (unless ``force``) to touch a tree made with other parameters; with ``force`` remove it."""
    ppath = os.path.join(out_dir, "params.json")
    present = [n for n in _OWNED if os.path.lexists(os.path.join(out_dir, n))]
    if not present:
        return
    problem = None
    if not os.path.exists(ppath):
        problem = (f"{out_dir} already holds {', '.join(present)} but no params.json: not a fashion-scenes "
                   f"tree (or one from an unknown run)")
    else:
        try:
            with open(ppath, encoding="utf-8") as f:
                old = json.load(f)
        except (OSError, ValueError) as err:
            old, problem = None, f"{ppath} is unreadable ({err})"
        if old is not None and _with_added_defaults(old) != _identity(params):
            diffs = []
            if old.get("generator") != GENERATOR_NAME or old.get("version") != GENERATOR_VERSION:
                diffs.append(f"generator {old.get('generator')} {old.get('version')} ≠ "
                             f"{GENERATOR_NAME} {GENERATOR_VERSION}")
            old_params = old.get("params", {}) if isinstance(old.get("params"), dict) else {}
            for k, v in params.to_dict().items():
                if old_params.get(k, _ADDED_DEFAULTS.get(k)) != v:
                    diffs.append(f"{k}: existing {old_params.get(k)!r} vs requested {v!r}")
            problem = f"{out_dir} was generated with different parameters ({'; '.join(diffs) or 'see params.json'})"
    if problem is None:
        return
    if not force:
        raise SceneTreeMismatchError(problem + ". Choose another --out, or pass --force (force=True) to "
                                               "delete it and regenerate.")
    _remove_owned(out_dir)


def _remove_stale_temps(out_dir: str) -> int:
    n = 0
    for top in ("images", "masks"):
        for dirpath, _dirs, files in os.walk(os.path.join(out_dir, top)):
            for name in files:
                if name.startswith(".") and _TMP_MARK in name:
                    os.remove(os.path.join(dirpath, name))
                    n += 1
    for name in os.listdir(out_dir):
        if name.startswith(".") and _TMP_MARK in name:
            os.remove(os.path.join(out_dir, name))
            n += 1
    return n


def _tasks(params: FashionScenesParams, chunk: int) -> List[Tuple[str, str, Optional[str], int, int]]:
    tasks = []
    for s in output_splits(params):
        for start in range(0, s.count, chunk):
            tasks.append((s.name, s.source, s.background, start, min(start + chunk, s.count)))
    return tasks


def _source_fingerprint(ctx: SceneContext) -> Dict[str, str]:
    out = {}
    for split, (images, labels) in sorted(ctx.items.items()):
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(images).tobytes())
        h.update(np.ascontiguousarray(labels).astype("<i8").tobytes())
        out[split] = h.hexdigest()
    return out


def _software() -> Dict[str, str]:
    import PIL

    try:
        import skimage
        sk = skimage.__version__
    except Exception:  # pragma: no cover
        sk = "unavailable"
    return {"numpy": np.__version__, "pillow": PIL.__version__, "scikit-image": sk}


def generate_fashion_scenes(out_dir: str, params: Optional[FashionScenesParams] = None, *,
                            workers: int = 1, force: bool = False, progress: bool = True,
                            fmnist_root: Optional[str] = None, chunk_size: Optional[int] = None,
                            **overrides) -> dict:
    """Generate (or finish, or verify) a fashion-scenes tree under ``out_dir``; return its meta dict.

    ``params`` defaults to ``FashionScenesParams()``; keyword ``overrides`` replace single fields
    (``generate_fashion_scenes("out", size=64, n_train=1000)``). ``workers`` processes render in
    parallel (the output does not depend on it). Scenes whose image and mask both exist are not
    rewritten, so an interrupted run is finished by running it again; ``meta.json`` is written last.
    A tree made with different parameters raises :class:`SceneTreeMismatchError` unless ``force``,
    which deletes it (only the paths this generator writes) first. ``fmnist_root``: folder of the
    Fashion-MNIST IDX files (default: Debian's location).
    """
    params = params or FashionScenesParams()
    if overrides:
        params = params.replace(**overrides)
    if workers < 1:
        raise ValueError(f"workers={workers}: need ≥ 1")
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise SceneTreeMismatchError(f"{out_dir} exists and is not a folder")
    os.makedirs(out_dir, exist_ok=True)
    _check_existing(out_dir, params, force)
    ppath = os.path.join(out_dir, "params.json")
    if not os.path.exists(ppath):
        _atomic_write_text(ppath, json.dumps(_identity(params), indent=2) + "\n")
    _remove_stale_temps(out_dir)

    ctx = SceneContext.load(params, fmnist_root)
    splits = output_splits(params)
    meta_path = os.path.join(out_dir, "meta.json")
    if os.path.exists(meta_path) and _tree_complete(out_dir, ctx, splits):
        with open(meta_path, encoding="utf-8") as f:
            return json.load(f)
    if os.path.exists(meta_path):
        os.remove(meta_path)  # the tree is being repaired: unfinished until meta.json is back

    for s in splits:
        for name in CLASS_NAMES:
            for d in scene_split_dirs(out_dir, s.name):
                os.makedirs(os.path.join(d, name), exist_ok=True)

    total = sum(s.count for s in splits)
    if chunk_size is None:
        chunk_size = int(min(1000, max(50, total // max(1, workers * 16))))
    tasks = _tasks(params, chunk_size)
    results = []
    from tqdm.auto import tqdm

    with tqdm(total=total, disable=not progress, unit="scene", desc="fashion-scenes", dynamic_ncols=True) as bar:
        if workers == 1 or len(tasks) <= 1:
            _init_worker(ctx, out_dir)
            try:
                for t in tasks:
                    r = _run_chunk(t)
                    results.append(r)
                    bar.update(len(r["records"]))
            finally:
                _init_worker(None, None)  # type: ignore[arg-type]
        else:
            methods = mp.get_all_start_methods()
            mpctx = mp.get_context("fork") if "fork" in methods else mp.get_context()
            with mpctx.Pool(min(workers, len(tasks)), initializer=_init_pool_worker,
                          initargs=(os.getpid(), ctx, out_dir)) as pool:
                for r in pool.imap_unordered(_run_chunk, tasks):
                    results.append(r)
                    bar.update(len(r["records"]))

    meta = _finish(out_dir, params, ctx, splits, results)
    return meta


def _tree_complete(out_dir: str, ctx: SceneContext, splits: Sequence[OutputSplit]) -> bool:
    for s in splits:
        img_dir, mask_dir = scene_split_dirs(out_dir, s.name)
        for i in range(s.count):
            label, _ = ctx.assign(s.source, i)
            rel = scene_relpath(ctx.params, label, i)
            if not (os.path.exists(os.path.join(img_dir, rel)) and os.path.exists(os.path.join(mask_dir, rel))):
                return False
    return os.path.exists(os.path.join(out_dir, "manifest.csv"))


def _finish(out_dir: str, params: FashionScenesParams, ctx: SceneContext, splits: Sequence[OutputSplit],
            results: Iterable[dict]) -> dict:
    by_split: Dict[str, List[dict]] = {s.name: [] for s in splits}
    sums = {s.name: np.zeros(3, dtype=np.int64) for s in splits}
    sqs = {s.name: np.zeros(3, dtype=np.int64) for s in splits}
    for r in results:
        by_split[r["split"]].extend(r["records"])
        sums[r["split"]] += np.asarray(r["sum"], dtype=np.int64)
        sqs[r["split"]] += np.asarray(r["sumsq"], dtype=np.int64)

    # scene manifest (all splits) + docs/masks.md mask manifests (one per split)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(MANIFEST_FIELDS)
    split_meta = {}
    for s in splits:
        recs = sorted(by_split[s.name], key=lambda r: r["index"])
        mbuf = io.StringIO()
        mw = csv.writer(mbuf, lineterminator="\n")
        mw.writerow(("relpath", "height", "width", "fg_fraction", "n_segments", "fallback"))
        fg_total = 0
        class_counts = [0] * NUM_CLASSES
        for r in recs:
            row = dict(r, fg_fraction=f"{r['fg_fraction']:.6f}")
            w.writerow([row[k] for k in MANIFEST_FIELDS])
            mw.writerow((r["relpath"], r["height"], r["width"], f"{r['fg_fraction']:.6f}", 1, ""))
            fg_total += r["fg_pixels"]
            class_counts[r["label"]] += 1
        _atomic_write_text(os.path.join(scene_split_dirs(out_dir, s.name)[1], "manifest.csv"), mbuf.getvalue())
        n_pix = max(1, s.count * params.size * params.size)
        mean = sums[s.name] / (255.0 * n_pix)
        var = sqs[s.name] / (255.0 ** 2 * n_pix) - mean ** 2
        std = np.sqrt(np.maximum(var, 0.0))
        split_meta[s.name] = {
            "count": s.count,
            "source_split": s.source,
            "background": s.background or params.background,
            "images": f"images/{s.name}",
            "masks": f"masks/{s.name}",
            "class_counts": dict(zip(CLASS_NAMES, class_counts)),
            "mean": [round(float(v), 6) for v in mean],
            "std": [round(float(v), 6) for v in std],
            "fg_fraction_mean": round(fg_total / float(n_pix), 6),
        }
    _atomic_write_text(os.path.join(out_dir, "manifest.csv"), buf.getvalue())

    train = split_meta["train"]
    meta = {
        "generator": GENERATOR_NAME,
        "version": GENERATOR_VERSION,
        "params": params.to_dict(),
        "class_names": list(CLASS_NAMES),
        "counts": {s.name: s.count for s in splits},
        "mean": train["mean"],
        "std": train["std"],
        "fg_fraction_mean": train["fg_fraction_mean"],
        "splits": split_meta,
        "layout": {"images": "images/<split>/<class_name>/<id>.png (RGB)",
                   "masks": "masks/<split>/<class_name>/<id>.png (L, 0/255; fg = 255)",
                   "manifest": "manifest.csv", "mask_manifests": "masks/<split>/manifest.csv"},
        "source_sha256": _source_fingerprint(ctx),
        "software": _software(),
    }
    _atomic_write_text(os.path.join(out_dir, "meta.json"), json.dumps(meta, indent=2) + "\n")
    return meta


def read_meta(out_dir: str) -> dict:
    """Load ``<out_dir>/meta.json``; a missing file means the tree is unfinished (clear error)."""
    path = os.path.join(out_dir, "meta.json")
    if not os.path.exists(path):
        hint = " (params.json is there: the generation was interrupted; rerun it to finish)" \
            if os.path.exists(os.path.join(out_dir, "params.json")) else ""
        raise FileNotFoundError(f"{path} not found: not a finished fashion-scenes tree{hint}")
    with open(path, encoding="utf-8") as f:
        return json.load(f)
