"""Import backbones from other code bases' checkpoints, with a strict report.

Flavours (``--from``):

- ``solo-learn``: a Lightning checkpoint whose ``state_dict`` holds ``backbone.*`` (legacy
  ``encoder.*`` is renamed) next to ``projector.*``, ``momentum_*``, ``classifier.*``, ...
  solo-learn replaces ``fc`` by Identity, so a ``backbone.fc.*`` key is an error.
- ``harl-official``: the authors' HARL PyTorch release (a solo-learn fork; HARL is "MNCRL" there).
  Same prefixes; its ``ResNet_MNCRL`` keeps an ``fc`` layer that ``forward`` never calls, so
  ``backbone.fc.*`` is dropped (and reported).
- ``generic``: any state dict; ``module.`` (DDP) is stripped, ``encoder.`` renamed to ``backbone.``;
  without a ``backbone.`` prefix the whole dict is the backbone, and a torchvision classifier's
  ``fc.*`` is dropped (and reported).
- ``auto`` picks one of the above from the hyper-parameters and key names.

Every key of the checkpoint ends up in exactly one list of the :class:`ImportReport`: kept (backbone),
dropped (with the reason) — and the rename rules that were applied are listed with counts. The kept
keys are then loaded **strictly** into the rebuilt backbone: a renamed, missing, unexpected or
mis-shaped key raises :class:`~harl.errors.CheckpointMismatchError` naming it.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from harl.weights import read_checkpoint
from harl.errors import CheckpointMismatchError
from harl.registry import Registry
from harl.zoo.weights import BackboneWeights, build_harl_backbone, infer_resnet_arch

#: non-backbone prefixes of solo-learn-style checkpoints → why they are dropped
KNOWN_HEADS: Dict[str, str] = {
    "momentum_": "momentum (EMA) copy",
    "projector.": "projection head",
    "predictor.": "prediction head",
    "classifier.": "online linear probe",
    "pixel_head.": "pixel head",
    "prototypes.": "prototypes",
    "queue": "MoCo queue",
    "knn": "kNN buffers",
}


@dataclass
class ImportFlavour:
    name: str
    description: str
    #: backbone-relative keys/prefixes (ending with '.') dropped on purpose → reason
    backbone_drop: Dict[str, str] = field(default_factory=dict)
    #: whether a dict without ``backbone.`` keys counts as a bare backbone
    bare_ok: bool = False


FLAVOURS: Registry[ImportFlavour] = Registry("import flavour")
FLAVOURS.register("solo-learn", ImportFlavour(
    "solo-learn", "solo-learn Lightning checkpoint (backbone.*, fc = Identity)"))
FLAVOURS.register("harl-official", ImportFlavour(
    "harl-official", "authors' HARL PyTorch release (solo-learn fork, method 'MNCRL')",
    backbone_drop={"fc.": "ResNet_MNCRL's fc layer, never called by its forward"}))
FLAVOURS.register("generic", ImportFlavour(
    "generic", "any state dict (module./encoder. prefixes handled; bare backbones allowed)",
    backbone_drop={"fc.": "classification layer (not part of the feature extractor)"}, bare_ok=True))


@dataclass
class ImportReport:
    source: str
    flavour: str
    backbone: str = ""
    backbone_kwargs: Dict[str, Any] = field(default_factory=dict)
    arch_inferred: bool = False
    kept: List[str] = field(default_factory=list)
    dropped: Dict[str, List[str]] = field(default_factory=dict)
    renamed: List[Tuple[str, str, int]] = field(default_factory=list)
    hparams_backbone: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        return {"source": self.source, "flavour": self.flavour, "backbone": self.backbone,
                "backbone_kwargs": self.backbone_kwargs, "arch_inferred": self.arch_inferred,
                "kept": self.kept, "dropped": self.dropped,
                "renamed": [{"from": a, "to": b, "count": n} for a, b, n in self.renamed],
                "hparams_backbone": self.hparams_backbone}

    def to_text(self, max_keys: int = 6) -> str:
        lines = [f"import {self.source}", f"  flavour: {self.flavour}",
                 f"  architecture: {self.backbone} {self.backbone_kwargs}"
                 + (" (inferred from tensor shapes)" if self.arch_inferred else "")]
        if self.hparams_backbone:
            lines.append(f"  checkpoint's own backbone name: {self.hparams_backbone}")
        lines.append(f"  kept: {len(self.kept)} backbone tensors (loaded strictly: 0 missing, 0 unexpected)")
        for a, b, n in self.renamed:
            lines.append(f"  renamed: {a}* → {b}* ({n} keys)")
        for reason, keys in sorted(self.dropped.items()):
            shown = ", ".join(keys[:max_keys]) + (f", … (+{len(keys) - max_keys})" if len(keys) > max_keys else "")
            lines.append(f"  dropped ({reason}): {len(keys)} key{'s' if len(keys) != 1 else ''}: {shown}")
        return "\n".join(lines)


def _split(obj: Any, path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """(state dict, hyper-parameters) of a loaded checkpoint object."""
    if not isinstance(obj, Mapping):
        raise CheckpointMismatchError(f"'{path}' is not a checkpoint dict (got {type(obj).__name__})")
    hparams = obj.get("hyper_parameters") or obj.get("hparams") or {}
    if isinstance(hparams, argparse.Namespace):
        hparams = vars(hparams)
    try:
        hparams = dict(hparams)
    except (TypeError, ValueError):
        hparams = {}
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj.get(key), Mapping):
            sd = obj[key]
            break
    else:
        sd = obj
    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointMismatchError(f"'{path}' holds no tensors (top-level keys: {list(obj)[:10]})")
    return dict(sd), hparams


def _hparams_backbone(hparams: Mapping[str, Any]) -> Optional[str]:
    bb = hparams.get("backbone")
    if isinstance(bb, str):
        return bb
    if isinstance(bb, Mapping) and isinstance(bb.get("name"), str):
        return bb["name"]
    cfg = hparams.get("cfg")
    if isinstance(cfg, Mapping):
        return _hparams_backbone(cfg)
    return None


def detect_flavour(sd: Mapping[str, Any], hparams: Mapping[str, Any]) -> str:
    """``harl-official`` for MNCRL checkpoints, ``solo-learn`` for ``backbone.*`` (or legacy ``encoder.*``)
    dicts, else ``generic``."""
    name = _hparams_backbone(hparams) or ""
    keys = [k[len("module."):] if k.startswith("module.") else k for k in sd]
    keys = ["backbone." + k[len("encoder."):] if k.startswith("encoder.") else k for k in keys]  # legacy name
    if "MNCRL" in name.upper() or "method" in hparams and str(hparams["method"]).lower() == "mncrl":
        return "harl-official"
    if any(k.startswith("backbone.") for k in keys):
        if "backbone.fc.weight" in keys and any(k.startswith("classifier.2.") for k in keys):
            return "harl-official"  # ResNet_MNCRL's dead fc + its pooled Sequential classifier
        return "solo-learn"
    return "generic"


def _dropped_reason(key: str) -> str:
    for prefix, reason in KNOWN_HEADS.items():
        if key.startswith(prefix):
            return f"{reason}"
    return "not a backbone key"


def extract_backbone(sd: Mapping[str, Any], flavour: ImportFlavour, report: ImportReport) -> Dict[str, torch.Tensor]:
    """Backbone tensors (prefix stripped) of a full state dict; fills ``report``'s kept/dropped/renamed."""
    renamed: Dict[Tuple[str, str], int] = {}
    keys: Dict[str, Any] = {}
    for k, v in sd.items():
        if k.startswith("module."):
            renamed[("module.", "")] = renamed.get(("module.", ""), 0) + 1
            k = k[len("module."):]
        if k.startswith("encoder."):
            renamed[("encoder.", "backbone.")] = renamed.get(("encoder.", "backbone."), 0) + 1
            k = "backbone." + k[len("encoder."):]
        if k in keys:
            raise CheckpointMismatchError(f"{report.source}: key '{k}' appears twice after renaming prefixes")
        keys[k] = v
    report.renamed = [(a, b, n) for (a, b), n in renamed.items()]
    prefixed = any(k.startswith("backbone.") for k in keys)
    if not prefixed and not flavour.bare_ok:
        raise CheckpointMismatchError(
            f"{report.source}: no 'backbone.*' (or legacy 'encoder.*') keys, as a {flavour.name} checkpoint "
            f"must have; first keys: {sorted(keys)[:6]} (try --from generic)")
    out: Dict[str, torch.Tensor] = {}
    for k, v in keys.items():
        if prefixed and not k.startswith("backbone."):
            report.dropped.setdefault(_dropped_reason(k), []).append(k)
            continue
        bk = k[len("backbone."):] if prefixed else k
        reason = next((r for p, r in flavour.backbone_drop.items()
                       if bk == p or (p.endswith(".") and bk.startswith(p))), None)
        if reason is not None:
            report.dropped.setdefault(reason, []).append(k)
            continue
        if not isinstance(v, torch.Tensor):
            report.dropped.setdefault("not a tensor", []).append(k)
            continue
        out[bk] = v
        report.kept.append(k)
    for v in report.dropped.values():
        v.sort()
    report.kept.sort()
    return out


