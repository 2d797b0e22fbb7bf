"""Semi-supervised fine-tuning (docs/protocols.md): the whole backbone + a linear head on a labelled subset.

Protocol (BYOL / SimCLR; harl's reading of it, the papers leave details open): pick a seeded, class-balanced labelled subset of the
training split (1 %, 10 %, any fraction, k images per class, or a list file such as SimCLR's
ImageNet 1 % / 10 % lists) — :mod:`harl.eval.subsets`; fine-tune backbone + linear head with SGD,
Nesterov momentum 0.9, no weight decay, a short cosine schedule stepped per optimizer step
(≈30 epochs for 1 %, 20 for 10 %), RandomResizedCrop + flip; choose the learning rate (and
optionally the weight decay) on a class-stratified held-out part of the labelled subset; train
again on the whole subset with the chosen values and report top-1 / top-5 on the validation split.

Everything a run needs to be reproduced lands in its run folder
``<checkpoint.dir>/finetune/<name>-<digest>/`` (the digest is of the config, so running the same
command again resumes the same folder):

- ``args.json``: the resolved config (+ the backbone architecture actually built);
- ``subset_train.txt`` (the labelled subset), ``subset_search_train.txt`` / ``subset_holdout.txt``
  (its split for the search): one relative path or dataset index per line;
- ``stages/<stage>/{state.pt, metrics.csv, result.json}``: one stage per search point
  (``search-lr=…-wd=…``) and the ``final`` one; ``state.pt`` is rewritten atomically each epoch so
  a killed run resumes at the last finished epoch, and a stage with ``result.json`` is skipped;
- ``metrics.csv`` (all stages, per epoch), ``finetuned.pth`` (``backbone.*`` + ``classifier.*``)
  and ``results.json`` (``mode: finetune``, ``top1``, ``top5``, …; read by ``harl-report``).
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
import math
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Dataset

from harl.checkpoint import atomic_torch_save, atomic_write_text
from harl.config import CHECKPOINT_DIR, DATA_BLOCK, FREE, REQUIRED, check_schema, choice, pick
from harl.errors import ConfigError
from harl.registry import DATASETS
from harl.eval.linear_config import check_eval_augmentations
from harl.checkpoint import read_run_config
from harl.config_values import COMMON_VALUES, MEAN_STD, Bool, Either, Int, Num, Seq, Str
from harl.config_values import check_values
from harl.eval.pretrained import file_sha256
from harl.eval.pretrained import load_pretrained_backbone
from harl.utils.device import resolve_device  # the one resolver (re-exported here)

# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------

#: BYOL's semi-supervised learning-rate sweep (absolute values, batch 1024)
DEFAULT_LR_GRID = [0.005, 0.01, 0.02, 0.05, 0.1]

FINETUNE_SCHEMA: Dict[str, Any] = {
    "name": REQUIRED,
    "pretrained_feature_extractor": None,  # required unless random_init
    "random_init": False,  # the random-init baseline (architecture from the checkpoint or backbone.name)
    "backbone": {"name": None, "kwargs": FREE()},  # null: the checkpoint's architecture
    "eval_highpass": None,  # null: on iff the checkpoint was pretrained on high-pass inputs (SGM hp)
    "data": pick(DATA_BLOCK, "dataset", "train_path", "val_path", "num_workers", "download", "skip_corrupt",
                 "num_classes", "augmentations"),
    "subset": {
        "fraction": None,  # e.g. 0.01 / 0.1; 1.0 = every label
        "per_class": None,  # or k labelled images per class
        "file": None,  # or a list file (relative paths / SimCLR file names / indices); wins over the others
        "seed": 0,
    },
    "search": {
        "lr": list(DEFAULT_LR_GRID),  # used when optimizer.lr is null
        "weight_decay": [0.0],
        "holdout_fraction": 0.2,  # of the labelled subset, class-stratified
        "max_epochs": None,  # null: max_epochs
        "metric": "top1",
    },
    "optimizer": {
        "batch_size": 256,
        "lr": None,  # absolute lr (not scaled by batch size); null: chosen by the search
        "weight_decay": 0.0,  # used when optimizer.lr is given
        "momentum": 0.9,
        "nesterov": True,
        "accumulate_grad_batches": 1,
    },
    "scheduler": {"name": "cosine", "warmup_epochs": 0},
    "checkpoint": {"dir": CHECKPOINT_DIR, "run_dir": None},  # run_dir: explicit output folder
    "max_epochs": 30,
    "seed": 5,
    "accelerator": "auto",  # auto | cpu | cuda
    "precision": "32",  # 32 | bf16 | 16 (autocast; Lightning spellings 32-true / bf16-mixed accepted)
    "channels_last": True,
    "save_model": True,
    "progress": True,
}

def _values() -> Dict[str, Any]:
    keep = ("name", "seed", "max_epochs", "data.dataset", "data.train_path", "data.val_path", "data.num_workers",
            "data.download", "data.skip_corrupt", "data.num_classes", "optimizer.batch_size", "optimizer.weight_decay",
            "scheduler.warmup_epochs", "checkpoint.dir", "accelerator")
    one_or_list = lambda v: Either(v, Seq(v, nonempty=True))  # noqa: E731
    return {
        **{k: COMMON_VALUES[k] for k in keep},
        "pretrained_feature_extractor": Str(nullable=True),
        "random_init": Bool(),
        "backbone.name": Str(nullable=True),
        "eval_highpass": Bool(nullable=True),
        "data.augmentations.crop_size": Int(ge=1, nullable=True),
        "data.augmentations.mean": MEAN_STD,
        "data.augmentations.std": Seq(Num(gt=0), length=3, nullable=True),
        "subset.fraction": Num(gt=0, le=1, nullable=True),
        "subset.per_class": Int(ge=1, nullable=True),
        "subset.file": Str(nullable=True),
        "subset.seed": Int(ge=0),
        "search.lr": one_or_list(Num(gt=0)),
        "search.weight_decay": one_or_list(Num(ge=0)),
        "search.holdout_fraction": Num(gt=0, lt=1),
        "search.max_epochs": Int(ge=1, nullable=True),
        "search.metric": Str(["top1", "top5"]),
        "optimizer.lr": Num(gt=0, nullable=True),
        "optimizer.momentum": Num(ge=0, lt=1),
        "optimizer.nesterov": Bool(),
        "optimizer.accumulate_grad_batches": Int(ge=1),
        "scheduler.name": Str(["cosine", "none"]),
        "checkpoint.run_dir": Str(nullable=True),
        "precision": Either(Str(), Int(ge=1)),
        "channels_last": Bool(),
        "save_model": Bool(),
        "progress": Bool(),
    }


#: types and ranges of the values of :data:`FINETUNE_SCHEMA` (see :mod:`harl.config_values`)
FINETUNE_VALUES: Dict[str, Any] = _values()

PRECISIONS = {"32": None, "32-true": None, "bf16": torch.bfloat16, "bf16-mixed": torch.bfloat16,
              "16": torch.float16, "16-mixed": torch.float16}

#: config keys that do not change the result (left out of the run-folder digest)
_DIGEST_IGNORED = ("data.num_workers", "checkpoint", "progress", "accelerator")




def _as_list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def validate_finetune_cfg(cfg: Any) -> DictConfig:
    """Check a fine-tuning config against :data:`FINETUNE_SCHEMA`, fill defaults, check values.

    Raises :class:`~harl.errors.ConfigError` naming the key (unknown keys get a close-match hint).
    """
    # "resolved" and "pretrain_method" are written into args.json by the runner
    out = check_schema(cfg, FINETUNE_SCHEMA, allow_trainer_keys=False, drop=("resolved", "pretrain_method"))

    check_values(out, FINETUNE_VALUES)
    choice(out["data"]["dataset"], DATASETS.names(), "data.dataset")
    choice(str(out["precision"]), list(PRECISIONS), "precision")
    out["precision"] = str(out["precision"])
    choice(out["accelerator"], ["auto", "cpu", "cuda", "gpu"], "accelerator")
    choice(out["scheduler"]["name"], ["cosine", "none"], "scheduler.name")
    choice(out["search"]["metric"], ["top1", "top5"], "search.metric")
    if not out["random_init"] and not out["pretrained_feature_extractor"]:
        raise ConfigError("missing required config key 'pretrained_feature_extractor' "
                          "(or set random_init=true for the random-init baseline)")
    if out["random_init"] and not out["pretrained_feature_extractor"] and not out["backbone"]["name"]:
        raise ConfigError("random_init=true without pretrained_feature_extractor needs backbone.name")
    pfe = out["pretrained_feature_extractor"]
    if pfe and not os.path.isfile(str(pfe)):
        raise ConfigError(f"config key 'pretrained_feature_extractor': file '{pfe}' does not exist")
    for key in ("train_path", "val_path"):
        if out["data"][key] is None:
            raise ConfigError(f"missing required config key 'data.{key}'")
    sub = out["subset"]
    if sub["file"] is not None:
        # a list file is the most specific choice: it replaces a launch config's default fraction
        sub["fraction"] = sub["per_class"] = None
    given = [k for k in ("fraction", "per_class", "file") if sub[k] is not None]
    if len(given) != 1:
        raise ConfigError("give exactly one of 'subset.fraction' (e.g. 0.01), 'subset.per_class' (e.g. 13) and "
                          f"'subset.file' (a list of images); got {given or 'none'}")
    if sub["fraction"] is not None and not 0.0 < float(sub["fraction"]) <= 1.0:
        raise ConfigError(f"config key 'subset.fraction' must be in (0, 1], got {sub['fraction']!r}")
    if sub["per_class"] is not None and (not isinstance(sub["per_class"], int) or sub["per_class"] < 1):
        raise ConfigError(f"config key 'subset.per_class' must be a positive integer, got {sub['per_class']!r}")
    if sub["file"] is not None and not os.path.isfile(str(sub["file"])):
        raise ConfigError(f"config key 'subset.file': file '{sub['file']}' does not exist")
    for key in ("max_epochs",):
        if not isinstance(out[key], int) or isinstance(out[key], bool) or out[key] < 1:
            raise ConfigError(f"config key '{key}' must be a positive integer, got {out[key]!r}")
    se = out["search"]
    if se["max_epochs"] is not None and (not isinstance(se["max_epochs"], int) or se["max_epochs"] < 1):
        raise ConfigError(f"config key 'search.max_epochs' must be a positive integer or null, got {se['max_epochs']!r}")
    se["lr"] = [float(v) for v in _as_list(se["lr"])]
    se["weight_decay"] = [float(v) for v in _as_list(se["weight_decay"])]
    if not se["lr"] or any(not v > 0 for v in se["lr"]):
        raise ConfigError(f"config key 'search.lr' must be a non-empty list of values > 0, got {se['lr']!r}")
    if not se["weight_decay"] or any(v < 0 for v in se["weight_decay"]):
        raise ConfigError("config key 'search.weight_decay' must be a non-empty list of values >= 0")
    if not 0.0 < float(se["holdout_fraction"]) < 1.0:
        raise ConfigError(f"config key 'search.holdout_fraction' must be in (0, 1), got {se['holdout_fraction']!r}")
    opt = out["optimizer"]
    if int(opt["batch_size"]) < 1:
        raise ConfigError("config key 'optimizer.batch_size' must be >= 1")
    if opt["lr"] is not None and not float(opt["lr"]) > 0:
        raise ConfigError(f"config key 'optimizer.lr' must be > 0 or null (search), got {opt['lr']!r}")
    if float(opt["weight_decay"]) < 0:
        raise ConfigError("config key 'optimizer.weight_decay' must be >= 0")
    if int(opt["accumulate_grad_batches"]) < 1:
        raise ConfigError("config key 'optimizer.accumulate_grad_batches' must be >= 1")
    if int(out["scheduler"]["warmup_epochs"]) < 0:
        raise ConfigError("config key 'scheduler.warmup_epochs' must be >= 0")
    check_eval_augmentations(out["data"]["augmentations"])
    return OmegaConf.create(out)


def config_digest(cfg: DictConfig) -> str:
    """8 hex digits identifying what a fine-tuning config computes (see :data:`_DIGEST_IGNORED`;
    the checkpoint counts by its path and its content's sha256)."""
    d = OmegaConf.to_container(cfg, resolve=True)
    for key in _DIGEST_IGNORED:
        parts = key.split(".")
        node = d
        for p in parts[:-1]:
            node = node.get(p, {})
        node.pop(parts[-1], None)
    if d.get("pretrained_feature_extractor"):
        path = os.path.abspath(str(d["pretrained_feature_extractor"]))
        d["pretrained_feature_extractor"] = path
        d["pretrained_sha256"] = file_sha256(path)  # a checkpoint rewritten in place gets a new folder
    if d["subset"].get("file"):
        d["subset"]["file"] = os.path.abspath(str(d["subset"]["file"]))
    blob = json.dumps(d, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:8]


# ---------------------------------------------------------------------------------------------
# model, training and evaluation (usable without a config)
# ---------------------------------------------------------------------------------------------


class FinetuneModel(nn.Module):
    """``backbone`` (B×3×H×W → B×C) followed by a linear ``classifier`` (C → num_classes).

    State-dict keys are ``backbone.*`` and ``classifier.*`` (loadable by the harl loaders).
    ``input_transform`` (e.g. :class:`harl.ops.filters.HighPass`) is applied to the batch first;
    it has no parameters and is not part of the state dict.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, num_features: Optional[int] = None,
                 input_transform: Optional[Callable] = None):
        super().__init__()
        self.backbone = backbone
        c = int(num_features or getattr(backbone, "num_features", 0))
        if c < 1:
            raise ValueError("FinetuneModel: cannot tell the backbone's feature size; pass num_features")
        self.classifier = nn.Linear(c, int(num_classes))
        self._input_transform = [input_transform] if input_transform is not None else []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._input_transform:
            x = self._input_transform[0](x)
        return self.classifier(self.backbone(x))


def _autocast(device: torch.device, precision: str):
    dtype = PRECISIONS[str(precision)]
    if dtype is None:
        return torch.autocast(device.type, enabled=False)
    if device.type == "cpu" and dtype == torch.float16:
        dtype = torch.bfloat16  # fp16 autocast is not meant for CPUs
    return torch.autocast(device.type, dtype=dtype)


def _split_batch(batch):
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        return batch[0], torch.as_tensor(batch[1])
    raise ValueError("dataset items must be (image, target, ...) tuples")


def _epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 1009 + 17) % (2**31 - 1)


@torch.no_grad()
def evaluate_classifier(model: nn.Module, dataset: Dataset, *, batch_size: int = 256, num_workers: int = 0,
                        device: Optional[torch.device] = None, precision: str = "32", progress: bool = False,
                        channels_last: bool = False, desc: str = "eval") -> Dict[str, float]:
    """Top-1 / top-5 (percent) and mean cross-entropy of ``model`` on ``dataset`` (items
    ``(image, target)``), in eval mode. Returns ``{"top1", "top5", "loss", "n"}``."""
    from tqdm.auto import tqdm

    device = device or next(model.parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    was = model.training
    model.eval().to(device)
    n = 0
    c1 = c5 = 0
    loss_sum = 0.0
    try:
        for batch in tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
            x, y = _split_batch(batch)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True).long()
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(device, precision):
                logits = model(x)
            logits = logits.float()
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            k = min(5, logits.shape[1])
            top = logits.topk(k, dim=1).indices
            c1 += int((top[:, 0] == y).sum())
            c5 += int((top == y[:, None]).any(dim=1).sum())
            n += int(y.numel())
    finally:
        model.train(was)
    if n == 0:
        return {"top1": float("nan"), "top5": float("nan"), "loss": float("nan"), "n": 0}
    return {"top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "loss": loss_sum / n, "n": n}


def cosine_lr(step: int, total_steps: int, base_lr: float, warmup_steps: int = 0) -> float:
    """Linear warm-up from 0 over ``warmup_steps``, then cosine from ``base_lr`` to 0 at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * progress))


