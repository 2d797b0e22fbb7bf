"""The quickstart: build the demo set, pretrain, evaluate against random init, report.

Run through ``bash scripts/quickstart.sh`` (which also creates the virtual environment), or
directly with ``python -m harl.quickstart``. Every step is resumable: re-running skips the demo
set if it is complete, continues an interrupted pretraining and reuses cached features.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Dict, List, Optional

from harl.utils.io import atomic_write_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = os.path.join(ROOT, "scripts", "pretrain", "fashion-scenes")

#: chosen by measurement on 2 CPU cores (docs/benchmarks.md, "Quickstart budget")
DEFAULTS = {"method": "harl", "epochs": 6, "train": 10000, "test": 2000, "size": 32, "width": 16,
            "batch": 256, "workers": 2}
#: demo-set parameters that differ from the generator's defaults (docs/benchmarks.md, "Diagnosis")
DEMO_SCENES: Dict[str, object] = {}


def _say(msg: str) -> None:
    print(f"[quickstart {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def find_fashion_mnist(explicit: Optional[str], out: str) -> str:
    """The folder holding Fashion-MNIST's IDX files: explicit, $HARL_FASHION_MNIST, Debian's package,
    or a torchvision download into ``<out>/fashion-mnist`` (needs a network)."""
    # lazy: keeps the command's start-up light
    from harl.data.fashion_mnist import DEFAULT_ROOT, find_fashion_mnist_files

    candidates = [explicit, os.environ.get("HARL_FASHION_MNIST"), DEFAULT_ROOT, os.path.join(out, "fashion-mnist")]
    for root in [c for c in candidates if c]:
        try:
            find_fashion_mnist_files(root, "train")
            find_fashion_mnist_files(root, "test")
            return root
        except FileNotFoundError:
            continue
    if explicit:
        raise FileNotFoundError(f"no Fashion-MNIST IDX files in --fashion-mnist '{explicit}'")
    target = os.path.join(out, "fashion-mnist")
    _say(f"Fashion-MNIST not found locally; downloading it with torchvision into {target}")
    try:
        import torchvision

        for train in (True, False):
            torchvision.datasets.FashionMNIST(target, train=train, download=True)
    except Exception as err:  # noqa: BLE001 - turned into one actionable message
        raise FileNotFoundError(
            "Fashion-MNIST is needed for the demo set and could not be found or downloaded "
            f"({err}). Install Debian's package (apt-get install dataset-fashion-mnist), or pass "
            "--fashion-mnist DIR with the four IDX files.") from err
    return target


def scene_params(args) -> Dict[str, object]:
    """The demo set's parameters: the generator's defaults, :data:`DEMO_SCENES`, ``--scene`` options."""
    import yaml

    out: Dict[str, object] = dict(DEMO_SCENES)
    for item in args.scene:
        key, sep, value = item.partition("=")
        if not sep or key in ("n_train", "n_test", "size", "seed"):
            raise SystemExit(f"quickstart: --scene {item!r}: expected KEY=VALUE with a demo-set parameter other "
                             f"than the ones with their own option (--train, --test, --size, --data-seed)")
        out[key] = yaml.safe_load(value)
    return {**out, "n_train": args.train, "n_test": args.test, "size": args.size, "seed": args.data_seed}


def build_scenes(args, fm_root: str) -> str:
    # lazy: keeps the command's start-up light
    from harl.data.fashion_scenes import FashionScenesParams, generate_fashion_scenes

    out = os.path.join(args.out, "data", "fashion-scenes")
    params = FashionScenesParams.from_dict(scene_params(args))
    _say(f"demo set: {args.train} train / {args.test} test scenes at {args.size} px → {out}")
    generate_fashion_scenes(out, params, workers=args.workers, progress=not args.quiet, fmnist_root=fm_root)
    return out


def pretrain_run(args, scenes: str):
    from harl.config import load_yaml, parse_cfg  # lazy: keeps the command's start-up light
    from harl.train import pretrain  # lazy: keeps the command's start-up light

    over = [f"max_epochs={args.epochs}", f"seed={args.seed}", f"backbone.kwargs.width={args.width}",
            f"optimizer.batch_size={args.batch}", f"data.train_path={scenes}", f"data.val_path={scenes}",
            f"data.num_workers={args.workers}", f"checkpoint.dir={os.path.join(args.out, 'trained_models')}",
            "auto_resume.enabled=True", f"enable_progress_bar={not args.quiet}"] + list(args.override)
    cfg = parse_cfg(load_yaml(os.path.join(RECIPES, f"{args.method}.yaml"), over))
    _say(f"pretraining {args.method} for {args.epochs} epochs (ResNet-18 width {args.width}, batch {args.batch})")
    return pretrain(cfg)


def evaluate(args, scenes: str, ckpt: Optional[str]) -> Dict[str, float]:
    from harl.eval.knn_probe import knn_eval  # lazy: keeps the command's start-up light
    from harl.eval.linear import linear_probe  # lazy: keeps the command's start-up light

    common = dict(dataset="fashion_scenes", train_path=scenes, val_path=scenes, progress=not args.quiet,
                  out_dir=os.path.join(args.out, "eval"), seed=args.seed)
    arch = {} if ckpt else {"backbone": "resnet18", "backbone_kwargs": {"width": args.width, "cifar_stem": True},
                            "random_init": True}
    lin = linear_probe(ckpt, protocol="cached", head_norm="batchnorm", **arch, **common)
    knn = knn_eval(ckpt, **arch, **common)
    return {"linear_top1": float(lin["top1"]), "knn_top1": float(knn["top1"]),
            "results": [lin["results_path"], knn["results_path"]]}


def print_table(rows: List[Dict]) -> str:
    lines = ["", "| backbone | linear top-1 (%) | kNN top-1 (%) |", "|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['linear_top1']:.1f} | {r['knn_top1']:.1f} |")
    if len(rows) == 2:  # pretrained and random init: the gain pretraining bought
        gain = {k: rows[0][k] - rows[1][k] for k in ("linear_top1", "knn_top1")}
        lines.append(f"| **gain over random init** | **{gain['linear_top1']:+.1f}** | **{gain['knn_top1']:+.1f}** |")
    text = "\n".join(lines)
    print(text)
    return text


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="quickstart", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Builds the demo set fashion-scenes, pretrains a method on it, evaluates the frozen "
                    "backbone (linear probe and kNN) against the same backbone at random init, prints a table "
                    "and writes a report with plots (loss curves, example views with their masks).")
    ap.add_argument("--out", default="quickstart_out", help="output folder (data, runs, report)")
    ap.add_argument("--method", default=DEFAULTS["method"],
                    choices=sorted(f[:-5] for f in os.listdir(RECIPES) if f.endswith(".yaml")),
                    help="method recipe from scripts/pretrain/fashion-scenes/")
    ap.add_argument("--epochs", type=int, default=DEFAULTS["epochs"], help="pretraining epochs")
    ap.add_argument("--train", type=int, default=DEFAULTS["train"], help="training scenes")
    ap.add_argument("--test", type=int, default=DEFAULTS["test"], help="test scenes")
    ap.add_argument("--size", type=int, default=DEFAULTS["size"], help="scene size in pixels")
    ap.add_argument("--width", type=int, default=DEFAULTS["width"], help="ResNet-18 base width (64 = standard)")
    ap.add_argument("--batch", type=int, default=DEFAULTS["batch"], help="batch size")
    ap.add_argument("--workers", type=int, default=DEFAULTS["workers"], help="data loader / generator processes")
    ap.add_argument("--seed", type=int, default=0, help="training and evaluation seed")
    ap.add_argument("--data-seed", type=int, default=0, help="seed of the demo set")
    ap.add_argument("--scene", action="append", default=[], metavar="KEY=VALUE",
                    help=f"demo-set parameter (harl-scenes' knobs, e.g. bg_contrast=0.5); preset: {DEMO_SCENES or 'none'}")
    ap.add_argument("--fashion-mnist", default=None, help="folder with Fashion-MNIST's IDX files")
    ap.add_argument("--no-baseline", action="store_true", help="skip the random-init evaluation")
    ap.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                    help="extra pretraining config override (repeatable), e.g. --override optimizer.lr=0.5")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap.parse_args(argv)


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and its finished children (loader workers...)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv=None) -> int:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    os.environ.setdefault("WANDB_MODE", "offline")
    t0, cpu0 = time.time(), cpu_seconds()
    fm = find_fashion_mnist(args.fashion_mnist, args.out)
    scenes = build_scenes(args, fm)
    run = pretrain_run(args, scenes)
    _say(f"run folder: {run.run_dir}")
    rows = []
    _say("evaluating the pretrained backbone (cached linear probe, kNN k=20)")
    rows.append({"name": f"{args.method}, {args.epochs} epochs", **evaluate(args, scenes, run.last_checkpoint)})
    if not args.no_baseline:
        _say("evaluating the same backbone at random init")
        rows.append({"name": "random init (same architecture)", **evaluate(args, scenes, None)})
    table = print_table(rows)

    from harl.report import make_report  # lazy: keeps the command's start-up light

    report_dir = os.path.join(args.out, "report")
    paths = [run.run_dir] + [p for r in rows for p in r["results"]]
    files = make_report(paths, report_dir, title="harl quickstart", data_path=scenes)
    summary = {"method": args.method, "epochs": args.epochs, "rows": rows, "run_dir": run.run_dir,
               "checkpoint": run.last_checkpoint, "minutes": round((time.time() - t0) / 60, 1),
               "cpu_seconds": round(cpu_seconds() - cpu0), "load_avg_1min": round(os.getloadavg()[0], 2),
               "seed": args.seed, "scenes": scene_params(args)}
    atomic_write_text(os.path.join(args.out, "results.json"), json.dumps(summary, indent=2))
    atomic_write_text(os.path.join(args.out, "results.md"), table.strip() + "\n")
    _say(f"done in {summary['minutes']} min wall, {summary['cpu_seconds']} CPU s "
         f"(load average {summary['load_avg_1min']}). Results: {os.path.join(args.out, 'results.md')}; "
         f"report and plots: {files.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
