"""``harl-masks train-saliency``: train the 1×1-conv saliency head on heuristic pseudo-masks.

Label-free (docs/masks.md): the targets are masks of another generator (e.g. ``felzenszwalb``).
The backbone is frozen (eval mode, no gradients); only the head (C + 1 parameters) learns.

Data: each image with a pseudo-mask is resized to shortest side ``short_side`` (the inference
scale), a random ``crop``×``crop`` window and a random horizontal flip are applied to image and
mask together, and the image is ImageNet-normalised. Loss: binary cross-entropy with logits
between the head's output at feature resolution (B×1×h×w) and the fraction of foreground
pixels in each feature cell (the mask average-pooled to h×w), so p estimates the cell's fg
fraction and the bilinearly-upsampled p > 0.5 at inference traces its boundary.

The head file is written atomically at the end of every epoch.
"""

from __future__ import annotations

import os
import random
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from harl.utils.io import atomic_torch_save
from harl.masks.io import find_mask_file, list_files, read_image_rgb, read_mask_values
from harl.utils.device import resolve_device
from harl.masks.saliency_model import (
    HEAD_FORMAT,
    SaliencyHead,
    SaliencyModel,
    build_backbone_for_head,
    file_sha256,
    load_backbone_checkpoint,
    to_normalized_tensor,
)


@dataclass
class SaliencyTrainConfig:
    images: str
    pseudo_masks: str
    out: str
    backbone: Optional[str] = None                 # default: the checkpoint's training config
    backbone_kwargs: Dict[str, Any] = field(default_factory=dict)
    checkpoint: Optional[str] = None               # None → random-init backbone (stored in the head file)
    epochs: int = 3
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    short_side: int = 320
    crop: int = 320
    max_images: Optional[int] = None               # a seeded random subset of the pairs
    num_workers: int = 2
    seed: int = 0
    device: str = "auto"
    mask_threshold: float = 0.0                    # pseudo-mask fg = value > threshold
    progress: bool = True


class PseudoMaskDataset(Dataset):
    """(image, mask) pairs → (3×crop×crop normalised image, 1×crop×crop float mask in {0, 1})."""

    def __init__(self, images_root: str, pairs: Sequence[Tuple[str, str]], short_side: int, crop: int,
                 mask_threshold: float = 0.0, train: bool = True):
        self.images_root = images_root
        self.pairs = list(pairs)
        self.short_side = short_side
        self.crop = crop
        self.mask_threshold = mask_threshold
        self.train = train

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        rel, mask_path = self.pairs[i]
        image = read_image_rgb(os.path.join(self.images_root, rel))
        mask = read_mask_values(mask_path) > self.mask_threshold
        h, w = image.shape[:2]
        s = self.short_side / min(h, w)
        nh, nw = max(self.crop, int(round(h * s))), max(self.crop, int(round(w * s)))
        image = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((nw, nh), Image.NEAREST)) > 0
        if self.train:
            top = random.randint(0, nh - self.crop)
            left = random.randint(0, nw - self.crop)
        else:
            top, left = (nh - self.crop) // 2, (nw - self.crop) // 2
        image = image[top:top + self.crop, left:left + self.crop]
        mask = mask[top:top + self.crop, left:left + self.crop]
        if self.train and random.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        x = to_normalized_tensor(np.ascontiguousarray(image))
        y = torch.from_numpy(np.ascontiguousarray(mask)).float().unsqueeze(0)
        return x, y


def find_pairs(images_root: str, masks_root: str) -> Tuple[List[Tuple[str, str]], int]:
    """(image relpath, mask path) for every image that has a pseudo-mask; also the number without one."""
    if not os.path.isdir(masks_root):
        raise FileNotFoundError(f"pseudo-mask folder '{masks_root}' does not exist")
    pairs, missing = [], 0
    for rel in list_files(images_root):
        m = find_mask_file(masks_root, rel)
        if m is None:
            missing += 1
        else:
            pairs.append((rel, m))
    return pairs, missing


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2 ** 32
    random.seed(seed)
    np.random.seed(seed)


