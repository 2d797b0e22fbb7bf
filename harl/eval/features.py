"""Frozen-backbone feature extraction with an on-disk cache (linear / kNN / dense probes, transfer).

Public API (stable):

- :func:`extract_features` ``(backbone, dataset, batch_size=256, num_workers=0, device=None,
  progress=True, input_transform=None, cache_path=None, cache_key=None, channels_last=True)``
  → ``(feats N×C float32, targets N int64)``, or ``(feats, targets, masks N×1×H×W uint8)`` when
  the dataset yields masks;
- :func:`extract_feature_maps` (same arguments + ``dtype``, ``pool_to``, ``max_bytes``) →
  ``(maps N×C×h×w, targets N, masks N×1×H×W uint8 or None)``;
- :func:`feature_cache_key` ``(checkpoint_sha256, dataset_path, split, transform, backbone_name,
  **extra) -> dict``: the identity of a cached feature set;
- :func:`load_feature_cache` / :func:`save_feature_cache`: the cache file itself.

Extraction: the backbone is put in eval mode (its previous mode is restored afterwards) and moved
to ``device`` (default: CUDA when available, else CPU); inputs and, by default, the backbone use
the channels_last layout; everything runs under ``torch.no_grad()`` (not ``inference_mode``:
inference tensors could not be used to train a head afterwards). ``input_transform`` (e.g.
:class:`harl.ops.filters.HighPass`) is applied to each batch on the device, after the dataset's
own transform (which normalises). A tqdm bar counts images.

Cache: a ``.safetensors`` file (``feats``, ``targets``[, ``masks``] + the key as JSON metadata) or a
torch file (``.pt``/``.pth``) holding the same dict, written atomically (temporary file +
``os.replace``). It is reused when its stored key equals the requested key and rebuilt (and
overwritten) otherwise. The key always includes the number of items and whether masks are
present; without an explicit ``cache_key`` it is derived from a SHA-256 of the backbone's state
dict, the dataset's description (length, first/last item, transform) and the input transform.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import warnings
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from harl.utils.device import resolve_device  # the one resolver (re-exported here)

CACHE_FORMAT_VERSION = 1
DEFAULT_MAX_BYTES = 8 << 30  # 8 GiB of feature maps before extract_feature_maps refuses

Key = Union[Dict[str, Any], str]


# ---------------------------------------------------------------------------------------------
# keys
# ---------------------------------------------------------------------------------------------


def describe_transform(transform: Any) -> str:
    """A stable text description of a transform (its ``repr``; ``"none"`` for None)."""
    return "none" if transform is None else repr(transform)


def feature_cache_key(checkpoint_sha256: Optional[str], dataset_path: Optional[str], split: str,
                      transform: Any = None, backbone_name: Optional[str] = None, **extra: Any) -> Dict[str, Any]:
    """The identity of a cached feature set.

    Args:
        checkpoint_sha256: the weights' file digest (or any string naming the weights, e.g.
            ``"random-init:seed=5"``).
        dataset_path: the data root (made absolute); split: ``train`` / ``val``.
        transform: the dataset transform and input transform, as objects or a description string.
        backbone_name: architecture name; extra: anything else that changes the features
            (``fraction``, ``backbone_kwargs``, ``kind="maps"``, ...). Values must be JSON-able.
    Returns:
        a plain dict; two keys match iff their canonical JSON is equal.
    """
    key = {
        "format": CACHE_FORMAT_VERSION,
        "checkpoint_sha256": checkpoint_sha256,
        "dataset_path": os.path.abspath(os.fspath(dataset_path)) if dataset_path else None,
        "split": split,
        "transform": transform if isinstance(transform, str) else describe_transform(transform),
        "backbone_name": backbone_name,
    }
    key.update(extra)
    return key


def key_digest(key: Key) -> str:
    """SHA-256 of the canonical JSON of ``key`` (short names for cache files)."""
    return hashlib.sha256(_canonical(key).encode("utf-8")).hexdigest()


def _canonical(key: Key) -> str:
    if isinstance(key, str):
        return key
    return json.dumps(key, sort_keys=True, default=str, separators=(",", ":"))


def state_dict_sha256(module: nn.Module) -> str:
    """SHA-256 over the names, shapes, dtypes and bytes of a module's state dict (weights id)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def describe_dataset(dataset: Dataset) -> Dict[str, Any]:
    """Length, class, transform and first/last item description of a dataset (for default keys)."""
    d: Dict[str, Any] = {"type": type(dataset).__name__, "len": len(dataset)}
    source = getattr(dataset, "source", None)
    if source is not None and hasattr(source, "describe") and len(dataset):
        d["first"] = source.describe(0)
        d["last"] = source.describe(len(dataset) - 1)
    d["transform"] = describe_transform(getattr(dataset, "transform", None))
    return d


