"""Checkpoints in solo-learn's format: run folders, atomic writes, auto-resume, strict loading.

Run folder layout (one per training run)::

    <checkpoint.dir>/<method>/<version>/
        args.json                      resolved config (+ wandb_run_id), written at train start
        metrics.csv, hparams.yaml      CSV logger
        <name>-<version>-ep=<e>.ckpt   full Lightning checkpoint every ``frequency`` epochs

``version`` is the wandb run id, or ``offline-xxxxxxxx``. Every file is written to a temporary
name, fsynced and renamed, so a kill or a power loss never leaves a half-written checkpoint under
its final name; the previous checkpoint is deleted only once the new one has been read back
(every byte checked against the CRC-32 the zip format stores). A checkpoint's ``state_dict`` keys
are attribute names (``backbone.*``, ``projector.*``, ...).

Auto-resume (:func:`choose_resume`) picks, among the runs whose config matches, the checkpoint
furthest along (ties: the newest file) that reads back completely; a torn one is renamed
``*.ckpt.torn`` and named in the log line that explains the choice.

Reading weights files and strict backbone loading live in :mod:`harl.weights` (re-exported here:
:func:`load_backbone` is the one path from a weights file into a backbone).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import secrets
import time
import zipfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf
from torch import nn

from harl.utils.io import atomic_torch_save, atomic_write_bytes, atomic_write_text, fsync_path, metrics_files  # noqa: F401
from harl.errors import CheckpointWriteError

CKPT_RE = re.compile(r"-ep=(\d+)\.ckpt$")
#: temporary files of interrupted writes: ``<ckpt>.tmp`` (checkpoints), ``<file>.tmp-<pid>-<hex>`` (others)
STALE_TMP_RE = re.compile(r"(\.ckpt\.tmp|\.tmp-\d+-[0-9a-f]+)$")

log = logging.getLogger("harl")


def checkpoint_problem(path: str) -> Optional[str]:
    """None when ``path`` is a complete checkpoint, else why not (one phrase).

    torch writes zip archives whose records carry a CRC-32; every record is read and checked
    (``torch.load`` itself does not notice zeroed or torn bytes inside a record). A file in
    torch's legacy (non-zip) format is not checked and reported complete.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as err:
        return f"unreadable ({err.strerror or err})"
    if not head:
        return "empty file"
    if head[:1] == b"\x80":  # a legacy pickle-format file: no checksums to check
        return None
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except zipfile.BadZipFile as err:
        return f"truncated or not a checkpoint ({err})"
    except (OSError, EOFError, ValueError) as err:
        return f"unreadable ({err})"
    if bad is not None:
        return f"corrupt bytes in record '{bad}' (CRC mismatch)"
    return None


# ---------------------------------------------------------------------------------------------
# run folders and auto-resume
# ---------------------------------------------------------------------------------------------


def new_version(wandb_enabled: bool = False) -> str:
    """A fresh run version: a wandb-style id when wandb is on, else ``offline-xxxxxxxx``."""
    if wandb_enabled:
        return secrets.token_hex(4)
    return f"offline-{secrets.token_hex(4)}"


def run_root(cfg: DictConfig) -> str:
    return os.path.join(str(cfg.checkpoint.dir), str(cfg.method))


def list_checkpoints(run_dir: str) -> List[str]:
    """Checkpoints in ``run_dir`` sorted by epoch (temporary files are ignored)."""
    found = []
    for path in glob.glob(os.path.join(glob.escape(run_dir), "*.ckpt")):
        m = CKPT_RE.search(path)
        if m:
            found.append((int(m.group(1)), os.path.getmtime(path), path))
    return [p for _, _, p in sorted(found)]


#: config keys that do not change what a run computes (ignored when matching runs to resume)
_RESUME_IGNORED = ("data.num_workers", "data.verify", "checkpoint", "auto_resume", "wandb", "resume_from_checkpoint",
                   "devices", "accelerator", "num_sanity_val_steps", "log_every_n_steps",
                   "enable_progress_bar", "knn_eval", "no_validation", "guard", "health")


