"""Checkpoints in solo-learn's format: run folders, atomic writes, auto-resume, strict loading.

Run folder layout (one per training run)::

    <checkpoint.dir>/<method>/<version>/
        args.json                      resolved config (+ wandb_run_id), written at train start
        metrics.csv, hparams.yaml      CSV logger
        <name>-<version>-ep=<e>.ckpt   full Lightning checkpoint every ``frequency`` epochs

``version`` is the wandb run id, or ``offline-xxxxxxxx``. Every file is written to a temporary
name and renamed, so a kill never leaves a half-written checkpoint under its final name.
A checkpoint's ``state_dict`` keys are attribute names (``backbone.*``, ``projector.*``, ...).

Loading a backbone is always strict: :func:`load_backbone` raises
:class:`CheckpointMismatchError` listing every missing, unexpected and mis-shaped key.
"""

from __future__ import annotations

import glob
import json
import os
import re
import secrets
import time
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf
from torch import nn

from harl.utils.io import atomic_torch_save, atomic_write_bytes, atomic_write_text, metrics_files  # noqa: F401

CKPT_RE = re.compile(r"-ep=(\d+)\.ckpt$")


class CheckpointMismatchError(RuntimeError):
    """A checkpoint does not match the model it is loaded into."""


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
                   "enable_progress_bar", "knn_eval", "no_validation")


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


def find_resumable(cfg: DictConfig) -> Tuple[Optional[str], Optional[str]]:
    """Newest checkpoint of a run with the same fingerprint within ``auto_resume.max_hours``.

    Returns ``(ckpt_path, run_dir)`` or ``(None, None)``.
    """
    root = run_root(cfg)
    if not os.path.isdir(root):
        return None, None
    want = resume_fingerprint(cfg)
    max_age = float(cfg.auto_resume.max_hours) * 3600
    best: Tuple[float, Optional[str], Optional[str]] = (-1.0, None, None)
    for run_dir in sorted(glob.glob(os.path.join(glob.escape(root), "*"))):
        args_path = os.path.join(run_dir, "args.json")
        if not os.path.isfile(args_path):
            continue
        try:
            with open(args_path) as f:
                args = json.load(f)
        except (OSError, json.JSONDecodeError):
            continue
        if resume_fingerprint(args) != want:
            continue
        ckpts = list_checkpoints(run_dir)
        if not ckpts:
            continue
        mtime = os.path.getmtime(ckpts[-1])
        if time.time() - mtime > max_age:
            continue
        if mtime > best[0]:
            best = (mtime, ckpts[-1], run_dir)
    return best[1], best[2]


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
            args = OmegaConf.to_container(self.cfg, resolve=True)
            args["wandb_run_id"] = self.version if self.cfg.wandb.enabled else None
            atomic_write_text(os.path.join(self.run_dir, "args.json"), json.dumps(args, indent=2, default=str))
            existing = list_checkpoints(self.run_dir)
            self.last_ckpt = existing[-1] if existing else None

    def save(self, trainer) -> None:
        epoch = trainer.current_epoch
        path = self.ckpt_path(epoch)
        tmp = path + ".tmp"
        trainer.save_checkpoint(tmp, weights_only=False)  # collective; rank 0 writes, then barrier
        if trainer.is_global_zero:
            os.replace(tmp, path)
            if self.last_ckpt and self.last_ckpt != path and not self.keep_prev and os.path.exists(self.last_ckpt):
                os.remove(self.last_ckpt)
            self.last_ckpt = path
        trainer.strategy.barrier("harl.Checkpointer.save")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self.enabled or trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        last = epoch + 1 >= (trainer.max_epochs or 0)
        if (epoch + 1) % self.frequency == 0 or last:
            self.save(trainer)


