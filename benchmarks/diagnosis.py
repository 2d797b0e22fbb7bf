"""Why do the self-supervised baselines barely move off random init at CPU budgets? Small controlled runs.

    python benchmarks/diagnosis.py --list                      # the experiments and what each changes
    python benchmarks/diagnosis.py --run E01 E02 --out runs/diagnosis
    python benchmarks/diagnosis.py --report --out runs/diagnosis

Every experiment is one ``benchmarks/quality.py`` call (own output folder ``<out>/<id>``, resumable)
that changes one thing against a reference budget: fashion-scenes 5,000 train / 2,000 test at 32 px,
ResNet-18 width 16 with the CIFAR stem, batch 256, CPU, seed 0 unless the experiment says otherwise,
rows ``random`` (the floor), the method, and where listed ``supervised`` (the ceiling, same backbone,
data, augmentations and optimiser budget, trained with labels). ``--report`` gathers every finished
experiment into one table (``<out>/diagnosis.md``): linear and kNN top-1 of each row, the method's gain
over the floor and the fraction of the floor→ceiling gap it closes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

#: the reference budget every experiment starts from
BASE = ["--train", "5000", "--test", "2000", "--size", "32", "--width", "16", "--batch", "256",
        "--workers", "2", "--seeds", "0", "--no-unseen"]


def exp(what: str, methods: List[str], epochs: int, *extra: str) -> Dict[str, object]:
    return {"what": what, "methods": methods, "argv": BASE + ["--epochs", str(epochs)] + list(extra)}


#: id → what it changes, rows, quality.py arguments (later arguments override BASE)
EXPERIMENTS: Dict[str, Dict[str, object]] = {
    "E01": exp("reference: today's data and SimCLR recipe, 8 epochs", ["random", "supervised", "simclr"], 8),
    "E02": exp("no clutter: black background (does SimCLR learn at all?)", ["random", "supervised", "simclr"], 8,
               "--scene", "background=black"),
    "E04": exp("shared backgrounds (a pool of 16 photo crops) + crop_min_scale 0.35", ["random", "supervised", "simclr"],
               8, "--scene", "bg_pool=16", "--override", "augmentations.0.rrc.crop_min_scale=0.35"),
    "E06": exp("clutter at half contrast (bg_contrast 0.5)", ["random", "supervised", "simclr"], 8,
               "--scene", "bg_contrast=0.5"),
    "E07": exp("clutter at quarter contrast (bg_contrast 0.25)", ["random", "simclr"], 8,
               "--scene", "bg_contrast=0.25"),
    "E08": exp("larger objects (scale 0.55-0.85) + bg_contrast 0.5 + crop_min_scale 0.25", ["random", "simclr"], 8,
               "--scene", "scale=[0.55,0.85]", "--scene", "bg_contrast=0.5",
               "--override", "augmentations.0.rrc.crop_min_scale=0.25"),
    "E12": exp("control: E01 again from scratch (the jitter override repeats the recipe's 0.8/0.8/0.8/0.2)",
               ["random", "simclr"], 8, *[a for k, v in (("brightness", 0.8), ("contrast", 0.8), ("saturation", 0.8),
                                                          ("hue", 0.2))
                                          for a in ("--override", f"augmentations.0.color_jitter.{k}={v}")]),
    "E10": exp("flat background of one random colour per scene (no texture)", ["random", "simclr"], 8,
               "--scene", "background=plain"),
    "E11": exp("shared backgrounds (pool of 16) at quarter contrast", ["random", "simclr"], 8,
               "--scene", "bg_pool=16", "--scene", "bg_contrast=0.25"),
    "E13": exp("one cluttered background for every scene (bg_pool 1)", ["random", "simclr"], 8,
               "--scene", "bg_pool=1"),
    "E14": exp("shared backgrounds (pool of 4) at half contrast", ["random", "simclr"], 8,
               "--scene", "bg_pool=4", "--scene", "bg_contrast=0.5"),
    "E15": exp("dim clutter: the photo backgrounds at 30 % brightness (bg_dim 0.3)", ["random", "supervised", "simclr"],
               8, "--scene", "bg_dim=0.3"),
}


def run(ids: List[str], out: str, seeds: Optional[List[int]] = None, methods: Optional[List[str]] = None) -> None:
    """Run experiments ``ids`` (resumable: finished (row, seed) cells are kept); ``seeds`` / ``methods``
    replace the experiment's (e.g. more seeds of the rows that matter)."""
    from benchmarks import quality  # noqa: E402 - the benchmark next to this file

    for i in ids:
        e = EXPERIMENTS[i]
        argv = list(e["argv"]) + ["--compare", "baselines", "--methods", *(methods or e["methods"]),
                                  "--out", os.path.join(out, i)]
        if seeds:
            argv += ["--seeds", *map(str, seeds)]
        print(f"[diagnosis {time.strftime('%H:%M:%S')}] {i}: {e['what']}", flush=True)
        quality.main(argv)


