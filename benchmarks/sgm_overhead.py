"""SGM overhead: saliency + high-pass + masking per batch vs one ResNet-18 training step (CPU).

Times, on the same B×3×S×S input (rounds interleave all four measurements; medians):
* saliency: ``saliency_from_activation`` on a given c5 activation (channel sum, pooling to G×G,
  threshold); the activation itself comes from the (frozen/momentum) forward that SGM runs anyway;
* high-pass of the two views (q and k; the ``hp`` strategy);
* masking: ``sgm_mask_batch`` in ``pos`` mode (query) and ``neg`` mode (one hard negative);
* a training step: forward + backward + SGD step of resnet18 (torchvision stem, and CIFAR stem).

Prints the fraction (SGM work) / (training step); the target is < 10 %.

    .venv/bin/python benchmarks/sgm_overhead.py --batch 64 --size 64 --grid 8
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from harl.backbones.registry import BACKBONES
from harl.ops.filters import highpass
from harl.ops.sgm_cells import saliency_from_activation
from harl.ops.sgm_masking import SGMMaskConfig, sgm_mask_batch

import harl.backbones.resnet  # noqa: F401  (registers resnet18)


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--grid", type=int, default=8)
    p.add_argument("--train-repeats", type=int, default=5)
    p.add_argument("--mask-repeats", type=int, default=5)
    args = p.parse_args()

    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 10, (args.batch,))
    cfg = SGMMaskConfig(grid_size=args.grid)
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, B={args.batch}, "
          f"{args.size} px, grid {args.grid}×{args.grid}")

    rows = []
    for cifar_stem in (False, True):
        net = BACKBONES.get("resnet18")(cifar_stem=cifar_stem)
        head = torch.nn.Linear(net.num_features, 10)
        opt = torch.optim.SGD(list(net.parameters()) + list(head.parameters()), lr=0.01, momentum=0.9)
        with torch.no_grad():
            act = net.forward_features(x)

        def train_step():
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(head(net(x)), y)
            loss.backward()
            opt.step()

        def saliency():
            return saliency_from_activation(act, args.grid, cfg.fg_std_factor)

        fg = saliency()

        def hp():
            return highpass(x, 11, 5.0), highpass(x, 11, 5.0)

        def masking():
            sgm_mask_batch(x, fg, cfg, "pos", gen)
            sgm_mask_batch(x, fg, cfg, "neg", gen)

        # interleaved rounds, so that load from other processes hits every column alike
        train_step(), hp(), masking()  # warm-up
        t_train, t_sal, t_hp, t_mask = [], [], [], []
        for _ in range(args.train_repeats):
            t_train.append(median_time(train_step, 1, warmup=0))
            t_sal.append(median_time(saliency, args.mask_repeats, warmup=0))
            t_hp.append(median_time(hp, args.mask_repeats, warmup=0))
            t_mask.append(median_time(masking, args.mask_repeats, warmup=0))
        t_train, t_sal, t_hp, t_mask = (statistics.median(v) for v in (t_train, t_sal, t_hp, t_mask))
        rows.append((("cifar" if cifar_stem else "imagenet") + " stem", tuple(act.shape[-2:]),
                     t_train, t_sal, t_hp, t_mask))

    print(f"{'backbone':<16}{'c5':>8}{'train step':>12}{'saliency':>10}{'hp (q,k)':>10}"
          f"{'mask pos+neg':>14}{'sal+mask':>10}{'all SGM':>9}")
    for name, c5, t_train, t_sal, t_hp, t_mask in rows:
        print(f"{'resnet18 ' + name:<16}{'×'.join(map(str, c5)):>8}{t_train * 1e3:>10.1f}ms"
              f"{t_sal * 1e3:>8.2f}ms{t_hp * 1e3:>8.2f}ms{t_mask * 1e3:>12.2f}ms"
              f"{100 * (t_sal + t_mask) / t_train:>9.1f}%{100 * (t_sal + t_hp + t_mask) / t_train:>8.1f}%")


if __name__ == "__main__":
    main()
