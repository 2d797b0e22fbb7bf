"""Benchmark helpers: peak-memory probes and timing of methods inside a real Lightning fit loop."""

from __future__ import annotations

import os
import statistics
import time
from typing import Callable, Dict, List, Optional

import torch


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    """Peak resident memory (VmHWM) of this process in MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class StepTimer:
    """Lightning callback: wall time between consecutive ``on_train_batch_start`` calls."""

    def __init__(self):
        from lightning.pytorch import Callback

        timer = self

        class _CB(Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                timer.stamps.append(time.perf_counter())

            def on_train_end(self, trainer, pl_module):
                timer.stamps.append(time.perf_counter())

        self.stamps: List[float] = []
        self.callback = _CB()

    def step_times(self, warmup: int) -> List[float]:
        d = [b - a for a, b in zip(self.stamps, self.stamps[1:])]
        return d[warmup:]


def fit_step_times(model, batches: List, warmup: int, extra_callbacks=()) -> List[float]:
    """Train ``model`` on the given in-memory batches inside a Lightning Trainer; per-step seconds."""
    import warnings

    from lightning.pytorch import Trainer

    timer = StepTimer()
    loader = InMemoryLoader(batches)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False,
                          callbacks=[timer.callback, *extra_callbacks], num_sanity_val_steps=0)
        trainer.fit(model, loader)
    return timer.step_times(warmup)


class InMemoryLoader:
    """An iterable of ready batches with a ``__len__`` (what Lightning needs for step estimates)."""

    def __init__(self, batches: List):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def summarize(times: List[float]) -> Dict[str, float]:
    return {"median": statistics.median(times), "mean": statistics.fmean(times), "n": len(times)}


def print_table(rows: List[Dict], columns: List[str], title: Optional[str] = None) -> None:
    if title:
        print(f"\n{title}")
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print(" | ".join(c.ljust(widths[c]) for c in columns))
    print("-|-".join("-" * widths[c] for c in columns))
    for r in rows:
        print(" | ".join(_fmt(r.get(c)).ljust(widths[c]) for c in columns))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return "" if v is None else str(v)


def set_threads(n: Optional[int]) -> None:
    if n:
        torch.set_num_threads(n)
    os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