def soft_targets(mask: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """B×1×H×W {0,1} mask → B×1×h×w fraction of fg pixels per feature cell (adaptive average pool)."""
    return F.adaptive_avg_pool2d(mask, size)


def resolve_backbone(cfg: SaliencyTrainConfig) -> Tuple[str, Dict[str, Any]]:
    """Backbone name/kwargs: the explicit ones, else those of the checkpoint's training config."""
    if cfg.backbone:
        return cfg.backbone, dict(cfg.backbone_kwargs)
    if cfg.checkpoint:
        from harl.weights import read_run_config  # lazy: keeps start-up light
        from harl.eval.pretrained import architecture_from_run_config  # lazy: imports lightning

        run_cfg = read_run_config(cfg.checkpoint)
        if run_cfg is not None and "backbone" in run_cfg and run_cfg.backbone.get("name"):
            name, kwargs = architecture_from_run_config(run_cfg)  # as pretraining built it
            kwargs.update(cfg.backbone_kwargs)
            return str(name), kwargs
    raise ValueError("train-saliency: give --backbone (no training config found beside the checkpoint)")


def train_saliency_head(cfg: SaliencyTrainConfig) -> Dict[str, Any]:
    """Train the head; writes ``cfg.out`` (a head file, see :mod:`harl.masks.saliency_model`). Returns its ``train`` record."""
    if cfg.crop > cfg.short_side:
        raise ValueError(f"train-saliency: crop ({cfg.crop}) must be <= short_side ({cfg.short_side})")
    device = str(resolve_device(cfg.device, option="device"))
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    pairs, missing = find_pairs(cfg.images, cfg.pseudo_masks)
    if not pairs:
        raise FileNotFoundError(f"no image in '{cfg.images}' has a pseudo-mask in '{cfg.pseudo_masks}'")
    if cfg.max_images and len(pairs) > cfg.max_images:
        rng = random.Random(cfg.seed)
        pairs = sorted(rng.sample(pairs, cfg.max_images))

    name, kwargs = resolve_backbone(cfg)
    backbone = build_backbone_for_head(name, kwargs)
    ckpt_sha = None
    if cfg.checkpoint:
        load_backbone_checkpoint(cfg.checkpoint, backbone)
        ckpt_sha = file_sha256(cfg.checkpoint)
    else:
        import warnings

        warnings.warn("train-saliency without --checkpoint: the head is trained on a random-init backbone "
                      "(its weights are stored in the head file); masks will be poor", stacklevel=2)
    num_features = int(getattr(backbone, "num_features", 0)) or None
    model = SaliencyModel(backbone, SaliencyHead(num_features or 1))
    if num_features is None:  # probe the channel count
        with torch.no_grad():
            c = backbone.forward_features(torch.zeros(1, 3, cfg.crop, cfg.crop)).shape[1]
        model.head = SaliencyHead(c)
        num_features = c
    model = model.to(device)
    model.train()

    ds = PseudoMaskDataset(cfg.images, pairs, cfg.short_side, cfg.crop, cfg.mask_threshold, train=True)
    gen = torch.Generator()
    gen.manual_seed(cfg.seed)
    loader = DataLoader(ds, batch_size=min(cfg.batch_size, len(ds)), shuffle=True, drop_last=False,
                        num_workers=cfg.num_workers, worker_init_fn=_seed_worker, generator=gen,
                        pin_memory=device.startswith("cuda"), persistent_workers=False)
    opt = torch.optim.Adam(model.head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(loader)
    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.epochs * steps_per_epoch, desc="train-saliency", unit="step", dynamic_ncols=True)

    record: Dict[str, Any] = {
        "images": os.path.abspath(cfg.images),
        "pseudo_masks": os.path.abspath(cfg.pseudo_masks),
        "pseudo_masks_meta": _read_meta(cfg.pseudo_masks),
        "pairs": len(pairs),
        "images_without_mask": missing,
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("progress",)},
        "epoch_loss": [],
        "steps": 0,
    }
    state_backbone = None if cfg.checkpoint else {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()}
    try:
        for epoch in range(cfg.epochs):
            total, n = 0.0, 0
            for x, y in loader:
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
                logits = model(x)
                loss = F.binary_cross_entropy_with_logits(logits.float(), soft_targets(y, logits.shape[-2:]))
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"train-saliency: non-finite loss at epoch {epoch}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * x.shape[0]
                n += x.shape[0]
                record["steps"] += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=epoch, loss=f"{float(loss.detach()):.4f}", refresh=False)
            record["epoch_loss"].append(total / max(n, 1))
            _save(cfg, name, kwargs, num_features, model, ckpt_sha, state_backbone, record, atomic_torch_save)
    finally:
        if bar is not None:
            bar.close()
    if cfg.epochs == 0:
        _save(cfg, name, kwargs, num_features, model, ckpt_sha, state_backbone, record, atomic_torch_save)
    return record


def _read_meta(root: str) -> Optional[Dict[str, Any]]:
    import json

    path = os.path.join(root, "meta.json")
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except ValueError:
            return None
    return None


def _save(cfg, name, kwargs, num_features, model, ckpt_sha, state_backbone, record, save_fn) -> None:
    obj = {
        "format": HEAD_FORMAT,
        "head": {k: v.detach().cpu() for k, v in model.head.state_dict().items()},
        "backbone": name,
        "backbone_kwargs": kwargs,
        "num_features": num_features,
        "checkpoint": os.path.abspath(cfg.checkpoint) if cfg.checkpoint else None,
        "checkpoint_sha256": ckpt_sha,
        "short_side": cfg.short_side,
        "train": _plain(record),
    }
    if state_backbone is not None:
        obj["backbone_state_dict"] = state_backbone
    save_fn(obj, cfg.out)


def _plain(obj):
    """JSON-like copy (loadable with ``torch.load(weights_only=True)``)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)
