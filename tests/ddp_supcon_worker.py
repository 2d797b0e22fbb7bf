"""Two gloo processes run one SupCon training step each on their half of a labelled batch.

Used by tests/test_supcon_ddp.py (``python -m tests.ddp_supcon_worker RANK PORT OUT`` twice);
:func:`run` with ``world = 1`` is the single-process step on the whole batch. BatchNorm is in eval
mode so an embedding does not depend on how the batch is split. The labels repeat across the two
halves, so some positives of each anchor live on the other rank.
"""

from __future__ import annotations

import os
import sys

import torch

HALF = 4
LABELS = torch.tensor([0, 1, 2, 0, 1, 2, 3, 0])


def full_batch() -> list:
    g = torch.Generator().manual_seed(21)
    X = [torch.randn(2 * HALF, 3, 32, 32, generator=g) for _ in range(2)]
    return [torch.arange(2 * HALF), X, LABELS.clone()]


def run(rank: int, world: int) -> float:
    import warnings

    from tests.test_solo_methods import build

    model = build("supcon")
    model.eval()
    batch = full_batch()
    r = slice(rank * HALF, (rank + 1) * HALF) if world > 1 else slice(None)
    local = [batch[0][r], [x[r] for x in batch[1]], batch[2][r]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(model.training_step(local, 0).detach())


def main(rank: int, port: int, out_dir: str, world: int = 2) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.save({"loss": run(rank, world)}, os.path.join(out_dir, f"supcon_rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
