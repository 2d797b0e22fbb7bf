"""Vision Transformers under solo-learn's names (``vit_tiny`` / ``vit_small`` / ``vit_base`` / ``vit_large``).

Each is timm's ``VisionTransformer`` (patch 16 by default, class-token pooling, no classifier)
made by ``timm.create_model`` with ``num_classes=0``, so checkpoint keys are timm's own (no
``pool`` method is attached: timm's ViT uses that attribute itself; ViTs give no c5 map, so the
mask methods, which need one, do not take them). ``dynamic_img_size`` is on: the position embeddings are made for ``img_size`` (timm's
224 unless ``backbone.kwargs.img_size`` says otherwise) and interpolated to whatever crop size comes
in, so CIFAR's 32 px views and multi-crop's small crops go through the same model. Other
``backbone.kwargs`` (``patch_size``, ``drop_path_rate``, ...) go to timm unchanged. ``cifar_stem``,
which harl fills in for every registered backbone from the dataset, is a ResNet option and is
dropped here. ``forward(x)`` gives B×C (the class token after the final norm).
"""

from __future__ import annotations

from torch import nn

from harl.backbones.registry import BACKBONES

#: solo-learn name → timm architecture (patch 16); ``patch_size`` in kwargs overrides the patch
VIT_ARCHS = {
    "vit_tiny": "vit_tiny_patch16_224",
    "vit_small": "vit_small_patch16_224",
    "vit_base": "vit_base_patch16_224",
    "vit_large": "vit_large_patch16_224",
}


def _builder(arch: str):
    def build(**kwargs) -> nn.Module:
        kwargs.pop("cifar_stem", None)
        import timm

        kwargs.setdefault("dynamic_img_size", True)
        kwargs.setdefault("pretrained", False)
        return timm.create_model(arch, num_classes=0, **kwargs)

    build.__doc__ = f"timm's ``{arch}`` (patch size and image size overridable by kwargs)."
    return build


for _name, _arch in VIT_ARCHS.items():
    BACKBONES.register(_name, _builder(_arch))
