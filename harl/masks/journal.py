"""The mask runner's per-shard state in ``OUT/.harl-masks`` (what makes a run resumable): the
JSON-lines journals, the scan of existing outputs (stale temporary files removed), and
``meta.json`` (the generator and parameters a folder was made with)."""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Dict, Sequence

from harl.errors import MetaMismatchError
from harl.masks.io import is_tmp_name
from harl.utils.io import atomic_write_text

STATE_DIR = ".harl-masks"


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
