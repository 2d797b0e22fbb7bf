"""Find and read run folders: pretraining runs (``args.json`` + ``metrics.csv``) and evaluation
results (``*.json`` files with metrics), tolerant of missing or foreign files.

- :func:`discover` walks the given folders recursively and returns ``(runs, results, notes)``;
  ``notes`` lists files that were skipped and why (unreadable, not a results file).
- A :class:`PretrainRun` holds the run's config and its CSV metrics as per-column series.
- A :class:`Result` is one evaluation number with what it belongs to (method, pretraining seed,
  pretraining run). Results files written by ``harl-linear`` (``mode`` linear / knn / dense, with
  a ``random_init_baseline`` beside), ``harl-finetune`` (``mode: finetune``) and
  ``harl-transfer`` (``mode: transfer_linear``) are understood, and any JSON object with
  ``top1``, ``knn_top1`` or ``miou`` keys is read as well.

The method and pretraining seed of a result come from, in order: the ``args.json`` of the
pretraining run its checkpoint lives in, the result's own ``method`` / ``seed`` keys, the
``pretrained`` info block, the evaluation's ``config.pretrain_method``.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Tuple

from harl.utils.io import metrics_files
from harl.utils.walk import walk_unique

#: folders never entered while discovering runs
SKIP_DIRS = {"feature_cache", "stages", "wandb", "__pycache__", "lightning_logs", "random_init"}
#: JSON files that are never results
NON_RESULT_FILES = {"args.json", "hparams.json", "meta.json", "manifest.json"}
RANDOM_INIT = "random init"

Series = List[Tuple[float, float, float]]  # (epoch, step, value)


@dataclass
class PretrainRun:
    """A pretraining run folder."""

    run_dir: str
    args: Dict[str, Any]
    metrics: Dict[str, Series] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return str(self.args.get("method") or "unknown")

    @property
    def seed(self) -> Optional[int]:
        s = self.args.get("seed")
        return int(s) if isinstance(s, (int, float)) and not isinstance(s, bool) else None

    @property
    def dataset(self) -> Optional[str]:
        return (self.args.get("data") or {}).get("dataset")

    @property
    def version(self) -> str:
        return os.path.basename(os.path.normpath(self.run_dir))

    @property
    def masks_enabled(self) -> bool:
        return bool(((self.args.get("data") or {}).get("masks") or {}).get("enabled"))

    @property
    def label(self) -> str:
        seed = f" s{self.seed}" if self.seed is not None else ""
        return f"{self.method}{seed} ({self.version})"

    def series(self, column: str) -> Series:
        return self.metrics.get(column, [])

    def epoch_series(self, base: str) -> List[Tuple[float, float]]:
        """Per-epoch values of metric ``base``: its ``<base>_epoch`` column, else the plain
        column, else the per-epoch mean of ``<base>_step``. Returns [(epoch, value)] sorted."""
        for col in (f"{base}_epoch", base):
            s = self.series(col)
            if s:
                by_epoch: Dict[float, float] = {}
                for ep, _, v in s:
                    by_epoch[ep] = v  # the last value logged for the epoch
                return sorted(by_epoch.items())
        s = self.series(f"{base}_step")
        if not s:
            return []
        sums: Dict[float, List[float]] = {}
        for ep, _, v in s:
            sums.setdefault(ep, []).append(v)
        return sorted((ep, sum(v) / len(v)) for ep, v in sums.items())

    def last(self, base: str) -> Optional[float]:
        s = self.epoch_series(base)
        return s[-1][1] if s else None

    @property
    def epochs_done(self) -> int:
        eps = {ep for s in self.metrics.values() for ep, _, _ in s}
        return int(max(eps)) + 1 if eps else 0


@dataclass
class Result:
    """One evaluation number."""

    path: str
    column: str  # table column, e.g. "linear top-1", "semi-sup 1% top-1", "transfer dtd top-1"
    value: float
    mode: str
    method: str = "unknown"
    seed: Optional[int] = None
    dataset: Optional[str] = None  # pretraining dataset
    pretrain_run: Optional[str] = None
    top5: Optional[float] = None
    mtime: float = 0.0
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def sample_key(self) -> str:
        """What distinguishes repeated measurements: the pretraining seed, else the run."""
        if self.seed is not None:
            return f"seed={self.seed}"
        return self.pretrain_run or self.path


# ---------------------------------------------------------------------------------------------
# reading files
# ---------------------------------------------------------------------------------------------


def _num(x: Any) -> Optional[float]:
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def read_json(path: str) -> Optional[Any]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_metrics_csv(path: str) -> Dict[str, Series]:
    """Columns of a Lightning ``CSVLogger`` file as {column: [(epoch, step, value)]} (empty cells
    and non-numbers skipped). Rows without an epoch take the last epoch seen."""
    out: Dict[str, Series] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        epoch = 0.0
        for row in reader:
            e = _num(row.get("epoch"))
            epoch = e if e is not None else epoch
            step = _num(row.get("step"))
            for k, v in row.items():
                if k in ("epoch", "step") or k is None:
                    continue
                val = _num(v) if v not in ("", None) else None
                if val is not None:
                    out.setdefault(k, []).append((epoch, step if step is not None else -1.0, val))
    return out


def _is_pretrain_args(args: Any) -> bool:
    return isinstance(args, dict) and "method" in args and "augmentations" in args


# ---------------------------------------------------------------------------------------------
# results files → Result records
# ---------------------------------------------------------------------------------------------


def _pretrained_path(obj: Dict[str, Any]) -> Optional[str]:
    p = obj.get("pretrained")
    if isinstance(p, dict):
        p = p.get("path")
    if not p:
        p = (obj.get("config") or {}).get("pretrained_feature_extractor") if isinstance(obj.get("config"), dict) else None
    return os.path.abspath(str(p)) if p else None


def _is_random_init(obj: Dict[str, Any]) -> bool:
    p = obj.get("pretrained")
    return bool(obj.get("random_init")) or (isinstance(p, dict) and bool(p.get("random_init"))) \
        or str(obj.get("method") or "").replace("_", " ") == RANDOM_INIT


def _columns(obj: Dict[str, Any]) -> List[Tuple[str, float, Optional[float]]]:
    """(column, value, top5) entries of one results object."""
    mode = str(obj.get("mode") or "").lower()
    top1, top5 = _num(obj.get("top1")), _num(obj.get("top5"))
    out: List[Tuple[str, float, Optional[float]]] = []
    if mode == "finetune":
        if top1 is not None:
            if obj.get("protocol") == "finetune_all_labels":
                out.append((f"fine-tune {obj.get('dataset') or ''} top-1".replace("  ", " "), top1, top5))
            else:
                out.append((f"semi-sup {obj.get('subset_label') or '?'} top-1", top1, top5))
    elif mode in ("transfer_linear", "transfer"):
        if top1 is not None:
            out.append((f"transfer {obj.get('dataset') or '?'} top-1", top1, None))
    elif mode == "knn":
        v = _num(obj.get("knn_top1")) if obj.get("knn_top1") is not None else top1
        if v is not None:
            out.append(("kNN top-1", v, _num(obj.get("knn_top5")) if obj.get("knn_top5") is not None else top5))
    elif mode == "dense":
        v = _num(obj.get("miou", obj.get("mIoU")))
        if v is not None:
            out.append(("dense mIoU", v, None))
    else:
        if top1 is not None:
            out.append(("linear top-1" if mode in ("linear", "") else f"{mode} top-1", top1, top5))
        v = _num(obj.get("knn_top1"))
        if v is not None:
            out.append(("kNN top-1", v, _num(obj.get("knn_top5"))))
        v = _num(obj.get("miou", obj.get("mIoU")))
        if v is not None:
            out.append(("dense mIoU", v, None))
    return out


def _facts_from_pretrain_args(path: Optional[str], cache: Dict[str, Optional[dict]]) -> Optional[dict]:
    """args.json of the pretraining run holding checkpoint ``path`` (if it is one)."""
    if not path:
        return None
    d = os.path.dirname(path)
    if d not in cache:
        a = read_json(os.path.join(d, "args.json"))
        cache[d] = a if _is_pretrain_args(a) else None
    return cache[d]


def results_from_object(obj: Dict[str, Any], path: str, mtime: float = 0.0,
                        args_cache: Optional[Dict[str, Optional[dict]]] = None,
                        folder_args: Optional[dict] = None) -> List[Result]:
    """Result records of one results JSON object (plus its ``random_init_baseline``)."""
    args_cache = {} if args_cache is None else args_cache
    out: List[Result] = []
    ppath = _pretrained_path(obj)
    pargs = _facts_from_pretrain_args(ppath, args_cache)
    pinfo = obj.get("pretrained") if isinstance(obj.get("pretrained"), dict) else {}
    cfg = obj.get("config") if isinstance(obj.get("config"), dict) else (folder_args or {})
    method = (pargs or {}).get("method") or obj.get("pretrain_method") or obj.get("method") or pinfo.get("method") \
        or cfg.get("pretrain_method") or "unknown"
    seed = (pargs or {}).get("seed") if pargs else obj.get("seed")
    seed = int(seed) if isinstance(seed, (int, float)) and not isinstance(seed, bool) else None
    dataset = ((pargs or {}).get("data") or {}).get("dataset") if pargs else pinfo.get("dataset")
    run = obj.get("pretrain_run") or (os.path.dirname(ppath) if ppath else None)
    if _is_random_init(obj):
        method = RANDOM_INIT
        if seed is None and isinstance(cfg.get("seed"), int) and not isinstance(cfg.get("seed"), bool):
            seed = int(cfg["seed"])  # the random backbone's init seed: its linear and kNN results are one sample
    for column, value, top5 in _columns(obj):
        out.append(Result(path, column, value, str(obj.get("mode") or "linear"), str(method), seed, dataset,
                          run, top5, mtime, {k: obj.get(k) for k in ("lr", "penalty", "subset_label") if k in obj}))
    base = obj.get("random_init_baseline")
    if isinstance(base, dict):
        bobj = dict(base)
        bobj.setdefault("mode", obj.get("mode"))
        for key in ("protocol", "dataset", "subset_label"):
            if key in obj:
                bobj.setdefault(key, obj[key])
        for column, value, top5 in _columns(bobj):
            out.append(Result(path, column, value, str(bobj.get("mode") or "linear"), RANDOM_INIT, seed, dataset,
                              run, top5, mtime, {"baseline_of": str(method)}))
    return out


def _result_objects(obj: Any) -> List[Dict[str, Any]]:
    """Results objects inside a JSON document: the object itself, items of a ``results`` list, or
    a list of objects."""
    if isinstance(obj, list):
        return [o for o in obj if isinstance(o, dict)]
    if not isinstance(obj, dict):
        return []
    if isinstance(obj.get("results"), list):
        return [o for o in obj["results"] if isinstance(o, dict)]
    return [obj]


# ---------------------------------------------------------------------------------------------
# discovery
# ---------------------------------------------------------------------------------------------


def _walk(root: str) -> Iterable[Tuple[str, List[str]]]:
    for dirpath, dirnames, filenames in walk_unique(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        yield dirpath, sorted(filenames)


def discover(paths: Iterable[str]) -> Tuple[List[PretrainRun], List[Result], List[str]]:
    """Pretraining runs and evaluation results under ``paths`` (folders, searched recursively,
    or results JSON files). Raises FileNotFoundError naming a path that does not exist."""
    runs: Dict[str, PretrainRun] = {}
    results: List[Result] = []
    notes: List[str] = []
    args_cache: Dict[str, Optional[dict]] = {}
    seen_files = set()

    def read_results_file(fpath: str, folder_args: Optional[dict]) -> None:
        if fpath in seen_files:
            return
        seen_files.add(fpath)
        obj = read_json(fpath)
        if obj is None:
            notes.append(f"skipped unreadable JSON '{fpath}'")
            return
        found = []
        for o in _result_objects(obj):
            found.extend(results_from_object(o, fpath, os.path.getmtime(fpath), args_cache, folder_args))
        if found:
            results.extend(found)

    for root in paths:
        root = os.path.abspath(root)
        if not os.path.exists(root):
            raise FileNotFoundError(f"run folder '{root}' does not exist")
        if os.path.isfile(root):
            if root.endswith(".json"):  # other files (e.g. a shell glob over feature caches) are not results
                read_results_file(root, None)
            continue
        for dirpath, files in _walk(root):
            args = read_json(os.path.join(dirpath, "args.json")) if "args.json" in files else None
            if "args.json" in files and args is None:
                notes.append(f"skipped unreadable '{os.path.join(dirpath, 'args.json')}'")
            if _is_pretrain_args(args) and dirpath not in runs:
                run = PretrainRun(dirpath, args)
                for path in metrics_files(dirpath):  # earlier parts of a resumed run first
                    try:
                        for key, series in read_metrics_csv(path).items():
                            run.metrics.setdefault(key, []).extend(series)
                    except (OSError, csv.Error, UnicodeDecodeError) as err:
                        notes.append(f"skipped unreadable '{path}': {err}")
                runs[dirpath] = run
            for fname in files:
                if fname.endswith(".json") and fname not in NON_RESULT_FILES:
                    read_results_file(os.path.join(dirpath, fname), args if isinstance(args, dict) else None)
    # results whose checkpoint lives in a discovered run inherit its facts (already done through
    # args.json); results inside a run folder without a checkpoint path belong to that run
    for r in results:
        if r.pretrain_run is None:
            for d, run in runs.items():
                if r.path.startswith(d + os.sep):
                    r.pretrain_run = d
                    if r.method == "unknown":
                        r.method = run.method
                    if r.seed is None:
                        r.seed = run.seed
                    r.dataset = r.dataset or run.dataset
    return sorted(runs.values(), key=lambda r: (r.method, r.seed if r.seed is not None else -1, r.run_dir)), \
        results, notes
