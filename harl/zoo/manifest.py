"""The zoo manifest: every published checkpoint with its config, metrics, size, sha256 and sources.

The manifest is a YAML (or JSON) file, ``zoo/manifest.yaml`` in the repository by default
(``$HARL_ZOO_MANIFEST`` overrides it). Its schema is documented in ``docs/zoo.md`` and checked on
every load: an unknown key is an error with a close-match hint, a missing or mistyped field an error
naming the entry and the field. This module imports no torch, so ``harl-zoo list`` stays fast.

Shape::

    version: 1
    entries:
      - name: harl_resnet18_fashion_scenes      # a Python identifier (it is a torch.hub entry point)
        method: harl
        backbone: resnet18
        backbone_kwargs: {width: 64, cifar_stem: false}
        dataset: fashion_scenes
        epochs: 100
        config: {...}                          # the exact training config (args.json)
        metrics: {linear_top1: 61.2, knn_top1: 55.0, dense_miou: null}
        format: safetensors                    # safetensors | pth
        dtype: float16
        size: 23400000                         # bytes
        sha256: 3f7c...                        # 64 hex digits
        file: weights/harl_resnet18_fashion_scenes.safetensors   # relative to the manifest's folder
        urls: [https://..., https://mirror/...]                   # tried in order
        license: CC-BY-4.0
        hardware: {device: NVIDIA H100 80GB, count: 1, hours: 0.4}
        notes: free text
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

from harl.registry import close_match_hint
from harl.errors import ManifestError
from harl.utils.io import atomic_write_text

MANIFEST_ENV = "HARL_ZOO_MANIFEST"
SCHEMA_VERSION = 1
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
URL_SCHEMES = ("http://", "https://", "file://")

#: top-level keys of the manifest
TOP_KEYS = ("version", "entries")
#: entry keys → required?
ENTRY_KEYS: Dict[str, bool] = {
    "name": True, "method": True, "backbone": True, "backbone_kwargs": False, "dataset": True,
    "epochs": True, "config": True, "metrics": True, "format": False, "dtype": False, "size": True,
    "sha256": True, "file": False, "urls": False, "license": True, "hardware": False, "notes": False,
    "created": False, "input_size": True, "mean": True, "std": True,
}
#: metric names (percent, 0–100); ``extra`` holds any other named metric
METRIC_KEYS = ("linear_top1", "linear_top5", "knn_top1", "knn_top5", "dense_miou", "extra")
REQUIRED_METRICS = ("linear_top1", "knn_top1")
HARDWARE_KEYS = ("device", "count", "hours")
FORMATS = ("safetensors", "pth")
DTYPES = ("float16", "bfloat16", "float32")


def repo_root() -> str:
    """The folder holding the ``harl`` package (the repository root in a source checkout)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def default_manifest_path() -> str:
    """``$HARL_ZOO_MANIFEST`` if set, else ``<repo>/zoo/manifest.yaml``."""
    env = os.environ.get(MANIFEST_ENV)
    if env:
        return os.path.abspath(os.path.expanduser(env))
    return os.path.join(repo_root(), "zoo", "manifest.yaml")


