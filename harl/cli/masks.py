"""``harl-masks``: offline mask generation, import, evaluation (docs/masks.md).

Subcommands::

    harl-masks felzenszwalb    --images R --out R [--workers N] [--shard i/n] [generator options]
    harl-masks saliency        --images R --out R --weights HEAD.pt [--checkpoint CKPT] ...
    harl-masks import          --images R --masks SRC --out R [--threshold T]
    harl-masks eval            --pred DIR --gt DIR [--json out.json]
    harl-masks train-saliency  --images R --pseudo-masks R --checkpoint CKPT [--backbone NAME] --out HEAD.pt
    harl-masks merge-manifests OUT

Exit status: 0 success; 1 when ``--strict`` and an image failed, or when every attempted image
failed; 2 for a usage or input error (missing folder, wrong weights, settings that differ from
the existing output's meta.json); 130 when interrupted (finished masks are kept: rerun to resume).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
from typing import Any, Dict, List, Optional, Sequence

from harl.cli.common import check_args, run_cli
from harl.config_values import Int, Num
from harl.errors import UsageError

PROG = "harl-masks"


# ---------------------------------------------------------------------------------------------
# parser
# ---------------------------------------------------------------------------------------------


def _field_type(tp) -> type:
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _field_type(args[0])
    return tp if tp in (int, float, str) else str


def add_params_options(parser: argparse.ArgumentParser, params_cls: type) -> None:
    """One ``--dash-name`` option per dataclass field, with the field's default and help."""
    hints = typing.get_type_hints(params_cls)
    group = parser.add_argument_group(f"{params_cls.__name__} (defaults: docs/masks.md)")
    for f in dataclasses.fields(params_cls):
        meta = f.metadata or {}
        flag = "--" + f.name.replace("_", "-")
        kw: Dict[str, Any] = {"dest": f"param_{f.name}", "type": _field_type(hints[f.name]),
                              "metavar": f.name.upper(),
                              "help": f"{meta.get('help', '')} (default: {f.default})"}
        if meta.get("required"):
            kw["required"] = True
            kw["help"] = meta.get("help", "")
        else:
            kw["default"] = f.default
        group.add_argument(flag, **kw)


