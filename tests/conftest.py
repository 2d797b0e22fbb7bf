"""Shared fixtures: small configs for fast CPU tests."""

from __future__ import annotations

import copy
import os

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

TINY_KWARGS = {
    "byol": {"proj_hidden_dim": 64, "proj_output_dim": 32, "pred_hidden_dim": 64},
    "simclr": {"proj_hidden_dim": 64, "proj_output_dim": 32},
    "mocov2plus": {"proj_hidden_dim": 64, "proj_output_dim": 32, "queue_size": 64},
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
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return cfg


@pytest.fixture
def make_cfg():
    return tiny_cfg
