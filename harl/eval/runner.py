"""The evaluation runner behind ``harl-linear``: config → backbone → data → mode → run folder.

:func:`evaluate` takes a linear-evaluation config (raw dict / DictConfig, see
:mod:`harl.eval.linear_config`) and

1. parses it and loads the backbone (:func:`harl.eval.pretrained.load_pretrained_backbone`, or a
   random initialisation of the same architecture with ``random_init``), writing the resolved
   architecture, the checkpoint's sha256 and the pretraining method back into the config;
2. resolves the high-pass rule (:func:`resolve_highpass`), the crop size and the normalisation
   (:func:`resolve_data`);
3. picks the run folder ``<checkpoint.dir>/<mode>/<version>/`` (a new ``offline-xxxxxxxx`` version,
   the folder of ``resume_from_checkpoint``, or with ``auto_resume.enabled`` the newest folder whose
   ``args.json`` matches) and writes ``args.json`` there atomically;
4. runs the mode registered in :data:`EVAL_MODES` (``linear``, ``knn``, ``dense``), then, with
   ``random_init_baseline``, the same evaluation of a random-init backbone of the same
   architecture in ``<run>/random_init/``;
5. writes ``results.json`` atomically and returns it as a dict (with ``summary``, the printed line).

Each mode is ``run(ctx: EvalContext) -> dict`` of metrics (``top1``/``top5`` or ``miou`` ...).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from harl.checkpoint import atomic_write_text, choose_resume, new_version, resume_fingerprint
from harl.errors import ConfigError
from harl.eval.linear_config import parse_linear_cfg
from harl.eval.pretrained import DEFAULT_HP_KERNEL, DEFAULT_HP_SIGMA, load_pretrained_backbone
from harl.registry import DATASETS, Registry
from harl.version import __version__
from harl.eval.features import describe_transform, feature_cache_key, key_digest

log = logging.getLogger("harl")

#: mode name → ``run(ctx) -> metrics dict``; filled by harl.eval.linear / .knn_probe / .dense (imported on
#: the first lookup)
EVAL_MODES: Registry[Callable[["EvalContext"], Dict[str, Any]]] = Registry(
    "evaluation mode", plugins=("harl.eval.dense", "harl.eval.knn_probe", "harl.eval.linear"))

RESULTS_FILE = "results.json"


@dataclass
class EvalContext:
    """Everything a mode needs: the resolved config, the backbone and where to write."""

    cfg: DictConfig
    backbone: nn.Module
    info: Dict[str, Any]
    input_transform: Optional[nn.Module]
    run_dir: str
    version: str
    resume_ckpt: Optional[str] = None
    checkpoints: bool = True
    weights_id: str = ""
    progress: bool = True
    extra: Dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# resolution
# ---------------------------------------------------------------------------------------------


def resolve_highpass(cfg: DictConfig, info: Dict[str, Any]) -> Tuple[bool, int, float]:
    """``(apply, kernel, sigma)`` of the evaluation high-pass filter (docs/methods/sgm.md).

    ``eval_highpass`` null (default) → on iff the checkpoint was pretrained on high-pass inputs
    (``info["highpass"]``), with the checkpoint's kernel / sigma unless ``hp_kernel`` /
    ``hp_sigma`` are given; true → on; false → off, with a warning when the checkpoint was
    pretrained on high-pass inputs (its features then see a different input distribution).
    """
    pre = bool(info.get("highpass"))
    want = cfg.eval_highpass
    if want is None:
        apply = pre
    else:
        apply = bool(want)
        if pre and not apply:
            warnings.warn(
                f"checkpoint '{info.get('path')}' was pretrained on high-pass inputs (method "
                f"'{info.get('method')}', sgm_strategy hp) but eval_highpass=false: evaluating on unfiltered "
                "images, unlike the SGM protocol (docs/methods/sgm.md); remove eval_highpass to apply it automatically")
    kernel = cfg.hp_kernel if cfg.hp_kernel is not None else (info.get("hp_kernel") or DEFAULT_HP_KERNEL)
    sigma = cfg.hp_sigma if cfg.hp_sigma is not None else (info.get("hp_sigma") or DEFAULT_HP_SIGMA)
    return apply, int(kernel), float(sigma)


def default_crop_size(dataset_name: str) -> Optional[int]:
    """The evaluation crop of a dataset: 224 for ImageNet-style sets (Resize + CenterCrop), the
    square resize side for stl10 (96); None for sets used at their native size (read from the
    first image)."""
    from harl.data.eval_transforms import resize_center_crop_geometry  # lazy: imports torchvision

    spec = DATASETS.get(dataset_name)
    geometry = (spec.eval_geometry or resize_center_crop_geometry)(224)
    if geometry.center_crop is not None:
        return int(geometry.center_crop)
    if isinstance(geometry.resize, (tuple, list)):
        return int(geometry.resize[0])
    if isinstance(geometry.resize, int):
        return int(geometry.resize)
    return None


def resolve_data(cfg: DictConfig, info: Dict[str, Any]) -> None:
    """Fill ``data.augmentations.{mean, std, crop_size}`` in place.

    mean/std: given > the pretraining's (when pretrained on the same dataset) > the evaluation
    dataset's statistics. crop_size: given > :func:`default_crop_size` > the side of the first
    validation image (native-size datasets: cifar, fashion sets).
    """
    from harl.data import build_classification_dataset, dataset_stats  # lazy: imports torchvision

    aug = cfg.data.augmentations
    if aug.mean is None or aug.std is None:
        if info.get("dataset") == cfg.data.dataset and info.get("mean") and info.get("std"):
            mean, std = info["mean"], info["std"]
        else:
            mean, std = dataset_stats(cfg.data.dataset)
        aug.mean = list(mean) if aug.mean is None else aug.mean
        aug.std = list(std) if aug.std is None else aug.std
    if aug.crop_size is None:
        crop = default_crop_size(cfg.data.dataset)
        if crop is None:
            ds = build_classification_dataset(cfg.data.dataset, cfg.data.val_path, "val", 32, aug.mean, aug.std,
                                              download=cfg.data.download)
            item = ds[0]
            crop = int(min(item[0].shape[-2:]))
        aug.crop_size = int(crop)


def masks_roots(cfg: DictConfig) -> Tuple[str, str]:
    """(train masks root, val masks root) for the dense probe: ``data.masks.root`` /
    ``data.masks.val_root``, else the dataset's default (fashion_scenes: the ``masks`` mirror)."""
    spec = DATASETS.get(cfg.data.dataset)
    roots = []
    for key, path, split in (("root", cfg.data.train_path, "train"), ("val_root", cfg.data.val_path, "val")):
        root = cfg.data.masks[key]
        if root is None and spec.default_masks_root is not None:
            root = spec.default_masks_root(path, split)
        if root is None:
            raise ConfigError(f"mode=dense needs ground-truth masks: set data.masks.{key} "
                              f"(a mask tree mirroring data.{'train' if split == 'train' else 'val'}_path)")
        if not os.path.isdir(root):
            raise ConfigError(f"data.masks.{key} '{root}' does not exist or is not a directory")
        roots.append(str(root))
    return roots[0], roots[1]


