"""The deep saliency mask generator ``saliency`` (docs/masks.md).

A backbone from a checkpoint + a trained 1×1-conv head (``harl-masks train-saliency``, see
:mod:`harl.masks.saliency_train`); fg = p > ``threshold`` where p is the sigmoid output,
predicted at shortest side ``short_side`` and upsampled bilinearly to H×W. ``n_segments`` in the
manifest is the number of 8-connected foreground components. Torch is imported only when the
generator is built, so registering it costs nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np

from harl.masks.registry import GeneratorSpec, param, register_generator
from harl.masks.ops import count_components
from harl.utils.device import resolve_device  # the one resolver (re-exported here)


DEFAULT_SHORT_SIDE = 320


@dataclass(frozen=True)
class SaliencyParams:
    """Parameters of the ``saliency`` generator (defaults: docs/masks.md, mask CLI)."""

    weights: Optional[str] = param(None, "saliency head file written by `harl-masks train-saliency`", required=True)
    checkpoint: Optional[str] = param(None, "backbone checkpoint (default: the one recorded in --weights)")
    short_side: Optional[int] = param(None, "inference resolution: the image's shortest side is resized to this "
                                            "(default: the head's training scale, 320 unless trained otherwise)")
    threshold: float = param(0.5, "fg = saliency probability > threshold")
    device: str = param("auto", "torch device for inference: auto (cuda if available), cpu, cuda, cuda:1, ...")

    def __post_init__(self):
        if self.short_side is not None and self.short_side < 8:
            raise ValueError("saliency: short_side must be >= 8")
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError("saliency: threshold must be in [0, 1)")


class SaliencyPredictor:
    """``image (H×W×3 uint8) -> (mask H×W bool, info)``; loads the model on first use."""

    def __init__(self, params: SaliencyParams):
        if not params.weights:
            raise ValueError("saliency: --weights is required (train a head with `harl-masks train-saliency`)")
        self.params = params
        self._model = None
        self._short_side = params.short_side

    def load(self):
        if self._model is None:
            from harl.masks.saliency_model import load_saliency_model  # lazy: imports torch

            self._model, obj = load_saliency_model(self.params.weights, self.params.checkpoint,
                                                   device=str(resolve_device(self.params.device, option="device")))
            if self._short_side is None:
                self._short_side = int(obj.get("short_side") or DEFAULT_SHORT_SIDE)
        return self._model

    def probability(self, image: np.ndarray) -> np.ndarray:
        """H×W×3 uint8 → H×W float32 saliency p ∈ [0, 1]."""
        from harl.masks.saliency_model import predict_probability  # lazy: imports torch

        model = self.load()
        return predict_probability(model, image, self._short_side)

    def __call__(self, image: np.ndarray) -> Tuple[np.ndarray, Dict[str, Any]]:
        mask = self.probability(image) > self.params.threshold
        return mask, {"n_segments": count_components(mask), "fallback": ""}

    def __getstate__(self):
        return {"params": self.params, "_model": None, "_short_side": self.params.short_side}


def build_saliency(params: SaliencyParams) -> SaliencyPredictor:
    return SaliencyPredictor(params)


def describe_saliency(params: SaliencyParams) -> Dict[str, Any]:
    """Facts for meta.json: which weights (sha256), which backbone and checkpoint."""
    from harl.masks.saliency_model import file_sha256, read_head_file  # lazy: imports torch

    obj = read_head_file(params.weights)
    ckpt = params.checkpoint or obj.get("checkpoint")
    return {
        "weights": os.path.abspath(params.weights),
        "weights_sha256": file_sha256(params.weights),
        "backbone": obj.get("backbone"),
        "backbone_kwargs": obj.get("backbone_kwargs") or {},
        "checkpoint": os.path.abspath(ckpt) if ckpt else None,
        "checkpoint_sha256": obj.get("checkpoint_sha256"),
        "short_side": params.short_side or int(obj.get("short_side") or DEFAULT_SHORT_SIDE),
        "head_train": obj.get("train", {}),
    }


register_generator(GeneratorSpec(
    name="saliency",
    params_cls=SaliencyParams,
    build=build_saliency,
    description="deep saliency masks: backbone feature map → 1×1 conv → sigmoid > 0.5 (docs/masks.md)",
    uses_torch=True,
    describe=describe_saliency,
    # the masks depend on the weights' and checkpoint's contents (sha256, compared), not on paths or device
    volatile=("params.device", "params.weights", "params.checkpoint", "weights", "checkpoint", "head_train"),
))
