"""Export a backbone to the files other libraries load.

=============  ===========================================================================
format         file
=============  ===========================================================================
torchvision    ``.pth``: a plain state dict that loads strictly into
               :func:`harl.zoo.models.torchvision_resnet` (a torchvision ResNet, ``fc=Identity``)
timm           ``.pth``: a plain state dict for ``timm.create_model(name, num_classes=0)``
               (for ResNets timm's key names are torchvision's)
detectron2     ``.pkl``: ``{"model": {name: numpy array}, "__author__": "harl",
               "matching_heuristics": True}`` with detectron2's ResNet names (below); what its
               ``MODEL.WEIGHTS`` option reads, for R-C4 and R-FPN alike
safetensors    ``.safetensors``: harl key names + metadata (backbone name and kwargs)
=============  ===========================================================================

detectron2 names (the rule MoCo's ``convert-pretrain-to-detectron2`` applies):
``conv1``/``bn1`` → ``stem.conv1``/``stem.conv1.norm``; ``layerN`` → ``res{N+1}``; ``bnK`` →
``convK.norm``; ``downsample.0``/``.1`` → ``shortcut``/``shortcut.norm``. ``num_batches_tracked``
is left out (detectron2's frozen BN has no such buffer). detectron2's stem is 7×7, so a CIFAR-stem
backbone is refused.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch

from harl.utils.io import atomic_torch_save, atomic_write_bytes
from harl.registry import Registry
from harl.zoo.models import build_model
from harl.errors import UnsupportedExport
from harl.zoo.weights import BackboneWeights, cast_state_dict, safetensors_bytes
from harl.zoo.weights import build_harl_backbone


@dataclass
class ExportResult:
    path: str
    format: str
    keys: List[str]
    notes: List[str] = field(default_factory=list)


@dataclass
class Exporter:
    extension: str
    write: Callable[[BackboneWeights, str, Optional[str]], ExportResult]
    description: str


EXPORTERS: Registry[Exporter] = Registry("export format")


def _plain_state_dict(weights: BackboneWeights, fmt: str,
                      dtype: Optional[str]) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """The state dict of the ``fmt`` model after a strict load, and how that model differs from stock."""
    model = build_model(weights, fmt)  # strict load: proves the file will load into that model
    return cast_state_dict(model.state_dict(), dtype or "float32"), getattr(model, "harl_changes", [])


def _write_plain(fmt: str):
    def write(weights: BackboneWeights, out: str, dtype: Optional[str]) -> ExportResult:
        sd, changes = _plain_state_dict(weights, fmt, dtype)
        atomic_torch_save(sd, out)
        notes = [f"model: {', '.join(changes)}"] if changes else []
        return ExportResult(out, fmt, sorted(sd), notes)

    return write


def detectron2_key(key: str) -> str:
    """torchvision ResNet key → detectron2 ResNet key.

    E.g. ``layer1.0.bn1.weight`` → ``res2.0.conv1.norm.weight``.
    """
    parts = key.split(".")
    if parts[0].startswith("layer") and parts[0][5:].isdigit():
        parts[0] = f"res{int(parts[0][5:]) + 1}"
    else:
        parts.insert(0, "stem")
    out: List[str] = []
    i = 0
    while i < len(parts):
        p = parts[i]
        if p.startswith("bn") and p[2:].isdigit():
            out += [f"conv{p[2:]}", "norm"]
        elif p == "downsample" and i + 1 < len(parts) and parts[i + 1] in ("0", "1"):
            out += ["shortcut"] if parts[i + 1] == "0" else ["shortcut", "norm"]
            i += 1
        else:
            out.append(p)
        i += 1
    return ".".join(out)


def detectron2_state_dict(weights: BackboneWeights) -> Dict[str, "object"]:
    """detectron2-named numpy arrays (float32) of a ResNet backbone."""
    if not weights.is_resnet:
        raise UnsupportedExport(f"detectron2 export needs a ResNet backbone, not '{weights.backbone}'")
    if weights.resnet_spec().cifar_stem:
        raise UnsupportedExport("detectron2's stem is a 7×7 stride-2 conv + max-pool: a CIFAR-stem backbone "
                                "(3×3, no max-pool) has no detectron2 equivalent")
    sd, _ = _plain_state_dict(weights, "torchvision", "float32")
    out = {}
    for k, v in sd.items():
        if k.endswith("num_batches_tracked") or k.startswith("fc."):
            continue
        out[detectron2_key(k)] = v.numpy()
    return out


def _write_detectron2(weights: BackboneWeights, out: str, dtype: Optional[str]) -> ExportResult:
    if dtype not in (None, "float32", "fp32"):
        raise UnsupportedExport("detectron2 export is float32 only")
    model = detectron2_state_dict(weights)
    obj = {"model": model, "__author__": "harl", "matching_heuristics": True}
    atomic_write_bytes(out, pickle.dumps(obj, protocol=4))
    spec = weights.resnet_spec()
    notes = ["detectron2 config: MODEL.WEIGHTS <this file>, INPUT.FORMAT RGB, "
             "MODEL.PIXEL_MEAN [123.675, 116.28, 103.53], MODEL.PIXEL_STD [58.395, 57.12, 57.375], "
             "MODEL.RESNETS.STRIDE_IN_1X1 False (torchvision puts the stride in the 3×3 conv)"
             + ("" if weights.backbone == "resnet50" else
                f", MODEL.RESNETS.DEPTH {weights.backbone[6:]}, MODEL.RESNETS.RES2_OUT_CHANNELS {spec.width}")
             + ("" if spec.width == 64 else f", MODEL.RESNETS.STEM_OUT_CHANNELS {spec.width}")]
    if spec.c5_stride1:
        notes.append("the backbone was trained with a stride-1 res5: set MODEL.RESNETS.RES5_DILATION 2")
    return ExportResult(out, "detectron2", sorted(model), notes)


def _write_safetensors(weights: BackboneWeights, out: str, dtype: Optional[str]) -> ExportResult:
    build_harl_backbone(weights)  # strict check before writing
    atomic_write_bytes(out, safetensors_bytes(weights, dtype))
    return ExportResult(out, "safetensors", sorted(weights.state_dict))


EXPORTERS.register("torchvision", Exporter(".pth", _write_plain("torchvision"),
                                           "state dict for a torchvision ResNet (fc=Identity)"))
EXPORTERS.register("timm", Exporter(".pth", _write_plain("timm"), "state dict for timm.create_model(num_classes=0)"))
EXPORTERS.register("detectron2", Exporter(".pkl", _write_detectron2, "pickle read by detectron2's MODEL.WEIGHTS"))
EXPORTERS.register("safetensors", Exporter(".safetensors", _write_safetensors,
                                           "harl key names + architecture metadata"))


def export_weights(weights: BackboneWeights, fmt: str, out: str, dtype: Optional[str] = None) -> ExportResult:
    """Write ``weights`` as ``fmt`` to ``out`` (atomically; an existing file is replaced only on success)."""
    exporter = EXPORTERS.get(fmt)
    return exporter.write(weights, out, dtype)


def default_output(name: str, fmt: str) -> str:
    """``<name>-<format><ext>``, e.g. ``harl_r18-detectron2.pkl``."""
    return f"{name}-{fmt}{EXPORTERS.get(fmt).extension}"
