"""Backbone weights + architecture, read from any checkpoint the zoo handles.

:class:`BackboneWeights` is the common currency of the zoo: a backbone state dict in harl's own key
names (torchvision names for ResNets, timm names for timm models) plus the architecture that
rebuilds it (``backbone`` name and ``kwargs`` as in ``backbone: {name, kwargs}`` of a config).

Checkpoints are read by :func:`harl.eval.pretrained.load_pretrained_backbone` (the project's one
reader: architecture from the caller, else ``args.json`` / the checkpoint's config, else the ResNet
tensor shapes; always a strict load). Files written here (:func:`save_safetensors`) carry the
architecture in their safetensors metadata, so they rebuild exactly, including options that change
no tensor shape (``c5_stride1``, ``c5_dilate``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from harl.backbones.resnet_spec import RESNET_ARCH_KWARGS, RESNET_NAMES, ResNetSpec  # noqa: F401  (re-exported)
from harl.weights import read_run_config, strict_load
from harl.errors import CheckpointMismatchError
from harl.utils.io import atomic_write_bytes
from harl.eval.pretrained import infer_resnet_architecture
from harl.eval.pretrained import load_pretrained_backbone

META_BACKBONE = "harl.backbone"
META_KWARGS = "harl.backbone_kwargs"
META_SOURCE = "harl.source"



@dataclass
class BackboneWeights:
    """A backbone state dict (harl key names) and how to rebuild its architecture."""

    backbone: str
    kwargs: Dict[str, Any]
    state_dict: Dict[str, torch.Tensor]
    source: str = ""
    #: the training config when known (args.json / hyper-parameters), as plain containers
    config: Optional[Dict[str, Any]] = None
    #: True when the architecture was guessed from tensor shapes
    arch_inferred: bool = False
    info: Dict[str, Any] = field(default_factory=dict)

    @property
    def is_resnet(self) -> bool:
        return ResNetSpec.is_resnet(self.backbone)

    def resnet_spec(self) -> ResNetSpec:
        """The :class:`ResNetSpec` of a ResNet's kwargs (keys other than the spec's are ignored)."""
        return ResNetSpec.from_kwargs(self.backbone, self.kwargs, strict=False)

    def arch_kwargs(self) -> Dict[str, Any]:
        """The kwargs that change the function (ResNets: width, cifar_stem, c5_stride1, c5_dilate)."""
        if not self.is_resnet:
            return dict(self.kwargs)
        return self.resnet_spec().arch_kwargs()


def build_harl_backbone(weights: BackboneWeights, load: bool = True) -> torch.nn.Module:
    """harl's own backbone module (``SSLResNet`` or the timm model) with the weights loaded strictly."""
    from harl.backbones import build_backbone  # lazy: imports torchvision

    model = build_backbone(weights.backbone, **weights.kwargs)
    if load:
        strict_load(model, weights.state_dict, source=weights.source or "weights")
    return model


# ---------------------------------------------------------------------------------------------
# architecture inference
# ---------------------------------------------------------------------------------------------


def infer_resnet_arch(sd: Mapping[str, torch.Tensor], source: str = "state dict") -> Tuple[str, Dict[str, Any]]:
    """``(name, kwargs)`` of the harl ResNet a torchvision-named state dict belongs to, or raise.

    Uses :func:`harl.eval.pretrained.infer_resnet_architecture` (depth and block type from the
    ``layerN.i`` keys, ``width`` from ``conv1``, ``cifar_stem`` from its 3×3 kernel).
    """
    name, kwargs = infer_resnet_architecture(dict(sd))
    if name is None:
        raise CheckpointMismatchError(
            f"{source}: not a torchvision-style resnet18/34/50 state dict (first keys: {sorted(sd)[:5]}); "
            "give the backbone name and kwargs explicitly")
    return name, dict(kwargs)


# ---------------------------------------------------------------------------------------------
# safetensors with harl metadata
# ---------------------------------------------------------------------------------------------


