"""Configuration: solo-learn's YAML schema, validated once at start-up.

A config is an OmegaConf ``DictConfig`` in solo-learn's layout (``name``, ``method``,
``backbone``, ``method_kwargs``, ``data``, ``augmentations``, ``optimizer``, ``scheduler``, ...).
:func:`validate_cfg` walks it against :data:`SCHEMA`: an unknown key is an error that names the
key and the closest valid one, a missing required key is an error that names it, and every
optional key gets its default. :func:`parse_cfg` then derives what solo-learn's ``parse_cfg``
derives (crop counts, number of classes, lr scaled by total batch / 256).

Method-specific ``method_kwargs`` are validated against the method's own declared defaults
(``METHODS[name].default_method_kwargs()``); optimizer ``kwargs`` against the optimizer's. The
method, optimizer and dataset classes are reached through the registries of :mod:`harl.registry`
(which import their packages on the first lookup), never imported here: this module sits below
the data and method layers (``docs/architecture.md``). Every value check, the method's own
(:meth:`~harl.methods.base.BaseMethod.check_cfg`) included, runs in :func:`validate_cfg`, before
any dataset is listed.
"""

from __future__ import annotations

import copy
import inspect
import warnings
from typing import Any, Dict, Iterable, List, Mapping, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf

from harl.config_values import METHOD_KWARG_VALUES, check_kwargs_values, check_pretrain_values
from harl.errors import ConfigError
from harl.registry import DATASETS, METHODS, OPTIMIZERS, close_match_hint


class _Required:
    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return "<required>"


class _Free:
    """A mapping whose keys are not checked here (checked elsewhere, or passed through)."""

    def __init__(self, default: Optional[dict] = None):
        self.default = default or {}

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return "<free mapping>"


REQUIRED = _Required()


def FREE(default: Optional[dict] = None) -> _Free:
    return _Free(default)


class ListOf:
    """A list whose items each follow ``item_schema``."""

    def __init__(self, item_schema: dict, required: bool = True):
        self.item_schema = item_schema
        self.required = required


# ---------------------------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------------------------

MASKS_SCHEMA: Dict[str, Any] = {
    "enabled": False,
    "root": None,  # masks tree mirroring the image tree
    "val_root": None,  # masks tree for the validation images (dense probe)
    "suffix": ".png",
    "on_missing": "error",  # error | ones | zeros
    "on_size_mismatch": "error",  # error | resize
    "min_fg_frac": 0.2,  # crop acceptance: fg fraction inside the box must exceed this (null: off)
    "max_tries": 5,
    "crop_fallback": "last",  # last | best
    "vflip_prob": 0.0,
}

def pick(block: Mapping[str, Any], *keys: str) -> Dict[str, Any]:
    """The entries ``keys`` of a shared ``block``, in the block's own order (copied)."""
    missing = [k for k in keys if k not in block]
    if missing:
        raise KeyError(f"no key(s) {missing} in the block")
    return {k: copy.deepcopy(v) for k, v in block.items() if k in keys}


