"""Load a pretrained backbone for evaluation, rebuilding the exact architecture it was trained with.

Public API (stable; used by the linear / kNN / dense probes, semi-supervised fine-tuning and
transfer):

- :func:`load_pretrained_backbone` ``(path, backbone_name=None, backbone_kwargs=None, *,
  random_init=False, prefix="backbone.", seed=None) -> (backbone, info)``;
- :func:`file_sha256` ``(path) -> str`` (hex, memoised per path/size/mtime);
- :func:`pretraining_info` ``(run_cfg) -> dict`` (method, dataset, mean/std, high-pass use);
- :func:`highpass_from_run_config` ``(run_cfg) -> (used, kernel, sigma)``.

How the architecture is found, first match wins for each piece:

1. explicit ``backbone_name`` / ``backbone_kwargs`` (kwargs are merged over the run config's when
   the name is the same; a different name drops the run config's kwargs);
2. the run config (:func:`harl.checkpoint.read_run_config`: ``args.json`` beside the file, else
   the Lightning checkpoint's ``hyper_parameters.cfg``), with the CIFAR-stem default of the
   pretraining dataset filled in exactly as pretraining did (:func:`harl.methods.base.backbone_kwargs`);
3. for a bare torchvision-style ResNet state dict (e.g. an exported ``backbone.pth`` without
   ``args.json``): depth from the block layout, ``width`` from ``conv1``'s output channels and
   ``cifar_stem`` from its 3×3 kernel.

The weights are then loaded **strictly** (:func:`harl.checkpoint.load_backbone`, the one path from a
weights file into a backbone; :func:`harl.checkpoint.strict_load` underneath): any missing,
unexpected or mis-shaped key raises :class:`~harl.errors.CheckpointMismatchError` naming
the keys. Supported files: ``.ckpt`` (harl and solo-learn Lightning checkpoints), ``.pth`` /
``.pt`` (a bare backbone state dict, a full model state dict, or a dict holding ``state_dict`` /
``model``) and ``.safetensors``. Legacy ``encoder.*`` keys are renamed to ``backbone.*``.

The ``info`` dict (JSON-serialisable):

=================== ==============================================================================
``path``            absolute path of the file (None for a random-init backbone without a file)
``sha256``          hex digest of the file (None without a file)
``random_init``     True when no weights were loaded
``method``          pretraining method (``method``; ``pretrain_method`` of a linear run), or None
``dataset``         pretraining dataset name, or None
``mean``, ``std``   normalisation of the pretraining inputs (3-lists), or None when unknown
``highpass``        True when the pretraining fed high-pass inputs (SGM with ``sgm_strategy: hp``)
``hp_kernel``       Gaussian kernel of that high-pass (11 by default), or None
``hp_sigma``        its sigma (5 by default), or None
``backbone_name``   the architecture built, e.g. ``resnet18``
``backbone_kwargs`` its keyword arguments (with ``cifar_stem`` resolved for ResNets)
``num_features``    C of the pooled features
``arch_source``     where the architecture came from: ``explicit``, ``run_config``, ``state_dict``
``config_source``   ``args.json``, ``checkpoint`` or None
``prefix``          state-dict prefix the weights were taken from (``backbone.`` by default)
=================== ==============================================================================
"""

from __future__ import annotations

import hashlib
import os
import warnings
from typing import Any, Dict, Optional, Tuple

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from harl.weights import load_backbone, read_backbone_state_dict, read_run_config
from harl.errors import CheckpointMismatchError
from harl.registry import METHODS

#: SGM's default high-pass filter (docs/methods/sgm.md)
DEFAULT_HP_KERNEL = 11
DEFAULT_HP_SIGMA = 5.0

_SHA_CACHE: Dict[Tuple[str, int, int], str] = {}