def _dtype(name: Optional[str]) -> Optional[torch.dtype]:
    table = {None: None, "float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
             "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if name not in table:
        raise ValueError(f"unknown dtype '{name}'; use float32, float16 or bfloat16")
    return table[name]


def cast_state_dict(sd: Mapping[str, torch.Tensor], dtype: Optional[str]) -> Dict[str, torch.Tensor]:
    """Floating tensors to ``dtype`` (integers such as ``num_batches_tracked`` are kept)."""
    dt = _dtype(dtype)
    out = {}
    for k, v in sd.items():
        v = v.detach().cpu()
        if dt is not None and v.is_floating_point():
            v = v.to(dt)
        out[k] = v.contiguous()
    return out


def safetensors_bytes(weights: BackboneWeights, dtype: Optional[str] = None) -> bytes:
    from safetensors.torch import save

    meta = {"format": "pt", META_BACKBONE: weights.backbone,
            META_KWARGS: json.dumps(weights.kwargs, sort_keys=True)}
    if weights.source:
        meta[META_SOURCE] = os.path.basename(weights.source)
    return _canonical_header(save(cast_state_dict(weights.state_dict, dtype), metadata=meta))


def _canonical_header(data: bytes) -> bytes:
    """The same safetensors file with its JSON header key-sorted, so equal weights give equal bytes.

    (safetensors writes the metadata in hash-map order, which changes from run to run.) Layout:
    8-byte little-endian header length, the JSON header padded with spaces to a multiple of 8, then
    the tensor bytes, whose offsets are relative to the end of the header and so do not change.
    """
    import struct

    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data[8 + n:]


def save_safetensors(weights: BackboneWeights, path: str, dtype: Optional[str] = None) -> str:
    """Write the backbone state dict + architecture metadata atomically."""
    atomic_write_bytes(path, safetensors_bytes(weights, dtype))
    return path


def read_safetensors_metadata(path: str) -> Dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as err:  # noqa: BLE001 - re-raised with the file name
        raise CheckpointMismatchError(f"could not read safetensors file '{path}': {err}") from err


# ---------------------------------------------------------------------------------------------
# reading any checkpoint
# ---------------------------------------------------------------------------------------------


def read_backbone_weights(path: str, backbone: Optional[str] = None,
                          backbone_kwargs: Optional[Mapping[str, Any]] = None) -> BackboneWeights:
    """The backbone of checkpoint ``path`` (``.ckpt``/``.pth``/``.pt``/``.safetensors``), loaded strictly.

    Reading is delegated to :func:`harl.eval.pretrained.load_pretrained_backbone` (architecture from
    the explicit arguments, else ``args.json`` / the checkpoint's config with the dataset's CIFAR-stem
    default, else the ResNet tensor shapes); the harl metadata of a ``.safetensors`` file written by
    :func:`save_safetensors` counts as explicit. A mismatch raises :class:`CheckpointMismatchError`
    naming every missing, unexpected and mis-shaped key.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint '{path}' does not exist")
    name = backbone
    kwargs = dict(backbone_kwargs) if backbone_kwargs is not None else None
    if path.endswith(".safetensors") and backbone is None:
        meta = read_safetensors_metadata(path)
        if META_BACKBONE in meta:
            try:
                meta_kwargs = dict(json.loads(meta.get(META_KWARGS) or "{}"))
            except (json.JSONDecodeError, TypeError, ValueError) as err:
                raise CheckpointMismatchError(f"'{path}': bad {META_KWARGS} metadata: {err}") from err
            name = meta[META_BACKBONE]
            kwargs = {**meta_kwargs, **(kwargs or {})}
    model, info = load_pretrained_backbone(path, backbone_name=name, backbone_kwargs=kwargs)
    sd = {k: v.detach() for k, v in model.state_dict().items()}  # the model is dropped: no copy needed
    config = None
    if info.get("config_source"):
        config = _plain(read_run_config(path))
    return BackboneWeights(str(info["backbone_name"]), dict(info["backbone_kwargs"]), sd, source=path,
                           config=config, arch_inferred=info.get("arch_source") == "state_dict", info=dict(info))


def _plain(cfg) -> Optional[Dict[str, Any]]:
    if cfg is None:
        return None
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return dict(cfg)