def params_from_args(args: argparse.Namespace, params_cls: type):
    return params_cls(**{f.name: getattr(args, f"param_{f.name}") for f in dataclasses.fields(params_cls)})


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _shard(text: str):
    from harl.masks.io import parse_shard  # lazy: keeps the command's start-up light

    try:
        return parse_shard(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_run_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--images", required=True, help="image folder (walked recursively)")
    g.add_argument("--out", required=True, help="output mask folder (same relative paths, .png)")
    g.add_argument("--workers", type=_positive_int, default=1,
                   help="worker processes on this machine (default 1 = in this process)")
    g.add_argument("--shard", type=_shard, default=(0, 1), metavar="I/N",
                   help="process shard I of N (0-based; every N-th image of the sorted list), for cluster arrays")
    g.add_argument("--overwrite", action="store_true", help="redo every image of the shard and replace meta.json")
    g.add_argument("--strict", action="store_true", help="exit with status 1 if any image failed")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    g.add_argument("--file-list", help="text file of image relpaths (one per line) instead of walking --images")
    g.add_argument("--limit", type=_positive_int, help="only the first N images of the sorted list (trial runs)")
    g.add_argument("--chunksize", type=int, default=0, help="images per worker task (0 = automatic)")


def build_parser() -> argparse.ArgumentParser:
    from harl.masks.registry import GENERATORS, load_builtin_generators  # lazy: keeps the command's start-up light

    load_builtin_generators()
    parser = argparse.ArgumentParser(prog=PROG, description="Offline binary foreground masks for mask-guided SSL "
                                     "(one {0,255} PNG per image, same relative path).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in GENERATORS.names():
        spec = GENERATORS.get(name)
        p = sub.add_parser(name, help=spec.description, description=spec.description)
        add_run_options(p)
        add_params_options(p, spec.params_cls)
        p.set_defaults(func=cmd_generate, generator=name)

    p = sub.add_parser("import", help="convert existing masks (any format / value range) into the canonical tree")
    add_run_options(p)
    p.add_argument("--masks", required=True, help="folder of existing masks, mirroring --images")
    p.add_argument("--threshold", type=float, default=0.0, help="fg = stored value > threshold (default 0)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("eval", help="IoU / precision / recall of a mask tree against ground truth")
    p.add_argument("--pred", required=True, help="predicted mask folder")
    p.add_argument("--gt", required=True, help="ground-truth mask folder")
    p.add_argument("--pred-threshold", type=float, default=0.0, help="pred fg = value > this (default 0)")
    p.add_argument("--gt-threshold", type=float, default=0.0, help="gt fg = value > this (default 0)")
    p.add_argument("--json", help="write the results (and the failures) to this JSON file")
    p.add_argument("--per-image-csv", help="write per-image metrics to this CSV file")
    p.add_argument("--workers", type=_positive_int, default=1)
    p.add_argument("--strict", action="store_true", help="exit with status 1 if a prediction is missing")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("train-saliency", help="train the 1×1-conv saliency head on pseudo-masks (backbone frozen)")
    p.add_argument("--images", required=True, help="image folder")
    p.add_argument("--pseudo-masks", required=True, help="mask tree used as targets (e.g. felzenszwalb output)")
    p.add_argument("--out", required=True, help="head file to write (e.g. saliency_head.pt)")
    p.add_argument("--checkpoint", help="backbone checkpoint (solo-learn format, backbone.* keys); "
                                         "without it a random-init backbone is used and stored")
    p.add_argument("--backbone", help="backbone name (default: from the checkpoint's args.json)")
    p.add_argument("--backbone-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                   help="backbone options, e.g. width=8 c5_stride1=true (values parsed as YAML)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--short-side", type=_positive_int, default=320, help="training scale (= inference scale)")
    p.add_argument("--crop", type=_positive_int, help="square training crop (default: --short-side)")
    p.add_argument("--max-images", type=_positive_int, help="train on a seeded random subset of this size")
    p.add_argument("--num-workers", type=int, default=2, help="data-loader workers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--mask-threshold", type=float, default=0.0, help="pseudo-mask fg = value > this")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=cmd_train_saliency)

    p = sub.add_parser("merge-manifests", help="merge the per-shard manifests of OUT into OUT/manifest.csv")
    p.add_argument("out", help="output mask folder of a sharded run")
    p.add_argument("--shards", type=_positive_int, help="shard count N of the layout to check (default: newest)")
    p.set_defaults(func=cmd_merge)
    return parser


# ---------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------


def _relpaths(args) -> List[str]:
    from harl.masks.io import list_files, read_file_list  # lazy: keeps the command's start-up light

    images = os.path.abspath(args.images)
    out = os.path.abspath(args.out)
    if not os.path.isdir(images):
        raise FileNotFoundError(f"image folder '{args.images}' does not exist")
    if out == images or os.path.commonpath([out, images]) == images:
        raise UsageError(f"--out '{args.out}' must not be inside --images '{args.images}' "
                         "(the masks would be read as images)")
    rels = read_file_list(args.file_list) if args.file_list else list_files(images)
    if args.limit:
        rels = rels[:args.limit]
    if not rels:
        raise FileNotFoundError(f"no images found in '{args.images}'")
    return rels


def _run_options(args):
    from harl.masks.runner import RunOptions  # lazy: keeps the command's start-up light

    return RunOptions(workers=args.workers, shard=args.shard, overwrite=args.overwrite,
                      progress=args.progress, chunksize=args.chunksize)


def _finish(summary, args) -> int:
    print(summary.format())
    if summary.merged:
        print(f"  manifest: {os.path.join(summary.out_root, 'manifest.csv')}")
    elif summary.shard[1] > 1:
        print(f"  shard part written; once all {summary.shard[1]} shards are done run "
              f"`{PROG} merge-manifests {args.out}` (done automatically by the last shard to finish)")
    attempted = summary.done + sum(1 for _ in summary.failures)
    if args.strict and summary.failures:
        return 1
    if summary.failures and summary.done == 0 and summary.skipped == 0 and attempted > 0:
        print("error: every image failed", file=sys.stderr)
        return 1
    return 0


def cmd_generate(args) -> int:
    from harl.masks.registry import GENERATORS  # lazy: keeps the command's start-up light
    from harl.masks.runner import ImageGeneratorJob, run_job  # lazy: keeps the command's start-up light

    spec = GENERATORS.get(args.generator)
    params = params_from_args(args, spec.params_cls)
    rels = _relpaths(args)
    meta = {"generator": spec.name, "params": dataclasses.asdict(params)}
    if spec.describe is not None:
        meta.update(spec.describe(params))
    if spec.volatile:
        meta["volatile"] = list(spec.volatile)
    job = ImageGeneratorJob(os.path.abspath(args.images), spec.name, params)
    summary = run_job(job, rels, args.out, _run_options(args), meta=meta)
    return _finish(summary, args)


def cmd_import(args) -> int:
    from harl.masks.importer import FALLBACK_RESIZED, ImportJob  # lazy: keeps the command's start-up light
    from harl.masks.runner import run_job  # lazy: keeps the command's start-up light

    job = ImportJob(os.path.abspath(args.images), os.path.abspath(args.masks), args.threshold)
    rels = _relpaths(args)
    summary = run_job(job, rels, args.out, _run_options(args), meta=job.describe())
    resized = sum(1 for r in summary.rows if r["fallback"] == FALLBACK_RESIZED)
    if resized:
        print(f"warning: {resized} mask(s) had another size than their image and were resized (nearest); "
              "they are marked fallback=resized in the manifest", file=sys.stderr)
    return _finish(summary, args)


def cmd_eval(args) -> int:
    from harl.masks.evaluate import evaluate_trees, write_json  # lazy: keeps the command's start-up light

    if not os.path.isdir(args.gt):
        raise FileNotFoundError(f"ground-truth folder '{args.gt}' does not exist")
    res = evaluate_trees(args.pred, args.gt, args.pred_threshold, args.gt_threshold,
                         workers=args.workers, progress=args.progress)
    print(res.format_table())
    if res.n_resized:
        print(f"warning: {res.n_resized} prediction(s) had another size than the ground truth and were "
              "resized (nearest)", file=sys.stderr)
    if args.json:
        write_json(res, args.json)
        print(f"  results: {args.json}")
    if args.per_image_csv:
        import csv
        import io

        from harl.utils.io import atomic_write_text  # lazy: keeps the command's start-up light

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["relpath", "iou", "precision", "recall", "tp", "fp", "fn", "resized"])
        for r in res.per_image:
            w.writerow([r["relpath"], f"{r['iou']:.6f}", f"{r['precision']:.6f}", f"{r['recall']:.6f}",
                        r["tp"], r["fp"], r["fn"], int(r["resized"])])
        atomic_write_text(args.per_image_csv, buf.getvalue())
    if not res.per_image:
        print("error: no image could be evaluated", file=sys.stderr)
        return 1
    return 1 if (args.strict and res.failures) else 0


def _parse_kwargs(items: Sequence[str]) -> Dict[str, Any]:
    import yaml

    out = {}
    for it in items:
        if "=" not in it:
            raise UsageError(f"--backbone-kwargs expects KEY=VALUE, got '{it}'")
        k, v = it.split("=", 1)
        out[k] = yaml.safe_load(v)
    return out


def cmd_train_saliency(args) -> int:
    # lazy: keeps the command's start-up light
    from harl.masks.saliency_train import SaliencyTrainConfig, train_saliency_head

    cfg = SaliencyTrainConfig(
        images=args.images, pseudo_masks=args.pseudo_masks, out=args.out, backbone=args.backbone,
        backbone_kwargs=_parse_kwargs(args.backbone_kwargs), checkpoint=args.checkpoint, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, short_side=args.short_side,
        crop=args.crop or args.short_side, max_images=args.max_images, num_workers=args.num_workers,
        seed=args.seed, device=args.device, mask_threshold=args.mask_threshold, progress=args.progress)
    rec = train_saliency_head(cfg)
    losses = ", ".join(f"{v:.4f}" for v in rec["epoch_loss"])
    print(f"train-saliency: {rec['pairs']} image/mask pairs ({rec['images_without_mask']} images without a "
          f"pseudo-mask skipped), {rec['steps']} steps; epoch BCE: {losses}")
    print(f"  head: {args.out}")
    return 0


def cmd_merge(args) -> int:
    from harl.masks.runner import format_histogram, merge_manifests  # lazy: keeps the command's start-up light

    s = merge_manifests(args.out, count=args.shards)
    print(f"merged {s['images']} rows from {s['shards']} shard(s) into {os.path.join(args.out, 'manifest.csv')}; "
          f"{s['failed']} failure(s) in failures.tsv")
    if s["missing_shards"]:
        print(f"warning: shard(s) {s['missing_shards']} of {s['shards']} have not finished yet", file=sys.stderr)
    if s["images"]:
        print(format_histogram(s["fg_fraction_histogram"]["counts"]))
    return 1 if s["missing_shards"] else 0


# ---------------------------------------------------------------------------------------------


def _arg_values():
    return {"chunksize": Int(ge=0), "threshold": Num(), "pred_threshold": Num(), "gt_threshold": Num(),
            "mask_threshold": Num(), "epochs": Int(ge=1), "lr": Num(gt=0), "weight_decay": Num(ge=0),
            "num_workers": Int(ge=0), "seed": Int(ge=0)}


def _main(argv: Optional[Sequence[str]]) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    sub = next((a.choices.get(getattr(args, a.dest, None)) for a in parser._actions
                if isinstance(a, argparse._SubParsersAction)), None)
    check_args(sub or parser, args, _arg_values())
    return int(args.func(args) or 0)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Errors as every harl command reports them (:func:`harl.cli.common.run_cli`); here a
    ``ValueError`` / ``KeyError`` from a generator's parameters is an input error too."""
    return run_cli(_main, argv, input_errors=(ValueError, KeyError),
                   interrupted="interrupted; finished masks are kept, rerun the same command to resume",
                   write_hint="finished masks are kept (each is written under a temporary name and renamed), free "
                              "some space and rerun the same command to resume")


if __name__ == "__main__":
    sys.exit(main())
