"""torch.hub support: every manifest entry is a hub entry point (see ``hubconf.py``).

Entries are resolved through the manifest at call time, so publishing weights (``harl-zoo add``)
needs no code change. ``$HARL_ZOO_MANIFEST`` points the hub at another manifest (tests do).
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional

from torch import nn

from harl.errors import ManifestError
from harl.zoo.manifest import load_manifest


def hub_model(name: str, pretrained: bool = True, format: Optional[str] = None, progress: bool = True,
              manifest: Optional[str] = None, cache_dir: Optional[str] = None, **kwargs: Any) -> nn.Module:
    """The backbone of zoo entry ``name`` (weights verified and loaded strictly when ``pretrained``).

    ``format``: ``torchvision`` (default for ResNets), ``timm`` or ``harl``; see :func:`harl.load_backbone`.
    """
    if kwargs:
        raise TypeError(f"unexpected argument(s) for hub entry '{name}': {', '.join(sorted(kwargs))}")
    from harl.zoo.models import load_backbone, random_backbone  # lazy: imports lightning

    m = load_manifest(manifest)
    entry = m.get(name)  # KeyError with the known entries
    if not pretrained:
        return random_backbone(entry, format)
    return load_backbone(name, format, manifest=m.path, cache_dir=cache_dir, progress=progress)


def entry_names(manifest: Optional[str] = None) -> List[str]:
    """Manifest entry names (empty when the manifest cannot be read)."""
    try:
        return load_manifest(manifest).names
    except ManifestError:
        return []


def make_entrypoint(name: str) -> Callable[..., nn.Module]:
    """A hub entry-point function for zoo entry ``name``."""

    def entrypoint(pretrained: bool = True, format: Optional[str] = None, progress: bool = True, **kwargs):
        return hub_model(name, pretrained=pretrained, format=format, progress=progress, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__doc__ = (f"harl zoo entry '{name}' (see zoo/README.md). Args: pretrained, format "
                          "('torchvision' | 'timm' | 'harl'), progress, manifest, cache_dir.")
    return entrypoint