def default_cache_key(backbone: nn.Module, dataset: Dataset, input_transform: Any, kind: str) -> Dict[str, Any]:
    return {"format": CACHE_FORMAT_VERSION, "weights_sha256": state_dict_sha256(backbone),
            "backbone": type(backbone).__name__, "dataset": describe_dataset(dataset),
            "input_transform": describe_transform(input_transform), "kind": kind}


# ---------------------------------------------------------------------------------------------
# cache files
# ---------------------------------------------------------------------------------------------


def _is_safetensors(path: str) -> bool:
    return str(path).endswith(".safetensors")


def load_feature_cache(path: str, key: Key) -> Optional[Dict[str, torch.Tensor]]:
    """The tensors of cache ``path`` if it exists and was written for ``key``; else None.

    An unreadable or foreign file is treated as a miss (with a warning) and later overwritten.
    """
    if not path or not os.path.isfile(path):
        return None
    want = _canonical(key)
    try:
        if _is_safetensors(path):
            from safetensors import safe_open
            from safetensors.torch import load_file

            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
            if meta.get("harl_key") != want:
                return None
            return load_file(path)
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(obj, dict) or obj.get("harl_key") != want:
            return None
        return {k: v for k, v in obj["tensors"].items()}
    except Exception as err:  # noqa: BLE001 - a damaged cache is rebuilt, never trusted
        warnings.warn(f"feature cache '{path}' is unreadable ({err}); rebuilding it")
        return None