def import_checkpoint(path: str, flavour: str = "auto", backbone: Optional[str] = None,
                      backbone_kwargs: Optional[Mapping[str, Any]] = None,
                      trust: bool = False) -> Tuple[BackboneWeights, ImportReport]:
    """Read a foreign checkpoint's backbone strictly; returns ``(weights, report)``.

    The architecture is ``backbone``/``backbone_kwargs`` when given, else inferred from the ResNet
    tensor shapes (and cross-checked against the depth named in the checkpoint's hyper-parameters).
    """
    obj = read_checkpoint(path, trust=trust)
    sd, hparams = _split(obj, path)
    name = detect_flavour(sd, hparams) if flavour == "auto" else flavour
    fl = FLAVOURS.get(name)
    report = ImportReport(source=path, flavour=name, hparams_backbone=_hparams_backbone(hparams))
    bsd = extract_backbone(sd, fl, report)
    inferred = backbone is None
    if backbone is None:
        backbone, kwargs = infer_resnet_arch(bsd, f"'{path}' (give --backbone for non-ResNet backbones)")
        hp = (report.hparams_backbone or "").lower()
        if hp and hp.startswith("resnet") and not hp.startswith(backbone):
            raise CheckpointMismatchError(
                f"'{path}': tensor shapes say {backbone}, the checkpoint's hyper-parameters say "
                f"'{report.hparams_backbone}'")
        if backbone_kwargs:
            kwargs.update(backbone_kwargs)
    else:
        kwargs = dict(backbone_kwargs or {})
    report.backbone, report.backbone_kwargs, report.arch_inferred = backbone, dict(kwargs), inferred
    weights = BackboneWeights(backbone, dict(kwargs), bsd, source=path, arch_inferred=inferred,
                              config={"imported_from": os.path.basename(path), "flavour": name,
                                      "hyper_parameters_backbone": report.hparams_backbone})
    try:
        build_harl_backbone(weights)
    except CheckpointMismatchError as err:
        raise CheckpointMismatchError(f"import ({name}) failed the strict load: {err}") from err
    return weights, report