def build_datasets(ctx: EvalContext, *, train_augment: bool, with_masks: bool):
    """(train, val) :class:`~harl.data.ClassificationDataset` s of the config (masks for dense)."""
    from harl.data import build_classification_dataset  # lazy: imports torchvision

    cfg = ctx.cfg
    aug = cfg.data.augmentations
    m = cfg.data.masks
    train_masks, val_masks = masks_roots(cfg) if with_masks else (None, None)
    common = dict(crop_size=int(aug.crop_size), mean=list(aug.mean), std=list(aug.std),
                  skip_corrupt=bool(cfg.data.skip_corrupt), download=bool(cfg.data.download),
                  mask_suffix=m.suffix, on_missing=m.on_missing, on_size_mismatch=m.on_size_mismatch)
    train = build_classification_dataset(cfg.data.dataset, cfg.data.train_path, "train", train_augment=train_augment,
                                         masks_root=train_masks, fraction=cfg.data.fraction, **common)
    val = build_classification_dataset(cfg.data.dataset, cfg.data.val_path, "val", train_augment=False,
                                       masks_root=val_masks, **common)
    return train, val


def cache_path_for(ctx: EvalContext, split: str, dataset, kind: str) -> Tuple[Optional[str], Optional[Dict]]:
    """(cache file, cache key) of a feature set, or (None, None) with ``cache.enabled: false``."""
    cfg = ctx.cfg
    if not cfg.cache.enabled:
        return None, None
    path = cfg.data.train_path if split == "train" else cfg.data.val_path
    transform = f"{describe_transform(getattr(dataset, 'transform', None))} | input: " \
                f"{describe_transform(ctx.input_transform)}"
    key = feature_cache_key(ctx.weights_id, str(path), split, transform, str(cfg.backbone.name),
                            backbone_kwargs=OmegaConf.to_container(cfg.backbone.kwargs, resolve=True),
                            prefix=ctx.info.get("prefix"), dataset=cfg.data.dataset,
                            fraction=float(cfg.data.fraction) if split == "train" else -1.0, kind=kind,
                            masks=bool(getattr(dataset, "mask_reader", None) is not None))
    cache_dir = cfg.cache.dir or os.path.join(str(cfg.checkpoint.dir), "feature_cache")
    name = f"{cfg.backbone.name}-{cfg.data.dataset}-{split}-{kind}-{key_digest(key)[:16]}.safetensors"
    return os.path.join(cache_dir, name), key