def train_classifier(model: nn.Module, dataset: Dataset, *, epochs: int, lr: float, weight_decay: float = 0.0,
                     batch_size: int = 256, momentum: float = 0.9, nesterov: bool = True, schedule: str = "cosine",
                     warmup_epochs: int = 0, accumulate_grad_batches: int = 1, device: Optional[torch.device] = None,
                     precision: str = "32", num_workers: int = 0, seed: int = 0, state_path: Optional[str] = None,
                     channels_last: bool = False, progress: bool = True,
                     on_epoch_end: Optional[Callable[[Dict[str, float]], None]] = None,
                     desc: str = "finetune") -> List[Dict[str, float]]:
    """Train every parameter of ``model`` on ``dataset`` (items ``(image, target)``) with SGD.

    SGD (Nesterov momentum by default), no weight decay unless given, lr per optimizer step:
    ``schedule="cosine"`` (:func:`cosine_lr`, with ``warmup_epochs``) or ``"none"`` (constant).
    Batches are shuffled with a generator seeded from ``(seed, epoch)`` and the global RNG is
    re-seeded at each epoch start, so a resumed run sees the data an uninterrupted one would. A
    final batch of a single image is skipped (BatchNorm cannot train on it).

    ``state_path``: after every epoch the model, optimizer, scaler and history are written there
    atomically; if the file exists when training starts, training resumes after its last epoch.

    Returns the per-epoch history: ``[{"epoch", "step", "lr", "train_loss", "train_acc1"}, ...]``.
    """
    from tqdm.auto import tqdm

    if len(dataset) == 0:
        raise ValueError("train_classifier: the training set is empty")
    device = device or next(model.parameters()).device
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    batch_size = max(1, min(int(batch_size), len(dataset)))
    accumulate = max(1, int(accumulate_grad_batches))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0,
                          weight_decay=weight_decay)
    use_scaler = device.type == "cuda" and PRECISIONS[str(precision)] == torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler) if use_scaler else None

    def optimizer_step() -> None:
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)

    batches_per_epoch = len(dataset) // batch_size + (1 if len(dataset) % batch_size > 1 else 0)
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / accumulate))
    total_steps = steps_per_epoch * epochs
    warmup_steps = steps_per_epoch * int(warmup_epochs)

    history: List[Dict[str, float]] = []
    start_epoch = 0
    step = 0
    if state_path and os.path.isfile(state_path):
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        history = list(state["history"])
        start_epoch = int(state["epoch"]) + 1
        step = int(state["step"])

    for epoch in range(start_epoch, epochs):
        s = _epoch_seed(seed, epoch)
        torch.manual_seed(s)
        np.random.seed(s % (2**32 - 1))
        gen = torch.Generator().manual_seed(s)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=gen, num_workers=num_workers,
                            pin_memory=device.type == "cuda", drop_last=False)
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        opt.zero_grad(set_to_none=True)
        micro = 0
        bar = tqdm(loader, desc=f"{desc} ep {epoch + 1}/{epochs}", disable=not progress, leave=False,
                   dynamic_ncols=True)
        lr_now = cosine_lr(step, total_steps, lr, warmup_steps) if schedule == "cosine" else lr
        for batch in bar:
            x, y = _split_batch(batch)
            if x.shape[0] < 2:
                continue
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True).long()
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            lr_now = cosine_lr(step, total_steps, lr, warmup_steps) if schedule == "cosine" else lr
            for g in opt.param_groups:
                g["lr"] = lr_now
            with _autocast(device, precision):
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: the loss became {float(loss)} at epoch {epoch}, step {step} "
                                         f"(lr {lr_now:g}); try a smaller learning rate")
            (scaler.scale(loss / accumulate) if scaler else loss / accumulate).backward()
            micro += 1
            if micro % accumulate == 0:
                optimizer_step()
                step += 1
            loss_sum += float(loss.detach()) * x.shape[0]
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += int(x.shape[0])
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", lr=f"{lr_now:.3g}")
        if micro % accumulate != 0:  # flush a partial accumulation at the end of the epoch
            optimizer_step()
            step += 1
        row = {"epoch": epoch, "step": step, "lr": lr_now, "train_loss": loss_sum / max(1, seen),
               "train_acc1": 100.0 * correct / max(1, seen)}
        history.append(row)
        if state_path:
            atomic_torch_save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                               "scaler": scaler.state_dict() if scaler else None, "history": history,
                               "epoch": epoch, "step": step}, state_path)
        if on_epoch_end is not None:
            on_epoch_end(row)
    return history