def resume_fingerprint(cfg: Any) -> Dict[str, Any]:
    """The part of a resolved config that must match for a run to be resumed."""
    d = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else json.loads(json.dumps(cfg))
    d = dict(d)
    d.pop("wandb_run_id", None)
    for key in _RESUME_IGNORED:
        parts = key.split(".")
        node = d
        for p in parts[:-1]:
            node = node.get(p, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(parts[-1], None)
    return d


@dataclass
class ResumeChoice:
    """What auto-resume decided: the checkpoint (or None), its run folder and a one-line reason."""

    ckpt: Optional[str]
    run_dir: Optional[str]
    message: str
    torn: List[Tuple[str, str]] = field(default_factory=list)  # (path, problem) of skipped torn files


def _diff_keys(a: Any, b: Any, prefix: str = "") -> List[str]:
    """Dotted keys whose values differ between two nested dicts (sorted)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: List[str] = []
        for key in sorted(set(a) | set(b), key=str):
            where = f"{prefix}.{key}" if prefix else str(key)
            if key not in a or key not in b:
                out.append(where)
            else:
                out.extend(_diff_keys(a[key], b[key], where))
        return out
    return [] if a == b else [prefix]


def _dotted(d: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(d, dict) or part not in d:
            return "<absent>"
        d = d[part]
    return d


def _promote_complete_tmp(run_dir: str) -> List[str]:
    """A ``<ckpt>.tmp`` that reads back completely but was never renamed (a kill between the write
    and the rename) is renamed to its final name, so its epoch is not lost. Returns the promoted paths."""
    promoted = []
    for tmp in sorted(glob.glob(os.path.join(glob.escape(run_dir), "*.ckpt.tmp"))):
        final = tmp[: -len(".tmp")]
        if CKPT_RE.search(final) and not os.path.exists(final) and checkpoint_problem(tmp) is None:
            fsync_path(tmp)
            os.replace(tmp, final)
            fsync_path(run_dir)
            promoted.append(final)
    return promoted


def _quarantine(path: str) -> str:
    """Rename a torn checkpoint to ``<path>.torn`` (kept for inspection, never resumed again)."""
    dest = path + ".torn"
    k = 1
    while os.path.exists(dest):
        dest, k = f"{path}.torn{k}", k + 1
    try:
        os.replace(path, dest)
    except OSError:
        return path
    return dest


def _max_age_s(cfg: DictConfig) -> Optional[float]:
    hours = cfg.auto_resume.max_hours
    if hours is None or float(hours) <= 0:
        return None
    return float(hours) * 3600


def choose_resume(cfg: DictConfig, root: Optional[str] = None, fingerprint=None) -> ResumeChoice:
    """Pick the checkpoint auto-resume continues from, and say why in one line.

    Rules: only runs under ``<checkpoint.dir>/<method>/`` whose ``args.json`` matches this config
    (:func:`resume_fingerprint`) count; a run whose newest checkpoint is older than
    ``auto_resume.max_hours`` (null or 0: no limit) is skipped and named; among the others the
    checkpoint furthest along (highest epoch; ties: the newest file) that reads back completely
    (:func:`checkpoint_problem`) wins; torn ones are renamed ``*.torn`` and named. A complete
    checkpoint write interrupted before its rename is finished first. ``root`` (default
    :func:`run_root`) and ``fingerprint`` (default :func:`resume_fingerprint`) let evaluation runs
    use the same rules.
    """
    root = run_root(cfg) if root is None else root
    fingerprint = resume_fingerprint if fingerprint is None else fingerprint
    if not os.path.isdir(root):
        return ResumeChoice(None, None, f"auto-resume: starting a new run ('{root}' holds no runs yet)")
    want = fingerprint(cfg)
    max_age = _max_age_s(cfg)
    now = time.time()
    candidates: List[Tuple[int, float, str, str]] = []
    differ: List[Tuple[str, List[str], dict]] = []
    too_old: List[Tuple[str, float]] = []
    empty: List[str] = []
    promoted: List[str] = []
    for run_dir in sorted(glob.glob(os.path.join(glob.escape(root), "*"))):
        args_path = os.path.join(run_dir, "args.json")
        if not os.path.isfile(args_path):
            continue
        try:
            with open(args_path) as f:
                fp = fingerprint(json.load(f))
        except (OSError, ValueError, AttributeError, TypeError):
            continue
        if fp != want:
            differ.append((run_dir, _diff_keys(want, fp), fp))
            continue
        promoted += _promote_complete_tmp(run_dir)
        ckpts = [(int(CKPT_RE.search(p).group(1)), os.path.getmtime(p), p) for p in list_checkpoints(run_dir)]
        if not ckpts:
            empty.append(run_dir)
            continue
        age = now - max(m for _, m, _ in ckpts)
        if max_age is not None and age > max_age:
            too_old.append((run_dir, age / 3600))
            continue
        candidates.extend((e, m, p, run_dir) for e, m, p in ckpts)
    candidates.sort(key=lambda c: (c[0], c[1]), reverse=True)

    torn: List[Tuple[str, str]] = []
    chosen = None
    for cand in candidates:
        problem = checkpoint_problem(cand[2])
        if problem is None:
            chosen = cand
            break
        torn.append((cand[2], problem))
    notes = []
    if promoted:
        notes.append("finished interrupted checkpoint write(s) " + ", ".join(f"'{p}'" for p in promoted))
    for path, problem in torn:
        kept = _quarantine(path) if not problem.startswith("unreadable") else path
        notes.append(f"skipped torn checkpoint '{path}' ({problem}; kept as '{kept}')")
    for run_dir, hours in too_old:
        notes.append(f"ignored run '{run_dir}': its newest checkpoint is {hours:.1f} h old > auto_resume.max_hours="
                     f"{cfg.auto_resume.max_hours} (set auto_resume.max_hours=null to resume it)")
    tail = ("; " + "; ".join(notes)) if notes else ""
    max_epochs = cfg.get("max_epochs")
    if chosen is not None:
        epoch, _, path, run_dir = chosen
        runs = {c[3]: max(e for e, _, _, r in candidates if r == c[3]) for c in candidates}
        others = sorted((r for r in runs if r != run_dir), key=lambda r: -runs[r])
        if not others:
            why = "the only run with this config"
        elif any(runs[r] == epoch for r in others):
            why = f"newest of {len(runs)} runs with this config at epoch {epoch}"
        else:
            why = (f"furthest along of {len(runs)} runs with this config (others: "
                   + ", ".join(f"'{os.path.basename(r)}' at epoch {runs[r]}" for r in others[:3])
                   + (", ..." if len(others) > 3 else "") + ")")
        done = f"{epoch + 1} of {max_epochs} epochs done" if max_epochs else f"{epoch + 1} epochs done"
        msg = f"auto-resume: continuing run '{run_dir}' from '{os.path.basename(path)}' ({done}): {why}{tail}"
        return ResumeChoice(path, run_dir, msg, torn)
    if torn or too_old or empty:
        why = "no usable checkpoint of a run with this config"
        if empty:
            why += " (" + ", ".join(f"'{os.path.basename(r)}'" for r in empty[:3]) + " has none)"
    elif differ:
        run_dir, keys, fp = differ[-1]
        shown = ", ".join(f"{k}: {_dotted(fp, k)!r} there vs {_dotted(want, k)!r} here" for k in keys[:3])
        why = (f"none of the {len(differ)} run(s) in '{root}' has this config (e.g. '{os.path.basename(run_dir)}' "
               f"differs in {shown}{', ...' if len(keys) > 3 else ''})")
    else:
        why = f"'{root}' holds no runs yet"
    return ResumeChoice(None, None, f"auto-resume: starting a new run: {why}{tail}", torn)


def find_resumable(cfg: DictConfig) -> Tuple[Optional[str], Optional[str]]:
    """``(ckpt_path, run_dir)`` auto-resume continues from, or ``(None, None)`` (see :func:`choose_resume`)."""
    choice = choose_resume(cfg)
    return choice.ckpt, choice.run_dir


def remove_stale_tmp(run_dir: str) -> List[str]:
    """Delete temporary files of interrupted writes in ``run_dir`` (``*.ckpt.tmp``, ``*.tmp-<pid>-<hex>``).

    Only the folder of the run being (re)started is cleaned: one process writes one run folder.
    Returns the removed paths.
    """
    removed = []
    try:
        entries = sorted(os.listdir(run_dir))
    except OSError:
        return removed
    for name in entries:
        if STALE_TMP_RE.search(name):
            path = os.path.join(run_dir, name)
            try:
                os.remove(path)
                removed.append(path)
            except (IsADirectoryError, FileNotFoundError, PermissionError):
                pass
    return removed


def preserve_metrics_on_resume(run_dir: str) -> None:
    """Lightning's CSV logger deletes an existing ``metrics.csv``: before a resumed run starts
    logging, keep it as ``metrics.before-resume-<k>.csv`` (:func:`harl.utils.io.metrics_files` lists them in order)."""
    path = os.path.join(run_dir, "metrics.csv")
    if not os.path.isfile(path):
        return
    k = 1
    while os.path.exists(os.path.join(run_dir, f"metrics.before-resume-{k}.csv")):
        k += 1
    os.replace(path, os.path.join(run_dir, f"metrics.before-resume-{k}.csv"))


class Checkpointer(Callback):
    """Writes ``args.json`` at train start and a checkpoint every ``frequency`` epochs (atomically)."""

    def __init__(self, cfg: DictConfig, run_dir: str, version: str, enabled: bool = True,
                 frequency: int = 1, keep_prev: bool = False):
        self.cfg = cfg
        self.run_dir = run_dir
        self.version = version
        self.enabled = enabled
        self.frequency = max(1, int(frequency))
        self.keep_prev = keep_prev
        self.last_ckpt: Optional[str] = None

    def ckpt_path(self, epoch: int) -> str:
        return os.path.join(self.run_dir, f"{self.cfg.name}-{self.version}-ep={epoch}.ckpt")

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            os.makedirs(self.run_dir, exist_ok=True)
            removed = remove_stale_tmp(self.run_dir)
            if removed:
                log.warning("removed %d temporary file(s) left by an interrupted write: %s", len(removed),
                            ", ".join(os.path.basename(p) for p in removed))
            args = OmegaConf.to_container(self.cfg, resolve=True)
            args["wandb_run_id"] = self.version if self.cfg.wandb.enabled else None
            atomic_write_text(os.path.join(self.run_dir, "args.json"), json.dumps(args, indent=2, default=str))
            existing = list_checkpoints(self.run_dir)
            resumed = trainer.ckpt_path
            if resumed and os.path.abspath(str(resumed)) in {os.path.abspath(p) for p in existing}:
                self.last_ckpt = os.path.abspath(str(resumed))
            else:
                self.last_ckpt = existing[-1] if existing else None

    def save(self, trainer) -> None:
        """Write, fsync, rename, read back; only then delete the run's older checkpoints."""
        epoch = trainer.current_epoch
        path = self.ckpt_path(epoch)
        tmp = path + ".tmp"
        trainer.save_checkpoint(tmp, weights_only=False)  # collective; rank 0 writes, then barrier
        if trainer.is_global_zero:
            fsync_path(tmp)
            os.replace(tmp, path)
            fsync_path(self.run_dir)
            problem = checkpoint_problem(path)
            if problem is not None:
                kept = f"the previous checkpoint '{self.last_ckpt}' is kept" if self.last_ckpt else "no earlier one exists"
                raise CheckpointWriteError(f"checkpoint '{path}' does not read back after writing ({problem}); "
                                           f"{kept}; check the disk (space, errors) and resume")
            if not self.keep_prev:
                for old in list_checkpoints(self.run_dir):
                    if os.path.abspath(old) != os.path.abspath(path):
                        os.remove(old)
            self.last_ckpt = path
        trainer.strategy.barrier("harl.Checkpointer.save")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self.enabled or trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        last = epoch + 1 >= (trainer.max_epochs or 0)
        if (epoch + 1) % self.frequency == 0 or last:
            self.save(trainer)


# reading weights files and strict loading: harl/weights.py (these names stay importable from here)
from harl.weights import (  # noqa: E402,F401
    _first_line, backbone_state_dict, load_backbone, read_backbone_state_dict, read_checkpoint, read_run_config,
    read_state_dict, strict_load,
)
