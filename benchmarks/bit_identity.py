"""Same seed, same weights: train every method a few steps through ``harl.train.pretrain`` and save
(or compare) the final weights, to show that a refactoring changed no behaviour.

    python benchmarks/bit_identity.py --out runs/bitid/before.pt              # on the old revision
    python benchmarks/bit_identity.py --out runs/bitid/after.pt --compare runs/bitid/before.pt

Each method runs its fashion-scenes recipe (``scripts/pretrain/fashion-scenes/<method>.yaml``) on a
small generated fashion-scenes tree (real Fashion-MNIST items, 32 px), at ResNet-18 width 8,
batch 16, ``--steps`` optimizer steps, seed 0, one data worker-less process, on the CPU. The file
holds, per method, the whole final ``state_dict`` (model, EMA networks, queues) and the logged
training losses. ``--compare`` prints one row per method (tensors compared, how many differ, the
largest absolute difference) and exits 1 unless every tensor is bit-identical.

Bit-identity holds on one machine and one torch build; compare files made on the same machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Dict, List

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = os.path.join(REPO, "scripts", "pretrain", "fashion-scenes")
sys.path.insert(0, REPO)

DEFAULT_METHODS = ["byol", "simclr", "mocov2plus", "harl", "hapicl_simclr", "hapicl_mocov2plus", "hapicl_byol",
                   "sgm_mocov2", "sgm_simclr", "barlow_twins", "vicreg", "simsiam", "mocov3", "swav", "dino",
                   "nnclr", "nnbyol", "nnsiam", "ressl", "supervised", "wmse", "vibcreg", "supcon", "deepclusterv2",
                   # variants: <method>@<override>,<override> (method_kwargs. is implied for bare keys)
                   "harl@loss_type=mask,empty_mask_policy=faithful", "harl@feature_map=c4",
                   "harl@feature_map=c5_stride1", "harl@feature_map=c5_pixel_shuffle,pooling=pixel_shuffle",
                   "hapicl_simclr@pix_variant=B,pix_spatial=true"]


def build_scenes(root: str, fmnist: str) -> str:
    from harl.data.fashion_scenes import FashionScenesParams, generate_fashion_scenes

    out = os.path.join(root, "fashion-scenes")
    generate_fashion_scenes(out, FashionScenesParams(n_train=96, n_test=32, size=32, seed=0), workers=1,
                            progress=False, fmnist_root=fmnist)
    return out


def split_variant(spec: str):
    """``harl@feature_map=c4,loss_type=mask`` → (``harl``, [``method_kwargs.feature_map=c4``, ...])."""
    method, _, rest = spec.partition("@")
    over = []
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        over.append(f"{key if '.' in key else 'method_kwargs.' + key}={value}")
    return method, over


def train_one(spec: str, scenes: str, work: str, steps: int) -> Dict[str, object]:
    import torch

    from harl.config import load_yaml, parse_cfg
    from harl.train import pretrain

    method, variant = split_variant(spec)
    tag = spec.replace("@", "-").replace(",", "-").replace("=", "_")
    over = [f"name=bitid-{tag}", "seed=0", "max_epochs=1", f"max_steps={steps}", "backbone.kwargs.width=8",
            "optimizer.batch_size=16", f"data.train_path={scenes}", f"data.val_path={scenes}",
            "data.num_workers=0", f"checkpoint.dir={os.path.join(work, 'ck', tag)}", "auto_resume.enabled=False",
            "enable_progress_bar=False", "enable_model_summary=False", "knn_eval.enabled=False",
            "scheduler.warmup_epochs=0", "accelerator=cpu", "precision=32-true", "wandb.enabled=False",
            "no_validation=True", "performance.disable_channel_last=True"] + variant
    cfg = parse_cfg(load_yaml(os.path.join(RECIPES, f"{method}.yaml"), over))
    torch.manual_seed(0)
    res = pretrain(cfg)
    state = torch.load(res.last_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    return {"state_dict": {k: v.clone() for k, v in state.items()}}


def compare(ref: Dict[str, dict], new: Dict[str, dict]) -> bool:
    import torch

    ok = True
    print(f"{'method':58s} {'tensors':>8s} {'differ':>7s} {'max |Δ|':>10s}  result")
    for method in sorted(new):  # the methods of this run (a subset of the reference's is fine)
        if method not in ref:
            print(f"{method:58s} {'':>8s} {'':>7s} {'':>10s}  not in the reference file")
            ok = False
            continue
        a, b = ref[method]["state_dict"], new[method]["state_dict"]
        keys = sorted(set(a) | set(b))
        differ, worst = 0, 0.0
        missing = [k for k in keys if k not in a or k not in b]
        for k in keys:
            if k in missing:
                continue
            if a[k].shape != b[k].shape or a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k]):
                differ += 1
                if a[k].shape == b[k].shape and a[k].is_floating_point():
                    worst = max(worst, float((a[k].double() - b[k].double()).abs().max()))
        same = differ == 0 and not missing
        ok &= same
        note = "identical" if same else (f"{len(missing)} keys missing on one side" if missing else "DIFFERENT")
        print(f"{method:58s} {len(keys):8d} {differ:7d} {worst:10.3g}  {note}")
    return ok


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="file to write (state dicts per method)")
    parser.add_argument("--compare", help="reference file made by an earlier run")
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per method")
    parser.add_argument("--fashion-mnist", default=None, help="Fashion-MNIST IDX folder (default: the Debian path)")
    args = parser.parse_args(argv)

    import warnings

    import torch

    from harl.utils.io import atomic_write_bytes

    warnings.filterwarnings("ignore")
    results: Dict[str, dict] = {}
    t0, c0 = time.time(), time.process_time()
    with tempfile.TemporaryDirectory() as work:
        scenes = build_scenes(work, args.fashion_mnist)
        for method in args.methods:
            print(f"[bit_identity] {method}", flush=True)
            results[method] = train_one(method, scenes, work, args.steps)
    import io

    buf = io.BytesIO()
    torch.save(results, buf)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    atomic_write_bytes(args.out, buf.getvalue())
    print(f"[bit_identity] wrote {args.out} ({len(results)} methods, {time.time() - t0:.0f} s wall, "
          f"{time.process_time() - c0:.0f} s CPU, load {os.getloadavg()[0]:.2f})")
    if args.compare:
        ref = torch.load(args.compare, map_location="cpu", weights_only=True)
        return 0 if compare(ref, results) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