def file_sha256(path: str, chunk_size: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, memoised on (absolute path, size, mtime)."""
    path = os.path.abspath(path)
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(chunk_size), b""):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


# ---------------------------------------------------------------------------------------------
# run config → pretraining facts
# ---------------------------------------------------------------------------------------------


def _get(cfg: Any, dotted: str, default: Any = None) -> Any:
    node = cfg
    for part in dotted.split("."):
        if node is None:
            return default
        try:
            node = node.get(part) if hasattr(node, "get") else None
        except Exception:  # noqa: BLE001 - OmegaConf missing values and the like
            return default
    return default if node is None else node


def _plain(x: Any) -> Any:
    if isinstance(x, DictConfig) or OmegaConf.is_config(x):
        return OmegaConf.to_container(x, resolve=True)
    return x


def _is_linear_run(run_cfg: Any) -> bool:
    """A ``harl-linear`` run config (its checkpoints hold a finetuned or frozen backbone)."""
    return run_cfg is not None and "pretrained_feature_extractor" in run_cfg and "method" not in run_cfg


def highpass_from_run_config(run_cfg: Any) -> Tuple[bool, Optional[int], Optional[float]]:
    """``(used, kernel, sigma)``: did the pretraining feed high-pass inputs?

    True for SGM methods (name starting with ``sgm``) whose ``method_kwargs.sgm_strategy`` is
    ``hp`` (SGM's default when the key is absent), with ``method_kwargs.hp_kernel`` /
    ``hp_sigma`` (defaults 11 / 5). For a ``harl-linear`` run config: its resolved
    ``eval_highpass`` / ``hp_kernel`` / ``hp_sigma``.
    """
    if run_cfg is None:
        return False, None, None
    if _is_linear_run(run_cfg):
        used = bool(_get(run_cfg, "eval_highpass", False))
        if not used:
            return False, None, None
        return True, int(_get(run_cfg, "hp_kernel", DEFAULT_HP_KERNEL)), float(_get(run_cfg, "hp_sigma", DEFAULT_HP_SIGMA))
    method = str(_get(run_cfg, "method", "") or "")
    if not method.lower().startswith("sgm"):
        return False, None, None
    strategy = str(_get(run_cfg, "method_kwargs.sgm_strategy", "hp") or "hp")
    if strategy != "hp":
        return False, None, None
    return (True, int(_get(run_cfg, "method_kwargs.hp_kernel", DEFAULT_HP_KERNEL)),
            float(_get(run_cfg, "method_kwargs.hp_sigma", DEFAULT_HP_SIGMA)))


def _stats_from_run_config(run_cfg: Any, dataset: Optional[str]):
    """Normalisation of the pretraining: the first augmentation pipeline's mean/std override,
    else the dataset's statistics (as :func:`harl.data.dataset_stats`), else None."""
    mean = std = None
    augs = _get(run_cfg, "augmentations")
    if augs is not None and len(augs) > 0:
        mean = _plain(_get(augs[0], "mean"))
        std = _plain(_get(augs[0], "std"))
    if _is_linear_run(run_cfg):
        mean = _plain(_get(run_cfg, "data.augmentations.mean"))
        std = _plain(_get(run_cfg, "data.augmentations.std"))
    if (mean is None or std is None) and dataset:
        from harl.data import DATASETS, dataset_stats  # lazy: imports torchvision

        if dataset in DATASETS:
            d_mean, d_std = dataset_stats(dataset)
            mean = list(d_mean) if mean is None else mean
            std = list(d_std) if std is None else std
    return ([float(v) for v in mean] if mean is not None else None,
            [float(v) for v in std] if std is not None else None)


def pretraining_info(run_cfg: Any) -> Dict[str, Any]:
    """Method, dataset, normalisation and high-pass use of a run config (None values when unknown)."""
    if run_cfg is None:
        return {"method": None, "dataset": None, "mean": None, "std": None, "highpass": False,
                "hp_kernel": None, "hp_sigma": None}
    if _is_linear_run(run_cfg):
        method = _get(run_cfg, "pretrain_method")
    else:
        method = _get(run_cfg, "method")
    dataset = _get(run_cfg, "data.dataset")
    mean, std = _stats_from_run_config(run_cfg, dataset)
    hp, kernel, sigma = highpass_from_run_config(run_cfg)
    return {"method": None if method is None else str(method), "dataset": None if dataset is None else str(dataset),
            "mean": mean, "std": std, "highpass": hp, "hp_kernel": kernel, "hp_sigma": sigma}


def architecture_from_run_config(run_cfg: Any) -> Tuple[Optional[str], Dict[str, Any]]:
    """``(backbone name, kwargs)`` as pretraining built them (CIFAR-stem default filled in, and the
    kwargs the method's options imply, e.g. HARL's ``feature_map: c5_stride1``, for runs whose
    ``args.json`` predates recording them)."""
    name = _get(run_cfg, "backbone.name")
    if name is None:
        return None, {}
    kwargs = dict(_plain(_get(run_cfg, "backbone.kwargs", {})) or {})
    if _is_linear_run(run_cfg):
        return str(name), kwargs  # a linear run stores the resolved architecture
    from harl.backbones import BACKBONES  # lazy: imports torchvision
    from harl.backbones.resnet_spec import dataset_cifar_stem

    method = _get(run_cfg, "method")
    if name in BACKBONES:
        if method in METHODS:
            # runs written before args.json recorded them (HARL feature_map: c5_stride1)
            cls = METHODS.get(method)
            method_kwargs = {**cls.default_method_kwargs(), **(_plain(_get(run_cfg, "method_kwargs", {})) or {})}
            for key, value in cls.backbone_overrides(method_kwargs).items():
                kwargs.setdefault(key, value)
    if name in BACKBONES and "cifar_stem" not in kwargs:
        kwargs["cifar_stem"] = dataset_cifar_stem(_get(run_cfg, "data.dataset"))
    return str(name), kwargs


def infer_resnet_architecture(state_dict: Dict[str, torch.Tensor]) -> Tuple[Optional[str], Dict[str, Any]]:
    """``(name, kwargs)`` of a torchvision-style ResNet state dict (bare backbone keys), or (None, {}).

    Depth from the number of blocks per stage (and Bottleneck ``conv3``), ``width`` from
    ``conv1.weight``'s output channels, ``cifar_stem`` from its 3×3 kernel
    (:meth:`harl.backbones.resnet_spec.ResNetSpec.from_state_dict`).
    """
    from harl.backbones.resnet_spec import ResNetSpec  # lazy: imports torchvision

    spec = ResNetSpec.from_state_dict(state_dict)
    if spec is None:
        return None, {}
    return spec.name, spec.inferred_kwargs()


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------


def _build(name: str, kwargs: Dict[str, Any], seed: Optional[int]) -> nn.Module:
    from harl.backbones import build_backbone  # lazy: imports torchvision

    if seed is not None:
        state = torch.random.get_rng_state()
        torch.manual_seed(int(seed))
        try:
            return build_backbone(name, **kwargs)
        finally:
            torch.random.set_rng_state(state)
    return build_backbone(name, **kwargs)


def load_pretrained_backbone(path: Optional[str], backbone_name: Optional[str] = None,
                             backbone_kwargs: Optional[Dict[str, Any]] = None, *, random_init: bool = False,
                             prefix: str = "backbone.", seed: Optional[int] = None,
                             ) -> Tuple[nn.Module, Dict[str, Any]]:
    """Rebuild a pretrained backbone and load its weights strictly; returns ``(backbone, info)``.

    Args:
        path: ``.ckpt`` / ``.pth`` / ``.pt`` / ``.safetensors`` file, or None for a random-init
            backbone (then ``backbone_name`` is required).
        backbone_name, backbone_kwargs: explicit architecture; override the run config's.
        random_init: build the checkpoint's architecture but keep the random initialisation (the
            random-init baseline of the same architecture); nothing is loaded.
        prefix: state-dict prefix holding the backbone (``momentum_backbone.`` for BYOL's target).
        seed: seed for the random initialisation (None: the global RNG).
    Returns:
        the backbone in eval mode (``forward``: B×3×H×W → B×C; ``forward_features`` → B×C×h×w for
        convolutional models) and the info dict described in the module docstring.
    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointMismatchError: the weights do not match the architecture (keys named), or the
            architecture cannot be determined.
    """
    explicit_kwargs = dict(_plain(backbone_kwargs) or {})
    run_cfg = None
    config_source = None
    sha = None
    sd: Optional[Dict[str, torch.Tensor]] = None
    if path is not None:
        path = os.path.abspath(os.fspath(path))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint '{path}' does not exist")
        sha = file_sha256(path)
        if os.path.isfile(os.path.join(os.path.dirname(path), "args.json")):
            config_source = "args.json"
        run_cfg = read_run_config(path)
        if run_cfg is not None and config_source is None:
            config_source = "checkpoint"
    elif not backbone_name:
        raise ValueError("load_pretrained_backbone(None, ...) needs backbone_name for a random-init backbone")

    cfg_name, cfg_kwargs = architecture_from_run_config(run_cfg) if run_cfg is not None else (None, {})
    name, kwargs, arch_source = cfg_name, dict(cfg_kwargs), "run_config"
    if backbone_name and backbone_name != cfg_name:
        if cfg_name is not None:
            warnings.warn(f"backbone '{backbone_name}' was requested but '{path}' was pretrained with "
                          f"'{cfg_name}'; building '{backbone_name}' (its run-config kwargs are not used)")
        name, kwargs, arch_source = backbone_name, {}, "explicit"
    if explicit_kwargs:
        kwargs.update(explicit_kwargs)
        arch_source = "explicit"

    if path is not None and (not random_init or name is None or run_cfg is None):
        sd = read_backbone_state_dict(path, prefix=prefix)
    if name is None:
        inferred_name, inferred_kwargs = infer_resnet_architecture(sd or {})
        if inferred_name is None:
            raise CheckpointMismatchError(
                f"cannot tell the architecture of '{path}': no args.json beside it, no config inside it, "
                f"and its keys are not a torchvision ResNet's; pass backbone_name (and backbone_kwargs)")
        inferred_kwargs.update(kwargs)
        name, kwargs, arch_source = inferred_name, inferred_kwargs, "state_dict"
    else:
        from harl.backbones import BACKBONES  # lazy: imports torchvision

        if name in BACKBONES and run_cfg is None and sd is not None:
            _, inferred = infer_resnet_architecture(sd)
            for key, value in inferred.items():
                kwargs.setdefault(key, value)
    if random_init:
        sd = None  # the file only told the architecture

    backbone = _build(name, kwargs, seed)
    if sd is not None:
        load_backbone(path, backbone, prefix=prefix, state_dict=sd, source=f"checkpoint '{path}' ({prefix}*)")
    backbone.eval()

    info: Dict[str, Any] = {"path": path, "sha256": sha, "random_init": sd is None}
    info.update(pretraining_info(run_cfg))
    info.update({
        "backbone_name": name,
        "backbone_kwargs": {k: _plain(v) for k, v in kwargs.items()},
        "num_features": int(getattr(backbone, "num_features", 0) or 0),
        "arch_source": arch_source,
        "config_source": config_source,
        "prefix": prefix,
    })
    return backbone, info


__all__ = ["load_pretrained_backbone", "file_sha256", "pretraining_info", "highpass_from_run_config",
           "architecture_from_run_config", "infer_resnet_architecture", "DEFAULT_HP_KERNEL", "DEFAULT_HP_SIGMA"]
