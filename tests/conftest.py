"""Shared fixtures: small configs for fast CPU tests."""

from __future__ import annotations

import copy
import os

import pytest

from harl.eval.linear_config import set_dotted

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

TINY_KWARGS = {
    "byol": {"proj_hidden_dim": 64, "proj_output_dim": 32, "pred_hidden_dim": 64},
    "simclr": {"proj_hidden_dim": 64, "proj_output_dim": 32},
    "mocov2plus": {"proj_hidden_dim": 64, "proj_output_dim": 32, "queue_size": 64},
    "harl": {"proj_hidden_dim": 64, "proj_output_dim": 32, "pred_hidden_dim": 64},
}


def tiny_cfg(method: str = "byol", **over) -> dict:
    """A raw (unparsed) config dict: resnet18 at width 8, 32 px, batch 8, CPU."""
    cfg = {
        "name": f"test-{method}",
        "method": method,
        "backbone": {"name": "resnet18", "kwargs": {"width": 8}},
        "method_kwargs": copy.deepcopy(TINY_KWARGS.get(method, {})),
        "data": {"dataset": "cifar10", "num_workers": 0},
        "augmentations": [{"crop_size": 32, "num_crops": 2}],
        "optimizer": {"name": "lars", "batch_size": 8, "lr": 0.3, "weight_decay": 1e-5,
                      "kwargs": {"eta": 0.02, "clip_lr": True, "exclude_bias_n_norm": True}},
        "scheduler": {"name": "warmup_cosine", "warmup_epochs": 1},
        "max_epochs": 2,
        "accelerator": "cpu",
        "devices": 1,
        "performance": {"disable_channel_last": True},
    }
    for key, value in over.items():
        set_dotted(cfg, key, value)
    return cfg


@pytest.fixture
def make_cfg():
    return tiny_cfg


def write_synthetic_fashion_mnist(root, n_train: int = 120, n_test: int = 40, seed: int = 0) -> str:
    """A tiny Fashion-MNIST-format IDX set: per class a distinct blob shape plus noise."""
    import numpy as np

    from harl.data.fashion_mnist import write_idx

    rng = np.random.default_rng(seed)

    def items(n):
        labels = (np.arange(n) % 10).astype(np.uint8)
        x = np.zeros((n, 28, 28), dtype=np.uint8)
        yy, xx = np.mgrid[:28, :28]
        for i, c in enumerate(labels):
            h, w = 8 + int(c), 20 - int(c)
            y0, x0 = rng.integers(2, 28 - h - 1), rng.integers(2, 28 - w - 1)
            shape = (yy >= y0) & (yy < y0 + h) & (xx >= x0) & (xx < x0 + w)
            x[i][shape] = rng.integers(120, 256, size=int(shape.sum()))
        return x, labels

    os.makedirs(root, exist_ok=True)
    xtr, ytr = items(n_train)
    xte, yte = items(n_test)
    write_idx(os.path.join(root, "train-images-idx3-ubyte.gz"), xtr)
    write_idx(os.path.join(root, "train-labels-idx1-ubyte.gz"), ytr)
    write_idx(os.path.join(root, "t10k-images-idx3-ubyte.gz"), xte)
    write_idx(os.path.join(root, "t10k-labels-idx1-ubyte.gz"), yte)
    return str(root)


@pytest.fixture(scope="session")
def scenes_root(tmp_path_factory) -> str:
    """A tiny fashion-scenes tree (64 train / 20 test scenes, 32 px) on a synthetic Fashion-MNIST."""
    from harl.data.fashion_scenes import FashionScenesParams, generate_fashion_scenes

    base = tmp_path_factory.mktemp("scenes")
    fm = write_synthetic_fashion_mnist(str(base / "fmnist"))
    out = str(base / "fashion-scenes")
    generate_fashion_scenes(out, FashionScenesParams(n_train=64, n_test=20, size=32), workers=1,
                            progress=False, fmnist_root=fm)
    return out


def scenes_cfg(method: str, scenes: str, ckpt_dir: str, **over) -> dict:
    """A tiny pretraining config on the tiny fashion-scenes tree."""
    cfg = tiny_cfg(method, **over)
    cfg["data"].update({"dataset": "fashion_scenes", "train_path": scenes, "val_path": scenes, "num_workers": 0})
    cfg["checkpoint"] = {"enabled": True, "dir": ckpt_dir, "frequency": 1}
    cfg["enable_progress_bar"] = False
    cfg["enable_model_summary"] = False
    cfg["num_sanity_val_steps"] = 0
    cfg["log_every_n_steps"] = 1
    if method == "harl":
        cfg["data"]["masks"] = {"enabled": True}
    return cfg
