"""``harl-scenes``: build the fashion-scenes demo dataset (see docs/fashion-scenes.md).

Example::

    harl-scenes --out datasets/fashion-scenes --size 32 --train 10000 --test 2000 --workers 2 --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import List, Optional, Sequence

from harl.cli.common import check_args, run_cli
from harl.data.fashion_mnist import DEFAULT_ROOT
from harl.data.fashion_scenes import (BACKGROUND_STYLES, PHOTOS, TINT_MODES, FashionScenesParams,
                                      generate_fashion_scenes)
from harl.config_values import Int, Num, Seq


def _csv_list(text: str) -> List[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    d = FashionScenesParams()
    p = argparse.ArgumentParser(
        prog="harl-scenes",
        description="Generate fashion-scenes: one Fashion-MNIST item pasted on clutter, with its silhouette "
                    "as the ground-truth mask. Deterministic (same seed and parameters → identical bytes, "
                    "whatever --workers), resumable (rerun to finish an interrupted run).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", required=True, help="output folder (images/, masks/, manifest.csv, meta.json)")
    p.add_argument("--size", type=int, default=d.size, help="image side in pixels")
    p.add_argument("--scale", type=float, nargs=2, metavar=("MIN", "MAX"), default=list(d.scale),
                   help="object side as a fraction of the image side, drawn uniformly per scene")
    p.add_argument("--background", choices=BACKGROUND_STYLES, default=d.background, help="background style")
    p.add_argument("--tint", choices=TINT_MODES, default=d.tint,
                   help="item colour: none = grayscale, palette = a --palette colour independent of the class, "
                        "random = random RGB per scene (an instance shortcut)")
    p.add_argument("--train", type=int, default=d.n_train, dest="n_train", help="number of train scenes")
    p.add_argument("--test", type=int, default=d.n_test, dest="n_test", help="number of test scenes")
    p.add_argument("--seed", type=int, default=d.seed, help="base seed (≥ 0)")
    p.add_argument("--threshold", type=float, default=d.threshold,
                   help="alpha / mask = resized item intensity / 255 > threshold")
    p.add_argument("--bg-crop", type=float, nargs=2, metavar=("MIN", "MAX"), default=list(d.bg_crop),
                   help="background crop side as a fraction of the photo's shorter side (photo only)")
    p.add_argument("--photos", type=_csv_list, default=",".join(d.photos),
                   help="comma-separated skimage.data photos for --background photo; known: "
                        + ", ".join(sorted(PHOTOS)))
    p.add_argument("--palette", type=_csv_list, default=",".join(d.palette),
                   help="comma-separated #rrggbb colours for --tint palette")
    p.add_argument("--test-variants", type=_csv_list, default=",".join(d.test_variants),
                   help="comma-separated background styles for extra test splits test_<style> (same items "
                        "and layout as test), e.g. black,plain,unseen_photo")
    p.add_argument("--unseen-photos", type=_csv_list, default=",".join(d.unseen_photos),
                   help="comma-separated skimage.data photos for the unseen_photo test variant (never "
                        "used for training: must not overlap --photos)")
    p.add_argument("--bg-pool", type=int, default=d.bg_pool,
                   help="0: a fresh background crop per scene; N > 0: backgrounds drawn from a fixed pool of N "
                        "photo crops shared by the train and test splits (the background cannot tell scenes apart)")
    p.add_argument("--bg-contrast", type=float, default=d.bg_contrast,
                   help="clutter strength in [0, 1]: background = mean colour + bg_contrast × (background − mean)")
    p.add_argument("--bg-dim", type=float, default=d.bg_dim,
                   help="background brightness factor in [0, 1] after --bg-contrast (0 = black)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (output does not depend on it)")
    p.add_argument("--fmnist-root", default=None,
                   help=f"folder with the Fashion-MNIST IDX files (None: $HARL_FASHION_MNIST, else {DEFAULT_ROOT})")
    p.add_argument("--force", action="store_true",
                   help="delete an existing tree made with different parameters and regenerate")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _main(argv: Optional[Sequence[str]]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args, {"size": Int(ge=1), "scale": Seq(Num(gt=0, le=1), length=2),
                              "bg_crop": Seq(Num(gt=0, le=1), length=2), "n_train": Int(ge=0), "n_test": Int(ge=0),
                              "seed": Int(ge=0), "threshold": Num(), "workers": Int(ge=1),
                              "bg_pool": Int(ge=0), "bg_contrast": Num(ge=0, le=1),
                              "bg_dim": Num(ge=0, le=1)})
    params = FashionScenesParams(
        size=args.size, scale=tuple(args.scale), background=args.background, tint=args.tint,
        n_train=args.n_train, n_test=args.n_test, seed=args.seed, threshold=args.threshold,
        bg_crop=tuple(args.bg_crop), photos=tuple(args.photos), palette=tuple(args.palette),
        test_variants=tuple(args.test_variants), unseen_photos=tuple(args.unseen_photos), bg_pool=args.bg_pool,
        bg_contrast=args.bg_contrast, bg_dim=args.bg_dim,
    )
    t0 = time.perf_counter()
    meta = generate_fashion_scenes(args.out, params, workers=args.workers, force=args.force,
                                   progress=not args.no_progress, fmnist_root=args.fmnist_root)
    dt = time.perf_counter() - t0
    counts = ", ".join(f"{k} {v}" for k, v in meta["counts"].items())
    print(f"fashion-scenes in {os.path.abspath(args.out)}: {counts} ({dt:.1f} s)")
    print(f"train mean {json.dumps(meta['mean'])} std {json.dumps(meta['std'])} "
          f"fg fraction {meta['fg_fraction_mean']:.4f}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Errors as every harl command reports them (:func:`harl.cli.common.run_cli`); here a
    ``ValueError`` / ``KeyError`` / ``RuntimeError`` from the generator is an input error too."""
    return run_cli(_main, argv, input_errors=(ValueError, KeyError, RuntimeError))


if __name__ == "__main__":
    sys.exit(main())