# ---------------------------------------------------------------------------------------------
# run folders
# ---------------------------------------------------------------------------------------------

#: keys that do not change what an evaluation computes (ignored when matching runs to resume)
_RESUME_IGNORED_EXTRA = ("cache", "random_init_baseline", "enable_progress_bar")


def _fingerprint(cfg: Any) -> Dict[str, Any]:
    d = resume_fingerprint(cfg)
    for key in _RESUME_IGNORED_EXTRA:
        d.pop(key, None)
    return d


def run_root(cfg: DictConfig) -> str:
    return os.path.join(str(cfg.checkpoint.dir), str(cfg.mode))


def find_resumable_eval(cfg: DictConfig) -> Tuple[Optional[str], Optional[str]]:
    """The checkpoint an evaluation run with the same resolved config continues from:
    ``(ckpt_path, run_dir)`` or ``(None, None)``; same rules as pretraining
    (:func:`harl.checkpoint.choose_resume`)."""
    choice = choose_resume(cfg, root=run_root(cfg), fingerprint=_fingerprint)
    return choice.ckpt, choice.run_dir


def _select_run_dir(cfg: DictConfig) -> Tuple[str, str, Optional[str]]:
    ckpt = cfg.resume_from_checkpoint
    run_dir = None
    if ckpt is not None:
        if not os.path.isfile(str(ckpt)):
            raise ConfigError(f"resume_from_checkpoint '{ckpt}' does not exist")
        run_dir = os.path.dirname(os.path.abspath(str(ckpt)))
    elif cfg.auto_resume.enabled and cfg.mode != "knn":
        choice = choose_resume(cfg, root=run_root(cfg), fingerprint=_fingerprint)
        ckpt, run_dir = choice.ckpt, choice.run_dir
        log.warning(choice.message)
    version = os.path.basename(run_dir) if run_dir else new_version(bool(cfg.wandb.enabled))
    if run_dir is None:
        run_dir = os.path.join(run_root(cfg), version)
    return run_dir, version, ckpt


def write_args(cfg: DictConfig, run_dir: str, version: str) -> None:
    os.makedirs(run_dir, exist_ok=True)
    args = OmegaConf.to_container(cfg, resolve=True)
    args["wandb_run_id"] = version if cfg.wandb.enabled else None
    atomic_write_text(os.path.join(run_dir, "args.json"), json.dumps(args, indent=2, default=str))


# ---------------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------------


def _load(cfg: DictConfig, random_init: bool) -> Tuple[nn.Module, Dict[str, Any]]:
    kwargs = OmegaConf.to_container(cfg.backbone.kwargs, resolve=True) if cfg.backbone.kwargs else {}
    return load_pretrained_backbone(cfg.pretrained_feature_extractor, cfg.backbone.name or None, kwargs or None,
                                    random_init=random_init, seed=int(cfg.seed))


def _weights_id(info: Dict[str, Any], seed: int) -> str:
    if info.get("random_init"):
        arch = json.dumps([info["backbone_name"], info["backbone_kwargs"]], sort_keys=True)
        return f"random-init:seed={seed}:{arch}"
    return str(info["sha256"])


def _run_mode(ctx: EvalContext) -> Dict[str, Any]:
    return EVAL_MODES.get(str(ctx.cfg.mode))(ctx)


def _public_info(info: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in info.items()}


def format_summary(cfg: DictConfig, metrics: Dict[str, Any], baseline: Optional[Dict[str, Any]] = None) -> str:
    """One line: ``harl-linear [linear/cached] top-1 91.20  top-5 99.80  (random init: ...)``."""
    def fmt(m: Dict[str, Any]) -> str:
        if "miou" in m:
            return f"mIoU {m['miou']:.2f}  fg IoU {m['iou_fg']:.2f}"
        return f"top-1 {m['top1']:.2f}  top-5 {m['top5']:.2f}"

    where = f"{cfg.mode}" + (f"/{cfg.protocol}" if cfg.mode != "knn" else "")
    line = f"harl-linear [{where}] {cfg.name}: {fmt(metrics)}"
    if baseline is not None:
        line += f"  (random init: {fmt(baseline)})"
    return line


