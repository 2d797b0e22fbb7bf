"""Two gloo processes run one training step of each contrastive method on their half of a batch.

Used by tests/test_ddp.py (``python -m tests.ddp_gather_worker RANK PORT OUT`` twice); :func:`run_method` with
``world = 1`` is the single-process run on the whole batch the test compares against. BatchNorm is
in eval mode so every sample's embedding is independent of how the batch is split; SGM's random
masks are drawn once for the whole batch and each rank takes its rows.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any, Dict

import torch

from tests.test_method_reference import build

HALF = 4
METHODS = {
    "simclr": {},
    "hapicl_simclr": {"pix_variant": "A"},
    "sgm_simclr": {},
    "sgm_mocov2": {},
}


def full_batch() -> list:
    from tests.test_method_reference import _disc

    g = torch.Generator().manual_seed(11)
    X = [torch.randn(2 * HALF, 3, 32, 32, generator=g) for _ in range(2)]
    masks = [torch.stack([_disc(8 + 2 * i, 10 + v * 3 + i, 6 + i) for i in range(2 * HALF)])[:, None] for v in range(2)]
    full = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).repeat(2 * HALF, 1)
    return [torch.arange(2 * HALF) + 50, X, torch.arange(2 * HALF) % 10, {"masks": masks, "coords": [full, full.clone()]}]


def rows(batch: list, r: slice) -> list:
    extras = {k: [t[r] for t in v] for k, v in batch[3].items()}
    return [batch[0][r], [x[r] for x in batch[1]], batch[2][r], extras]


def _fixed_views(model, batch: list, r: slice, moco: bool):
    """The SGM views of the whole batch (seeded), restricted to rows ``r`` (hard: per negative m)."""
    from harl.methods.sgm import SGMViews

    X = batch[1]
    inputs = [model.input_filter(x) for x in X]
    maps = None
    if moco:
        with torch.no_grad():
            maps = {v: model.momentum_backbone.forward_features(x) for v, x in enumerate(inputs)}
    torch.manual_seed(7)
    v = model.prepare_views(X, None, inputs=inputs, maps=maps)
    n, m = X[0].shape[0], model.num_hard_negatives

    def hard_rows(t):
        return None if t is None else t.view(m, n, *t.shape[1:])[:, r].reshape(-1, *t.shape[1:])

    return SGMViews([x[r] for x in v.raw], [x[r] for x in v.inputs], [x[r] for x in v.fg],
                    [x[r] for x in v.queries], [x[r] for x in v.query_masks],
                    [hard_rows(t) for t in v.hard], [hard_rows(t) for t in v.hard_masks])


def run_method(method: str, rank: int, world: int) -> Dict[str, Any]:
    model, logs = build(method, **METHODS[method])
    model.eval()  # BatchNorm on running statistics: a sample's embedding does not depend on the split
    batch = full_batch()
    r = slice(rank * HALF, (rank + 1) * HALF) if world > 1 else slice(None)
    if method.startswith("sgm"):
        views = _fixed_views(model, batch, r, moco=method == "sgm_mocov2")
        model.prepare_views = lambda *a, **k: views
        batch = batch[:3]
    local = rows(batch + [{}], r)[:3] if len(batch) == 3 else rows(batch, r)
    loss = model.training_step(local, 0)
    out = {"loss": float(loss.detach()), "logs": dict(logs)}
    if hasattr(model, "queue"):
        out["queue"] = model.queue.clone()
        out["queue_ptr"] = int(model.queue_ptr)
    return out


def main(rank: int, port: int, out_dir: str, world: int = 2) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        res = {m: run_method(m, rank, world) for m in METHODS}
        torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
