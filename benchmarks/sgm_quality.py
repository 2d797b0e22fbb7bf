"""SGM quality: fashion-scenes linear probe and kNN, MoCo v2+ vs MoCo v2+ with saliency-guided masking.

For every seed, both methods are pretrained with the *same budget* (epochs, batch, optimiser,
augmentations, backbone, heads, queue; the SGM run adds masking and hard negatives, nothing else)
and evaluated with the project's probes (:func:`harl.eval.linear.linear_probe` on cached features
and :func:`harl.eval.knn_probe.knn_eval`). An ``hp`` SGM checkpoint is probed on high-passed
images automatically (its run config records ``sgm_strategy: hp``); the results record it.

    python benchmarks/sgm_quality.py --preset smoke --seeds 0 --out runs/sgm_quality_smoke   # minutes, CPU
    python benchmarks/sgm_quality.py --preset cpu --seeds 0 1 2 --out runs/sgm_quality_cpu   # hours, CPU
    python benchmarks/sgm_quality.py --preset gpu --seeds 0 1 2 --out runs/sgm_quality_gpu   # one GPU

Presets (override any value with the flags below):

======== ======= ====== ===== ======== ====== ====== ====== ==========
preset   train   test   width batch    epochs queue  probe  device
======== ======= ====== ===== ======== ====== ====== ====== ==========
smoke    256     100    8     64       1      256    3      cpu
cpu      4000    1000   16    128      15     2048   50     cpu
gpu      20000   5000   64    256      100    16384  100    gpu (bf16)
======== ======= ====== ===== ======== ====== ====== ====== ==========

The scenes are generated under ``<out>/fashion-scenes`` unless ``--scenes`` names an existing
tree. Everything is resumable: pretraining auto-resumes from its last epoch checkpoint, finished
(method, seed) entries of ``<out>/results.json`` are skipped, and the file is rewritten atomically
after every run. A ``results.json`` written with other settings is never overwritten (use another
``--out``).

Reported per method: linear top-1 (best of the ``--probe-lrs`` grid, the same grid for both
methods; fashion-scenes has no separate validation split, so the grid is selected on the test
split for both), kNN top-1 (k 20, T 0.07, cosine), mean training-step time; then the paired
difference SGM − MoCo v2+ per seed with its mean and sample standard deviation. The 1k-image test
split alone has a standard error of ~1.5 points: read small differences with care.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import StepTimer  # noqa: E402

PRESETS: Dict[str, Dict[str, Any]] = {
    "smoke": {"n_train": 256, "n_test": 100, "width": 8, "batch": 64, "epochs": 1, "queue": 256,
              "probe_epochs": 3, "proj_hidden": 256, "workers": 0, "accelerator": "cpu", "precision": "32-true"},
    "cpu": {"n_train": 4000, "n_test": 1000, "width": 16, "batch": 128, "epochs": 15, "queue": 2048,
            "probe_epochs": 50, "proj_hidden": 1024, "workers": 2, "accelerator": "cpu", "precision": "32-true"},
    "gpu": {"n_train": 20000, "n_test": 5000, "width": 64, "batch": 256, "epochs": 100, "queue": 16384,
            "probe_epochs": 100, "proj_hidden": 2048, "workers": 8, "accelerator": "gpu", "precision": "bf16-mixed"},
}

#: MoCo v2's weak symmetric views at 32 px (no blur), as the CIFAR / fashion-scenes recipes
AUGMENTATION = {
    "rrc": {"enabled": True, "crop_min_scale": 0.08, "crop_max_scale": 1.0},
    "color_jitter": {"prob": 0.8, "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1},
    "grayscale": {"prob": 0.2}, "gaussian_blur": {"prob": 0.0}, "solarization": {"prob": 0.0},
    "equalization": {"prob": 0.0}, "horizontal_flip": {"prob": 0.5}, "crop_size": 32, "num_crops": 2,
}

#: the SGM settings of scripts/pretrain/fashion-scenes/sgm_mocov2.yaml (32-px filters, 4-px cells)
SGM_KWARGS = {"sgm_strategy": "hp", "hp_kernel": 5, "hp_sigma": 1.0, "fill_blur_kernel": 7, "fill_blur_sigma": 1.5,
              "sgm_saliency": "heuristic_mask", "grid_size": 8, "hard_neg_scale": 2.0, "num_hard_negatives": 1}

METHODS = ("mocov2plus", "sgm_mocov2")


# ---------------------------------------------------------------------------------------------
# configuration


def settings_from_args(args: argparse.Namespace) -> Dict[str, Any]:
    """The preset with the command-line overrides applied (the benchmark's fingerprint)."""
    s = dict(PRESETS[args.preset])
    for key in ("n_train", "n_test", "width", "batch", "epochs", "queue", "probe_epochs", "workers",
                "accelerator", "precision"):
        value = getattr(args, key)
        if value is not None:
            s[key] = value
    s["preset"] = args.preset
    s["probe_lrs"] = [float(v) for v in args.probe_lrs]
    s["sgm"] = dict(SGM_KWARGS, sgm_strategy=args.strategy, sgm_saliency=args.saliency)
    s["scenes"] = os.path.abspath(args.scenes) if args.scenes else None
    if s["queue"] % s["batch"]:
        raise SystemExit(f"--queue {s['queue']} must be divisible by --batch {s['batch']}")
    if s["n_train"] < s["batch"]:
        raise SystemExit(f"--n-train {s['n_train']} is smaller than --batch {s['batch']}")
    return s


def pretrain_cfg(method: str, seed: int, scenes: str, out: str, s: Dict[str, Any]) -> Dict[str, Any]:
    """The raw pretraining config of one run; the two methods differ only in method / method_kwargs
    (and SGM's heuristic_mask source reading the masks, with plain random crops)."""
    kw: Dict[str, Any] = {"proj_hidden_dim": s["proj_hidden"], "proj_output_dim": 128, "temperature": 0.2,
                          "queue_size": s["queue"]}
    masks: Dict[str, Any] = {"enabled": False}
    if method.startswith("sgm"):
        kw.update(s["sgm"])
        if kw["sgm_saliency"] == "heuristic_mask":
            masks = {"enabled": True, "min_fg_frac": None}  # no fg-acceptance crops: the baseline's views
    return {
        "name": f"{method}-s{seed}", "method": method, "seed": int(seed),
        "backbone": {"name": "resnet18", "kwargs": {"width": int(s["width"])}},
        "method_kwargs": kw,
        "momentum": {"base_tau": 0.99, "final_tau": 0.999},
        "data": {"dataset": "fashion_scenes", "train_path": scenes, "val_path": scenes,
                 "num_workers": int(s["workers"]), "masks": masks},
        "augmentations": [copy.deepcopy(AUGMENTATION)],
        "optimizer": {"name": "sgd", "batch_size": int(s["batch"]), "lr": 0.3, "classifier_lr": 0.3,
                      "weight_decay": 1e-4},
        "scheduler": {"name": "warmup_cosine", "warmup_epochs": min(2, max(0, int(s["epochs"]) // 5))},
        "checkpoint": {"enabled": True, "dir": os.path.join(out, "pretrain"), "frequency": 1},
        "auto_resume": {"enabled": True},
        "no_validation": True,
        "max_epochs": int(s["epochs"]), "accelerator": s["accelerator"], "devices": 1,
        "precision": s["precision"],
        "enable_progress_bar": False, "enable_model_summary": False, "log_every_n_steps": 10,
    }


# ---------------------------------------------------------------------------------------------
# results file


def atomic_write_json(path: str, obj: Any) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_results(path: str, settings: Dict[str, Any]) -> Dict[str, Any]:
    if not os.path.isfile(path):
        return {"settings": settings, "runs": {}}
    try:
        with open(path) as f:
            res = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"{path} exists but cannot be read ({err}); move it away or use another --out")
    if res.get("settings") != settings:
        raise SystemExit(f"{path} was written with other settings; use another --out (nothing was changed)\n"
                         f"  file:      {json.dumps(res.get('settings'), sort_keys=True)}\n"
                         f"  requested: {json.dumps(settings, sort_keys=True)}")
    return res


# ---------------------------------------------------------------------------------------------
# one run


def ensure_scenes(out: str, s: Dict[str, Any]) -> str:
    if s["scenes"]:
        return s["scenes"]
    from harl.data.fashion_scenes import FashionScenesParams, generate_fashion_scenes

    root = os.path.join(out, "fashion-scenes")
    generate_fashion_scenes(root, FashionScenesParams(n_train=int(s["n_train"]), n_test=int(s["n_test"]), size=32),
                            workers=max(1, int(s["workers"])), progress=False)
    return root


def run_one(method: str, seed: int, scenes: str, out: str, s: Dict[str, Any]) -> Dict[str, Any]:
    from harl.eval.knn_probe import knn_eval
    from harl.eval.linear import linear_probe
    from harl.train import pretrain

    timer = StepTimer()
    t0 = time.time()
    res = pretrain(pretrain_cfg(method, seed, scenes, out, s), callbacks=[timer.callback])
    pretrain_s = time.time() - t0
    steps = timer.step_times(warmup=min(3, max(0, len(timer.stamps) - 2)))
    ckpt = res.last_checkpoint
    if ckpt is None:
        raise RuntimeError(f"{method} seed {seed}: pretraining wrote no checkpoint under {res.run_dir}")

    accel = "gpu" if s["accelerator"] == "gpu" else "cpu"
    pe = int(s["probe_epochs"])
    common = {"dataset": "fashion_scenes", "train_path": scenes, "val_path": scenes, "progress": False,
              "accelerator": accel, "seed": int(seed)}
    linear: Dict[str, float] = {}
    highpass = None
    for lr in s["probe_lrs"]:
        r = linear_probe(ckpt, protocol="cached", max_epochs=pe, lr=lr, batch_size=256,
                         out_dir=os.path.join(out, "linear"),
                         overrides={"scheduler.lr_decay_steps": [max(1, round(0.6 * pe)), max(1, round(0.8 * pe))],
                                    "cache.dir": os.path.join(out, "feature_cache")}, **common)
        linear[f"{lr:g}"] = float(r["top1"])
        highpass = r["highpass"]
    knn = knn_eval(ckpt, k=20, T=0.07, distance_func="cosine", out_dir=os.path.join(out, "knn"),
                   overrides={"cache.dir": os.path.join(out, "feature_cache")}, **common)
    return {
        "method": method, "seed": int(seed), "checkpoint": ckpt,
        "pretrain_s": round(pretrain_s, 2), "steps": int(res.trainer.global_step),
        "step_s": round(statistics.median(steps), 4) if steps else None,
        "linear_top1_by_lr": linear, "linear_top1": max(linear.values()),
        "knn_top1": float(knn["top1"]), "eval_highpass": highpass,
    }


# ---------------------------------------------------------------------------------------------
# summary


def _mean_std(xs: List[float]) -> Dict[str, Optional[float]]:
    if not xs:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else None, "n": len(xs)}


def summarize(runs: Dict[str, Dict[str, Any]], seeds: List[int]) -> Dict[str, Any]:
    out: Dict[str, Any] = {"methods": {}, "paired": {}}
    for m in METHODS:
        rs = [runs[f"{m}/seed{s}"] for s in seeds if f"{m}/seed{s}" in runs]
        out["methods"][m] = {key: _mean_std([r[key] for r in rs if r.get(key) is not None])
                             for key in ("linear_top1", "knn_top1", "step_s")}
    both = [s for s in seeds if all(f"{m}/seed{s}" in runs for m in METHODS)]
    for key in ("linear_top1", "knn_top1"):
        diffs = [runs[f"sgm_mocov2/seed{s}"][key] - runs[f"mocov2plus/seed{s}"][key] for s in both]
        out["paired"][key] = {**_mean_std(diffs), "per_seed": dict(zip(map(str, both), diffs))}
    ratios = [runs[f"sgm_mocov2/seed{s}"]["step_s"] / runs[f"mocov2plus/seed{s}"]["step_s"] for s in both
              if runs[f"sgm_mocov2/seed{s}"].get("step_s") and runs[f"mocov2plus/seed{s}"].get("step_s")]
    out["paired"]["step_time_ratio"] = _mean_std(ratios)
    return out


def _fmt(d: Dict[str, Optional[float]], digits: int = 2) -> str:
    if d["mean"] is None:
        return "-"
    std = "" if d["std"] is None else f" ± {d['std']:.{digits}f}"
    return f"{d['mean']:.{digits}f}{std} (n={d['n']})"


def print_summary(summary: Dict[str, Any], s: Dict[str, Any]) -> None:
    print(f"\nfashion-scenes ({s['n_train']} train / {s['n_test']} test, 32 px), resnet18 width {s['width']}, "
          f"batch {s['batch']}, {s['epochs']} epochs, linear probe {s['probe_epochs']} epochs (lr grid {s['probe_lrs']})")
    print(f"{'method':<12} | {'linear top-1':<24} | {'kNN top-1':<24} | {'s/step':<20}")
    for m, d in summary["methods"].items():
        print(f"{m:<12} | {_fmt(d['linear_top1']):<24} | {_fmt(d['knn_top1']):<24} | {_fmt(d['step_s'], 3):<20}")
    p = summary["paired"]
    print(f"SGM − MoCo v2+ (paired by seed): linear {_fmt(p['linear_top1'])}, kNN {_fmt(p['knn_top1'])}; "
          f"step-time ratio {_fmt(p['step_time_ratio'], 3)}")


# ---------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="smoke")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", required=True, help="work folder (scenes, runs, results.json)")
    ap.add_argument("--scenes", default=None, help="an existing fashion-scenes tree (else generated under --out)")
    ap.add_argument("--n-train", dest="n_train", type=int)
    ap.add_argument("--n-test", dest="n_test", type=int)
    ap.add_argument("--width", type=int, help="ResNet-18 base width")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--queue", type=int)
    ap.add_argument("--probe-epochs", dest="probe_epochs", type=int)
    ap.add_argument("--probe-lrs", dest="probe_lrs", type=float, nargs="+", default=[0.3, 3.0])
    ap.add_argument("--workers", type=int)
    ap.add_argument("--accelerator", choices=["cpu", "gpu"])
    ap.add_argument("--precision")
    ap.add_argument("--strategy", choices=["hp", "blur", "mean"], default="hp")
    ap.add_argument("--saliency", choices=["heuristic_mask", "online"], default="heuristic_mask")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                    help="run only these (the summary pairs whatever both methods have)")
    args = ap.parse_args(argv)

    s = settings_from_args(args)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    results_path = os.path.join(out, "results.json")
    results = load_results(results_path, s)
    scenes = ensure_scenes(out, s)
    for seed in args.seeds:
        for method in args.methods:
            key = f"{method}/seed{seed}"
            if key in results["runs"]:
                print(f"{key}: done (linear {results['runs'][key]['linear_top1']:.2f}, "
                      f"kNN {results['runs'][key]['knn_top1']:.2f})")
                continue
            print(f"{key}: pretraining {s['epochs']} epochs ...", flush=True)
            results["runs"][key] = run_one(method, seed, scenes, out, s)
            r = results["runs"][key]
            print(f"{key}: linear {r['linear_top1']:.2f} ({r['linear_top1_by_lr']}), kNN {r['knn_top1']:.2f}, "
                  f"{r['step_s']} s/step, high-pass at eval: {r['eval_highpass']['applied']}", flush=True)
            results["summary"] = summarize(results["runs"], args.seeds)
            atomic_write_json(results_path, results)
    results["summary"] = summarize(results["runs"], args.seeds)
    atomic_write_json(results_path, results)
    print_summary(results["summary"], s)
    print(f"\nresults: {results_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