# ---------------------------------------------------------------------------------------------
# the protocol from a config
# ---------------------------------------------------------------------------------------------


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


class FinetuneRunner:
    """Runs :func:`run_finetune`'s protocol; attributes expose the pieces for tests."""

    def __init__(self, cfg: Any, run_dir: Optional[str] = None):
        self.cfg = validate_finetune_cfg(cfg)
        c = self.cfg
        default_dir = os.path.join(str(c.checkpoint.dir), "finetune", f"{c.name}-{config_digest(c)}")
        self.run_dir = os.path.abspath(run_dir or c.checkpoint.run_dir or default_dir)
        self.device = resolve_device(c.accelerator)

    # -- pieces ----------------------------------------------------------------------------------
    def build_backbone(self):
        c = self.cfg
        kwargs = OmegaConf.to_container(c.backbone.kwargs, resolve=True) or None
        return load_pretrained_backbone(c.pretrained_feature_extractor, c.backbone.name, kwargs,
                                        random_init=bool(c.random_init), seed=int(c.seed))

    def input_transform(self, info: Dict[str, Any]):
        use = self.cfg.eval_highpass
        if use is None:
            use = bool(info.get("highpass"))
        if not use:
            return None
        from harl.ops.filters import HighPass

        return HighPass(int(info.get("hp_kernel") or 11), float(info.get("hp_sigma") or 5.0))

    def data(self, info: Dict[str, Any], facts: Dict[str, Any]):
        """(train source, train transform, eval transform, val dataset, num_classes, crop, mean, std)."""
        # lazy: imports torchvision
        from harl.data import DATASETS, build_classification_dataset, build_eval_transform, dataset_stats

        c = self.cfg
        d = c.data
        aug = d.augmentations
        crop = int(aug.crop_size or facts.get("crop_size") or 224)
        mean = list(aug.mean) if aug.mean is not None else info.get("mean")
        std = list(aug.std) if aug.std is not None else info.get("std")
        if mean is None or std is None:
            d_mean, d_std = dataset_stats(d.dataset)
            mean = list(d_mean) if mean is None else mean
            std = list(d_std) if std is None else std
        train_ds = build_classification_dataset(d.dataset, d.train_path, "train", crop, mean, std, train_augment=True,
                                                skip_corrupt=d.skip_corrupt, download=d.download)
        val_ds = build_classification_dataset(d.dataset, d.val_path, "val", crop, mean, std, train_augment=False,
                                              skip_corrupt=d.skip_corrupt, download=d.download)
        eval_tf = build_eval_transform(d.dataset, crop, mean, std)
        if train_ds.classes and val_ds.classes and list(train_ds.classes) != list(val_ds.classes):
            only_t = sorted(set(train_ds.classes) - set(val_ds.classes))[:5]
            only_v = sorted(set(val_ds.classes) - set(train_ds.classes))[:5]
            raise ConfigError(f"the classes of data.val_path '{d.val_path}' differ from those of data.train_path "
                              f"'{d.train_path}' (labels would not match): only in train {only_t}, only in val {only_v}")
        spec = DATASETS.get(d.dataset)
        num_classes = d.num_classes or spec.num_classes or len(train_ds.classes) or int(train_ds.targets.max()) + 1
        num_classes = int(num_classes)
        bad = int(max(train_ds.targets.max(), val_ds.targets.max()))
        if bad >= num_classes:
            raise ConfigError(f"data.num_classes={num_classes} but the data has label {bad} "
                              f"(train '{d.train_path}', val '{d.val_path}')")
        return train_ds, eval_tf, val_ds, num_classes, crop, mean, std

    def select_subset(self, source) -> np.ndarray:
        from harl.eval.subsets import class_balanced_subset, read_subset_list  # lazy: imports torchvision

        sub = self.cfg.subset
        if sub.file is not None:
            return read_subset_list(str(sub.file), source)
        if sub.per_class is not None:
            return class_balanced_subset(source.targets, per_class=int(sub.per_class), seed=int(sub.seed))
        return class_balanced_subset(source.targets, fraction=float(sub.fraction), seed=int(sub.seed))

    def _save_or_check_list(self, name: str, source, indices: np.ndarray, header: str) -> None:
        """Write a subset list, or check that an existing one (from an interrupted run) is identical."""
        from harl.eval.subsets import item_key, write_subset_list  # lazy: imports torchvision

        path = os.path.join(self.run_dir, name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                old = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
            new = [item_key(source, int(i)) for i in indices]
            if old != new:
                raise RuntimeError(f"'{path}' (from an earlier run in this folder) differs from the subset selected "
                                   "now; the dataset changed. Move the folder away or set checkpoint.run_dir")
            return
        write_subset_list(path, source, indices, header=header)

    # -- the protocol ----------------------------------------------------------------------------
    def run(self) -> Dict[str, Any]:
        from harl.data import ClassificationDataset, SubsetSource  # lazy: imports torchvision
        from harl.eval.subsets import holdout_split, subset_summary  # lazy: imports torchvision

        c = self.cfg
        os.makedirs(self.run_dir, exist_ok=True)
        backbone, info = self.build_backbone()
        facts = _pretrain_facts(c.pretrained_feature_extractor)
        train_ds, eval_tf, val_ds, num_classes, crop, mean, std = self.data(info, facts)
        source = train_ds.source
        args = OmegaConf.to_container(c, resolve=True)
        args["resolved"] = {"backbone_name": info.get("backbone_name"), "backbone_kwargs": info.get("backbone_kwargs"),
                            "pretrain_method": info.get("method"), "crop_size": crop, "mean": mean, "std": std,
                            "num_classes": num_classes, "pretrained_sha256": info.get("sha256")}
        # the architecture actually built, so harl's loaders can rebuild finetuned.pth from this args.json
        args["backbone"] = {"name": info.get("backbone_name"), "kwargs": info.get("backbone_kwargs") or {}}
        args["pretrain_method"] = info.get("method")
        _write_json(os.path.join(self.run_dir, "args.json"), args)

        subset = self.select_subset(source)
        summary = subset_summary(source.targets, subset)
        hdr = (f"harl-finetune labelled subset of {c.data.dataset} '{c.data.train_path}': "
               f"fraction={c.subset.fraction} per_class={c.subset.per_class} file={c.subset.file} "
               f"seed={c.subset.seed} size={summary['size']}")
        self._save_or_check_list("subset_train.txt", source, subset, hdr)
        skip = bool(c.data.skip_corrupt)

        def labelled(idx, transform):
            return ClassificationDataset(SubsetSource(source, idx), transform, skip_corrupt=skip)

        common = dict(batch_size=int(c.optimizer.batch_size), momentum=float(c.optimizer.momentum),
                      nesterov=bool(c.optimizer.nesterov), schedule=str(c.scheduler.name),
                      warmup_epochs=int(c.scheduler.warmup_epochs),
                      accumulate_grad_batches=int(c.optimizer.accumulate_grad_batches), device=self.device,
                      precision=c.precision, num_workers=int(c.data.num_workers),
                      channels_last=bool(c.channels_last) and self.device.type == "cuda", progress=bool(c.progress))
        init_backbone = copy.deepcopy(backbone.state_dict())
        in_tf = self.input_transform(info)

        def fresh_model():
            backbone.load_state_dict(init_backbone)
            torch.manual_seed(int(c.seed))  # same head initialisation for every stage
            return FinetuneModel(backbone, num_classes, info.get("num_features"), in_tf)

        all_rows: List[Dict[str, Any]] = []
        search_rows: List[Dict[str, Any]] = []
        if c.optimizer.lr is not None:
            best_lr, best_wd = float(c.optimizer.lr), float(c.optimizer.weight_decay)
        else:
            tr_pos, ho_pos = holdout_split(source.targets[subset], float(c.search.holdout_fraction), int(c.subset.seed))
            tr_idx, ho_idx = subset[tr_pos], subset[ho_pos]
            self._save_or_check_list("subset_search_train.txt", source, tr_idx, hdr + " | search: train part")
            self._save_or_check_list("subset_holdout.txt", source, ho_idx, hdr + " | search: held-out part")
            search_train, holdout = labelled(tr_idx, train_ds.transform), labelled(ho_idx, eval_tf)
            epochs = int(c.search.max_epochs or c.max_epochs)
            for wd in c.search.weight_decay:
                for lr in c.search.lr:
                    name = stage_name(lr, wd)
                    res, rows = self._stage(name, fresh_model, search_train, holdout, epochs=epochs, lr=float(lr),
                                            weight_decay=float(wd), common=common)
                    search_rows.append({"lr": float(lr), "weight_decay": float(wd), "holdout_top1": res["top1"],
                                        "holdout_top5": res["top5"], "holdout_loss": res["loss"]})
                    all_rows.extend(rows)
            metric = "holdout_" + str(c.search.metric)
            # ties: the lower held-out loss, then the smaller lr / weight decay
            best = max(search_rows, key=lambda r: (r[metric], -r["holdout_loss"], -r["lr"], -r["weight_decay"]))
            best_lr, best_wd = best["lr"], best["weight_decay"]
        res, rows = self._stage("final", fresh_model, labelled(subset, train_ds.transform), val_ds,
                                epochs=int(c.max_epochs), lr=best_lr, weight_decay=best_wd, common=common,
                                keep_model=bool(c.save_model))
        all_rows.extend(rows)
        _write_csv(os.path.join(self.run_dir, "metrics.csv"), all_rows)

        results = {
            "mode": "finetune",
            "protocol": "semi_supervised" if summary["size"] < len(source) else "finetune_all_labels",
            "top1": res["top1"],
            "top5": res["top5"],
            "val_loss": res["loss"],
            "num_val": res["n"],
            "subset_label": subset_label(OmegaConf.to_container(c.subset), summary["size"], len(source)),
            "label_fraction": summary["size"] / len(source),
            "subset": {**OmegaConf.to_container(c.subset, resolve=True), **summary, "list": "subset_train.txt"},
            "lr": best_lr,
            "weight_decay": best_wd,
            "lr_source": "given" if c.optimizer.lr is not None else "search",
            "search": search_rows,
            "epochs": int(c.max_epochs),
            "batch_size": int(c.optimizer.batch_size) * int(c.optimizer.accumulate_grad_batches),
            "dataset": str(c.data.dataset),
            "num_classes": num_classes,
            "method": "random_init" if info.get("random_init") else info.get("method"),
            "pretrain_method": info.get("method"),
            "seed": facts.get("seed"),
            "finetune_seed": int(c.seed),
            "random_init": bool(info.get("random_init")),
            "pretrained": info.get("path"),
            "pretrained_sha256": info.get("sha256"),
            "pretrain_run": facts.get("pretrain_run"),
            "backbone": info.get("backbone_name"),
            "run_dir": self.run_dir,
        }
        _write_json(os.path.join(self.run_dir, "results.json"), results)
        return results

    def _stage(self, name: str, make_model, train_set, eval_set, *, epochs: int, lr: float, weight_decay: float,
               common: Dict[str, Any], keep_model: bool = False) -> Tuple[Dict[str, float], List[Dict[str, Any]]]:
        """Train + evaluate one stage, resuming / skipping from its folder."""
        sdir = os.path.join(self.run_dir, "stages", name)
        os.makedirs(sdir, exist_ok=True)
        done = _read_json(os.path.join(sdir, "result.json"))
        if done is not None and (not keep_model or os.path.isfile(os.path.join(self.run_dir, "finetuned.pth"))):
            return done["eval"], done["rows"]
        model = make_model()
        seed = int(self.cfg.seed)
        history = train_classifier(model, train_set, epochs=epochs, lr=lr, weight_decay=weight_decay, seed=seed,
                                   state_path=os.path.join(sdir, "state.pt"), desc=name, **common)
        ev = evaluate_classifier(model, eval_set, batch_size=common["batch_size"], num_workers=common["num_workers"],
                                 device=self.device, precision=common["precision"], progress=common["progress"],
                                 channels_last=common["channels_last"], desc=f"{name} eval")
        rows = [{"stage": name, "lr_base": lr, "weight_decay": weight_decay, **h} for h in history]
        rows[-1].update({"eval_top1": ev["top1"], "eval_top5": ev["top5"], "eval_loss": ev["loss"]})
        _write_csv(os.path.join(sdir, "metrics.csv"), rows)
        if keep_model:
            sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            atomic_torch_save(sd, os.path.join(self.run_dir, "finetuned.pth"))
        _write_json(os.path.join(sdir, "result.json"), {"eval": ev, "rows": rows, "lr": lr, "weight_decay": weight_decay})
        state = os.path.join(sdir, "state.pt")
        if os.path.exists(state):
            os.remove(state)  # the stage is finished; its result is in result.json
        return ev, rows


def run_finetune(cfg: Any, run_dir: Optional[str] = None) -> Dict[str, Any]:
    """Run the semi-supervised fine-tuning protocol for a config (see the module docstring);
    returns the results dict (also written to ``<run_dir>/results.json``)."""
    return FinetuneRunner(cfg, run_dir).run()


__all__ = ["FINETUNE_SCHEMA", "DEFAULT_LR_GRID", "validate_finetune_cfg", "config_digest", "FinetuneModel",
           "train_classifier", "evaluate_classifier", "cosine_lr", "FinetuneRunner", "run_finetune", "subset_label"]
