"""Configuration of ``harl-linear``: solo-learn's ``main_linear`` YAML plus harl's evaluation keys.

A linear-evaluation config is validated once at start-up with the same machinery as pretraining
(:mod:`harl.config`): an unknown key is an error naming it and the closest valid key, a missing
required key is an error naming it, and every optional key gets its default (see
:data:`LINEAR_SCHEMA`, documented key by key in ``docs/evaluation.md``).

solo-learn keys: ``name, pretrained_feature_extractor, backbone{name, kwargs}, pretrain_method,
data{dataset, train_path, val_path, format, num_workers, fraction, augmentations{crop_size, mean,
std}}, optimizer{name, batch_size, lr, weight_decay, kwargs}, scheduler{name, lr_decay_steps,
warmup_epochs, warmup_start_lr, min_lr, interval}, checkpoint, auto_resume, max_epochs, devices,
num_nodes, accelerator, strategy, precision, sync_batchnorm, finetune, label_smoothing, wandb, seed``
(+ ``auto_augment``, ``mixup``, ``cutmix``, ``dali``: accepted, ignored with a warning when set),
plus any ``lightning.Trainer`` argument.

harl keys: ``mode`` (linear | knn | dense), ``protocol`` (augmented | cached), ``head_norm``, ``random_init``,
``random_init_baseline``, ``eval_highpass`` / ``hp_kernel`` / ``hp_sigma``, ``knn{k, T,
distance_func}``, ``dense{loss}``, ``data.masks{root, val_root, suffix, on_missing,
on_size_mismatch}``, ``cache{enabled, dir}``, ``performance.disable_channel_last``.

:func:`parse_linear_cfg` then derives ``data.num_classes`` and scales ``optimizer.lr`` by
batch_size · devices · num_nodes / 256 (solo-learn's linear ``parse_cfg``).
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Dict, Iterable, List, Optional

from omegaconf import DictConfig, OmegaConf

from harl.config import (
    AUTO_RESUME_BLOCK, DATA_BLOCK, DATASET_NUM_CLASSES, FREE, PERFORMANCE_BLOCK, REQUIRED, WANDB_BLOCK, check_kwargs,
    check_schema, checkpoint_block, choice, count_class_folders, num_devices, pick, trainer_block,
)
from harl.config import trainer_extra_kwargs as _trainer_extra_kwargs
from harl.config_values import (COMMON_VALUES, MASKS_VALUES, MEAN_STD, Bool, Either, Int, Num, Prob, Seq, Str,
                                check_kwargs_values, check_values)
from harl.errors import ConfigError
from harl.registry import DATASETS, OPTIMIZERS, close_match_hint

#: evaluation modes (``mode``) and training protocols (``protocol``)
MODES = ("linear", "knn", "dense")
PROTOCOLS = ("augmented", "cached")
DENSE_LOSSES = ("bce", "ce")
DISTANCES = ("cosine", "euclidean")
HEAD_NORMS = (None, "batchnorm")

LINEAR_SCHEMA: Dict[str, Any] = {
    "name": REQUIRED,
    # required unless random_init is true (checked in _check_values)
    "pretrained_feature_extractor": None,
    # informational in solo-learn; harl warns when it disagrees with the checkpoint's method
    "pretrain_method": None,
    # null name / empty kwargs: the architecture is read from the checkpoint's run config
    "backbone": {"name": None, "kwargs": FREE()},
    "mode": "linear",
    "protocol": "augmented",
    "finetune": False,
    "random_init": False,  # evaluate a randomly initialised backbone of the same architecture
    "random_init_baseline": False,  # also evaluate the random-init backbone and report it beside
    "eval_highpass": None,  # null: automatic (on iff the checkpoint was pretrained on high-pass inputs)
    "hp_kernel": None,  # null: the checkpoint's, else 11
    "hp_sigma": None,  # null: the checkpoint's, else 5
    "data": {
        **pick(DATA_BLOCK, "dataset", "train_path", "val_path", "format", "num_workers", "fraction", "download",
               "skip_corrupt", "num_classes", "augmentations"),
        "masks": pick(DATA_BLOCK["masks"], "root", "val_root", "suffix", "on_missing", "on_size_mismatch"),
    },
    "optimizer": {"name": "sgd", "batch_size": 256, "lr": 0.1, "weight_decay": 0.0, "kwargs": FREE()},
    "scheduler": {"name": "step", "lr_decay_steps": [60, 80], "warmup_epochs": 10, "warmup_start_lr": 3e-5,
                  "min_lr": 0.0, "interval": "step"},
    "knn": {"k": 20, "T": 0.07, "distance_func": "cosine"},
    "dense": {"loss": "bce"},
    "cache": {"enabled": True, "dir": None},  # dir null: <checkpoint.dir>/feature_cache
    "checkpoint": checkpoint_block(enabled=True),
    "auto_resume": AUTO_RESUME_BLOCK,
    "wandb": WANDB_BLOCK,
    "performance": PERFORMANCE_BLOCK,
    "label_smoothing": 0.0,
    "head_norm": None,  # null | batchnorm (BatchNorm without affine before the linear / 1×1 head)
    "seed": 5,
    "resume_from_checkpoint": None,
    **trainer_block(max_epochs=100, accumulate_grad_batches=False),
    # solo-learn keys that harl accepts and ignores (with a warning when set)
    "auto_augment": False,
    "mixup": 0.0,
    "cutmix": 0.0,
    "dali": FREE(),
    # derived by the runner / parse_linear_cfg; accepted so that a resolved config (args.json) validates again
    "pretrained_sha256": None,
    "_parsed": False,
}

def _values() -> Dict[str, Any]:
    one_or_list = lambda v: Either(v, Seq(v, nonempty=True))  # noqa: E731
    return {
        **COMMON_VALUES,
        **{k: v for k, v in MASKS_VALUES.items() if k.split(".")[2] in LINEAR_SCHEMA["data"]["masks"]},
        "pretrained_feature_extractor": Str(nullable=True),
        "pretrain_method": Str(nullable=True),
        "backbone.name": Str(nullable=True),
        # choices (mode, protocol, dense.loss, ...) and knn.k / knn.T / eval_highpass: _check_values
        "mode": Str(),
        "protocol": Str(),
        "finetune": Bool(),
        "random_init": Bool(),
        "random_init_baseline": Bool(),
        "hp_kernel": Int(ge=1, nullable=True),
        "hp_sigma": Num(gt=0, nullable=True),
        "data.augmentations.crop_size": Int(ge=1, nullable=True),
        "data.augmentations.mean": MEAN_STD,
        "data.augmentations.std": Seq(Num(gt=0), length=3, nullable=True),
        "knn.distance_func": one_or_list(Str()),
        "dense.loss": Str(),
        "cache.enabled": Bool(),
        "cache.dir": Str(nullable=True),
        "label_smoothing": Num(ge=0, lt=1),
        "head_norm": Str(nullable=True),
        "auto_augment": Either(Bool(), Str()),
        "mixup": Num(ge=0),
        "cutmix": Prob(),
        "pretrained_sha256": Str(nullable=True),
        "_parsed": Bool(),
    }


#: types and ranges of the values of :data:`LINEAR_SCHEMA` (see :mod:`harl.config_values`)
LINEAR_VALUES: Dict[str, Any] = _values()

#: top-level keys of the schema that are also ``Trainer`` arguments (handled explicitly)
_HANDLED_TRAINER_KEYS = set(trainer_block(max_epochs=100, accumulate_grad_batches=False))


def _as_list(x) -> List:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def validate_linear_cfg(cfg: Any) -> DictConfig:
    """Check ``cfg`` against :data:`LINEAR_SCHEMA`, fill defaults and check values.

    Raises :class:`~harl.errors.ConfigError` naming the key for an unknown key (with a
    close-match hint), a missing required key or a bad value.
    """
    out = check_schema(cfg, LINEAR_SCHEMA, handled_trainer_keys=_HANDLED_TRAINER_KEYS)

    for key, neutral in (("auto_augment", False), ("mixup", 0.0), ("cutmix", 0.0)):
        if out[key] not in (neutral, None, 0, False):
            warnings.warn(f"config key '{key}' is accepted for solo-learn compatibility and ignored by harl-linear")
    if out["dali"]:
        warnings.warn("config block 'dali' is accepted for solo-learn compatibility and ignored")
    if out["data"]["format"] == "dali":
        warnings.warn("data.format 'dali' is not supported by harl; reading the images with the image_folder loader")
        out["data"]["format"] = "image_folder"

    opt_name = out["optimizer"]["name"]
    if opt_name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer '{opt_name}'{close_match_hint(opt_name, OPTIMIZERS.names())}")
    out["optimizer"]["kwargs"] = check_kwargs(out["optimizer"]["kwargs"], OPTIMIZERS.get(opt_name).default_kwargs,
                                              "optimizer.kwargs")
    check_values(out, LINEAR_VALUES)
    check_kwargs_values(out["optimizer"]["kwargs"], OPTIMIZERS.get(opt_name).default_kwargs, "optimizer.kwargs")
    _check_values(out)
    return OmegaConf.create(out)


def _check_values(out: dict) -> None:
    choice(out["mode"], MODES, "mode")
    choice(out["protocol"], PROTOCOLS, "protocol")
    choice(out["data"]["dataset"], DATASETS.names(), "data.dataset")
    choice(out["data"]["format"], ["image_folder"], "data.format")
    choice(out["data"]["masks"]["on_missing"], ["error", "ones", "zeros"], "data.masks.on_missing")
    choice(out["data"]["masks"]["on_size_mismatch"], ["error", "resize"], "data.masks.on_size_mismatch")
    choice(out["scheduler"]["name"], ["step", "warmup_cosine", "cosine", "none"], "scheduler.name")
    choice(out["scheduler"]["interval"], ["step", "epoch"], "scheduler.interval")
    choice(out["dense"]["loss"], DENSE_LOSSES, "dense.loss")
    choice(out["head_norm"], HEAD_NORMS, "head_norm")
    for d in _as_list(out["knn"]["distance_func"]):
        choice(d, DISTANCES, "knn.distance_func")
    for k in _as_list(out["knn"]["k"]):
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ConfigError(f"config key 'knn.k' must be a positive integer (or a list of them), got {k!r}")
    for t in _as_list(out["knn"]["T"]):
        if not isinstance(t, (int, float)) or isinstance(t, bool) or t <= 0:
            raise ConfigError(f"config key 'knn.T' must be > 0 (or a list of such values), got {t!r}")
    if not out["random_init"] and not out["pretrained_feature_extractor"]:
        raise ConfigError("missing required config key 'pretrained_feature_extractor' "
                          "(or set random_init=true to evaluate a randomly initialised backbone)")
    if out["random_init"] and not out["pretrained_feature_extractor"] and not out["backbone"]["name"]:
        raise ConfigError("random_init=true without pretrained_feature_extractor needs backbone.name")
    if out["pretrained_feature_extractor"] and not os.path.isfile(str(out["pretrained_feature_extractor"])):
        raise ConfigError(f"config key 'pretrained_feature_extractor': file "
                          f"'{out['pretrained_feature_extractor']}' does not exist")
    if out["data"]["train_path"] is None:
        raise ConfigError("missing required config key 'data.train_path'")
    if out["data"]["val_path"] is None:
        raise ConfigError("missing required config key 'data.val_path'")
    if not isinstance(out["max_epochs"], int) or isinstance(out["max_epochs"], bool) or out["max_epochs"] < 1:
        raise ConfigError(f"config key 'max_epochs' must be a positive integer, got {out['max_epochs']!r}")
    if int(out["optimizer"]["batch_size"]) < 1:
        raise ConfigError("config key 'optimizer.batch_size' must be >= 1")
    if not float(out["optimizer"]["lr"]) > 0:
        raise ConfigError(f"config key 'optimizer.lr' must be > 0, got {out['optimizer']['lr']!r}")
    if not 0.0 <= float(out["label_smoothing"]) < 1.0:
        raise ConfigError(f"config key 'label_smoothing' must be in [0, 1), got {out['label_smoothing']!r}")
    if out["eval_highpass"] not in (None, True, False):
        raise ConfigError(f"config key 'eval_highpass' must be true, false or null (auto), got {out['eval_highpass']!r}")
    if out["hp_kernel"] is not None and (int(out["hp_kernel"]) < 1 or int(out["hp_kernel"]) % 2 == 0):
        raise ConfigError(f"config key 'hp_kernel' must be a positive odd integer, got {out['hp_kernel']!r}")
    if out["hp_sigma"] is not None and not float(out["hp_sigma"]) > 0:
        raise ConfigError(f"config key 'hp_sigma' must be > 0, got {out['hp_sigma']!r}")
    if out["protocol"] == "cached" and out["finetune"] and out["mode"] != "knn":
        raise ConfigError("protocol=cached trains on features extracted once from a frozen backbone; "
                          "it cannot be combined with finetune=true (use protocol=augmented)")
    if out["mode"] == "knn" and out["finetune"]:
        raise ConfigError("mode=knn evaluates frozen features; finetune=true does not apply")
    if out["scheduler"]["name"] == "step" and out["scheduler"]["lr_decay_steps"] is None:
        raise ConfigError("scheduler.name=step needs scheduler.lr_decay_steps (epochs, e.g. [60, 80])")
    check_eval_augmentations(out["data"]["augmentations"])


def check_eval_augmentations(aug: Dict[str, Any]) -> None:
    """Value checks of an evaluation config's ``data.augmentations`` (shared by linear and fine-tuning)."""
    for key in ("mean", "std"):
        if aug[key] is not None and (not isinstance(aug[key], list) or len(aug[key]) != 3):
            raise ConfigError(f"config key 'data.augmentations.{key}' must be a list of 3 numbers, got {aug[key]!r}")
    if aug["crop_size"] is not None and int(aug["crop_size"]) < 1:
        raise ConfigError("config key 'data.augmentations.crop_size' must be >= 1")