def save_feature_cache(path: str, key: Key, tensors: Dict[str, torch.Tensor]) -> None:
    """Write ``tensors`` and ``key`` to ``path`` atomically (temporary file, then ``os.replace``)."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}-{secrets.token_hex(3)}"
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    try:
        if _is_safetensors(path):
            from safetensors.torch import save_file

            save_file(tensors, tmp, metadata={"harl_key": _canonical(key), "format": str(CACHE_FORMAT_VERSION)})
        else:
            torch.save({"harl_key": _canonical(key), "tensors": tensors}, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ---------------------------------------------------------------------------------------------
# extraction
# ---------------------------------------------------------------------------------------------


def _split_batch(batch) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    if isinstance(batch, (list, tuple)):
        if len(batch) == 2:
            return batch[0], torch.as_tensor(batch[1]), None
        if len(batch) == 3:
            return batch[0], torch.as_tensor(batch[1]), batch[2]
    raise ValueError("extract_features: dataset items must be (image, target) or (image, target, mask), "
                     f"got a batch of type {type(batch).__name__}")


def _run(backbone: nn.Module, dataset: Dataset, fn: Callable[[torch.Tensor], torch.Tensor], *, batch_size: int,
         num_workers: int, device: torch.device, progress: bool, input_transform: Optional[Callable],
         channels_last: bool, desc: str, sink: Callable[[int, torch.Tensor, torch.Tensor, Optional[torch.Tensor]], None]):
    """Shared loop: batches → (input_transform) → fn → sink(start, out, targets, masks)."""
    from tqdm.auto import tqdm

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda", drop_last=False)
    was_training = backbone.training
    backbone.eval()
    backbone.to(device)
    if channels_last:
        backbone.to(memory_format=torch.channels_last)
    if input_transform is not None and isinstance(input_transform, nn.Module):
        input_transform.to(device)
    start = 0
    try:
        with torch.no_grad(), tqdm(total=len(dataset), desc=desc, unit="img", disable=not progress,
                                   dynamic_ncols=True, leave=False) as bar:
            for batch in loader:
                x, y, m = _split_batch(batch)
                x = x.to(device, non_blocking=True)
                if input_transform is not None:
                    x = input_transform(x)
                if channels_last and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                out = fn(x)
                sink(start, out, y, m)
                start += x.shape[0]
                bar.update(x.shape[0])
    finally:
        backbone.train(was_training)
    return start


def extract_features(backbone: nn.Module, dataset: Dataset, batch_size: int = 256, num_workers: int = 0,
                     device: Optional[Union[str, torch.device]] = None, progress: bool = True,
                     input_transform: Optional[Callable] = None, cache_path: Optional[str] = None,
                     cache_key: Optional[Key] = None, channels_last: bool = True, desc: str = "features"):
    """Pooled features of every item of ``dataset`` (in order).

    Args:
        backbone: ``forward``: B×3×H×W → B×C (harl backbones pool the c5 map).
        dataset: items ``(image 3×H×W, target)`` or ``(image, target, mask 1×H×W uint8)``.
        input_transform: applied to each B×3×H×W batch on the device (e.g. ``HighPass``).
        cache_path: ``.safetensors`` / ``.pt`` file to reuse or (re)write; None: no cache.
        cache_key: identity of the feature set (:func:`feature_cache_key`); None: derived from the
            backbone weights, the dataset and ``input_transform``.
    Returns:
        ``(feats N×C float32, targets N int64)`` — plus ``masks N×1×H×W uint8`` when the dataset
        yields masks. Tensors are on the CPU.
    """
    n = len(dataset)
    key = None
    if cache_path:
        key = _full_key(cache_key, backbone, dataset, input_transform, "pooled")
        hit = load_feature_cache(cache_path, key)
        if hit is not None:
            return _result(hit)
    device = resolve_device(device)
    parts: Dict[str, list] = {"feats": [], "targets": [], "masks": []}

    def sink(start, out, y, m):
        parts["feats"].append(out.float().reshape(out.shape[0], -1).cpu())
        parts["targets"].append(y.long().cpu())
        if m is not None:
            parts["masks"].append(m.to(torch.uint8).cpu())

    _run(backbone, dataset, backbone, batch_size=batch_size, num_workers=num_workers, device=device,
         progress=progress, input_transform=input_transform, channels_last=channels_last, desc=desc, sink=sink)
    out = {"feats": torch.cat(parts["feats"]) if n else torch.zeros(0, 0),
           "targets": torch.cat(parts["targets"]) if n else torch.zeros(0, dtype=torch.long)}
    if parts["masks"]:
        out["masks"] = torch.cat(parts["masks"])
    if cache_path:
        save_feature_cache(cache_path, key, out)
    return _result(out)


def _full_key(cache_key: Optional[Key], backbone, dataset, input_transform, kind: str, **extra) -> Key:
    if cache_key is None:
        key: Dict[str, Any] = default_cache_key(backbone, dataset, input_transform, kind)
    elif isinstance(cache_key, str):
        key = {"user": cache_key}
    else:
        key = dict(cache_key)
    key.setdefault("kind", kind)
    key["n_items"] = len(dataset)
    key.update(extra)
    return key


def _result(t: Dict[str, torch.Tensor]):
    if "masks" in t:
        return t["feats"], t["targets"], t["masks"]
    return t["feats"], t["targets"]


def feature_map_shape(backbone: nn.Module, dataset: Dataset, device: Optional[Union[str, torch.device]] = None,
                      input_transform: Optional[Callable] = None) -> Tuple[int, int, int]:
    """(C, h, w) of ``backbone.forward_features`` on the first item of ``dataset``."""
    x, _, _ = _split_batch(list(_first(dataset)))
    device = resolve_device(device)
    was = backbone.training
    backbone.eval().to(device)
    try:
        with torch.no_grad():
            x = x.unsqueeze(0).to(device)
            if input_transform is not None:
                x = input_transform(x)
            return tuple(backbone.forward_features(x).shape[1:])  # type: ignore[return-value]
    finally:
        backbone.train(was)


def _first(dataset):
    item = dataset[0]
    return item if isinstance(item, (list, tuple)) else (item, 0)


def extract_feature_maps(backbone: nn.Module, dataset: Dataset, batch_size: int = 64, num_workers: int = 0,
                         device: Optional[Union[str, torch.device]] = None, progress: bool = True,
                         input_transform: Optional[Callable] = None, cache_path: Optional[str] = None,
                         cache_key: Optional[Key] = None, channels_last: bool = True,
                         dtype: torch.dtype = torch.float32, pool_to: Optional[Tuple[int, int]] = None,
                         max_bytes: Optional[int] = DEFAULT_MAX_BYTES, desc: str = "feature maps"):
    """c5 feature maps of every item (dense probing), memory-aware.

    The output is allocated once (after measuring C×h×w on the first item) and filled batch by
    batch, so peak memory is the result plus one batch; ``dtype=torch.float16`` halves it and
    ``pool_to=(h', w')`` average-pools each map first. If the result would exceed ``max_bytes``
    a ``MemoryError`` is raised before any work, naming the size and these options.

    Returns:
        ``(maps N×C×h×w dtype, targets N int64, masks N×1×H×W uint8 or None)`` on the CPU.
    """
    if not hasattr(backbone, "forward_features"):
        raise TypeError(f"{type(backbone).__name__} has no forward_features(); dense probing needs a feature map")
    n = len(dataset)
    key = None
    if cache_path:
        key = _full_key(cache_key, backbone, dataset, input_transform, "maps",
                        dtype=str(dtype), pool_to=list(pool_to) if pool_to else None)
        hit = load_feature_cache(cache_path, key)
        if hit is not None:
            return hit["feats"], hit["targets"], hit.get("masks")
    device = resolve_device(device)
    c, h, w = feature_map_shape(backbone, dataset, device, input_transform)
    if pool_to:
        h, w = int(pool_to[0]), int(pool_to[1])
    itemsize = torch.empty((), dtype=dtype).element_size()
    need = n * c * h * w * itemsize
    if max_bytes is not None and need > max_bytes:
        raise MemoryError(
            f"feature maps of {n} images would take {need / 2**30:.2f} GiB ({c}×{h}×{w} {dtype}) > max_bytes "
            f"{max_bytes / 2**30:.2f} GiB; use dtype=torch.float16, pool_to=(h, w), a data fraction, or raise max_bytes")
    maps = torch.empty((n, c, h, w), dtype=dtype)
    targets = torch.empty(n, dtype=torch.long)
    store: Dict[str, Optional[torch.Tensor]] = {"masks": None}

    def fn(x):
        fm = backbone.forward_features(x)
        if pool_to:
            fm = F.adaptive_avg_pool2d(fm, pool_to)
        return fm

    def sink(start, out, y, m):
        b = out.shape[0]
        maps[start:start + b] = out.to(dtype).cpu()
        targets[start:start + b] = y.long().cpu()
        if m is not None:
            if store["masks"] is None:
                store["masks"] = torch.empty((n,) + tuple(m.shape[1:]), dtype=torch.uint8)
            store["masks"][start:start + b] = m.to(torch.uint8).cpu()

    _run(backbone, dataset, fn, batch_size=batch_size, num_workers=num_workers, device=device, progress=progress,
         input_transform=input_transform, channels_last=channels_last, desc=desc, sink=sink)
    masks = store["masks"]
    if cache_path:
        t = {"feats": maps, "targets": targets}
        if masks is not None:
            t["masks"] = masks
        save_feature_cache(cache_path, key, t)
    return maps, targets, masks


__all__ = ["extract_features", "extract_feature_maps", "feature_cache_key", "load_feature_cache",
           "save_feature_cache", "key_digest", "describe_transform", "describe_dataset", "state_dict_sha256",
           "feature_map_shape", "resolve_device", "CACHE_FORMAT_VERSION"]
