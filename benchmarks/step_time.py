"""Training-step time and peak memory per method, against a plain-PyTorch BYOL floor.

    python benchmarks/step_time.py                      # resnet18, CIFAR stem, 32 px, bs 64 and 256
    python benchmarks/step_time.py --batch-sizes 64 --methods byol harl --steps 8

Everything runs in one process on synthetic in-memory batches (no data loading), so the numbers
compare compute and framework overhead only:

- ``plain-byol``: the same BYOL step written in plain PyTorch (torchvision ResNet, LARS, EMA),
  in the contiguous layout (the *floor*) and in channels_last;
- each harl method inside a real Lightning ``Trainer.fit`` (online classifier, logging, EMA hooks
  included), channels_last as configured by default, and BYOL once more with
  ``performance.disable_channel_last=true``.

Reported: median seconds per step (after warm-up), the ratio to the floor, and the peak RSS growth
during the run (MiB). Target: harl's BYOL ≤ 1.10 × the floor; HARL ≤ 1.10 × harl's BYOL.
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import sys
import time
from typing import Dict, List

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import (current_rss_mib, fit_step_times, peak_rss_mib, print_table, reset_peak_rss,  # noqa: E402
                               set_threads, summarize)

HEADS = {
    "byol": {"proj_hidden_dim": 4096, "proj_output_dim": 256, "pred_hidden_dim": 4096},
    "simclr": {"proj_hidden_dim": 2048, "proj_output_dim": 256},
    "mocov2plus": {"proj_hidden_dim": 2048, "proj_output_dim": 256, "queue_size": 32768},
    "harl": {"proj_hidden_dim": 4096, "proj_output_dim": 256, "pred_hidden_dim": 4096},
}


def method_cfg(method: str, batch_size: int, size: int, width: int, channels_last: bool,
               extra_kwargs: Dict = None) -> Dict:
    from harl.methods import METHODS

    cls = METHODS.get(method)
    kw = dict(HEADS.get(method, {}))
    kw = {k: v for k, v in kw.items() if k in cls.default_method_kwargs()}
    if "queue_size" in kw:
        kw["queue_size"] = max(batch_size, (kw["queue_size"] // batch_size) * batch_size)
    kw.update(extra_kwargs or {})
    cfg = {
        "name": f"bench-{method}", "method": method,
        "backbone": {"name": "resnet18", "kwargs": {"cifar_stem": True, "width": width}},
        "method_kwargs": kw,
        "data": {"dataset": "cifar10", "num_workers": 0},
        "augmentations": [{"crop_size": size, "num_crops": 2}],
        "optimizer": {"name": "lars", "batch_size": batch_size, "lr": 1.0, "weight_decay": 1e-5,
                      "kwargs": {"eta": 0.02, "clip_lr": True, "exclude_bias_n_norm": True}},
        "max_epochs": 1, "accelerator": "cpu", "devices": 1,
        "performance": {"disable_channel_last": not channels_last},
    }
    if cls.uses_masks:
        cfg["data"]["masks"] = {"enabled": True, "root": "unused"}
    return cfg


def make_batches(n: int, batch_size: int, size: int, with_masks: bool, seed: int = 0) -> List:
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(batch_size, 3, size, size, generator=g)
    x2 = torch.randn(batch_size, 3, size, size, generator=g)
    idx = torch.arange(batch_size)
    y = torch.randint(0, 10, (batch_size,), generator=g)
    batch = [idx, [x1, x2], y]
    if with_masks:
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        m = (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 3) ** 2).to(torch.uint8)[None, None]
        masks = [m.expand(batch_size, 1, size, size).clone() for _ in range(2)]
        coords = [torch.tensor([[0.0, 0.0, 1.0, 1.0]]).expand(batch_size, 4).clone() for _ in range(2)]
        batch.append({"masks": masks, "coords": coords})
    return [batch] * n


# --------------------------------------------------------------------------- plain PyTorch floor


def plain_byol_times(batch_size: int, size: int, width: int, steps: int, warmup: int, channels_last: bool) -> List[float]:
    """BYOL written directly in PyTorch: same backbone, heads, LARS, EMA, online classifier."""
    from harl.backbones import build_backbone
    from harl.heads import byol_mlp
    from harl.optim import LARS

    torch.manual_seed(0)
    backbone = build_backbone("resnet18", cifar_stem=True, width=width)
    hp = HEADS["byol"]
    projector = byol_mlp(backbone.num_features, hp["proj_hidden_dim"], hp["proj_output_dim"])
    predictor = byol_mlp(hp["proj_output_dim"], hp["pred_hidden_dim"], hp["proj_output_dim"])
    classifier = torch.nn.Linear(backbone.num_features, 10)
    online = torch.nn.ModuleList([backbone, projector])
    target = copy.deepcopy(online)
    for p in target.parameters():
        p.requires_grad = False
    if channels_last:
        online.to(memory_format=torch.channels_last)
        target.to(memory_format=torch.channels_last)
    params = [{"params": list(online.parameters()) + list(predictor.parameters())},
              {"params": classifier.parameters(), "lr": 0.1, "weight_decay": 0.0}]
    opt = LARS(params, lr=1.0 * batch_size / 256, weight_decay=1e-5, eta=0.02, clip_lr=True, exclude_bias_n_norm=True)
    batch = make_batches(1, batch_size, size, False)[0]
    X, y = batch[1], batch[2]
    if channels_last:
        X = [x.contiguous(memory_format=torch.channels_last) for x in X]
    times = []
    for step in range(steps + warmup):
        t0 = time.perf_counter()
        feats = [backbone(x) for x in X]
        z = [projector(f) for f in feats]
        p = [predictor(v) for v in z]
        with torch.no_grad():
            zt = [target[1](target[0](x)) for x in X]
        loss = sum(2 - 2 * F.cosine_similarity(p[v2], zt[v1].detach(), dim=-1).mean()
                   for v1 in range(2) for v2 in range(2) if v1 != v2)
        logits = classifier(torch.cat([f.detach() for f in feats]))
        loss = loss + F.cross_entropy(logits, y.repeat(2))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            tau = 0.99
            tp = list(target.parameters())
            torch._foreach_mul_(tp, tau)
            torch._foreach_add_(tp, [q.detach() for q in online.parameters()], alpha=1 - tau)
        times.append(time.perf_counter() - t0)
    return times[warmup:]


def harl_method_times(method: str, batch_size: int, size: int, width: int, steps: int, warmup: int,
                      channels_last: bool) -> List[float]:
    from harl.config import parse_cfg
    from harl.methods import METHODS

    torch.manual_seed(0)
    cfg = parse_cfg(method_cfg(method, batch_size, size, width, channels_last))
    model = METHODS.get(method)(cfg)
    batches = make_batches(steps + warmup, batch_size, size, METHODS.get(method).uses_masks)
    return fit_step_times(model, batches, warmup)


def measure(label: str, fn, rows: List[Dict], **info) -> float:
    gc.collect()
    base = current_rss_mib()
    reset_peak_rss()
    times = fn()
    stats = summarize(times)
    rows.append({"run": label, **info, "s/step": stats["median"], "peak_MiB": peak_rss_mib() - base})
    return stats["median"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--methods", nargs="+", default=["byol", "simclr", "mocov2plus"])
    ap.add_argument("--steps", type=int, default=5, help="timed steps per run (median reported)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--width", type=int, default=64, help="ResNet-18 base width (64 = standard)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    set_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, resnet18 width {args.width}, "
          f"CIFAR stem, {args.size} px, {args.steps} timed steps after {args.warmup} warm-up")
    for bs in args.batch_sizes:
        rows: List[Dict] = []
        floor = measure("plain-byol (contiguous, floor)", lambda: plain_byol_times(
            bs, args.size, args.width, args.steps, args.warmup, False), rows)
        measure("plain-byol (channels_last)", lambda: plain_byol_times(
            bs, args.size, args.width, args.steps, args.warmup, True), rows)
        for method in args.methods:
            measure(f"harl {method}", lambda: harl_method_times(
                method, bs, args.size, args.width, args.steps, args.warmup, True), rows)
        if "byol" in args.methods:
            measure("harl byol (contiguous)", lambda: harl_method_times(
                "byol", bs, args.size, args.width, args.steps, args.warmup, False), rows)
        floor2 = measure("plain-byol (contiguous, floor, again)", lambda: plain_byol_times(
            bs, args.size, args.width, args.steps, args.warmup, False), rows)
        floor = (floor + floor2) / 2
        byol = next((r["s/step"] for r in rows if r["run"] == "harl byol"), None)
        for r in rows:
            r["vs floor"] = r["s/step"] / floor
            if byol:
                r["vs harl byol"] = r["s/step"] / byol
        print_table(rows, ["run", "s/step", "vs floor", "vs harl byol", "peak_MiB"], title=f"batch {bs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
