"""Method comparisons on fashion-scenes: same data, same budget, several seeds, frozen-backbone probes.

    python benchmarks/quality.py --compare harl --mode cpu --out runs/quality-harl      # ≈ 2 h, 2 CPU cores
    python benchmarks/quality.py --compare hapicl --mode cpu --epochs 6 --out runs/quality-hapicl
    python benchmarks/quality.py --compare sgm --mode cpu --epochs 6 --out runs/quality-sgm
    python benchmarks/quality.py --compare harl --mode gpu --out runs/quality-gpu       # larger budget, one GPU
    python benchmarks/quality.py --seeds 0 --epochs 1 --train 512 --test 256 --out /tmp/q   # smoke run

Comparisons (``--compare``; ``--methods`` picks any subset of rows):

- ``harl`` (issue: HARL beats BYOL): ``random`` (the same backbone at random init: the floor every
  method must beat), ``byol``, ``harl_gt`` (HARL with the ground-truth silhouettes) and ``harl_felz``
  (HARL with masks made by ``harl-masks felzenszwalb``; their IoU against the ground truth is
  reported); probes: linear, kNN.
- ``hapicl`` (pixel-level training helps dense prediction): ``random``, ``simclr``, ``hapicl_simclr``;
  probes: linear, kNN and the dense fg/bg probe (mIoU).
- ``sgm`` (saliency-guided masking helps MoCo v2+): ``random``, ``mocov2plus``, ``sgm_mocov2``;
  probes: linear, kNN (an ``hp`` SGM checkpoint is probed on high-passed images automatically).

Every method runs its recipe in scripts/pretrain/fashion-scenes/ with the budget of ``--mode``
(data size, width, epochs, batch) applied to all alike. Probes: the cached linear probe (BatchNorm
without affine before the head), kNN (k 20, cosine, T 0.07) and, where listed, the dense probe of
``harl.eval``. Everything is resumable: finished (method, seed) cells are read back from
``<out>/results.jsonl``, an interrupted pretraining auto-resumes. The table (mean ± std over seeds and
per-seed differences to the base method) is printed and written to ``<out>/results.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

RECIPES = os.path.join(ROOT, "scripts", "pretrain", "fashion-scenes")
#: comparison → (rows, base method for the paired differences, probes)
#: every comparison also runs ``random`` (the floor) and ``supervised`` (the ceiling)
COMPARISONS = {
    "harl": (("byol", "harl_gt", "harl_felz"), "byol", ("linear", "knn")),
    "hapicl": (("simclr", "hapicl_simclr"), "simclr", ("linear", "knn", "dense")),
    "hapicl_mocov2plus": (("mocov2plus", "hapicl_mocov2plus"), "mocov2plus", ("linear", "knn", "dense")),
    "hapicl_byol": (("byol", "hapicl_byol"), "byol", ("linear", "knn", "dense")),
    "sgm": (("mocov2plus", "sgm_mocov2"), "mocov2plus", ("linear", "knn")),
    "sgm_simclr": (("simclr", "sgm_simclr"), "simclr", ("linear", "knn")),
    "baselines": (("byol", "simclr", "mocov2plus"), "byol", ("linear", "knn")),
}
FLOOR, CEILING = "random", "supervised"
#: test split with the test scenes on background photos never used for training
UNSEEN_SPLIT = "test_unseen_photo"
COMPARISONS = {k: ((FLOOR, CEILING) + rows, base, probes) for k, (rows, base, probes) in COMPARISONS.items()}
METHODS = tuple(dict.fromkeys(m for rows, _, _ in COMPARISONS.values() for m in rows))

#: budgets: (scenes train/test, image size, ResNet-18 width, epochs, batch, extra trainer overrides)
MODES = {
    "cpu": {"train": 10000, "test": 2000, "size": 32, "width": 16, "epochs": 12, "batch": 256,
            "workers": 2, "overrides": ["accelerator=cpu", "precision=32-true"]},
    "gpu": {"train": 60000, "test": 10000, "size": 32, "width": 64, "epochs": 100, "batch": 256,
            "workers": 8, "overrides": ["accelerator=gpu", "precision=bf16-mixed"]},
}


def log(msg: str) -> None:
    print(f"[quality {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build_data(args) -> str:
    from harl.data.fashion_scenes import FashionScenesParams, generate_fashion_scenes

    out = os.path.join(args.out, "fashion-scenes")
    if not os.path.isfile(os.path.join(out, "meta.json")):
        log(f"building fashion-scenes ({args.train} train / {args.test} test, {args.size} px) in {out}")
    variants = () if args.no_unseen else ("unseen_photo",)
    params = FashionScenesParams(n_train=args.train, n_test=args.test, size=args.size, seed=args.data_seed,
                                 test_variants=variants, **scene_overrides(args.scene))
    generate_fashion_scenes(out, params, workers=max(1, args.workers), progress=False, fmnist_root=args.fashion_mnist)
    return out


def scene_overrides(items: List[str]) -> Dict[str, object]:
    """``--scene key=value`` options as FashionScenesParams keyword arguments (values parsed as YAML:
    ``scale=[0.5,0.9]``, ``background=plain``, ``photos=[astronaut,coffee]``)."""
    import dataclasses

    import yaml

    from harl.data.fashion_scenes import FashionScenesParams

    known = {f.name for f in dataclasses.fields(FashionScenesParams)}
    out: Dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in known - {"n_train", "n_test", "size", "seed"}:
            raise SystemExit(f"--scene {item!r}: expected key=value with key one of "
                             f"{', '.join(sorted(known - {'n_train', 'n_test', 'size', 'seed'}))}")
        out[key] = yaml.safe_load(value)
    return out


def build_felz_masks(args, scenes: str) -> Dict[str, float]:
    """Heuristic masks for the train split (+ their quality against the ground truth)."""
    from harl.masks.evaluate import evaluate_trees

    out = os.path.join(args.out, "masks-felzenszwalb", "train")
    cmd = [sys.executable, "-m", "harl.cli.masks", "felzenszwalb", "--images",
           os.path.join(scenes, "images", "train"), "--out", out, "--workers", str(args.workers), "--no-progress"]
    if not os.path.isfile(os.path.join(out, "summary.json")):
        log("making felzenszwalb masks for the train split")
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    res = evaluate_trees(out, os.path.join(scenes, "masks", "train"))
    mean = res.mean()
    return {"felz_iou": mean["iou"], "felz_precision": mean["precision"], "felz_recall": mean["recall"]}


def pretrain_cfg(args, method: str, seed: int, scenes: str):
    from harl.config import load_yaml, parse_cfg

    recipe = "harl.yaml" if method.startswith("harl_") else f"{method}.yaml"
    over = [
        f"name=quality-{method}-s{seed}", f"seed={seed}", f"max_epochs={args.epochs}",
        f"backbone.kwargs.width={args.width}", f"optimizer.batch_size={args.batch}",
        f"data.train_path={scenes}", f"data.val_path={scenes}", f"data.num_workers={args.workers}",
        f"checkpoint.dir={os.path.join(args.out, 'trained_models', method)}", "auto_resume.enabled=True",
        "enable_progress_bar=False", "enable_model_summary=False", "knn_eval.enabled=True",
        "scheduler.warmup_epochs=1",
    ] + list(args.trainer_overrides)
    if method == "harl_felz":
        over.append(f"data.masks.root={os.path.join(args.out, 'masks-felzenszwalb', 'train')}")
    over += list(args.override)
    return parse_cfg(load_yaml(os.path.join(RECIPES, recipe), over))


def evaluate(args, scenes: str, ckpt: Optional[str], seed: int) -> Dict[str, float]:
    from harl.eval.dense import dense_probe
    from harl.eval.knn_probe import knn_eval
    from harl.eval.linear import linear_probe

    common = dict(dataset="fashion_scenes", train_path=scenes, val_path=scenes, progress=False,
                  out_dir=os.path.join(args.out, "eval"), overrides={"data.num_workers": args.workers})
    arch = {} if ckpt else {"backbone": "resnet18", "backbone_kwargs": {"width": args.width, "cifar_stem": True},
                            "random_init": True}
    lin = linear_probe(ckpt, protocol="cached", head_norm="batchnorm", max_epochs=args.probe_epochs, seed=seed,
                       **arch, **common)
    knn = knn_eval(ckpt, seed=seed, **arch, **common)
    out = {"linear_top1": float(lin["top1"]), "knn_top1": float(knn["top1"])}
    unseen = os.path.join(scenes, "images", UNSEEN_SPLIT)
    if os.path.isdir(unseen) and not args.no_unseen:  # the same probes, tested on scenes whose backgrounds training never saw
        u = dict(common, val_path=unseen)
        out["unseen_linear_top1"] = float(linear_probe(ckpt, protocol="cached", head_norm="batchnorm",
                                                       max_epochs=args.probe_epochs, seed=seed, **arch, **u)["top1"])
        out["unseen_knn_top1"] = float(knn_eval(ckpt, seed=seed, **arch, **u)["top1"])
    if "dense" in args.probes:
        dense = dense_probe(ckpt, seed=seed, head_norm="batchnorm", **arch, **common)
        out.update({"dense_miou": float(dense["miou"]), "dense_iou_fg": float(dense["iou_fg"])})
    return out


def load_results(path: str) -> Dict[tuple, dict]:
    rows = {}
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    rows[(r["method"], r["seed"])] = r
    return rows


#: per-epoch curves read back from a run's metrics.csv: the online classifier and the kNN monitor
CURVE_KEYS = ("val_acc1", "val_knn_acc1")


def read_curves(run_dir: str) -> Dict[str, List[float]]:
    """Epoch-level validation curves of one pretraining run (``metrics.csv`` of its CSV logger).

    Returns ``{"epoch": [...], "val_acc1": [...], "val_knn_acc1": [...]}`` (a key is missing when the
    run never logged it). For ``supervised`` ``val_acc1`` is the trained classifier itself; for the
    SSL methods it is the online linear probe on detached features.
    """
    import csv

    path = os.path.join(run_dir, "metrics.csv")
    by_epoch: Dict[int, Dict[str, float]] = {}
    if os.path.isfile(path):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("epoch") in (None, ""):
                    continue
                for key in CURVE_KEYS:
                    if row.get(key) not in (None, ""):
                        by_epoch.setdefault(int(float(row["epoch"])), {})[key] = float(row[key])
    epochs = sorted(by_epoch)
    out: Dict[str, List[float]] = {"epoch": [e + 1 for e in epochs]}
    for key in CURVE_KEYS:
        if epochs and all(key in by_epoch[e] for e in epochs):
            out[key] = [by_epoch[e][key] for e in epochs]
    return out


def run_cell(args, method: str, seed: int, scenes: str) -> dict:
    import torch

    from harl.train import pretrain

    torch.manual_seed(seed)
    t0 = time.time()
    ckpt, curves = None, {}
    if method != FLOOR:
        log(f"pretraining {method}, seed {seed}, {args.epochs} epochs")
        res = pretrain(pretrain_cfg(args, method, seed, scenes))
        ckpt = res.last_checkpoint
        curves = read_curves(res.run_dir)
    t1 = time.time()
    cpu0 = time.process_time()
    log(f"evaluating {method}, seed {seed}")
    metrics = evaluate(args, scenes, ckpt, seed)
    return {"method": method, "seed": seed, **metrics, "pretrain_s": round(t1 - t0, 1),
            "eval_s": round(time.time() - t1, 1), "checkpoint": ckpt, "curves": curves,
            "load_avg": round(os.getloadavg()[0], 2), "eval_cpu_s": round(time.process_time() - cpu0, 1)}


def gap_closed(value: float, floor: float, ceiling: float) -> Optional[float]:
    """Fraction of the floor→ceiling gap a method closes: (value − floor) / (ceiling − floor).

    0 = no better than a random-init backbone, 1 = as good as training with labels; None when the
    ceiling does not lie above the floor (the fraction would be meaningless).
    """
    if ceiling <= floor:
        return None
    return (value - floor) / (ceiling - floor)


def plot_curves(rows: List[dict], methods: List[str], path: str) -> Optional[str]:
    """One panel per curve key: seed-mean per-epoch curve of every method (a PNG at ``path``)."""
    series = {}
    for m in methods:
        runs = [r["curves"] for r in rows if r["method"] == m and r.get("curves", {}).get("epoch")]
        for key in CURVE_KEYS:
            ok = [c for c in runs if key in c]
            if ok:
                n = min(len(c["epoch"]) for c in ok)
                series.setdefault(key, {})[m] = (ok[0]["epoch"][:n],
                                                 [statistics.fmean(c[key][i] for c in ok) for i in range(n)])
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {"val_acc1": "online classifier top-1 (val)", "val_knn_acc1": "kNN top-1 (val)"}
    fig, axes = plt.subplots(1, len(series), figsize=(5.5 * len(series), 4), squeeze=False)
    for ax, (key, by_m) in zip(axes[0], sorted(series.items())):
        for m, (ep, ys) in by_m.items():
            ax.plot(ep, ys, marker="o", ms=3, label=m)
        ax.set_title(titles.get(key, key))
        ax.set_xlabel("epoch")
        ax.set_ylabel("top-1 %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def summarize(rows: List[dict], extra: Dict[str, float], args) -> str:
    cols = [("linear_top1", "linear top-1"), ("knn_top1", "kNN top-1")]
    if any("unseen_linear_top1" in r for r in rows):
        cols += [("unseen_linear_top1", "linear, unseen bg"), ("unseen_knn_top1", "kNN, unseen bg")]
    if "dense" in args.probes:
        cols += [("dense_miou", "dense mIoU"), ("dense_iou_fg", "dense fg IoU")]
    lines = [f"fashion-scenes {args.train}/{args.test} at {args.size} px; ResNet-18 width {args.width}, CIFAR stem; "
             f"{args.epochs} epochs, batch {args.batch}; seeds {args.seeds}; mode {args.mode}", ""]
    lines.append("| method | " + " | ".join(c for _, c in cols) + " | seeds | pretrain min/run |")
    lines.append("|---|" + "---|" * len(cols) + "---|---|")
    by: Dict[str, List[dict]] = {}
    for r in rows:
        by.setdefault(r["method"], []).append(r)

    def ms(vals):
        return f"{statistics.fmean(vals):.2f} ± {statistics.stdev(vals):.2f}" if len(vals) > 1 else f"{vals[0]:.2f}"

    def mean_of(m, key):
        rs = by.get(m, [])
        return statistics.fmean(r[key] for r in rs) if rs and all(key in r for r in rs) else None

    for m in args.methods:
        if m in by:
            rs = by[m]
            cells = [ms([r[k] for r in rs]) if all(k in r for r in rs) else "–" for k, _ in cols]
            label = {FLOOR: f"{m} (floor)", CEILING: f"{m} (ceiling)"}.get(m, m)
            lines.append(f"| {label} | " + " | ".join(cells) +
                         f" | {len(rs)} | {statistics.fmean(r['pretrain_s'] for r in rs) / 60:.1f} |")
    if FLOOR in by and CEILING in by:
        lines.append("\nfraction of the floor→ceiling gap closed, (method − floor) / (ceiling − floor), on seed means:")
        lines.append("\n| method | " + " | ".join(c for _, c in cols) + " |")
        lines.append("|---|" + "---|" * len(cols))
        for m in args.methods:
            if m in (FLOOR, CEILING) or m not in by:
                continue
            cells = []
            for key, _ in cols:
                v, lo, hi = mean_of(m, key), mean_of(FLOOR, key), mean_of(CEILING, key)
                g = gap_closed(v, lo, hi) if None not in (v, lo, hi) else None
                cells.append("–" if g is None else f"{g:.2f}")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        # the margin the learning-evidence target asks for: beat the floor by > 2 × the larger seed std
        for m in args.methods:
            if m in (FLOOR, CEILING) or m not in by or len(by[m]) < 2 or len(by[FLOOR]) < 2:
                continue
            verdicts = []
            for key, name in cols[:2]:
                if not all(key in r for r in by[m] + by[FLOOR]):
                    continue
                sd = max(statistics.stdev(r[key] for r in by[m]), statistics.stdev(r[key] for r in by[FLOOR]))
                lo = mean_of(FLOOR, key)
                every = all(r[key] - lo > 2 * sd for r in by[m])
                verdicts.append(f"{name} {mean_of(m, key) - lo:+.2f} vs 2·sd {2 * sd:.2f} "
                                f"({'every seed above' if every else 'NOT every seed above'})")
            if verdicts:
                lines.append(f"\n{m} − floor: " + "; ".join(verdicts))
    base = args.base
    for m in args.methods:
        if m in (FLOOR, CEILING, base) or m not in by or base not in by:
            continue
        seeds = sorted({r["seed"] for r in by[m]} & {r["seed"] for r in by[base]})
        if not seeds:
            continue
        diffs = []
        for key, name in cols:
            d = [next(r[key] for r in by[m] if r["seed"] == s) - next(r[key] for r in by[base] if r["seed"] == s)
                 for s in seeds if key in by[m][0] and key in by[base][0]]
            if d:
                diffs.append(f"{name} {[round(x, 2) for x in d]} (mean {statistics.fmean(d):+.2f})")
        lines.append(f"\n{m} − {base} per seed {seeds}: " + "; ".join(diffs))
    if extra:
        lines.append("\nfelzenszwalb masks vs ground truth (train split, per-image mean): "
                     + ", ".join(f"{k.split('_', 1)[1]} {v:.3f}" for k, v in extra.items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compare", choices=sorted(COMPARISONS), default="harl")
    ap.add_argument("--mode", choices=sorted(MODES), default="cpu")
    ap.add_argument("--out", default="runs/quality")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", choices=METHODS, help="rows (default: the comparison's)")
    ap.add_argument("--train", type=int, help="train scenes (mode default)")
    ap.add_argument("--test", type=int, help="test scenes (mode default)")
    ap.add_argument("--size", type=int)
    ap.add_argument("--width", type=int, help="ResNet-18 base width")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--workers", type=int)
    ap.add_argument("--probe-epochs", type=int, default=100, help="epochs of the cached linear probe")
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--fashion-mnist", default=None, help="folder of the Fashion-MNIST IDX files")
    ap.add_argument("--override", action="append", default=[], help="extra pretraining override key=value")
    ap.add_argument("--no-unseen", action="store_true",
                    help="skip the unseen-backgrounds test split (quicker; diagnosis runs)")
    ap.add_argument("--scene", action="append", default=[], metavar="KEY=VALUE",
                    help="demo-set parameter (FashionScenesParams), e.g. --scene scale=[0.5,0.9]")
    ap.add_argument("--report-only", action="store_true",
                    help="tabulate the finished cells of <out>/results.jsonl; train and evaluate nothing")
    args = ap.parse_args(argv)
    mode = MODES[args.mode]
    for key in ("train", "test", "size", "width", "epochs", "batch", "workers"):
        if getattr(args, key) is None:
            setattr(args, key, mode[key])
    args.trainer_overrides = mode["overrides"]
    rows_default, args.base, args.probes = COMPARISONS[args.compare]
    args.methods = args.methods or list(rows_default)
    os.makedirs(args.out, exist_ok=True)
    os.environ.setdefault("WANDB_MODE", "offline")

    results_path = os.path.join(args.out, "results.jsonl")
    done = load_results(results_path)
    extra: Dict[str, float] = {}
    if not args.report_only:
        scenes = build_data(args)
        extra = build_felz_masks(args, scenes) if "harl_felz" in args.methods else {}
    for seed in args.seeds if not args.report_only else ():
        for method in args.methods:
            if (method, seed) in done:
                continue
            row = run_cell(args, method, seed, scenes)
            done[(method, seed)] = row
            with open(results_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            log(f"{method} seed {seed}: linear {row['linear_top1']:.2f}, kNN {row['knn_top1']:.2f}")
    rows = [r for (m, s), r in done.items() if m in args.methods and s in args.seeds]
    table = summarize(rows, extra, args)
    print(table)
    from harl.utils.io import atomic_write_text

    atomic_write_text(os.path.join(args.out, "results.md"), table + "\n")
    fig = plot_curves(rows, args.methods, os.path.join(args.out, "curves.png"))
    if fig:
        log(f"per-epoch curves: {fig}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
