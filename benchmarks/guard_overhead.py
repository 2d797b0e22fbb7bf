"""Cost of the finite-training guard and the health checks per training step.

    python benchmarks/guard_overhead.py                          # CPU, resnet18 width 64, 32 px, bs 64
    python benchmarks/guard_overhead.py --accelerator cuda --batch-size 256 --size 64 --steps 30

Each configuration trains on the same synthetic in-memory batches inside a real Lightning
``Trainer.fit`` (no data loading, no logger): the method alone, with :class:`harl.guard.FiniteGuard`
(every step: loss and gradient norms before the update, weight norms after), with the guard and
:class:`harl.health.HealthMonitor` at its default ``every_n_steps=20``, and with the health checks on
every step (the worst case). Runs are interleaved (off, on, off, on ...) ``--repeats`` times and the
median step time of each configuration is reported with its ratio to the method alone. On a shared
CPU the ratios between separate runs are noisy, so the time spent *inside* the guard's and the
monitor's hooks is also measured directly (wall and process-CPU seconds per step) and reported as
a share of the step.
Target: guard + health (default) ≤ 1.03 × the method alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from typing import Dict, List

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import InMemoryLoader, print_table, set_threads  # noqa: E402
from benchmarks.step_time import make_batches, method_cfg  # noqa: E402


HOOKS = ("on_train_batch_start", "on_before_backward", "on_before_optimizer_step", "on_train_batch_end")


def timed(callbacks, acc: Dict[str, float], cuda: bool):
    """Wrap the per-step hooks of ``callbacks`` to add their wall / CPU seconds to ``acc``."""
    for cb in callbacks:
        for name in HOOKS:
            fn = getattr(cb, name)

            def wrapper(*a, _fn=fn, **k):
                if cuda:
                    torch.cuda.synchronize()
                w, c = time.perf_counter(), time.process_time()
                out = _fn(*a, **k)
                if cuda:
                    torch.cuda.synchronize()
                acc["wall"] += time.perf_counter() - w
                acc["cpu"] += time.process_time() - c
                return out

            setattr(cb, name, wrapper)
    return callbacks


def step_times(method: str, args, callbacks_fn) -> List[float]:
    from lightning.pytorch import Callback, Trainer

    from harl.config import parse_cfg
    from harl.methods import METHODS

    stamps: List[float] = []

    class _Timer(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if args.accelerator != "cpu":
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

        def on_train_end(self, trainer, pl_module):
            if args.accelerator != "cpu":
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

    torch.manual_seed(0)
    raw = method_cfg(method, args.batch_size, args.size, args.width, channels_last=True)
    raw["accelerator"] = args.accelerator
    cfg = parse_cfg(raw)
    model = METHODS.get(method)(cfg)
    batches = make_batches(args.steps + args.warmup, args.batch_size, args.size, METHODS.get(method).uses_masks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer(max_epochs=1, accelerator=args.accelerator, devices=1, logger=False,
                          enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                          callbacks=[_Timer(), *callbacks_fn()], num_sanity_val_steps=0)
        trainer.fit(model, InMemoryLoader(batches))
    d = [b - a for a, b in zip(stamps, stamps[1:])]
    return d[args.warmup:]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=["byol", "harl"])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--accelerator", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    set_threads(args.threads)
    from harl.guard import FiniteGuard
    from harl.health import HealthMonitor

    configs = {
        "method alone": lambda: [],
        "+ guard": lambda: [FiniteGuard()],
        "+ guard + health (every 20)": lambda: [FiniteGuard(), HealthMonitor(every_n_steps=20)],
        "+ guard + health (every step)": lambda: [FiniteGuard(), HealthMonitor(every_n_steps=1)],
    }
    dev = torch.cuda.get_device_name(0) if args.accelerator != "cpu" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {dev}, resnet18 width {args.width}, {args.size} px, batch {args.batch_size}, "
          f"{args.steps} timed steps after {args.warmup} warm-up, {args.repeats} interleaved repeats")
    for method in args.methods:
        times: Dict[str, List[float]] = {k: [] for k in configs}
        for _ in range(args.repeats):
            for name, fn in configs.items():
                times[name] += step_times(method, args, fn)
        base = statistics.median(times["method alone"])
        rows = [{"run": name, "s/step": statistics.median(t), "ratio": statistics.median(t) / base}
                for name, t in times.items()]
        print_table(rows, ["run", "s/step", "ratio"], title=method)
        for every in (20, 1):
            acc = {"wall": 0.0, "cpu": 0.0}
            cuda = args.accelerator != "cpu"
            t = step_times(method, args, lambda: timed([FiniteGuard(), HealthMonitor(every_n_steps=every)], acc, cuda))
            n = args.steps + args.warmup
            print(f"  inside guard + health (every {every}): {acc['wall'] / n * 1e3:.2f} ms wall, "
                  f"{acc['cpu'] / n * 1e3:.2f} ms CPU per step = {acc['wall'] / n / statistics.median(t) * 100:.2f}% "
                  f"of the median step ({statistics.median(t):.3f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
