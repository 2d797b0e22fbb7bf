"""One description of harl's ResNets: :class:`ResNetSpec`.

Every place that builds, exports or rebuilds a ResNet backbone goes through this dataclass:

- the registered ``resnet18/34/50`` builders (here) → :meth:`ResNetSpec.build` (harl's
  ``SSLResNet``, whose stages are made by :func:`harl.backbones.resnet.build_stages`, as are those
  of the plain torchvision model);
- ``harl.zoo.models`` (plain torchvision / timm models → :meth:`ResNetSpec.build_torchvision`,
  :meth:`ResNetSpec.build_timm`);
- ``harl.zoo.weights`` / ``harl.zoo.export`` (the kwargs that change the function →
  :meth:`ResNetSpec.arch_kwargs`);
- ``harl.eval.pretrained`` (the inverse table, state dict → architecture →
  :meth:`ResNetSpec.from_state_dict`).

Fields: ``name`` (``resnet18`` / ``resnet34`` / ``resnet50``), ``width`` (64 = torchvision),
``cifar_stem`` (3×3 stride-1 conv, padding 2, no max-pool), ``c5_stride1`` (layer4 with stride 1),
``c5_dilate`` (with ``c5_stride1``: torchvision's dilation instead), ``zero_init_residual``
(initialisation only). Values are kept as given (a config's ``1`` stays ``1``), so the kwargs a
spec gives back are the kwargs it was made from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

from torchvision.models.resnet import BasicBlock, Bottleneck

from harl.backbones.registry import BACKBONES
from harl.backbones.resnet import SSLResNet, build_stages, cifar_stem_conv

#: name → (block kind, blocks per stage); the one table of harl's ResNets
RESNET_LAYOUTS: Dict[str, Tuple[str, Tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}
#: harl's ResNets (torchvision key names; plain torchvision / timm / detectron2 equivalents exist)
RESNET_NAMES = tuple(RESNET_LAYOUTS)
#: every ``backbone.kwargs`` key of a ResNet, in the order of the error message's valid list
RESNET_KWARGS = ("cifar_stem", "width", "zero_init_residual", "c5_stride1", "c5_dilate")
#: ResNet kwargs that change the computed function (others, like zero_init_residual, only the init)
RESNET_ARCH_KWARGS = ("width", "cifar_stem", "c5_stride1", "c5_dilate")

CIFAR_STEM_NOTE = "conv1=3x3 stride 1 padding 2, maxpool=Identity (CIFAR stem)"


def _block(kind: str):
    return Bottleneck if kind == "bottleneck" else BasicBlock


@dataclass(frozen=True)
class ResNetSpec:
    """A harl ResNet architecture (see the module docstring)."""

    name: str
    width: Any = 64
    cifar_stem: Any = False
    c5_stride1: Any = False
    c5_dilate: Any = False
    zero_init_residual: Any = False

    # ------------------------------------------------------------------ construction

    @staticmethod
    def is_resnet(name: Optional[str]) -> bool:
        return name in RESNET_LAYOUTS

    @classmethod
    def from_kwargs(cls, name: str, kwargs: Optional[Mapping[str, Any]] = None, strict: bool = True) -> "ResNetSpec":
        """The spec of ``backbone: {name, kwargs}``.

        ``strict`` (building a harl backbone): an unknown key or ``c5_dilate`` on a BasicBlock ResNet
        is a :class:`~harl.errors.ConfigError`. Not strict (exports): other keys are ignored.
        """
        kwargs = dict(kwargs or {})
        if strict:
            from harl.errors import ConfigError
            from harl.registry import close_match_hint

            unexpected = [k for k in kwargs if k not in RESNET_KWARGS]
            if unexpected:
                key = unexpected[0]
                raise ConfigError(f"unknown config key 'backbone.kwargs.{key}'"
                                  f"{close_match_hint(key, list(RESNET_KWARGS))}")
        spec = cls(name, **{k: kwargs[k] for k in RESNET_KWARGS if k in kwargs})
        if strict and spec.c5_dilate and spec.c5_stride1 and not spec.bottleneck:
            from harl.errors import ConfigError

            raise ConfigError("backbone.kwargs.c5_dilate (HARL method_kwargs.c5_dilate) needs a Bottleneck ResNet "
                              "(resnet50): torchvision's BasicBlock (resnet18/34) has no dilation; use c5_stride1 "
                              "without c5_dilate")
        return spec

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Any]) -> Optional["ResNetSpec"]:
        """The spec of a torchvision-style ResNet state dict (bare backbone keys), or None.

        Depth from the number of blocks per stage (and Bottleneck ``conv3``), ``width`` from
        ``conv1.weight``'s output channels, ``cifar_stem`` from its 3×3 kernel.
        """
        import re

        w = state_dict.get("conv1.weight")
        if w is None or w.dim() != 4:
            return None
        blocks: Dict[int, set] = {1: set(), 2: set(), 3: set(), 4: set()}
        layer_re = re.compile(r"^layer([1-4])\.(\d+)\.")
        for k in state_dict:
            m = layer_re.match(k)
            if m:
                blocks[int(m.group(1))].add(int(m.group(2)))
        layout = tuple(len(blocks[i]) for i in (1, 2, 3, 4))
        kind = "bottleneck" if "layer1.0.conv3.weight" in state_dict else "basic"
        for name, (k, lay) in RESNET_LAYOUTS.items():
            if (k, lay) == (kind, layout):
                return cls(name, width=int(w.shape[0]), cifar_stem=int(w.shape[-1]) == 3)
        return None

    # ------------------------------------------------------------------ views

    @property
    def bottleneck(self) -> bool:
        return RESNET_LAYOUTS[self.name][0] == "bottleneck"

    @property
    def layers(self) -> List[int]:
        return list(RESNET_LAYOUTS[self.name][1])

    @property
    def block(self):
        """torchvision's ``BasicBlock`` or ``Bottleneck``."""
        return _block(RESNET_LAYOUTS[self.name][0])

    @property
    def num_features(self) -> int:
        return self.width * 8 * (4 if self.bottleneck else 1)

    def to_kwargs(self) -> Dict[str, Any]:
        """All ``backbone.kwargs`` of the spec (every key, defaults included)."""
        return {k: getattr(self, k) for k in RESNET_KWARGS}

    def arch_kwargs(self) -> Dict[str, Any]:
        """The kwargs that change the function: width, cifar_stem, c5_stride1, c5_dilate."""
        return {k: getattr(self, k) for k in RESNET_ARCH_KWARGS}

    def inferred_kwargs(self) -> Dict[str, Any]:
        """What a state dict tells: ``{"width", "cifar_stem"}``."""
        return {"width": self.width, "cifar_stem": self.cifar_stem}

    # ------------------------------------------------------------------ builders

    def build(self) -> SSLResNet:
        """harl's ``SSLResNet`` (random init)."""
        return SSLResNet(self.block, self.layers, width=self.width, cifar_stem=self.cifar_stem,
                         zero_init_residual=self.zero_init_residual, c5_stride1=self.c5_stride1,
                         c5_dilate=self.c5_dilate)

    def build_torchvision(self):
        """A plain ``torchvision.models.ResNet`` with ``fc = Identity`` and the spec's architecture.

        ``width`` ≠ 64 or ``c5_stride1``: the stem and the four stages rebuilt with
        ``ResNet._make_layer``; ``cifar_stem``: ``conv1`` swapped, ``maxpool = Identity``. What was
        changed is listed in ``model.harl_changes``. ``zero_init_residual`` is not applied (weights
        are loaded into it).
        """
        import torchvision
        from torch import nn

        model = getattr(torchvision.models, self.name)(weights=None)
        changes: List[str] = ["fc=Identity"]
        if self.width != 64 or self.c5_stride1:
            for key, module in build_stages(model, self.block, self.layers, self.width, self.c5_stride1,
                                            self.c5_dilate).items():
                setattr(model, key, module)
            if self.width != 64:
                changes.append(f"stem and stages rebuilt at width {self.width}")
            if self.c5_stride1:
                changes.append("layer4 stride 1" + (" (dilated)" if self.c5_dilate else ""))
        if self.cifar_stem:
            model.conv1 = cifar_stem_conv(self.width)
            model.maxpool = nn.Identity()
            changes.append(CIFAR_STEM_NOTE)
        model.fc = nn.Identity()
        model.harl_changes = changes
        return model

    def build_timm(self):
        """``timm.create_model(name, num_classes=0)`` with the CIFAR stem swapped in when set.

        Raises :class:`~harl.errors.UnsupportedExport` for ``c5_stride1`` and ``width`` ≠ 64, which
        timm's ResNet cannot express.
        """
        import timm
        from torch import nn

        from harl.errors import UnsupportedExport

        if self.c5_stride1:
            raise UnsupportedExport("c5_stride1 has no timm ResNet equivalent; use format='torchvision' or 'harl'")
        w = self.width
        if w != 64:
            # timm's ResNet fixes the plain 7×7 stem at 64 channels (only deep stems follow stem_width)
            raise UnsupportedExport(f"width {w} has no timm ResNet equivalent (timm's plain stem is 64 wide); use "
                                    "format='torchvision' or 'harl'")
        model = timm.create_model(self.name, pretrained=False, num_classes=0)
        changes = ["num_classes=0"]
        if self.cifar_stem:
            model.conv1 = cifar_stem_conv(w)
            model.maxpool = nn.Identity()
            changes.append(CIFAR_STEM_NOTE)
        model.harl_changes = changes
        return model


def dataset_cifar_stem(dataset: Any) -> bool:
    """The ``cifar_stem`` default for a dataset: its catalog entry's ``small_images`` (False when the
    dataset is not in the catalog). Pretraining and every rebuild of a run's backbone fill it in
    with this when ``backbone.kwargs`` leave it out."""
    from harl.registry import DATASETS

    spec = DATASETS.get(dataset) if dataset in DATASETS else None
    return bool(spec.small_images) if spec is not None else False


def _builder(name: str):
    def build(**kwargs) -> SSLResNet:
        return ResNetSpec.from_kwargs(name, kwargs).build()

    build.__doc__ = f"harl's ``{name}`` (``backbone.kwargs``: the fields of :class:`ResNetSpec`)."
    return build


for _name in RESNET_NAMES:
    BACKBONES.register(_name, _builder(_name))


__all__ = ["ResNetSpec", "RESNET_LAYOUTS", "RESNET_NAMES", "RESNET_KWARGS", "RESNET_ARCH_KWARGS", "dataset_cifar_stem"]
