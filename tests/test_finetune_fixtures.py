"""Helpers (no tests) shared by the fine-tuning, transfer and report tests: a tiny labelled image
folder (optionally with masks), a fake pretraining run folder (args.json + checkpoint) and
Lightning-style metrics.csv logs."""

from __future__ import annotations

import csv
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

COLOURS = [(220, 40, 40), (40, 200, 40), (40, 60, 220), (220, 200, 40)]


def write_image_folder(root: str, n_train: int = 8, n_val: int = 4, classes: int = 3, size: int = 32,
                       masks: bool = False, seed: int = 0) -> str:
    """``root/{train,val}/c<k>/img_<i>.png``: class k is a square of colour k on grey noise; with
    ``masks`` the square's mask is written to ``root/masks/{train,val}/c<k>/img_<i>.png``."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for k in range(classes):
            d = os.path.join(root, split, f"c{k}")
            os.makedirs(d, exist_ok=True)
            for i in range(n):
                img = rng.integers(90, 160, size=(size, size, 3)).astype(np.uint8)
                s = int(rng.integers(size // 3, size // 2))
                y0, x0 = (int(v) for v in rng.integers(0, size - s, size=2))
                img[y0:y0 + s, x0:x0 + s] = COLOURS[k % len(COLOURS)]
                Image.fromarray(img).save(os.path.join(d, f"img_{i}.png"))
                if masks:
                    md = os.path.join(root, "masks", split, f"c{k}")
                    os.makedirs(md, exist_ok=True)
                    m = np.zeros((size, size), np.uint8)
                    m[y0:y0 + s, x0:x0 + s] = 255
                    Image.fromarray(m).save(os.path.join(md, f"img_{i}.png"))
    return root


def pretrain_args(method: str = "byol", seed: int = 5, dataset: str = "custom", train_path: Optional[str] = None,
                  masks_root: Optional[str] = None, max_epochs: int = 3) -> dict:
    """A resolved pretraining config (what args.json holds) for a width-8 resnet18 at 32 px."""
    from omegaconf import OmegaConf

    from harl.config import parse_cfg
    from tests.conftest import tiny_cfg

    over = {"data.dataset": dataset, "data.train_path": train_path, "data.num_classes": 3, "seed": seed,
            "max_epochs": max_epochs}
    if masks_root is not None:
        over["data.masks"] = {"enabled": True, "root": masks_root, "min_fg_frac": None}
    args = OmegaConf.to_container(parse_cfg(tiny_cfg(method, **over)), resolve=True)
    args["wandb_run_id"] = None
    return args


def fake_pretrain_run(root: str, method: str = "byol", seed: int = 5, version: Optional[str] = None,
                      **args_kw) -> Tuple[str, str]:
    """``<root>/trained_models/<method>/<version>/`` with args.json and a checkpoint holding a
    (seeded, random) ``backbone.*``; returns (run_dir, ckpt_path)."""
    from harl.backbones import build_backbone

    version = version or f"offline-{method}{seed}"
    run_dir = os.path.join(root, "trained_models", method, version)
    os.makedirs(run_dir, exist_ok=True)
    args = pretrain_args(method, seed, **args_kw)
    with open(os.path.join(run_dir, "args.json"), "w") as f:
        json.dump(args, f)
    torch.manual_seed(seed)
    bb = build_backbone("resnet18", width=8, cifar_stem=args["data"]["dataset"] in ("cifar10", "fashion_scenes"))
    ckpt = os.path.join(run_dir, f"{args['name']}-{version}-ep={args['max_epochs'] - 1}.ckpt")
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in bb.state_dict().items()}}, ckpt)
    return run_dir, ckpt


def write_metrics_csv(run_dir: str, loss_name: str, losses: Sequence[float], val_acc: Sequence[float],
                      knn_acc: Sequence[float], steps_per_epoch: int = 2) -> str:
    """A metrics.csv shaped like Lightning's CSVLogger output: per-step rows with ``*_step``
    columns, an end-of-epoch row with ``*_epoch`` columns, a validation row with ``val_*``."""
    cols = ["epoch", "step", f"{loss_name}_step", f"{loss_name}_epoch", "train_class_loss_step",
            "train_acc1_epoch", "val_acc1", "val_acc5", "val_knn_acc1", "lr-LARS/backbone"]
    rows: List[Dict[str, object]] = []
    step = 0
    for ep, (loss, acc, knn) in enumerate(zip(losses, val_acc, knn_acc)):
        for _ in range(steps_per_epoch):
            rows.append({"epoch": ep, "step": step, f"{loss_name}_step": loss + 0.1, "train_class_loss_step": 2.0,
                         "lr-LARS/backbone": 0.1})
            step += 1
        rows.append({"epoch": ep, "step": step - 1, "val_acc1": acc, "val_acc5": min(100.0, acc + 20),
                     "val_knn_acc1": knn})
        rows.append({"epoch": ep, "step": step - 1, f"{loss_name}_epoch": loss, "train_acc1_epoch": acc / 2})
    path = os.path.join(run_dir, "metrics.csv")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    return path
