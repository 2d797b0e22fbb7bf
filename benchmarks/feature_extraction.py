"""Feature-extraction throughput (images/s) with and without the feature cache, CPU.

    python benchmarks/feature_extraction.py                     # resnet18 (width 64, CIFAR stem), 32 px, 512 images
    python benchmarks/feature_extraction.py --n 2048 --widths 32 64 --threads 2

Rows, for each backbone width:

- ``tensors, contiguous`` / ``tensors, channels_last``: :func:`harl.eval.features.extract_features`
  on an in-memory dataset of N random 3×32×32 tensors (compute only, no decoding), without a cache,
  in both memory layouts;
- ``scenes PNG, no cache``: the same on a generated fashion-scenes tree (PNG decode + the
  validation transform in the loop, ``num_workers=0``), i.e. what ``harl-linear protocol=cached``
  pays the first time;
- ``scenes PNG, cache write``: the first call with ``cache_path`` (extraction + atomic
  safetensors write);
- ``scenes PNG, cache hit``: the second call (read back, no forward pass).

Each measurement is the median of ``--repeats`` runs, interleaved so that load from other processes
on a shared machine hits every row alike.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Dict, List

import torch
from torch.utils.data import Dataset

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import print_table, set_threads  # noqa: E402


class RandomImages(Dataset):
    def __init__(self, n: int, size: int = 32, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, size, size, generator=g)
        self.transform = f"random-{n}-{size}"

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], i % 10


def make_scenes(n: int, root: str) -> str:
    from harl.data.fashion_scenes import FashionScenesParams, generate_fashion_scenes

    out = os.path.join(root, "fashion-scenes")
    generate_fashion_scenes(out, FashionScenesParams(n_train=n, n_test=10, size=32), workers=1, progress=False)
    return out


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=512, help="images per measurement")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--widths", type=int, nargs="+", default=[64], help="ResNet-18 base widths (64 = torchvision)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--no-scenes", action="store_true", help="skip the PNG rows (no dataset generation)")
    args = p.parse_args(argv)
    set_threads(args.threads)

    from harl.backbones import build_backbone
    from harl.data import build_classification_dataset
    from harl.eval.features import extract_features

    tmp = tempfile.mkdtemp(prefix="harl-featbench-")
    try:
        scenes = None if args.no_scenes else make_scenes(args.n, tmp)
        rows: List[Dict] = []
        for width in args.widths:
            torch.manual_seed(0)
            net = build_backbone("resnet18", width=width, cifar_stem=True).eval()
            tensors = RandomImages(args.n)
            cases = {
                "tensors, contiguous": lambda: extract_features(net, tensors, args.batch_size, progress=False,
                                                                channels_last=False),
                "tensors, channels_last": lambda: extract_features(net, tensors, args.batch_size, progress=False,
                                                                   channels_last=True),
            }
            if scenes is not None:
                ds = build_classification_dataset("fashion_scenes", scenes, "train", 32)
                cache = os.path.join(tmp, f"cache-w{width}.safetensors")

                def write():
                    if os.path.exists(cache):
                        os.remove(cache)
                    extract_features(net, ds, args.batch_size, progress=False, cache_path=cache, cache_key={"w": width})

                def hit():
                    assert os.path.exists(cache)
                    extract_features(net, ds, args.batch_size, progress=False, cache_path=cache, cache_key={"w": width})

                cases["scenes PNG, no cache"] = lambda: extract_features(net, ds, args.batch_size, progress=False)
                cases["scenes PNG, cache write"] = write
                cases["scenes PNG, cache hit"] = hit
            for fn in cases.values():  # warm-up (allocator, lazy inits)
                fn()
            times: Dict[str, List[float]] = {k: [] for k in cases}
            for _ in range(args.repeats):
                for name, fn in cases.items():
                    times[name].append(timed(fn))
            for name, ts in times.items():
                med = statistics.median(ts)
                rows.append({"backbone": f"resnet18 w{width}", "setting": name, "images": args.n,
                             "seconds": f"{med:.4f}", "images/s": f"{args.n / med:,.0f}"})
        print_table(rows, ["backbone", "setting", "images", "seconds", "images/s"],
                    title=f"feature extraction, 32 px, batch {args.batch_size}, {torch.get_num_threads()} threads, "
                          f"median of {args.repeats}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
