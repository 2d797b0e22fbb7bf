"""The deep saliency model of docs/masks.md: frozen backbone → 1×1 conv (C→1) → sigmoid.

``SaliencyModel(x)``: B×3×H×W (ImageNet-normalised) → logits B×1×h×w on the backbone's feature
map (``backbone.forward_features``). Inference (:func:`predict_probability`) resizes the image to
shortest side ``short_side`` (320), applies the sigmoid, upsamples p bilinearly to H×W and the
mask is p > threshold (0.5).

A *head file* (``torch.save`` dict, loadable with ``weights_only=True``) holds everything needed to
rebuild the model: :data:`HEAD_FORMAT`, ``head`` (state dict of the 1×1 conv), ``backbone`` (name),
``backbone_kwargs``, ``num_features``, ``checkpoint`` (path of the backbone checkpoint, or None),
``checkpoint_sha256``, ``backbone_state_dict`` (only when no checkpoint was used: the random-init
backbone the head was trained on), and ``train`` (how it was trained).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from harl.errors import SaliencyWeightsError

HEAD_FORMAT = "harl-saliency-head/1"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SaliencyHead(nn.Module):
    """The "foreground-ness" classifier: Conv1×1(C→1) with bias; B×C×h×w → logits B×1×h×w."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 1, kernel_size=1, bias=True)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.conv(feats)


class SaliencyModel(nn.Module):
    """Backbone (frozen, eval mode) + :class:`SaliencyHead`; B×3×H×W → logits B×1×h×w."""

    def __init__(self, backbone: nn.Module, head: SaliencyHead):
        super().__init__()
        self.backbone = backbone
        self.head = head
        for p in self.backbone.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # frozen: BN statistics never move
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.backbone.forward_features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def file_sha256(path: str, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(block)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def resize_short_side(image: np.ndarray, short_side: int) -> np.ndarray:
    """H×W×3 uint8 → shortest side ``short_side`` (bilinear, antialiased when shrinking)."""
    h, w = image.shape[:2]
    s = short_side / min(h, w)
    nh, nw = max(1, int(round(h * s))), max(1, int(round(w * s)))
    if (nh, nw) == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))


def to_normalized_tensor(image: np.ndarray) -> torch.Tensor:
    """H×W×3 uint8 → 3×H×W float, ImageNet-normalised."""
    x = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std


def build_backbone_for_head(name: str, kwargs: Optional[Dict[str, Any]] = None) -> nn.Module:
    from harl.backbones import build_backbone  # lazy: imports torchvision

    backbone = build_backbone(name, **(kwargs or {}))
    if not hasattr(backbone, "forward_features"):
        raise SaliencyWeightsError(f"backbone '{name}' has no forward_features (a feature map is needed)")
    return backbone


def load_backbone_checkpoint(checkpoint: str, backbone: nn.Module) -> nn.Module:
    """Strictly load ``backbone.*`` weights of a solo-learn style checkpoint.

    An argument adapter kept for its name: the load is :func:`harl.checkpoint.load_backbone`, the one
    path from a weights file into a backbone (the architecture comes from the head file here).
    """
    from harl.weights import load_backbone  # lazy: keeps start-up light

    return load_backbone(checkpoint, backbone)


def read_head_file(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"saliency weights '{path}' do not exist (train them with "
                                "`harl-masks train-saliency`)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise SaliencyWeightsError(f"cannot read saliency weights '{path}': {err}") from err
    if not isinstance(obj, dict) or obj.get("format") != HEAD_FORMAT:
        raise SaliencyWeightsError(f"'{path}' is not a harl saliency head file (expected format "
                                   f"'{HEAD_FORMAT}', got {obj.get('format') if isinstance(obj, dict) else type(obj)})")
    return obj


def load_saliency_model(weights: str, checkpoint: Optional[str] = None, device: str = "cpu",
                        verify_checkpoint: bool = True) -> Tuple[SaliencyModel, Dict[str, Any]]:
    """Rebuild the model of a head file; returns ``(model in eval mode on device, head-file dict)``.

    ``checkpoint`` overrides the backbone checkpoint recorded in the head file; with
    ``verify_checkpoint`` its sha256 must equal the recorded one (the head is only valid on the
    features it was trained on).
    """
    obj = read_head_file(weights)
    backbone = build_backbone_for_head(obj["backbone"], obj.get("backbone_kwargs") or {})
    ckpt = checkpoint or obj.get("checkpoint")
    if ckpt:
        if not os.path.isfile(ckpt):
            raise FileNotFoundError(f"backbone checkpoint '{ckpt}' (for saliency weights '{weights}') does not exist")
        recorded = obj.get("checkpoint_sha256")
        if verify_checkpoint and recorded and file_sha256(ckpt) != recorded:
            raise SaliencyWeightsError(
                f"backbone checkpoint '{ckpt}' is not the one the saliency head '{weights}' was trained on "
                f"(sha256 differs from {recorded[:12]}…)")
        load_backbone_checkpoint(ckpt, backbone)
    elif "backbone_state_dict" in obj:
        from harl.weights import strict_load  # lazy: keeps start-up light

        strict_load(backbone, obj["backbone_state_dict"], source=f"saliency weights '{weights}'")
    else:
        raise SaliencyWeightsError(f"'{weights}' names no backbone checkpoint; pass --checkpoint")
    head = SaliencyHead(int(obj["num_features"]))
    from harl.weights import strict_load  # lazy: keeps start-up light

    strict_load(head, obj["head"], source=f"saliency weights '{weights}'")
    model = SaliencyModel(backbone, head).to(device).eval()
    return model, obj


@torch.inference_mode()
def predict_probability(model: SaliencyModel, image: np.ndarray, short_side: int = 320) -> np.ndarray:
    """H×W×3 uint8 → H×W float32 saliency p ∈ [0, 1] (sigmoid at feature resolution, bilinear to H×W)."""
    h, w = image.shape[:2]
    device = next(model.head.parameters()).device
    x = to_normalized_tensor(resize_short_side(image, short_side)).unsqueeze(0).to(device)
    p = torch.sigmoid(model(x).float())
    p = F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)
    return p[0, 0].cpu().numpy()
