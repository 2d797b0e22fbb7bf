"""Loader throughput: the mask-aware pretraining loader vs the image-only one on the same images.

Both loaders come from :func:`harl.data.build_pretrain_dataset` / ``build_pretrain_loader`` with
the same config (HARL's asymmetric T / T′ pipelines of docs/augmentation.md at ``--size`` px, two views,
batch ``--batch``); the mask-aware one adds ``data.masks`` (fg acceptance 0.2, 5 tries): it reads a
mask PNG per image, draws crops against it and carries the masks + coords through the collate.
Rounds interleave the two loaders (so machine load hits both alike) for each ``num_workers``
setting; the medians of images/s are reported with their ratio (target ≥ 0.85), and for
``num_workers=0`` also the ratio of images per CPU second of the process (steadier on a shared
machine).

    .venv/bin/python benchmarks/loader_throughput.py --images 1024 --size 64 --batch 64 --workers 0 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
from PIL import Image

from harl.config import parse_cfg
from harl.data import build_pretrain_dataset, build_pretrain_loader


def write_images(root: str, n: int, size: int, classes: int = 10, seed: int = 0) -> None:
    """n RGB PNGs (smooth background + an ellipse object) and their {0,255} masks, ImageFolder layout."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for i in range(n):
        cls = f"c{i % classes}"
        base = rng.uniform(0, 255, 3)
        grad = rng.uniform(-80, 80, 3)
        img = base + grad * xx[..., None]
        cx, cy, rx, ry = rng.uniform(0.25, 0.75), rng.uniform(0.25, 0.75), rng.uniform(0.1, 0.3), rng.uniform(0.1, 0.3)
        fg = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
        img[fg] = rng.uniform(0, 255, 3)
        img += rng.normal(0, 8, img.shape)
        for sub, arr in (("images", np.clip(img, 0, 255).astype(np.uint8)), ("masks", fg.astype(np.uint8) * 255)):
            d = os.path.join(root, sub, cls)
            os.makedirs(d, exist_ok=True)
            Image.fromarray(arr).save(os.path.join(d, f"{i:06d}.png"))


def make_cfg(root: str, size: int, batch: int, workers: int, masks: bool):
    common = {"crop_size": size, "num_crops": 1,
              "color_jitter": {"prob": 0.8, "brightness": 0.4, "contrast": 0.4, "saturation": 0.2, "hue": 0.1},
              "grayscale": {"prob": 0.2}}
    raw = {
        "name": "loader-bench", "method": "byol", "backbone": {"name": "resnet18"},
        "data": {"dataset": "custom", "train_path": os.path.join(root, "images"), "num_workers": workers,
                 "masks": {"enabled": masks, "root": os.path.join(root, "masks") if masks else None}},
        "augmentations": [dict(common, gaussian_blur={"prob": 1.0}),
                          dict(common, gaussian_blur={"prob": 0.1}, solarization={"prob": 0.2})],
        "optimizer": {"name": "lars", "batch_size": batch, "lr": 1.0, "weight_decay": 1e-5},
        "max_epochs": 1, "accelerator": "cpu",
    }
    return parse_cfg(raw)


def one_pass(loader):
    """(images per wall-clock second, images per CPU second of this process) over one full pass of
    ``loader`` (worker start-up included). The CPU rate is only meaningful with num_workers=0,
    where all the work runs in this process; it is less sensitive to other jobs on the machine."""
    n = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for batch in loader:
        n += batch[0].shape[0]
    return n / (time.perf_counter() - t0), n / max(time.process_time() - c0, 1e-9)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--data", default=None, help="reuse/write the synthetic images here (default: a temp dir)")
    args = ap.parse_args(argv)

    tmp = None
    root = args.data
    if root is None:
        tmp = tempfile.TemporaryDirectory(prefix="harl-loader-bench-")
        root = tmp.name
    if not os.path.isdir(os.path.join(root, "images")):
        write_images(root, args.images, args.size)

    print(f"{args.images} images of {args.size} px, batch {args.batch}, 2 views (docs/augmentation.md T/T'), "
          f"{args.rounds} interleaved rounds, medians")
    print(f"{'workers':>7} | {'image-only img/s':>16} | {'mask-aware img/s':>16} | ratio | CPU-time ratio")
    for w in args.workers:
        loaders = {}
        for masks in (False, True):
            cfg = make_cfg(root, args.size, args.batch, w, masks)
            loaders[masks] = build_pretrain_loader(cfg, build_pretrain_dataset(cfg))
        rates = {False: [], True: []}
        cpu = {False: [], True: []}
        for r in range(args.rounds):
            order = (False, True) if r % 2 == 0 else (True, False)
            for masks in order:
                wall_rate, cpu_rate = one_pass(loaders[masks])
                rates[masks].append(wall_rate)
                cpu[masks].append(cpu_rate)
        plain, masked = statistics.median(rates[False]), statistics.median(rates[True])
        cpu_ratio = f"{statistics.median(cpu[True]) / statistics.median(cpu[False]):.3f}" if w == 0 else "-"
        print(f"{w:>7} | {plain:>16.0f} | {masked:>16.0f} | {masked / plain:.3f} | {cpu_ratio}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