# ``enabled`` of the photometric / flip blocks: solo-learn's shipped YAMLs carry it, and solo-learn
# applies an operation whenever its ``prob`` is non-zero whatever the flag says; harl does the same
# (``prob`` decides) and warns when a block says ``enabled: False`` with a non-zero ``prob``.
AUGMENTATION_SCHEMA: Dict[str, Any] = {
    "rrc": {"enabled": True, "crop_min_scale": 0.08, "crop_max_scale": 1.0},
    "color_jitter": {"enabled": True, "prob": 0.0, "brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0},
    "grayscale": {"enabled": True, "prob": 0.0},
    "gaussian_blur": {"enabled": True, "prob": 0.0, "sigma_min": 0.1, "sigma_max": 2.0},
    "solarization": {"enabled": True, "prob": 0.0},
    "equalization": {"enabled": True, "prob": 0.0},
    "horizontal_flip": {"enabled": True, "prob": 0.5},
    "mean": None,  # per-pipeline normalisation override (else the dataset's)
    "std": None,
    "crop_size": REQUIRED,
    "num_crops": REQUIRED,
}

_FLAGGED_AUG_BLOCKS = ("color_jitter", "grayscale", "gaussian_blur", "solarization", "equalization", "horizontal_flip")

# Blocks shared by the pretraining schema (below), the linear schema (harl.eval.linear_config) and
# the fine-tuning schema (harl.eval.finetune): each is written once here; a schema takes the keys it
# has with :func:`pick` (the order of the keys in a validated config is the block's order).

#: every ``data`` key any schema has, in order (each schema picks its own)
DATA_BLOCK: Dict[str, Any] = {
    "dataset": REQUIRED,
    "train_path": None,
    "val_path": None,
    "format": "image_folder",
    "num_workers": 4,
    "no_labels": False,
    "fraction": -1.0,  # of the training split (class-stratified, seeded, in evaluation)
    "download": False,
    "skip_corrupt": False,
    "verify": "off",  # pre-flight check of every file: off | quick (headers) | full (decode)
    "num_classes": None,  # derived unless given (custom datasets)
    # evaluation (linear, fine-tuning): null = the pretraining's
    "augmentations": {"crop_size": None, "mean": None, "std": None},
    "masks": MASKS_SCHEMA,
}

#: where run folders go (``checkpoint.dir``)
CHECKPOINT_DIR = "trained_models"


def checkpoint_block(enabled: bool) -> Dict[str, Any]:
    """``checkpoint``: periodic checkpoints of a Lightning run (pretraining, linear)."""
    return {"enabled": enabled, "dir": CHECKPOINT_DIR, "frequency": 1, "keep_prev": False}


AUTO_RESUME_BLOCK: Dict[str, Any] = {"enabled": False, "max_hours": 36}  # max_hours null or 0: no age limit
WANDB_BLOCK: Dict[str, Any] = {"enabled": False, "project": "harl", "entity": None, "offline": True, "tags": None}
PERFORMANCE_BLOCK: Dict[str, Any] = {"disable_channel_last": False}


def trainer_block(max_epochs: Any, accumulate_grad_batches: bool = True) -> Dict[str, Any]:
    """The top-level keys that solo-learn passes to ``lightning.Trainer`` and harl handles itself."""
    block = {
        "max_epochs": max_epochs,
        "devices": 1,
        "num_nodes": 1,
        "accelerator": "auto",
        "strategy": "auto",
        "precision": "32-true",
        "sync_batchnorm": False,
        "accumulate_grad_batches": 1,
    }
    if not accumulate_grad_batches:
        del block["accumulate_grad_batches"]
    return block


SCHEMA: Dict[str, Any] = {
    "name": REQUIRED,
    "method": REQUIRED,
    "backbone": {"name": REQUIRED, "kwargs": FREE()},
    "method_kwargs": FREE(),
    "momentum": {"base_tau": 0.99, "final_tau": 1.0, "classifier": False},
    "data": pick(DATA_BLOCK, "dataset", "train_path", "val_path", "format", "num_workers", "no_labels", "fraction",
                 "download", "skip_corrupt", "verify", "num_classes", "masks"),
    "augmentations": ListOf(AUGMENTATION_SCHEMA),
    "optimizer": {
        "name": REQUIRED,
        "batch_size": REQUIRED,
        "lr": REQUIRED,
        "classifier_lr": 0.1,
        "weight_decay": REQUIRED,
        "exclude_bias_n_norm_wd": False,
        "kwargs": FREE(),
    },
    "scheduler": {
        "name": "warmup_cosine",
        "warmup_epochs": 10,
        "warmup_start_lr": 3e-5,
        "min_lr": 0.0,
        "interval": "step",
        "lr_decay_steps": None,
    },
    "checkpoint": checkpoint_block(enabled=False),
    "auto_resume": AUTO_RESUME_BLOCK,
    "guard": {"enabled": True, "max_bad_steps": 0},  # harl.guard: stop on a non-finite loss/gradient
    "health": {"enabled": True, "strict": False, "every_n_steps": 20},  # harl.health warnings
    "knn_eval": {"enabled": False, "k": 20, "T": 0.07, "distance_func": "euclidean"},
    "wandb": WANDB_BLOCK,
    "performance": PERFORMANCE_BLOCK,
    "seed": 5,
    "resume_from_checkpoint": None,
    "debug_augmentations": False,
    "no_validation": False,
    **trainer_block(max_epochs=REQUIRED),
    # derived by parse_cfg; accepted so that a resolved config validates again
    "num_large_crops": None,
    "num_small_crops": None,
    # solo-learn keys that harl accepts and ignores (with a warning when set)
    "dali": FREE(),
    "auto_umap": FREE(),
}

#: top-level keys solo-learn passes on to ``lightning.Trainer`` that harl handles itself
_HANDLED_TRAINER_KEYS = set(trainer_block(max_epochs=REQUIRED))

#: ``Trainer`` arguments harl owns (set from other config keys); a config may not set them
_FORBIDDEN_TRAINER_KEYS = {"logger", "callbacks", "enable_checkpointing", "default_root_dir"}


def trainer_init_keys() -> List[str]:
    """Names accepted by ``lightning.Trainer.__init__`` (solo-learn passes these through)."""
    from lightning.pytorch import Trainer  # lazy: importing lightning costs seconds

    return [p for p in inspect.signature(Trainer.__init__).parameters if p != "self"]


def trainer_extra_kwargs(cfg: DictConfig, schema: Optional[Mapping] = None) -> dict:
    """Top-level config keys that are ``Trainer`` arguments not in ``schema`` (default: the
    pretraining schema), passed through as solo-learn does."""
    schema = SCHEMA if schema is None else schema
    return {key: cfg[key] for key in trainer_init_keys()
            if key in cfg and key not in schema and cfg[key] is not None}


DATASET_NUM_CLASSES = {
    "cifar10": 10,
    "cifar100": 100,
    "stl10": 10,
    "imagenet": 1000,
    "imagenet100": 100,
    "fashion_mnist": 10,
    "fashion_scenes": 10,
}


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def _is_mapping(x) -> bool:
    return isinstance(x, (Mapping, DictConfig))


def _to_plain(x):
    if isinstance(x, (DictConfig, ListConfig)):
        return OmegaConf.to_container(x, resolve=True)
    return x


def _unknown(path: str, key: str, valid: Iterable[str]) -> ConfigError:
    where = f"{path}.{key}" if path else key
    return ConfigError(f"unknown config key '{where}'{close_match_hint(key, valid)}")


def _check_mapping(value: Mapping, schema: Mapping, path: str, extra_valid: Iterable[str] = ()) -> dict:
    """Validate ``value`` against ``schema``; return a plain dict with defaults filled in."""
    if value is None:
        value = {}
    if not _is_mapping(value):
        raise ConfigError(f"config key '{path}' must be a mapping, got {type(value).__name__}")
    extra_valid = set(extra_valid)
    out: dict = {}
    for key in value:
        if key not in schema and key not in extra_valid:
            raise _unknown(path, key, list(schema) + sorted(extra_valid))
    for key, spec in schema.items():
        where = f"{path}.{key}" if path else key
        present = key in value and not (isinstance(value, DictConfig) and OmegaConf.is_missing(value, key))
        if isinstance(spec, _Required):
            if not present or value[key] is None:
                raise ConfigError(f"missing required config key '{where}'")
            out[key] = _to_plain(value[key])
        elif isinstance(spec, _Free):
            v = _to_plain(value[key]) if present else None
            if v is not None and not isinstance(v, dict):
                raise ConfigError(f"config key '{where}' must be a mapping, got {type(v).__name__}")
            out[key] = copy.deepcopy(spec.default) if v is None else v
        elif isinstance(spec, ListOf):
            if not present or value[key] is None:
                if spec.required:
                    raise ConfigError(f"missing required config key '{where}'")
                out[key] = []
                continue
            items = _to_plain(value[key])
            if not isinstance(items, list) or not items:
                raise ConfigError(f"config key '{where}' must be a non-empty list")
            out[key] = [_check_mapping(item, spec.item_schema, f"{where}[{i}]") for i, item in enumerate(items)]
        elif isinstance(spec, dict):
            out[key] = _check_mapping(value[key] if present else {}, spec, where)
        else:
            out[key] = _to_plain(value[key]) if present else copy.deepcopy(spec)
    for key in extra_valid:
        if key in value:
            out[key] = _to_plain(value[key])
    return out


def _normalise_none_strings(x):
    """solo-learn turns the string "None" into None everywhere."""
    if isinstance(x, dict):
        return {k: _normalise_none_strings(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_normalise_none_strings(v) for v in x]
    if isinstance(x, str) and x == "None":
        return None
    return x


def check_kwargs(given: Optional[Mapping], defaults: Mapping, path: str, required: Iterable[str] = ()) -> dict:
    """Validate a free-form kwargs block (``method_kwargs``, ``optimizer.kwargs``).

    Unknown keys are errors with a close-match hint; missing keys take ``defaults``;
    keys in ``required`` must be given.
    """
    given = dict(_to_plain(given) or {})
    for key in given:
        if key not in defaults and key not in required:
            raise _unknown(path, key, list(defaults) + list(required))
    for key in required:
        if key not in given or given[key] is None:
            raise ConfigError(f"missing required config key '{path}.{key}'")
    out = copy.deepcopy(dict(defaults))
    out.update(given)
    return out


def check_schema(cfg: Any, schema: Mapping, handled_trainer_keys: Iterable[str] = (),
                 allow_trainer_keys: bool = True, drop: Iterable[str] = ()) -> dict:
    """Shared front of every config validator (pretraining, linear, fine-tuning).

    Turns ``cfg`` into a plain dict, drops Hydra's ``defaults``/``hydra`` (and ``drop``), maps the
    string "None" to None, refuses the ``Trainer`` arguments harl sets itself, and checks the rest
    against ``schema``; with ``allow_trainer_keys`` any other ``lightning.Trainer`` argument is
    accepted at the top level (solo-learn passes them through).
    """
    if isinstance(cfg, (DictConfig, ListConfig)):
        raw = OmegaConf.to_container(cfg, resolve=True)
    else:
        raw = copy.deepcopy(dict(cfg))
    for key in ("defaults", "hydra", *drop):
        raw.pop(key, None)
    raw = _normalise_none_strings(raw)
    bad = _FORBIDDEN_TRAINER_KEYS & set(raw)
    if bad:
        raise ConfigError(f"config key(s) {sorted(bad)} are set by harl itself and cannot be given")
    extra = set()
    if allow_trainer_keys:
        extra = set(trainer_init_keys()) - set(schema) - set(handled_trainer_keys) - _FORBIDDEN_TRAINER_KEYS
    return _check_mapping(raw, schema, "", extra_valid=extra)


def validate_cfg(cfg: Any) -> DictConfig:
    """Check ``cfg`` against :data:`SCHEMA` and fill defaults; returns a new ``DictConfig``.

    Also validates ``method_kwargs`` against the chosen method's declared defaults and
    ``optimizer.kwargs`` against the chosen optimizer's.
    """
    out = check_schema(cfg, SCHEMA, handled_trainer_keys=_HANDLED_TRAINER_KEYS)

    for ignored in ("dali", "auto_umap"):
        if out[ignored]:
            warnings.warn(f"config block '{ignored}' is accepted for solo-learn compatibility and ignored")
    for i, aug in enumerate(out["augmentations"]):
        for block in _FLAGGED_AUG_BLOCKS:
            if not aug[block]["enabled"] and float(aug[block]["prob"] or 0.0) > 0:
                warnings.warn(f"augmentations[{i}].{block}.enabled is False but its prob is {aug[block]['prob']}: "
                              f"as in solo-learn, prob decides and the operation is applied; set prob: 0.0 to turn it off")
    if out["data"]["format"] == "dali":
        warnings.warn("data.format 'dali' is not supported by harl; reading the images with the image_folder loader")
        out["data"]["format"] = "image_folder"

    method_cls = METHODS.get(out["method"]) if out["method"] in METHODS else None
    if method_cls is None:
        raise ConfigError(f"unknown method '{out['method']}'{close_match_hint(out['method'], METHODS.names())}")
    out["method_kwargs"] = check_kwargs(
        out["method_kwargs"],
        method_cls.default_method_kwargs(),
        "method_kwargs",
        required=method_cls.required_method_kwargs(),
    )
    opt_name = out["optimizer"]["name"]
    if opt_name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer '{opt_name}'{close_match_hint(opt_name, OPTIMIZERS.names())}")
    out["optimizer"]["kwargs"] = check_kwargs(
        out["optimizer"]["kwargs"], OPTIMIZERS.get(opt_name).default_kwargs, "optimizer.kwargs"
    )
    # types and ranges of every value (harl.config_values), on the values as given
    check_pretrain_values(out)
    check_kwargs_values(out["method_kwargs"], method_cls.default_method_kwargs(), "method_kwargs",
                        {**METHOD_KWARG_VALUES, **method_cls.method_kwarg_values()})
    check_kwargs_values(out["optimizer"]["kwargs"], OPTIMIZERS.get(opt_name).default_kwargs, "optimizer.kwargs")
    _check_values(out)
    cfg = OmegaConf.create(out)
    # the method's own cross-key checks (choices, crop counts, backbone options) on a copy with the
    # derived values filled in: every check runs here, before any dataset is listed or built
    _check_method_cfg(copy.deepcopy(cfg), method_cls)
    return cfg


def _derive_crop_counts(cfg: DictConfig) -> None:
    """``num_large_crops`` / ``num_small_crops``: a pipeline whose crop_size equals the first one's is large."""
    large = cfg.augmentations[0].crop_size
    cfg.num_large_crops = int(sum(a.num_crops for a in cfg.augmentations if a.crop_size == large))
    cfg.num_small_crops = int(sum(a.num_crops for a in cfg.augmentations if a.crop_size != large))


def _check_method_cfg(cfg: DictConfig, method_cls) -> None:
    """Apply the method's backbone overrides and run its ``check_cfg`` on ``cfg`` (changed in place)."""
    method_cls.apply_backbone_overrides(cfg)
    _derive_crop_counts(cfg)
    method_cls.check_cfg(cfg)


def choice(value, allowed, where: str):
    """Raise a :class:`ConfigError` naming ``where`` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ConfigError(f"config key '{where}' = {value!r} must be one of {list(allowed)}"
                          f"{close_match_hint(str(value), [str(a) for a in allowed])}")



def _check_values(out: dict) -> None:
    choice(out["data"]["dataset"], DATASETS.names(), "data.dataset")
    choice(out["data"]["format"], ["image_folder"], "data.format")
    choice(out["data"]["masks"]["on_missing"], ["error", "ones", "zeros"], "data.masks.on_missing")
    choice(out["data"]["masks"]["on_size_mismatch"], ["error", "resize"], "data.masks.on_size_mismatch")
    choice(out["data"]["masks"]["crop_fallback"], ["last", "best"], "data.masks.crop_fallback")
    choice(out["scheduler"]["name"], ["warmup_cosine", "step", "none", "cosine"], "scheduler.name")
    choice(out["scheduler"]["interval"], ["step", "epoch"], "scheduler.interval")
    choice(out["knn_eval"]["distance_func"], ["euclidean", "cosine"], "knn_eval.distance_func")
    if not isinstance(out["max_epochs"], int) or out["max_epochs"] < 1:
        raise ConfigError(f"config key 'max_epochs' must be a positive integer, got {out['max_epochs']!r}")
    if int(out["optimizer"]["batch_size"]) < 1:
        raise ConfigError("config key 'optimizer.batch_size' must be >= 1")
    for i, aug in enumerate(out["augmentations"]):
        if int(aug["num_crops"]) < 1 or int(aug["crop_size"]) < 1:
            raise ConfigError(f"config key 'augmentations[{i}]': crop_size and num_crops must be >= 1")


# ---------------------------------------------------------------------------------------------
# Derived values (solo-learn's parse_cfg)
# ---------------------------------------------------------------------------------------------


def num_devices(cfg) -> int:
    devices = cfg.devices
    if isinstance(devices, (list, ListConfig)):
        return len(devices)
    if isinstance(devices, str):
        if devices in ("auto", "-1"):
            return 1
        return len([d for d in devices.split(",") if d.strip()]) if "," in devices else int(devices)
    return max(1, int(devices))


def parse_cfg(cfg: Any) -> DictConfig:
    """Validate ``cfg`` and derive what solo-learn derives.

    - ``num_large_crops`` / ``num_small_crops`` from the augmentation pipelines (a pipeline whose
      crop_size equals the first one's is "large");
    - ``data.num_classes`` from the dataset table, or the number of class folders for ``custom``;
    - ``optimizer.lr`` and ``optimizer.classifier_lr`` × batch_size · devices · num_nodes / 256;
    - ``backbone.kwargs`` the method's options imply (HARL ``feature_map: c5_stride1`` →
      ``c5_stride1: true``), so the run config records the architecture that is built.
    """
    cfg = validate_cfg(cfg)
    # the method's checks already ran in validate_cfg; this applies the same steps to the result
    _check_method_cfg(cfg, METHODS.get(cfg.method))
    if cfg.data.num_classes is None:
        if cfg.data.dataset in DATASET_NUM_CLASSES:
            cfg.data.num_classes = DATASET_NUM_CLASSES[cfg.data.dataset]
        else:
            cfg.data.num_classes = count_class_folders(cfg.data.train_path, cfg.data.no_labels)
    scale = cfg.optimizer.batch_size * num_devices(cfg) * cfg.num_nodes / 256
    cfg.optimizer.lr = float(cfg.optimizer.lr) * scale
    cfg.optimizer.classifier_lr = float(cfg.optimizer.classifier_lr) * scale
    return cfg


def count_class_folders(path: Optional[str], no_labels: bool) -> int:
    """Number of classes of a custom image folder: max(1, #subfolders)."""
    import os

    if no_labels or not path:
        return 1
    if not os.path.isdir(path):
        raise ConfigError(f"data.train_path '{path}' does not exist or is not a directory")
    return max(1, sum(1 for e in os.scandir(path) if e.is_dir()))


def _add_or_override(override: str, config_dir: str) -> str:
    """``key=value`` → ``++key=value`` (set whether or not the YAML has the key), except for config
    groups (a sub-folder of the config dir, e.g. ``augmentations=symmetric.yaml``) and overrides that
    already carry Hydra's ``+``/``~`` prefixes. Unknown keys are still caught by :func:`validate_cfg`."""
    import os

    if override.startswith(("+", "~")) or "=" not in override:
        return override
    key = override.split("=", 1)[0]
    if os.path.isdir(os.path.join(config_dir, key.split("/")[0])):
        return override
    return "++" + override


def load_yaml(path: str, overrides: Iterable[str] = ()) -> DictConfig:
    """Compose a YAML config (Hydra defaults lists and ``key=value`` overrides supported)."""
    import os

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"config file '{path}' does not exist")
    config_dir = os.path.dirname(path)
    GlobalHydra.instance().clear()
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(config_dir=config_dir, version_base="1.2"):
            cfg = compose(config_name=os.path.basename(path),
                          overrides=[_add_or_override(o, config_dir) for o in overrides])
    except HydraException as err:  # a bad override or YAML: one line, not a traceback
        raise ConfigError(f"{path}: {str(err).strip().splitlines()[0]}") from err
    OmegaConf.set_struct(cfg, False)
    return cfg
