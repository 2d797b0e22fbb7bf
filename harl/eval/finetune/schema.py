"""Fine-tuning config: :data:`FINETUNE_SCHEMA`, value checks, :func:`validate_finetune_cfg`, the run-folder digest."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict

import torch
from omegaconf import DictConfig, OmegaConf

from harl.config import CHECKPOINT_DIR, DATA_BLOCK, FREE, REQUIRED, check_schema, choice, pick
from harl.config_values import COMMON_VALUES, MEAN_STD, Bool, Either, Int, Num, Seq, Str
from harl.config_values import check_values
from harl.errors import ConfigError
from harl.eval.linear_config import check_eval_augmentations
from harl.eval.pretrained import file_sha256
from harl.registry import DATASETS

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
