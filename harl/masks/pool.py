"""The mask runner's worker pool: a process pool over chunks of images, each worker building its
job once (:func:`_init_worker`) and dying with the command (kill -9 included)."""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Dict, List, Optional, Sequence

from harl.masks.jobs import RunOptions, process_one
from harl.utils.procs import die_with_parent

_WORKER: Dict[str, Any] = {}


def _init_worker(job, out_root: str, torch_threads: int, parent_pid: Optional[int] = None) -> None:
    if parent_pid is not None:  # a pool worker: never outlive the command (kill -9 included)

        die_with_parent(parent_pid)
    if torch_threads > 0:
        try:
            import torch

            torch.set_num_threads(torch_threads)
        except ImportError:  # pragma: no cover
            pass
    job.setup()
    _WORKER["job"] = job
    _WORKER["out"] = out_root


def _process_chunk(relpaths: Sequence[str]) -> List[Dict[str, Any]]:
    job, out = _WORKER["job"], _WORKER["out"]
    return [process_one(job, out, r) for r in relpaths]


def _mp_context(options: RunOptions, uses_torch: bool):
    if options.mp_context:
        return mp.get_context(options.mp_context)
    if uses_torch:
        return mp.get_context("spawn")
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def _run_pool(job, todo: Sequence[str], out_root: str, options: RunOptions, consume) -> None:
    workers = options.workers
    chunk = options.chunksize or max(1, min(16, len(todo) // (workers * 8)))
    chunks = [todo[i:i + chunk] for i in range(0, len(todo), chunk)]
    ctx = _mp_context(options, getattr(job, "uses_torch", False))
    torch_threads = max(1, (os.cpu_count() or 1) // workers) if getattr(job, "uses_torch", False) else 0
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(job, out_root, torch_threads, os.getpid())) as pool:
        pending = set()
        it = iter(chunks)
        try:
            for c in it:
                pending.add(pool.submit(_process_chunk, c))
                if len(pending) >= workers * 4:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in finished:
                        consume(f.result())
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in finished:
                    consume(f.result())
        except BrokenProcessPool as err:
            raise RuntimeError("a mask worker process failed to start or died (see its error above; "
                               "out of memory, a crash in a native library, or a generator that cannot "
                               "be built); finished masks are kept: rerun the same command to resume") from err
        except BaseException:
            for f in pending:
                f.cancel()
            raise
