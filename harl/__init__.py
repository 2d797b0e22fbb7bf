"""harl: object-aware self-supervised visual pretraining on a solo-learn-compatible core."""

from harl.version import __version__  # noqa: F401


def __getattr__(name: str):
    # lazy: ``import harl`` must not import torch
    if name == "load_backbone":
        from harl.zoo.models import load_backbone  # lazy: imports lightning, torch

        return load_backbone
    raise AttributeError(f"module 'harl' has no attribute '{name}'")