# ---------------------------------------------------------------------------------------------
# reading checkpoints
# ---------------------------------------------------------------------------------------------


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """The state dict inside a ``.ckpt``/``.pth``/``.pt``/``.safetensors`` file (full model keys)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint '{path}' does not exist")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file name
        raise CheckpointMismatchError(f"could not read checkpoint '{path}': {err}") from err
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                return obj[key]
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise CheckpointMismatchError(f"'{path}' holds no state dict (top-level keys: {list(obj)[:10]})")


def backbone_state_dict(state_dict: Dict[str, torch.Tensor], prefix: str = "backbone.") -> Dict[str, torch.Tensor]:
    """Keep ``backbone.*`` keys and strip the prefix (legacy ``encoder.`` is renamed first).

    A state dict without any ``backbone.``/``encoder.`` key is taken to be a bare backbone.
    """
    sd = {}
    for k, v in state_dict.items():
        if k.startswith("module."):
            k = k[len("module."):]
        if k.startswith("encoder."):
            k = prefix + k[len("encoder."):]
        sd[k] = v
    if any(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return sd


def strict_load(module: nn.Module, state_dict: Dict[str, torch.Tensor], source: str = "checkpoint",
                ignore: Iterable[str] = ()) -> None:
    """``load_state_dict(strict=True)`` with an error naming every missing, unexpected, mis-shaped key.

    ``ignore`` lists key names (or prefixes ending with '.') the caller explicitly drops.
    """
    ignore = tuple(ignore)

    def ignored(k: str) -> bool:
        return any(k == i or (i.endswith(".") and k.startswith(i)) for i in ignore)

    own = module.state_dict()
    state_dict = {k: v for k, v in state_dict.items() if not ignored(k)}
    missing = sorted(k for k in own if k not in state_dict and not ignored(k))
    unexpected = sorted(k for k in state_dict if k not in own)
    shapes = sorted(f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in own if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape))
    if missing or unexpected or shapes:
        lines = [f"{source} does not match {type(module).__name__}:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): " + ", ".join(missing))
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): " + ", ".join(unexpected))
        if shapes:
            lines.append(f"  shape mismatches ({len(shapes)}): " + "; ".join(shapes))
        raise CheckpointMismatchError("\n".join(lines))
    own_keys = set(own)
    module.load_state_dict({k: v for k, v in state_dict.items() if k in own_keys},
                           strict=not ignore)  # with ignored keys only those may be absent: checked above


def load_backbone(path: str, backbone: nn.Module, ignore: Iterable[str] = ()) -> nn.Module:
    """Load the ``backbone.*`` weights of checkpoint ``path`` into ``backbone`` strictly."""
    sd = backbone_state_dict(read_state_dict(path))
    strict_load(backbone, sd, source=f"checkpoint '{path}'", ignore=ignore)
    return backbone


def read_run_config(path: str) -> Optional[DictConfig]:
    """The training config of a checkpoint: ``args.json`` beside it, else the ckpt's hyper-parameters.

    The checkpoint is read with ``weights_only=True`` only: a file that needs unpickling of
    arbitrary Python objects (it can run code from the file) gives no config here, with a warning
    saying how to proceed (``harl-zoo import ... --trust`` converts a trusted file once).
    """
    args = os.path.join(os.path.dirname(os.path.abspath(path)), "args.json")
    if os.path.isfile(args):
        with open(args) as f:
            return OmegaConf.create(json.load(f))
    if path.endswith(".ckpt"):
        import pickle
        import warnings

        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            warnings.warn(f"'{path}' has no args.json beside it and its hyper-parameters hold pickled Python "
                          "objects, which harl does not unpickle (that can run code from the file); give the "
                          "architecture explicitly, or convert a file you trust with "
                          "'harl-zoo import CKPT --out FILE --trust'")
            return None
        except Exception:  # noqa: BLE001
            return None
        cfg = (obj.get("hyper_parameters") or {}).get("cfg") if isinstance(obj, dict) else None
        if cfg is not None:
            return OmegaConf.create(cfg)
    return None
