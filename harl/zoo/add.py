"""``harl-zoo add``: publish a trained checkpoint into the manifest.

Exports the backbone as fp16 safetensors (harl names + architecture metadata), measures its size and
sha256, records the exact run config (``args.json``), the metrics and the provenance, rewrites the
manifest atomically and regenerates ``zoo/README.md``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from harl.zoo.manifest import Manifest, ZooEntry, load_manifest, save_manifest, scrub_paths, validate_metrics
from harl.errors import ManifestError
from harl.registry import DATASETS
from harl.utils.io import atomic_write_bytes
from harl.zoo.readme import write_readme

#: files kept in the repository must stay small (issue 7: fp16 resnet18 ≈ 23 MB)
MAX_REPO_BYTES = 25_000_000
DTYPE = "float16"


def read_metrics(path: str) -> Dict[str, Any]:
    """A metrics JSON file (``{"linear_top1": 61.2, "knn_top1": 55.0, "dense_miou": null, ...}``)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise
    except (OSError, json.JSONDecodeError) as err:
        raise ManifestError(f"could not read metrics file '{path}': {err}") from err
    return validate_metrics(data, f"metrics file '{path}'")


def read_config_file(path: str) -> Dict[str, Any]:
    import yaml

    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, Mapping):
        raise ManifestError(f"config file '{path}' is not a mapping")
    return dict(data)


def epochs_trained(checkpoint: str, config: Mapping[str, Any]) -> int:
    """Epochs completed: ``ep=<e>`` in the checkpoint name is the 0-based epoch → e + 1; else max_epochs."""
    from harl.checkpoint import CKPT_RE  # lazy: imports lightning, torch

    m = CKPT_RE.search(os.path.basename(checkpoint))
    if m:
        return int(m.group(1)) + 1
    if isinstance(config.get("max_epochs"), int):
        return int(config["max_epochs"])
    raise ManifestError(f"cannot tell how many epochs '{checkpoint}' was trained: give --epochs")


def input_spec(cfg: Mapping[str, Any], dataset: str) -> Tuple[int, List[float], List[float]]:
    """(input side in px, RGB mean, RGB std) the backbone was trained with: the first pretraining
    pipeline's crop size and normalisation (its own ``mean``/``std`` if set, else the dataset's,
    else ImageNet's for an unregistered dataset)."""
    augs = cfg.get("augmentations") or [{}]
    first = augs[0] if isinstance(augs, list) and augs else {}
    size = first.get("crop_size")
    if not isinstance(size, int):
        raise ManifestError("the config's augmentations[0].crop_size is missing: cannot record the input size")
    if dataset in DATASETS:
        mean, std = DATASETS.get(dataset).stats()
    else:
        from harl.data.registry import IMAGENET_MEAN, IMAGENET_STD  # lazy: harl.data imports torch

        mean, std = tuple(IMAGENET_MEAN), tuple(IMAGENET_STD)
    mean = first.get("mean") or mean
    std = first.get("std") or std
    return size, [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


def add_entry(checkpoint: str, name: str, metrics: Mapping[str, Any], license: str,
              manifest_path: Optional[str] = None, urls: Sequence[str] = (), local: bool = True,
              hardware: Optional[Mapping[str, Any]] = None, notes: Optional[str] = None,
              config: Optional[Mapping[str, Any]] = None, method: Optional[str] = None,
              dataset: Optional[str] = None, epochs: Optional[int] = None, force: bool = False,
              staging_dir: Optional[str] = None, max_repo_bytes: int = MAX_REPO_BYTES) -> ZooEntry:
    """Add (or with ``force`` replace) entry ``name``; returns it.

    ``local``: keep the file in the repository (``<manifest dir>/weights/<name>.safetensors``, at most
    ``max_repo_bytes``). Otherwise the file is written to ``staging_dir`` for upload and ``urls``
    (required) say where it will be hosted.
    """
    from harl.zoo.weights import read_backbone_weights, safetensors_bytes  # lazy: imports lightning, torch

    manifest: Manifest = load_manifest(manifest_path)
    if name in manifest and not force:
        raise ManifestError(f"{manifest.path}: entry '{name}' exists; pass --force to replace it")
    metrics = validate_metrics(dict(metrics))
    if not local and not urls:
        raise ManifestError("a file kept outside the repository needs at least one --url")
    weights = read_backbone_weights(checkpoint)
    cfg = dict(config) if config is not None else weights.config
    if not cfg:
        raise ManifestError(f"'{checkpoint}' has no args.json beside it and no hyper-parameters: give --config "
                            "(the manifest records the exact training config)")
    method = method or cfg.get("method")
    dataset = dataset or (cfg.get("data") or {}).get("dataset")
    if not method or not dataset:
        raise ManifestError("the config names no method / data.dataset: give --method / --dataset")
    if epochs is None:
        epochs = epochs_trained(checkpoint, cfg)

    data = safetensors_bytes(weights, DTYPE)
    rel = os.path.join("weights", f"{name}.safetensors")
    if local:
        if len(data) > max_repo_bytes:
            raise ManifestError(f"'{name}' is {len(data) / 1e6:.1f} MB in fp16, over the {max_repo_bytes / 1e6:.0f} MB "
                                "limit for files in the repository: host it and pass --url ... --no-local")
        out = os.path.join(manifest.root, rel)
    else:
        out = os.path.join(staging_dir or os.getcwd(), f"{name}.safetensors")

    atomic_write_bytes(out, data)
    check = read_backbone_weights(out)  # the written file reads back as the same architecture
    if (check.backbone, check.kwargs) != (weights.backbone, weights.kwargs):
        raise ManifestError(f"'{out}' read back as {check.backbone} {check.kwargs}, not {weights.backbone} "
                            f"{weights.kwargs}")

    input_size, mean, std = input_spec(cfg, str(dataset))
    entry = ZooEntry(
        name=name, method=str(method), backbone=weights.backbone, dataset=str(dataset), epochs=int(epochs),
        config=scrub_paths(json.loads(json.dumps(cfg, default=str))), metrics=metrics, size=len(data),
        input_size=input_size, mean=mean, std=std,
        sha256=hashlib.sha256(data).hexdigest(), license=license, backbone_kwargs=dict(weights.kwargs),
        format="safetensors", dtype=DTYPE, file=rel if local else None, urls=list(urls),
        hardware=dict(hardware) if hardware else None, notes=notes,
        created=datetime.date.today().isoformat(), root=manifest.root)
    old = next((e for e in manifest.entries if e.name == name), None)
    entries = [e for e in manifest.entries if e.name != name]
    position = next((i for i, e in enumerate(manifest.entries) if e.name == name), len(entries))
    entries.insert(position, entry)
    manifest.entries = entries
    save_manifest(manifest)
    write_readme(manifest)
    if old is not None and old.local_path and old.local_path not in {e.local_path for e in entries} \
            and os.path.isfile(old.local_path):
        os.remove(old.local_path)  # the replaced entry's in-repository file is no longer referenced
    return entry
