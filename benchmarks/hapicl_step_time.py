"""HAPiCL overhead: step time of each hapicl_* method against its instance-only base, and the
memory of the pixel term.

    python benchmarks/hapicl_step_time.py                         # R18, CIFAR stem, 32 px (5×5 map), bs 32
    python benchmarks/hapicl_step_time.py --pix-dims 2048 2048    # the authors' head size
    python benchmarks/hapicl_step_time.py --flops-only --backbone resnet50 --imagenet-stem --size 224 \
        --pix-dims 2048 2048                                      # R50 at 224 px, FLOPs only
    python benchmarks/hapicl_step_time.py --memory-only

**Step time.** Each pair (base, hapicl_base) trains on the same synthetic batch (ResNet-18 with the
CIFAR stem by default, masks with fg and bg cells) with the *same* instance heads, so the
difference is the pixel head (+ its EMA copy and target forward on MoCo/BYOL bases), the mask
gridding and the pixel loss. The machine is shared and noisy, so by default (``--mode paired``)
both models live in one process and train alternately, step by step (the method's own
``training_step`` + backward + optimizer step + EMA); reported are the medians, the median of the
per-step paired ratios and the ratio of the minima (interference only ever adds time).
``--mode fit`` instead runs interleaved Lightning ``Trainer.fit`` rounds (``fit_step_times``), which
adds Lightning's loop overhead to both. Target: ratio ≤ 1.15.

**FLOPs.** Matmul/conv FLOPs of one forward + backward (``torch.utils.flop_counter``), per image:
noise-free, and cheap enough for R50 at 224 px on a CPU.

**Memory.** The pixel similarity S (B×N×N, fp32, N = h·w) and the pair masks, computed for the
given batch (default 256) at 7×7 and 14×14, plus a measurement in a fresh subprocess: peak RSS
growth of one forward + backward of :func:`harl.losses.hapicl.pixel_contrastive_loss` on random embeddings (at a small D,
which isolates the N² terms, and at D = 256). The pixel head's
activations (B×H_x×N and B×D_x×N per view) are listed beside it, since at D_x = 2048 they, not S,
dominate.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import statistics
import sys
from typing import Dict, List

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import (current_rss_mib, fit_step_times, peak_rss_mib, print_table, reset_peak_rss,  # noqa: E402
                               set_threads)
from benchmarks.step_time import HEADS, make_batches, method_cfg  # noqa: E402

MIB = 2 ** 20


def pair_cfgs(base: str, batch_size: int, size: int, width: int, pix_dims, mask_threshold: float,
              pix_upsample: int, backbone: str = "resnet18", cifar_stem: bool = True):
    """(base cfg, hapicl cfg) with identical backbone and instance heads."""
    from harl.config import parse_cfg

    heads = dict(HEADS[base])
    if "queue_size" in heads:
        heads["queue_size"] = max(batch_size, (heads["queue_size"] // batch_size) * batch_size)
    pix = {"pix_hidden_dim": pix_dims[0], "pix_output_dim": pix_dims[1], "mask_threshold": mask_threshold,
           "pix_upsample": pix_upsample}
    base_cfg = method_cfg(base, batch_size, size, width, True, extra_kwargs=heads)
    hap_cfg = method_cfg(f"hapicl_{base}", batch_size, size, width, True, extra_kwargs={**heads, **pix})
    for cfg in (base_cfg, hap_cfg):
        cfg["backbone"] = {"name": backbone, "kwargs": {"cifar_stem": cifar_stem, "width": width}}
    return parse_cfg(base_cfg), parse_cfg(hap_cfg)


def run_method(cfg, steps: int, warmup: int, batch_size: int, size: int) -> List[float]:
    from harl.methods import METHODS

    torch.manual_seed(0)
    cls = METHODS.get(cfg.method)
    model = cls(cfg)
    batches = make_batches(steps + warmup, batch_size, size, cls.uses_masks)
    times = fit_step_times(model, batches, warmup)
    del model, batches
    gc.collect()
    return times


def paired_step_times(cfgs, steps: int, warmup: int, batch_size: int, size: int) -> List[List[float]]:
    """Step times of several methods trained *alternately, step by step*, in one process.

    Each step is the method's own ``training_step`` + backward + optimizer step (+ EMA), i.e. what
    Lightning runs minus its loop; the order alternates every step, so slow phases of a shared
    machine hit all methods alike and per-step ratios of neighbours cancel them.
    """
    import time
    import warnings
    from types import SimpleNamespace

    from harl.methods import METHODS

    models, opts, batches = [], [], []
    for cfg in cfgs:
        torch.manual_seed(0)
        cls = METHODS.get(cfg.method)
        model = cls(cfg)
        model.log = model.log_dict = lambda *a, **k: None
        model.trainer = SimpleNamespace(estimated_stepping_batches=steps + warmup)
        model.on_fit_start()
        (opt,), _ = model.configure_optimizers()
        batch = make_batches(1, batch_size, size, cls.uses_masks)[0]
        models.append(model)
        opts.append(opt)
        batches.append(batch if cls.uses_masks else batch[:3])
    times: List[List[float]] = [[] for _ in cfgs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(warmup + steps):
            order = list(range(len(cfgs)))
            if i % 2:
                order.reverse()
            for k in order:
                model, opt = models[k], opts[k]
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                model.training_step(batches[k], i).backward()
                opt.step()
                if hasattr(model, "ema_update"):
                    model.ema_update(0.99)
                if i >= warmup:
                    times[k].append(time.perf_counter() - t0)
    return times


def paired_table(args) -> List[Dict]:
    rows = []
    for base in args.bases:
        cfgs = pair_cfgs(base, args.batch_size, args.size, args.width, args.pix_dims, args.mask_threshold,
                         args.pix_upsample, args.backbone, not args.imagenet_stem)
        tb, th = paired_step_times(cfgs, args.steps, args.warmup, args.batch_size, args.size)
        gc.collect()
        b, h = statistics.median(tb), statistics.median(th)
        rows.append({"base": base, "base s/step": b, "hapicl s/step": h, "ratio of medians": h / b,
                     "median paired ratio": statistics.median(x / y for x, y in zip(th, tb)),
                     "ratio of minima": min(th) / min(tb)})
    return rows


def step_time_table(args) -> List[Dict]:
    rows = []
    for base in args.bases:
        base_cfg, hap_cfg = pair_cfgs(base, args.batch_size, args.size, args.width, args.pix_dims,
                                      args.mask_threshold, args.pix_upsample, args.backbone, not args.imagenet_stem)
        times: Dict[str, List[float]] = {"base": [], "hapicl": []}
        ratios = []
        for r in range(args.rounds):
            order = [("base", base_cfg), ("hapicl", hap_cfg)]
            if r % 2:
                order.reverse()
            med = {}
            for key, cfg in order:
                t = run_method(cfg, args.steps, args.warmup, args.batch_size, args.size)
                times[key].extend(t)
                med[key] = statistics.median(t)
            ratios.append(med["hapicl"] / med["base"])
        b, h = statistics.median(times["base"]), statistics.median(times["hapicl"])
        rows.append({"base": base, "base s/step": b, "hapicl s/step": h, "ratio (pooled medians)": h / b,
                     "ratio (median of rounds)": statistics.median(ratios),
                     "rounds": " ".join(f"{x:.3f}" for x in ratios)})
    return rows


# --------------------------------------------------------------------------- FLOPs


def step_flops(cfg, batch_size: int, size: int) -> int:
    """Matmul/conv FLOPs of one training step (forward + backward), noise-free (``FlopCounterMode``)."""
    import warnings

    from torch.utils.flop_counter import FlopCounterMode

    from harl.methods import METHODS

    torch.manual_seed(0)
    cls = METHODS.get(cfg.method)
    model = cls(cfg)
    model.log_dict = lambda *a, **k: None
    model.log = lambda *a, **k: None
    batch = make_batches(1, batch_size, size, cls.uses_masks)[0]
    if not cls.uses_masks:
        batch = batch[:3]
    counter = FlopCounterMode(display=False)
    with counter, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.training_step(batch, 0).backward()
    return counter.get_total_flops()


def flops_table(args) -> List[Dict]:
    rows = []
    for base in args.bases:
        base_cfg, hap_cfg = pair_cfgs(base, args.flops_batch, args.size, args.width, args.pix_dims,
                                      args.mask_threshold, args.pix_upsample, args.backbone, not args.imagenet_stem)
        b, h = step_flops(base_cfg, args.flops_batch, args.size), step_flops(hap_cfg, args.flops_batch, args.size)
        rows.append({"base": base, "base GFLOP/img": b / args.flops_batch / 1e9,
                     "hapicl GFLOP/img": h / args.flops_batch / 1e9, "FLOP ratio": h / b})
    return rows


# --------------------------------------------------------------------------- memory


def similarity_bytes(batch: int, n: int) -> Dict[str, float]:
    """fp32 S (B×N×N), the two bool pair masks, and their float copies used in the sums (MiB)."""
    s = batch * n * n * 4 / MIB
    return {"S fp32": s, "pair masks bool (2)": 2 * batch * n * n / MIB, "pair masks fp32 (2)": 2 * s}


def head_bytes(batch: int, n: int, hidden: int, out: int, elem: int) -> float:
    """Per view: conv1 out, BN out, ReLU out (B×H_x×N) and the head output (B×D_x×N), MiB."""
    return batch * n * (3 * hidden + out) * elem / MIB


def measure_loss_peak(batch: int, hw: int, dim: int) -> float:
    """Peak RSS growth (MiB) of one forward + backward of the pixel loss on random B×D×N embeddings.

    Runs in a fresh subprocess with ``MALLOC_MMAP_THRESHOLD_=65536``, so every tensor buffer is its
    own mapping, returned to the OS when freed: the peak RSS growth is then the peak of live bytes
    (with the default allocator, freed heap memory is reused and small runs read as ~0).
    """
    import subprocess

    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    code = (f"import sys; sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))!r}); "
            f"from benchmarks.hapicl_step_time import _loss_peak_here; print(_loss_peak_here({batch}, {hw}, {dim}))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _loss_peak_here(batch: int, hw: int, dim: int) -> float:
    from harl.losses.hapicl import pixel_contrastive_loss

    g = torch.Generator().manual_seed(0)
    n = hw * hw
    P1 = torch.randn(batch, dim, n, generator=g).requires_grad_()
    P2 = torch.randn(batch, dim, n, generator=g).requires_grad_()
    m1 = (torch.rand(batch, n, generator=g) > 0.5).float()
    m2 = (torch.rand(batch, n, generator=g) > 0.5).float()
    pixel_contrastive_loss(P1[:2], P2[:2], m1[:2], m2[:2]).backward()  # first-call allocations off the books
    P1.grad = P2.grad = None
    gc.collect()
    base = current_rss_mib()
    reset_peak_rss()
    loss = pixel_contrastive_loss(P1, P2, m1, m2)
    loss.backward()
    peak = peak_rss_mib() - base
    del loss, P1, P2
    gc.collect()
    return peak


def memory_table(args) -> List[Dict]:
    rows = []
    hidden, out = args.memory_head
    for hw in (7, 14):
        n = hw * hw
        sim = similarity_bytes(args.memory_batch, n)
        rows.append({
            "map": f"{hw}×{hw}", "N": n, "S fp32 MiB": sim["S fp32"],
            "S + masks MiB (computed)": sum(sim.values()),
            **{f"loss fwd+bwd peak MiB (measured, D={d})": measure_loss_peak(args.memory_batch, hw, d)
               for d in args.memory_dims},
            f"head acts/view fp32 MiB (H_x={hidden}, D_x={out})": head_bytes(args.memory_batch, n, hidden, out, 4),
            "head acts/view fp16 MiB": head_bytes(args.memory_batch, n, hidden, out, 2),
        })
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bases", nargs="+", default=["simclr", "mocov2plus", "byol"],
                    choices=["simclr", "mocov2plus", "byol"])
    ap.add_argument("--backbone", default="resnet18", choices=["resnet18", "resnet50"])
    ap.add_argument("--imagenet-stem", action="store_true", help="7×7/2 stem + max-pool (224 px → 7×7 map)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--size", type=int, default=32, help="crop size (32 px + CIFAR stem → 5×5 map)")
    ap.add_argument("--width", type=int, default=64, help="ResNet base width (64 = standard)")
    ap.add_argument("--pix-dims", type=int, nargs=2, default=[1024, 256], metavar=("H_X", "D_X"),
                    help="pixel head hidden / output dims (default: the CIFAR recipes' 1024 256)")
    ap.add_argument("--pix-upsample", type=int, default=1)
    ap.add_argument("--mask-threshold", type=float, default=0.5)
    ap.add_argument("--mode", choices=["paired", "fit"], default="paired",
                    help="paired: both methods in one process, alternating step by step (robust on a shared "
                         "machine); fit: interleaved Lightning fits (includes Lightning's loop overhead)")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per method")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved (base, hapicl) rounds per pair")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--memory-only", action="store_true")
    ap.add_argument("--flops-only", action="store_true", help="only the (noise-free) FLOP counts")
    ap.add_argument("--flops-batch", type=int, default=4)
    ap.add_argument("--memory-batch", type=int, default=256)
    ap.add_argument("--memory-dims", type=int, nargs="+", default=[16, 256],
                    help="embedding dims D for the measured loss (a small D isolates the N² terms)")
    ap.add_argument("--memory-head", type=int, nargs=2, default=[2048, 2048], metavar=("H_X", "D_X"))
    args = ap.parse_args(argv)
    set_threads(args.threads)
    import lightning.pytorch  # noqa: F401  (configures its loggers on import; quiet them afterwards)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    stem = "ImageNet" if args.imagenet_stem else "CIFAR"
    setting = (f"{args.backbone} width {args.width}, {stem} stem, {args.size} px, pixel head "
               f"{args.pix_dims[0]}/{args.pix_dims[1]}, ×{args.pix_upsample} upsample")
    if not args.memory_only:
        print_table(flops_table(args), ["base", "base GFLOP/img", "hapicl GFLOP/img", "FLOP ratio"],
                    title=f"training-step FLOPs (fwd + bwd, matmul/conv only): {setting}")
    if args.flops_only:
        return 0
    mem_rows = memory_table(args)  # first: a fresh process's allocator makes the RSS growth meaningful
    if not args.memory_only:
        print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, {setting}, batch {args.batch_size}")
        if args.mode == "paired":
            print(f"{args.steps} timed steps (+{args.warmup} warm-up), base and hapicl alternating step by step")
            print_table(paired_table(args), ["base", "base s/step", "hapicl s/step", "ratio of medians",
                                             "median paired ratio", "ratio of minima"],
                        title="step time (target ≤ 1.15)")
        else:
            print(f"{args.rounds} rounds × {args.steps} timed steps (+{args.warmup} warm-up) in Lightning fits")
            print_table(step_time_table(args), ["base", "base s/step", "hapicl s/step", "ratio (pooled medians)",
                                                "ratio (median of rounds)", "rounds"],
                        title="step time (target ≤ 1.15)")
    print_table(mem_rows, list(mem_rows[0]), title=f"pixel-term memory, batch {args.memory_batch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