def evaluate(cfg: Any, progress: Optional[bool] = None) -> Dict[str, Any]:
    """Run one evaluation from a linear config; returns the results dict (also in ``results.json``).

    Keys: ``mode``, ``protocol``, ``name``, ``metrics`` (``top1``/``top5`` [+ ``best_top1`` ...] or
    ``miou``/``iou_fg``/``iou_bg``/``pixel_acc``; kNN adds ``grid``), ``top1``/``top5`` or
    ``miou``/``iou_fg`` copied to the top level, ``random_init_baseline`` (same layout, or None),
    ``pretrained`` (the info dict of :func:`load_pretrained_backbone`), ``highpass``
    ({applied, kernel, sigma}), ``config`` (resolved), ``run_dir``, ``results_path``, ``elapsed_s``,
    ``summary``.
    """
    from lightning.pytorch import seed_everything

    t0 = time.time()
    cfg = parse_linear_cfg(cfg)
    seed_everything(int(cfg.seed), workers=True, verbose=False)
    backbone, info = _load(cfg, bool(cfg.random_init))

    # write back what was resolved, so args.json describes the evaluated model exactly
    cfg.backbone.name = info["backbone_name"]
    cfg.backbone.kwargs = info["backbone_kwargs"]
    cfg.pretrained_sha256 = info["sha256"]
    if cfg.pretrain_method is None:
        cfg.pretrain_method = info.get("method")
    elif info.get("method") and str(cfg.pretrain_method) != str(info["method"]):
        warnings.warn(f"pretrain_method '{cfg.pretrain_method}' but the checkpoint's run config says "
                      f"'{info['method']}'; using the checkpoint's weights as given")
    apply_hp, kernel, sigma = resolve_highpass(cfg, info)
    cfg.eval_highpass, cfg.hp_kernel, cfg.hp_sigma = apply_hp, kernel, sigma
    resolve_data(cfg, info)

    run_dir, version, resume = _select_run_dir(cfg)
    write_args(cfg, run_dir, version)
    if progress is None:
        progress = bool(cfg.get("enable_progress_bar", True))

    def input_transform():
        if not apply_hp:
            return None
        from harl.ops.filters import HighPass

        return HighPass(kernel, sigma)

    ctx = EvalContext(cfg, backbone, info, input_transform(), run_dir, version, resume,
                      checkpoints=bool(cfg.checkpoint.enabled), weights_id=_weights_id(info, int(cfg.seed)),
                      progress=progress)
    metrics = _run_mode(ctx)

    baseline = None
    if cfg.random_init_baseline and not info.get("random_init"):
        seed_everything(int(cfg.seed), workers=True, verbose=False)
        rb, rinfo = load_pretrained_backbone(cfg.pretrained_feature_extractor, info["backbone_name"],
                                             info["backbone_kwargs"], random_init=True, seed=int(cfg.seed))
        bcfg = copy.deepcopy(cfg)
        bcfg.wandb.enabled = False
        bdir = os.path.join(run_dir, "random_init")
        write_args(bcfg, bdir, version)
        bctx = EvalContext(bcfg, rb, rinfo, input_transform(), bdir, version, None, checkpoints=False,
                           weights_id=_weights_id(rinfo, int(cfg.seed)), progress=progress)
        baseline = _run_mode(bctx)

    results: Dict[str, Any] = {
        "name": cfg.name,
        "mode": cfg.mode,
        "protocol": cfg.protocol if cfg.mode != "knn" else "cached",
        "metrics": metrics,
    }
    for key in ("top1", "top5", "miou", "iou_fg", "iou_bg"):
        if key in metrics:
            results[key] = metrics[key]
    results.update({
        "random_init_baseline": baseline,
        "pretrained": _public_info(info),
        "highpass": {"applied": apply_hp, "kernel": kernel, "sigma": sigma},
        "config": OmegaConf.to_container(cfg, resolve=True),
        "run_dir": run_dir,
        "results_path": os.path.join(run_dir, RESULTS_FILE),
        "elapsed_s": round(time.time() - t0, 3),
        "harl_version": _harl_version(),
    })
    results["summary"] = format_summary(cfg, metrics, baseline)
    atomic_write_text(results["results_path"], json.dumps(results, indent=2, default=_json_default) + "\n")
    return results


def _json_default(x):
    if isinstance(x, torch.Tensor):
        return x.tolist()
    return str(x)


def _harl_version() -> str:
    return __version__


def read_results(run_dir: str) -> Dict[str, Any]:
    """The ``results.json`` of an evaluation run folder."""
    with open(os.path.join(run_dir, RESULTS_FILE)) as f:
        return json.load(f)


__all__: List[str] = ["EVAL_MODES", "EvalContext", "evaluate", "resolve_highpass", "resolve_data", "build_datasets",
                      "cache_path_for", "find_resumable_eval", "format_summary", "read_results", "masks_roots",
                      "default_crop_size", "RESULTS_FILE"]