def parse_linear_cfg(cfg: Any) -> DictConfig:
    """Validate ``cfg`` (:func:`validate_linear_cfg`) and derive ``data.num_classes`` and the
    scaled ``optimizer.lr`` (× batch_size · devices · num_nodes / 256).

    The result carries ``_parsed: true``; parsing it again (e.g. a run's ``args.json``) validates
    it but does not scale the learning rate twice.
    """
    already = bool(cfg.get("_parsed", False)) if hasattr(cfg, "get") else False
    cfg = validate_linear_cfg(cfg)
    if cfg.data.num_classes is None:
        if cfg.data.dataset in DATASET_NUM_CLASSES:
            cfg.data.num_classes = DATASET_NUM_CLASSES[cfg.data.dataset]
        else:
            cfg.data.num_classes = count_class_folders(cfg.data.train_path, False)
    if not already:
        scale = int(cfg.optimizer.batch_size) * num_devices(cfg) * int(cfg.num_nodes) / 256
        cfg.optimizer.lr = float(cfg.optimizer.lr) * scale
    cfg._parsed = True
    return cfg


def trainer_extra_kwargs(cfg: DictConfig) -> Dict[str, Any]:
    """Top-level keys of a linear config that are ``Trainer`` arguments not handled elsewhere."""
    return _trainer_extra_kwargs(cfg, LINEAR_SCHEMA)


