"""The pretrained zoo: manifest, verified downloads, export, import, hub.

Modules (each with one job):

- :mod:`harl.zoo.manifest` — schema, load / validate / save (no torch import);
- :mod:`harl.zoo.readme` — ``zoo/README.md`` rendered from the manifest;
- :mod:`harl.zoo.download` — cache, resumable downloads, mirrors, sha256 (no torch import);
- :mod:`harl.zoo.weights` — backbone weights + architecture from any checkpoint;
- :mod:`harl.zoo.models` — plain torchvision / timm models, :func:`load_backbone`;
- :mod:`harl.zoo.export` — torchvision / timm / detectron2 / safetensors files;
- :mod:`harl.zoo.importer` — solo-learn / official HARL / generic checkpoints, strict report;
- :mod:`harl.zoo.add` — publish a checkpoint into the manifest;
- :mod:`harl.zoo.hub` — torch.hub entry points.

Names below are imported lazily so ``import harl.zoo`` stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Manifest": "manifest", "ManifestError": "manifest", "ZooEntry": "manifest", "load_manifest": "manifest",
    "save_manifest": "manifest", "default_manifest_path": "manifest",
    "render_readme": "readme", "write_readme": "readme", "readme_is_current": "readme",
    "ZooDownloadError": "download", "cache_root": "download", "cached_path": "download",
    "download_file": "download", "fetch_entry": "download", "sha256_file": "download", "verify_file": "download",
    "BackboneWeights": "weights", "read_backbone_weights": "weights", "infer_resnet_arch": "weights",
    "save_safetensors": "weights",
    "load_backbone": "models", "build_model": "models", "torchvision_resnet": "models", "MODEL_FORMATS": "models",
    "UnsupportedExport": "models",
    "EXPORTERS": "export", "export_weights": "export", "detectron2_key": "export",
    "FLAVOURS": "importer", "ImportReport": "importer", "import_checkpoint": "importer",
    "add_entry": "add",
    "hub_model": "hub",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"harl.zoo.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'harl.zoo' has no attribute '{name}'")


def __dir__():
    return sorted(list(globals()) + __all__)
