"""Operators dispatched per training step, per method (a proxy for GPU kernel launches).

    python benchmarks/op_count.py                    # ImageNet-100 recipes at ResNet-50, 64 px, batch 8
    python benchmarks/op_count.py --methods byol harl --backbone resnet18

On a fast GPU a small-batch step can be bound by the host: Python and one launch per operator. This
counts the ATen operators of one full step (forward, backward, optimiser; CPU, tiny input — the count
does not depend on the input size) with ``torch.profiler``, so methods can be compared without a GPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def count_ops(method: str, backbone: str, size: int, batch: int) -> dict:
    import argparse as ap

    import torch
    from lightning.pytorch import Trainer
    from torch.profiler import ProfilerActivity, profile

    from benchmarks.common import InMemoryLoader
    from benchmarks.gpu_check import FULL, method_config, synthetic_batch
    from harl.methods import METHODS

    sizes = dict(FULL, backbone=(backbone, {}), size=size, batch=batch, precision="32-true")
    args = ap.Namespace(sizes=sizes)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = method_config(method, args, {"device": "cpu"}, tmp)
        model = METHODS.get(method)(cfg)
        b = synthetic_batch(batch, size, "cpu", METHODS.get(method).uses_masks)
        counts = {}

        from lightning.pytorch import Callback

        class Prof(Callback):
            def on_train_batch_start(self, trainer, pl_module, batch_, batch_idx):
                if batch_idx == 1:
                    self.p = profile(activities=[ProfilerActivity.CPU])
                    self.p.__enter__()

            def on_train_batch_end(self, trainer, pl_module, outputs, batch_, batch_idx):
                if batch_idx == 1:
                    self.p.__exit__(None, None, None)
                    ev = [e for e in self.p.events() if e.name.startswith("aten::")]
                    counts["aten_ops"] = len(ev)
                    counts["top_level_ops"] = sum(1 for e in ev if e.cpu_parent is None
                                                  or not e.cpu_parent.name.startswith("aten::"))

        trainer = Trainer(max_steps=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, callbacks=[Prof()],
                          num_sanity_val_steps=0)
        trainer.fit(model, InMemoryLoader([b] * 2))
    return {"method": method, **counts}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=["byol", "harl", "simclr", "hapicl_simclr", "mocov2plus",
                                                    "sgm_mocov2"])
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args(argv)
    rows = [count_ops(m, args.backbone, args.size, args.batch) for m in args.methods]
    base = next((r["top_level_ops"] for r in rows if r["method"] == "byol"), None)
    print(f"{args.backbone}, {args.size} px, batch {args.batch}: operators in one training step")
    print(f"{'method':<20}{'aten ops':>10}{'top-level':>11}{'vs byol':>9}")
    for r in rows:
        ratio = f"{r['top_level_ops'] / base:.2f}" if base else ""
        print(f"{r['method']:<20}{r['aten_ops']:>10}{r['top_level_ops']:>11}{ratio:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