def report(out: str) -> str:
    lines = ["| id | what changed | floor lin / kNN | method | lin / kNN | gain lin / kNN | ceiling lin / kNN |"
             " gap closed lin / kNN | seeds | pretrain min |", "|---|---|---|---|---|---|---|---|---|---|"]
    for i, e in EXPERIMENTS.items():
        path = os.path.join(out, i, "results.jsonl")
        if not os.path.isfile(path):
            continue
        rows: Dict[str, List[dict]] = {}
        with open(path) as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    rows.setdefault(r["method"], []).append(r)

        def m(name, key):
            rs = rows.get(name)
            return statistics.fmean(r[key] for r in rs) if rs else None

        def pair(name):
            a, b = m(name, "linear_top1"), m(name, "knn_top1")
            return "–" if a is None else f"{a:.1f} / {b:.1f}"

        def per_seed_gains(meth):
            """Per-seed method − floor (same seed), linear and kNN."""
            floor = {r["seed"]: r for r in rows.get("random", [])}
            return [(r["linear_top1"] - floor[r["seed"]]["linear_top1"], r["knn_top1"] - floor[r["seed"]]["knn_top1"])
                    for r in rows[meth] if r["seed"] in floor]

        for meth in [x for x in e["methods"] if x not in ("random", "supervised")]:
            if meth not in rows:
                continue
            gains, gaps = [], []
            for key in ("linear_top1", "knn_top1"):
                v, lo, hi = m(meth, key), m("random", key), m("supervised", key)
                gains.append("–" if lo is None else f"{v - lo:+.1f}")
                gaps.append("–" if None in (lo, hi) or hi <= lo else f"{(v - lo) / (hi - lo):.2f}")
            mins = statistics.fmean(r["pretrain_s"] for r in rows[meth]) / 60
            seeds = sorted(r["seed"] for r in rows[meth])
            lines.append(f"| {i} | {e['what']} | {pair('random')} | {meth} | {pair(meth)} | {' / '.join(gains)} | "
                         f"{pair('supervised')} | {' / '.join(gaps)} | {','.join(map(str, seeds))} | {mins:.1f} |")
            if len(seeds) > 1:
                per = per_seed_gains(meth)
                sds = [max(statistics.stdev(r[k] for r in rows[meth]), statistics.stdev(r[k] for r in rows["random"]))
                       for k in ("linear_top1", "knn_top1")] if len(rows.get("random", [])) > 1 else [float("nan")] * 2
                lines.append(f"|  | per-seed gain (lin, kNN): {', '.join(f'({a:+.1f}, {b:+.1f})' for a, b in per)}; "
                             f"2 × larger seed sd: {2 * sds[0]:.1f} / {2 * sds[1]:.1f} | | | | | | | | |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/diagnosis")
    ap.add_argument("--run", nargs="+", metavar="ID", help="experiments to run (resumable)")
    ap.add_argument("--list", action="store_true", help="print the experiments and exit")
    ap.add_argument("--report", action="store_true", help="tabulate finished experiments")
    ap.add_argument("--seeds", type=int, nargs="+", help="seeds to run (default: the experiment's, seed 0)")
    ap.add_argument("--methods", nargs="+", help="rows to run (default: the experiment's)")
    args = ap.parse_args(argv)
    if args.list:
        for i, e in EXPERIMENTS.items():
            print(f"{i}: {e['what']}  [{', '.join(e['methods'])}]  {' '.join(e['argv'])}")
        return 0
    unknown = [i for i in args.run or [] if i not in EXPERIMENTS]
    if unknown:
        raise SystemExit(f"unknown experiment(s) {', '.join(unknown)}; --list shows them")
    if args.run:
        run(args.run, args.out, args.seeds, args.methods)
    if args.report or args.run:
        table = report(args.out)
        print(table)
        from harl.utils.io import atomic_write_text

        os.makedirs(args.out, exist_ok=True)
        atomic_write_text(os.path.join(args.out, "diagnosis.md"), table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
