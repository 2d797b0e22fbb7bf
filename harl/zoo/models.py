"""Plain torchvision / timm models for harl backbones, and :func:`load_backbone`.

``format="torchvision"`` returns a ``torchvision.models.ResNet`` (its own class and forward) with
``fc = Identity`` so that ``model(x)`` is the pooled B×C feature. Architecture options of harl's
``SSLResNet`` are rebuilt with torchvision's own pieces and the model says so in
``model.harl_changes``:

- ``cifar_stem``: ``conv1`` = 3×3 stride-1 conv (padding 2), ``maxpool`` = Identity;
- ``width`` ≠ 64: the stem and the four stages rebuilt with ``ResNet._make_layer`` at that width;
- ``c5_stride1``: ``layer4`` rebuilt with stride 1 (``c5_dilate``: torchvision's dilation).

``format="timm"`` returns ``timm.create_model(name, num_classes=0)``; timm's ResNet key names equal
torchvision's and the CIFAR stem is swapped in the same way; ``width`` ≠ 64 (timm's plain stem is
fixed at 64 channels) and ``c5_stride1`` have no timm equivalent and are refused. timm backbones (any other name) are
rebuilt with ``timm.create_model`` and keep timm's names. ``format="harl"`` returns harl's own
backbone (``forward_features`` gives the feature map).

All loads are strict: any missing, unexpected or mis-shaped key raises ``CheckpointMismatchError``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import torch
from torch import nn

from harl.backbones.resnet_spec import ResNetSpec
from harl.weights import strict_load
from harl.registry import Registry
from harl.zoo.weights import BackboneWeights, build_harl_backbone, read_backbone_weights
from harl.errors import UnsupportedExport
from harl.errors import ManifestError
from harl.registry import close_match_hint
from harl.zoo.download import fetch_entry
from harl.zoo.manifest import load_manifest

#: format name → builder(weights) returning an un-loaded model whose state dict keys match ``weights``
MODEL_FORMATS: Registry[Callable[[BackboneWeights], nn.Module]] = Registry("model format")


def torchvision_resnet(name: str, width: int = 64, cifar_stem: bool = False, c5_stride1: bool = False,
                       c5_dilate: bool = False, **_ignored) -> nn.Module:
    """A ``torchvision.models.ResNet`` with harl's architecture options (see the module docstring).

    Argument adapter for :meth:`harl.backbones.resnet_spec.ResNetSpec.build_torchvision`.
    """
    return ResNetSpec(name, width=width, cifar_stem=cifar_stem, c5_stride1=c5_stride1,
                      c5_dilate=c5_dilate).build_torchvision()


def _torchvision_builder(weights: BackboneWeights) -> nn.Module:
    if not weights.is_resnet:
        raise UnsupportedExport(f"backbone '{weights.backbone}' is a timm model: it has no torchvision "
                                "equivalent; use format='timm'")
    return weights.resnet_spec().build_torchvision()


def _timm_builder(weights: BackboneWeights) -> nn.Module:
    import timm

    if not weights.is_resnet:
        name = weights.backbone[len("timm/"):] if weights.backbone.startswith("timm/") else weights.backbone
        kwargs = dict(weights.kwargs)
        kwargs.pop("pretrained", None)
        return timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    return weights.resnet_spec().build_timm()


def _harl_builder(weights: BackboneWeights) -> nn.Module:
    return build_harl_backbone(weights, load=False)


MODEL_FORMATS.register("torchvision", _torchvision_builder)
MODEL_FORMATS.register("timm", _timm_builder)
MODEL_FORMATS.register("harl", _harl_builder)


def default_format(weights: BackboneWeights) -> str:
    return "torchvision" if weights.is_resnet else "timm"


def build_model(weights: BackboneWeights, format: Optional[str] = None, load: bool = True) -> nn.Module:
    """The ``format`` model for ``weights`` (default: torchvision for ResNets, timm otherwise).

    With ``load`` the weights are loaded strictly.
    """
    fmt = format or default_format(weights)
    model = MODEL_FORMATS.get(fmt)(weights)
    if load:
        strict_load(model, weights.state_dict, source=weights.source or "weights")
    return model


def resolve_weights(name_or_path: str, backbone: Optional[str] = None,
                    backbone_kwargs: Optional[Mapping[str, Any]] = None, manifest: Optional[str] = None,
                    cache_dir: Optional[str] = None, progress: bool = True):
    """``(BackboneWeights, ZooEntry or None)`` for a zoo entry name or a checkpoint path.

    A name found in the manifest is fetched and verified (see :mod:`harl.zoo.download`); otherwise
    ``name_or_path`` must be an existing file.
    """
    import os

    if os.path.isfile(name_or_path):
        return read_backbone_weights(name_or_path, backbone, backbone_kwargs), None
    try:
        m = load_manifest(manifest)
    except ManifestError as err:
        raise FileNotFoundError(f"'{name_or_path}' is not a file, and the zoo manifest is unavailable: {err}") from err
    if name_or_path not in m:
        raise FileNotFoundError(
            f"'{name_or_path}' is neither a file nor a zoo entry in {m.path}"
            f"{close_match_hint(name_or_path, m.names)}; entries: {', '.join(m.names) or 'none'}")
    entry = m.get(name_or_path)
    path = fetch_entry(entry, cache_dir=cache_dir, progress=progress)
    weights = read_backbone_weights(path, backbone or entry.backbone,
                                    backbone_kwargs if backbone_kwargs is not None else entry.backbone_kwargs)
    weights.config = entry.config
    return weights, entry


def load_backbone(name_or_path: str, format: Optional[str] = None, *, backbone: Optional[str] = None,
                  backbone_kwargs: Optional[Mapping[str, Any]] = None, manifest: Optional[str] = None,
                  cache_dir: Optional[str] = None, progress: bool = True) -> nn.Module:
    """A plain model with pretrained weights loaded strictly.

    Args:
        name_or_path: a zoo entry name (``harl-zoo list``) or a checkpoint file (harl ``.ckpt`` with
            ``args.json``, exported ``.pth``/``.safetensors``).
        format: ``"torchvision"`` (default for ResNets: a ``torchvision.models.ResNet`` with
            ``fc=Identity``), ``"timm"`` (``timm.create_model(..., num_classes=0)``; default for timm
            backbones) or ``"harl"`` (harl's backbone class).
        backbone, backbone_kwargs: override the architecture recorded with the weights.
        manifest: manifest file (default ``$HARL_ZOO_MANIFEST`` or the repository's).
        cache_dir: download cache (default ``$HARL_CACHE`` or ``~/.cache/harl``).

    Returns:
        the model in train mode (call ``.eval()`` for features); ``model(x)``: B×3×H×W → B×C.
    """
    weights, _ = resolve_weights(name_or_path, backbone, backbone_kwargs, manifest, cache_dir, progress)
    return build_model(weights, format)


def random_backbone(entry, format: Optional[str] = None) -> nn.Module:
    """The architecture of zoo ``entry`` without pretrained weights (``pretrained=False`` in the hub)."""
    weights = BackboneWeights(entry.backbone, dict(entry.backbone_kwargs), {}, source=entry.name)
    return build_model(weights, format, load=False)


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pooled features B×C of ``model`` (torchvision / timm / harl) for images B×3×H×W, in eval mode."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(x)
    finally:
        model.train(was)
