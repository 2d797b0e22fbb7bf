"""Run-folder files of fine-tuning (JSON, CSV, stage names) and facts of the pretraining run."""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Any, Dict, List, Optional

from harl.utils.io import atomic_write_text
from harl.weights import read_run_config


def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def _write_json(path: str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def _write_csv(path: str, rows: List[Dict[str, Any]]) -> None:
    if not rows:
        return
    fields: List[str] = []
    for r in rows:
        for k in r:
            if k not in fields:
                fields.append(k)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _fmt(v: float) -> str:
    return f"{v:g}"


def stage_name(lr: float, weight_decay: float) -> str:
    return f"search-lr={_fmt(lr)}-wd={_fmt(weight_decay)}"


def _pretrain_facts(path: Optional[str]) -> Dict[str, Any]:
    """``{"seed", "pretrain_run", "crop_size"}`` of the pretraining run a checkpoint comes from."""
    out: Dict[str, Any] = {"seed": None, "pretrain_run": None, "crop_size": None}
    if not path:
        return out
    cfg = read_run_config(path)
    out["pretrain_run"] = os.path.dirname(os.path.abspath(path))
    if cfg is None:
        return out
    try:
        out["seed"] = cfg.get("seed")
        augs = cfg.get("augmentations")
        if augs is not None and len(augs) > 0 and augs[0].get("crop_size") is not None:
            out["crop_size"] = int(augs[0].get("crop_size"))
        elif cfg.get("data") is not None and cfg.data.get("augmentations") is not None:
            cs = cfg.data.augmentations.get("crop_size")
            out["crop_size"] = int(cs) if cs is not None else None
    except Exception:  # noqa: BLE001 - a foreign config only loses these optional facts
        pass
    return out


def subset_label(sub: Dict[str, Any], size: int, total: int) -> str:
    """A short name of a labelled subset for tables: ``1%``, ``10%``, ``13/class``, or the list
    file's share of the training set (``1% (list)``)."""
    if sub.get("per_class") is not None:
        return f"{int(sub['per_class'])}/class"
    frac = float(sub["fraction"]) if sub.get("fraction") is not None else size / max(1, total)
    pct = 100.0 * frac
    txt = f"{pct:.0f}%" if abs(pct - round(pct)) < 0.05 else f"{pct:.2g}%"
    return txt + (" (list)" if sub.get("file") else "")