def build_linear_cfg(mode: str, pretrained: Optional[str], dataset: str, train_path: str, val_path: str, *,
                     backbone: Optional[str] = None, backbone_kwargs: Optional[dict] = None,
                     random_init: bool = False, overrides: Optional[Dict[str, Any]] = None,
                     name: Optional[str] = None, **top_level) -> Dict[str, Any]:
    """A raw linear config dict for the Python API (:func:`harl.eval.linear.linear_probe` & co).

    ``top_level`` sets top-level keys (``protocol``, ``max_epochs``, ``accelerator``, ...);
    ``overrides`` sets any key by dotted path (``{"optimizer.lr": 0.3, "knn.k": [10, 20]}``).
    CPU-friendly defaults: ``accelerator=auto``, ``devices=1``, ``data.num_workers=0``.
    """
    cfg: Dict[str, Any] = {
        "name": name or f"{mode}-{dataset}",
        "mode": mode,
        "pretrained_feature_extractor": pretrained,
        "random_init": bool(random_init),
        "backbone": {"name": backbone, "kwargs": dict(backbone_kwargs or {})},
        "data": {"dataset": dataset, "train_path": train_path, "val_path": val_path, "num_workers": 0},
        "devices": 1,
    }
    cfg.update(top_level)
    for key, value in (overrides or {}).items():
        set_dotted(cfg, key, value)
    return cfg


def set_dotted(cfg: Dict[str, Any], key: str, value: Any) -> None:
    """``cfg["a"]["b"] = value`` for ``key="a.b"`` (intermediate dicts are created)."""
    node = cfg
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def knn_grid(cfg: DictConfig) -> List[Dict[str, Any]]:
    """All (k, T, distance_func) combinations of ``cfg.knn`` (scalars or lists), in config order."""
    grid = []
    for dist in _as_list(OmegaConf.to_container(cfg.knn, resolve=True)["distance_func"]):
        for k in _as_list(OmegaConf.to_container(cfg.knn, resolve=True)["k"]):
            for T in _as_list(OmegaConf.to_container(cfg.knn, resolve=True)["T"]):
                grid.append({"k": int(k), "T": float(T), "distance_func": str(dist)})
    return grid


__all__: Iterable[str] = ["LINEAR_SCHEMA", "MODES", "PROTOCOLS", "validate_linear_cfg", "parse_linear_cfg",
                          "build_linear_cfg", "trainer_extra_kwargs", "knn_grid", "set_dotted"]