@dataclass
class ZooEntry:
    """One published checkpoint (see the module docstring for the fields)."""

    name: str
    method: str
    backbone: str
    dataset: str
    epochs: int
    config: Dict[str, Any]
    metrics: Dict[str, Any]
    size: int
    sha256: str
    license: str
    backbone_kwargs: Dict[str, Any] = field(default_factory=dict)
    format: str = "safetensors"
    dtype: str = "float32"
    file: Optional[str] = None
    urls: List[str] = field(default_factory=list)
    hardware: Optional[Dict[str, Any]] = None
    notes: Optional[str] = None
    created: Optional[str] = None
    #: what a downstream user needs to feed the backbone: square input side (px) and the RGB
    #: normalisation the backbone was trained with
    input_size: int = 224
    mean: List[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: List[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    #: folder of the manifest this entry came from (``file`` is relative to it); not serialised
    root: str = field(default="", repr=False, compare=False)

    @property
    def local_path(self) -> Optional[str]:
        """Absolute path of the in-repository file, or None."""
        if not self.file:
            return None
        return os.path.normpath(os.path.join(self.root, self.file))

    @property
    def extension(self) -> str:
        return ".safetensors" if self.format == "safetensors" else ".pth"

    def to_dict(self) -> Dict[str, Any]:
        """The entry as written to the manifest (fixed key order, optional empty fields left out)."""
        out: Dict[str, Any] = {}
        for key in ENTRY_KEYS:
            value = getattr(self, key)
            if not ENTRY_KEYS[key] and value in (None, [], {}):
                continue
            out[key] = copy.deepcopy(value)
        return out


@dataclass
class Manifest:
    """All entries of one manifest file, in file order."""

    path: str
    entries: List[ZooEntry] = field(default_factory=list)

    @property
    def root(self) -> str:
        return os.path.dirname(os.path.abspath(self.path))

    @property
    def names(self) -> List[str]:
        return [e.name for e in self.entries]

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def get(self, name: str) -> ZooEntry:
        for e in self.entries:
            if e.name == name:
                return e
        known = ", ".join(self.names) or "none"
        raise KeyError(f"no zoo entry '{name}' in {self.path}{close_match_hint(name, self.names)}; "
                       f"entries: {known}")

    def to_dict(self) -> Dict[str, Any]:
        return {"version": SCHEMA_VERSION, "entries": [e.to_dict() for e in self.entries]}


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------


def _err(where: str, msg: str) -> ManifestError:
    return ManifestError(f"{where}: {msg}")


def _check_keys(d: Mapping, valid, where: str) -> None:
    for key in d:
        if key not in valid:
            raise _err(where, f"unknown key '{key}'{close_match_hint(key, valid)}; valid keys: "
                              f"{', '.join(valid)}")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(float(x))


def _check_metric(value: Any, where: str) -> None:
    if value is None:
        return
    if not _is_number(value) or not 0.0 <= float(value) <= 100.0:
        raise _err(where, f"must be a number in [0, 100] (percent) or null, got {value!r}")


def validate_metrics(metrics: Any, where: str = "metrics") -> Dict[str, Any]:
    """Check a metrics mapping (percent values, known names, ``extra`` for anything else)."""
    if not isinstance(metrics, Mapping):
        raise _err(where, f"must be a mapping, got {type(metrics).__name__}")
    _check_keys(metrics, METRIC_KEYS, where)
    for key in REQUIRED_METRICS:
        if key not in metrics:
            raise _err(where, f"missing '{key}' (use null if it was not measured)")
    for key, value in metrics.items():
        if key == "extra":
            if not isinstance(value, Mapping):
                raise _err(f"{where}.extra", "must be a mapping name → number")
            for k, v in value.items():
                if not isinstance(k, str) or not _is_number(v):
                    raise _err(f"{where}.extra.{k}", f"must be a number, got {v!r}")
        else:
            _check_metric(value, f"{where}.{key}")
    return dict(metrics)


def _looks_absolute(value: str) -> bool:
    """A path of some machine: POSIX ``/...``, home ``~...``, Windows ``C:\\...`` or ``\\\\server``."""
    v = value.strip()
    return v.startswith(("/", "~", "\\\\")) or bool(re.match(r"^[A-Za-z]:[\\/]", v))


def absolute_paths(obj: Any, where: str = "") -> List[str]:
    """Every string inside ``obj`` (nested mappings / lists) that is an absolute path, as
    ``'dotted.key = value'`` lines. URLs are not paths."""
    found: List[str] = []
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            found += absolute_paths(v, f"{where}.{k}" if where else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found += absolute_paths(v, f"{where}[{i}]")
    elif isinstance(obj, str) and _looks_absolute(obj):
        found.append(f"{where} = {obj!r}")
    return found


#: how :func:`scrub_paths` rewrites an absolute path, by the key that holds it
_PATH_PLACEHOLDERS = {"train_path": "./datasets/{base}", "val_path": "./datasets/{base}", "root": "./masks/{base}",
                      "val_root": "./masks/{base}", "dir": "./trained_models"}


def scrub_paths(obj: Any, key: str = "") -> Any:
    """A copy of ``obj`` with every absolute path replaced by a relative placeholder: data paths
    become ``./datasets/<last folder>``, mask roots ``./masks/<last folder>``, checkpoint folders
    ``./trained_models``, anything else ``./<last component>``. A published config then says what
    was used without naming the machine it was trained on."""
    if isinstance(obj, Mapping):
        return {k: scrub_paths(v, str(k)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [scrub_paths(v, key) for v in obj]
    if isinstance(obj, str) and _looks_absolute(obj):
        base = os.path.basename(obj.rstrip("/\\")) or "path"
        return _PATH_PLACEHOLDERS.get(key, "./{base}").format(base=base)
    return obj


def _check_entry(raw: Any, index: int, path: str) -> Dict[str, Any]:
    where = f"{path}: entries[{index}]"
    if not isinstance(raw, Mapping):
        raise ManifestError(f"{where}: must be a mapping, got {type(raw).__name__}")
    name = raw.get("name")
    if isinstance(name, str):
        where = f"{path}: entry '{name}'"
    _check_keys(raw, list(ENTRY_KEYS), where)
    for key, required in ENTRY_KEYS.items():
        if required and raw.get(key) is None:
            raise _err(where, f"missing required key '{key}'")

    def want(key: str, types, what: str) -> None:
        if key in raw and raw[key] is not None and not isinstance(raw[key], types):
            raise _err(where, f"'{key}' must be {what}, got {type(raw[key]).__name__}")

    for key in ("name", "method", "backbone", "dataset", "license", "format", "dtype", "file", "notes",
                "created"):
        want(key, str, "a string")
    for key in ("config", "backbone_kwargs", "hardware"):
        want(key, Mapping, "a mapping")
    if not NAME_RE.match(raw["name"]):
        raise _err(where, "'name' must be a Python identifier (letters, digits, _): it is a torch.hub "
                          "entry point")
    for key in ("method", "backbone", "dataset", "license"):
        if not raw[key].strip():
            raise _err(where, f"'{key}' is empty")
    for key in ("epochs", "size"):
        value = raw[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if key == "epochs" else 1):
            raise _err(where, f"'{key}' must be an integer ≥ {0 if key == 'epochs' else 1}, got {value!r}")
    if not isinstance(raw["sha256"], str) or not SHA256_RE.match(raw["sha256"]):
        raise _err(where, f"'sha256' must be 64 lowercase hex digits, got {raw['sha256']!r}")
    if raw.get("format", "safetensors") not in FORMATS:
        raise _err(where, f"'format' must be one of {', '.join(FORMATS)}{close_match_hint(raw['format'], FORMATS)}")
    if raw.get("dtype", "float32") not in DTYPES:
        raise _err(where, f"'dtype' must be one of {', '.join(DTYPES)}{close_match_hint(raw['dtype'], DTYPES)}")
    validate_metrics(raw["metrics"], f"{where}: metrics")
    urls = raw.get("urls") or []
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise _err(where, "'urls' must be a list of strings")
    for u in urls:
        if not u.startswith(URL_SCHEMES):
            raise _err(where, f"url '{u}' must start with one of {', '.join(URL_SCHEMES)}")
    file = raw.get("file")
    if file is not None and (os.path.isabs(file) or not file.strip()):
        raise _err(where, f"'file' must be a path relative to the manifest's folder, got {file!r}")
    if not file and not urls:
        raise _err(where, "needs a 'file' (in the repository) or one or more 'urls'")
    size = raw["input_size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise _err(where, f"'input_size' must be an integer ≥ 1 (the input side in pixels), got {size!r}")
    for key in ("mean", "std"):
        v = raw[key]
        if not isinstance(v, list) or len(v) != 3 or not all(_is_number(x) for x in v) \
                or (key == "std" and not all(x > 0 for x in v)):
            raise _err(where, f"'{key}' must be a list of 3 numbers (RGB{', each > 0' if key == 'std' else ''}), "
                              f"got {v!r}")
    leaked = absolute_paths({k: raw.get(k) for k in ("config", "notes", "backbone_kwargs")})
    if leaked:
        raise _err(where, "names absolute paths of the machine that trained it (record them relative, "
                          "e.g. with harl.zoo.manifest.scrub_paths): " + "; ".join(leaked[:5]))
    hw = raw.get("hardware")
    if hw is not None:
        _check_keys(hw, HARDWARE_KEYS, f"{where}: hardware")
        if "device" not in hw or not isinstance(hw["device"], str):
            raise _err(where, "'hardware.device' (a string, e.g. 'NVIDIA H100 80GB') is required")
        if "hours" in hw and (not _is_number(hw["hours"]) or hw["hours"] < 0):
            raise _err(where, f"'hardware.hours' must be a number ≥ 0, got {hw['hours']!r}")
        if "count" in hw and (not isinstance(hw["count"], int) or hw["count"] < 1):
            raise _err(where, f"'hardware.count' must be an integer ≥ 1, got {hw['count']!r}")
    return dict(raw)


def manifest_from_dict(data: Any, path: str) -> Manifest:
    """Validate a parsed manifest; ``path`` is used for messages and to resolve ``file``."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ManifestError(f"{path}: the manifest must be a mapping with 'version' and 'entries'")
    _check_keys(data, TOP_KEYS, path)
    version = data.get("version")
    if version != SCHEMA_VERSION:
        raise ManifestError(f"{path}: 'version' must be {SCHEMA_VERSION}, got {version!r}")
    raw_entries = data.get("entries") or []
    if not isinstance(raw_entries, list):
        raise ManifestError(f"{path}: 'entries' must be a list")
    root = os.path.dirname(os.path.abspath(path))
    entries: List[ZooEntry] = []
    seen = set()
    for i, raw in enumerate(raw_entries):
        d = _check_entry(raw, i, path)
        if d["name"] in seen:
            raise ManifestError(f"{path}: entry name '{d['name']}' appears twice")
        seen.add(d["name"])
        d = copy.deepcopy(d)
        d["urls"] = list(d.get("urls") or [])
        d["backbone_kwargs"] = dict(d.get("backbone_kwargs") or {})
        entries.append(ZooEntry(root=root, **{k: v for k, v in d.items() if v is not None or ENTRY_KEYS[k]}))
    return Manifest(path=os.path.abspath(path), entries=entries)


def load_manifest(path: Optional[str] = None) -> Manifest:
    """Read and validate a manifest (default: :func:`default_manifest_path`)."""
    import yaml

    path = path or default_manifest_path()
    if not os.path.isfile(path):
        hint = f" (set ${MANIFEST_ENV} to a manifest file)" if not os.environ.get(MANIFEST_ENV) else ""
        raise ManifestError(f"no zoo manifest at '{path}'{hint}")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as err:
        raise ManifestError(f"could not read zoo manifest '{path}': {err}") from err
    return manifest_from_dict(data, path)


def dump_manifest(manifest: Manifest) -> str:
    """The manifest as YAML text (JSON when the file name ends with .json)."""
    import yaml

    data = manifest.to_dict()
    if manifest.path.endswith(".json"):
        return json.dumps(data, indent=2) + "\n"
    header = ("# harl pretrained zoo: schema in docs/zoo.md. Edit through `harl-zoo add`;\n"
              "# zoo/README.md is generated from this file (`harl-zoo readme`).\n")
    return header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True, width=100)


def save_manifest(manifest: Manifest) -> None:
    """Validate, then write the manifest atomically."""
    text = dump_manifest(manifest)
    manifest_from_dict(manifest.to_dict(), manifest.path)  # never write an invalid manifest
    atomic_write_text(manifest.path, text)
