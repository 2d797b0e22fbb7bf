"""``harl-transfer``: the transfer linear protocol on any image-folder dataset.

ℓ2-regularised logistic regression on frozen, cached features; the penalty is chosen on a
validation split (given, or held out from train), then the model is refit on train + val and
evaluated on test (docs/protocols.md)::

    harl-transfer --pretrained trained_models/harl/<version>/<name>-ep=199.ckpt \\
        --train datasets/dtd/train --val datasets/dtd/val --test datasets/dtd/test
    harl-transfer --pretrained backbone.pth --dataset cifar10 --train datasets --test datasets --crop-size 32
"""

from __future__ import annotations

import argparse
import json
import sys

from harl.cli.common import check_args, run_cli
from harl.config_values import Int, Num, Seq

#: types and ranges of the options (checked before any file is read)
ARG_VALUES = {
    "val_fraction": Num(gt=0, lt=1),
    "split_seed": Int(ge=0),
    "crop_size": Int(ge=1, nullable=True),
    "max_iter": Int(ge=1),
    "batch_size": Int(ge=1),
    "num_workers": Int(ge=0),
    "seed": Int(ge=0),
    "penalties": Seq(Num(gt=0), nonempty=True),
}


def build_parser() -> argparse.ArgumentParser:
    from harl.eval.transfer import DEFAULT_PENALTIES  # lazy: keeps the command's start-up light

    p = argparse.ArgumentParser(
        prog="harl-transfer",
        description="Transfer linear evaluation: l2-regularised multinomial logistic regression on frozen features, "
                    "penalty chosen on a validation split, refit on train+val, test top-1.")
    p.add_argument("--pretrained", help="checkpoint (.ckpt/.pth/.pt/.safetensors); its architecture comes from the run's "
                                        "args.json")
    p.add_argument("--random-init", action="store_true",
                   help="evaluate a randomly initialised backbone (the checkpoint's architecture, or --backbone)")
    p.add_argument("--backbone", help="architecture name (overrides the checkpoint's)")
    p.add_argument("--backbone-kwargs", default=None, help='JSON, e.g. \'{"width": 32, "cifar_stem": true}\'')
    p.add_argument("--dataset", default="custom",
                   help="dataset kind: custom (ImageFolder tree, default), cifar10, cifar100, stl10, fashion_mnist, ...")
    p.add_argument("--name", help="a name for the results (default: the dataset / its folder name)")
    p.add_argument("--train", required=True, help="training split (ImageFolder root, or the dataset root)")
    p.add_argument("--val", help="validation split; without it --val-fraction of train is held out")
    p.add_argument("--test", required=True, help="test split (the dataset root for torchvision sets)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="held-out share of train when --val is absent")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--crop-size", type=int, help="evaluation crop (default: the pretraining's)")
    p.add_argument("--resize", action="store_true",
                   help="resize every image to crop-size × crop-size instead of the dataset's evaluation geometry "
                        "(e.g. CIFAR to 224 px for an ImageNet model)")
    p.add_argument("--highpass", choices=["auto", "on", "off"], default="auto",
                   help="high-pass inputs (auto: as the pretraining did)")
    p.add_argument("--metric", choices=["top1", "mean_per_class"], default="top1",
                   help="what the penalty search maximises on val (both are reported on test)")
    p.add_argument("--penalties", default=None,
                   help=f"comma-separated penalties (default: {len(DEFAULT_PENALTIES)} log-spaced values in 1e-6..1e5)")
    p.add_argument("--max-iter", type=int, default=1000, help="L-BFGS iterations per fit")
    p.add_argument("--out", help="output folder (default trained_models/transfer/<name>-<digest>)")
    p.add_argument("--checkpoint-dir", default="trained_models")
    p.add_argument("--cache-dir", help="feature cache (default <checkpoint-dir>/feature_cache)")
    p.add_argument("--no-cache", action="store_true", help="extract features again, write no cache")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--num-workers", type=int, default=4)
    p.add_argument("--device", help="feature extraction device (default cuda if available)")
    p.add_argument("--fit-device", help="logistic regression device (default: --device)")
    p.add_argument("--seed", type=int, default=5, help="seed of a random-init backbone")
    p.add_argument("--skip-corrupt", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    return p


def _transfer(argv) -> None:
    from harl.eval.transfer import DEFAULT_PENALTIES, run_transfer  # lazy: keeps the command's start-up light

    parser = build_parser()
    a = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not a.pretrained and not (a.random_init and a.backbone):
        parser.error("give --pretrained CKPT (or --random-init with --backbone NAME)")
    try:
        penalties = DEFAULT_PENALTIES if a.penalties is None else [float(v) for v in a.penalties.split(",") if v]
        kwargs = json.loads(a.backbone_kwargs) if a.backbone_kwargs else None
    except ValueError as err:
        parser.error(f"bad --penalties / --backbone-kwargs: {err}")
    a.penalties = penalties
    check_args(parser, a, ARG_VALUES)
    res = run_transfer(a.pretrained, a.train, a.test, a.val, dataset=a.dataset, name=a.name,
                       val_fraction=a.val_fraction, split_seed=a.split_seed, crop_size=a.crop_size, resize=a.resize,
                       backbone_name=a.backbone, backbone_kwargs=kwargs, random_init=a.random_init, seed=a.seed,
                       eval_highpass={"auto": None, "on": True, "off": False}[a.highpass], penalties=penalties,
                       metric=a.metric, max_iter=a.max_iter, out_dir=a.out, checkpoint_dir=a.checkpoint_dir,
                       cache_dir=a.cache_dir, use_cache=not a.no_cache, batch_size=a.batch_size,
                       num_workers=a.num_workers, device=a.device, fit_device=a.fit_device,
                       skip_corrupt=a.skip_corrupt, progress=not a.no_progress)
    print(f"results: {res['run_dir']}/results.json")
    print(f"{res['dataset']}: test top-1 {res['top1']:.2f}  mean per-class {res['mean_per_class']:.2f}  "
          f"(penalty {res['penalty']:.3g} chosen on val by {res['metric']})")


def main(argv=None) -> int:
    return run_cli(_transfer, argv)


if __name__ == "__main__":
    sys.exit(main())
