"""Reading weights files and loading them into modules, strictly.

:func:`read_checkpoint` is the only place that may unpickle (behind ``trust``); everything else reads
with ``torch.load(weights_only=True)``. :func:`load_backbone` is the one path from a weights file into
a backbone: it takes the ``backbone.`` entries (solo-learn's checkpoint format) and loads them
strictly, raising :class:`CheckpointMismatchError` that lists every missing, unexpected and
mis-shaped key. :func:`read_run_config` reads the config a checkpoint was trained with.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, Iterable, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from harl.errors import CheckpointMismatchError


def _first_line(err: BaseException, limit: int = 160) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
    return (text.splitlines() or [""])[0][:limit]


def read_checkpoint(path: str, trust: bool = False) -> Any:
    """The whole object in a checkpoint file (``.safetensors``: its tensors), for ``harl-zoo import``.

    Read with ``weights_only=True``; a file that needs unpickling of arbitrary Python objects (which
    can run code from the file) is refused unless ``trust`` (CLI: ``--trust``) says its source is
    trusted. This is the only place harl unpickles a weights file it did not write.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint '{path}' does not exist")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        if not trust:
            raise CheckpointMismatchError(
                f"'{path}' holds pickled Python objects besides tensors (e.g. its hyper-parameters), and "
                f"unpickling them can run code from the file; pass trust=True (CLI: --trust) if you trust "
                f"its source ({type(err).__name__}: {_first_line(err)})") from err
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001
        raise CheckpointMismatchError(f"could not read checkpoint '{path}': {err}") from err


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """The state dict inside a ``.ckpt``/``.pth``/``.pt``/``.safetensors`` file (full model keys)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint '{path}' does not exist")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file name
        raise CheckpointMismatchError(f"could not read checkpoint '{path}': {err}") from err
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                return obj[key]
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise CheckpointMismatchError(f"'{path}' holds no state dict (top-level keys: {list(obj)[:10]})")


def backbone_state_dict(state_dict: Dict[str, torch.Tensor], prefix: str = "backbone.") -> Dict[str, torch.Tensor]:
    """Keep ``backbone.*`` keys and strip the prefix (legacy ``encoder.`` is renamed first).

    A state dict without any ``backbone.``/``encoder.`` key is taken to be a bare backbone.
    """
    sd = {}
    for k, v in state_dict.items():
        if k.startswith("module."):
            k = k[len("module."):]
        if k.startswith("encoder."):
            k = prefix + k[len("encoder."):]
        sd[k] = v
    if any(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return sd


def strict_load(module: nn.Module, state_dict: Dict[str, torch.Tensor], source: str = "checkpoint",
                ignore: Iterable[str] = ()) -> None:
    """``load_state_dict(strict=True)`` with an error naming every missing, unexpected, mis-shaped key.

    ``ignore`` lists key names (or prefixes ending with '.') the caller explicitly drops.
    """
    ignore = tuple(ignore)

    def ignored(k: str) -> bool:
        return any(k == i or (i.endswith(".") and k.startswith(i)) for i in ignore)

    own = module.state_dict()
    state_dict = {k: v for k, v in state_dict.items() if not ignored(k)}
    missing = sorted(k for k in own if k not in state_dict and not ignored(k))
    unexpected = sorted(k for k in state_dict if k not in own)
    shapes = sorted(f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in own if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape))
    if missing or unexpected or shapes:
        lines = [f"{source} does not match {type(module).__name__}:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): " + ", ".join(missing))
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): " + ", ".join(unexpected))
        if shapes:
            lines.append(f"  shape mismatches ({len(shapes)}): " + "; ".join(shapes))
        raise CheckpointMismatchError("\n".join(lines))
    own_keys = set(own)
    module.load_state_dict({k: v for k, v in state_dict.items() if k in own_keys},
                           strict=not ignore)  # with ignored keys only those may be absent: checked above


def read_backbone_state_dict(path: str, prefix: str = "backbone.") -> Dict[str, torch.Tensor]:
    """The ``prefix*`` weights of checkpoint ``path``, prefix stripped (:func:`read_state_dict` +
    :func:`backbone_state_dict`; read with ``weights_only=True``)."""
    return backbone_state_dict(read_state_dict(path), prefix=prefix)


def load_backbone(path: str, backbone: nn.Module, ignore: Iterable[str] = (), *, prefix: str = "backbone.",
                  state_dict: Optional[Dict[str, torch.Tensor]] = None, source: Optional[str] = None) -> nn.Module:
    """Load the ``prefix*`` weights of checkpoint ``path`` into ``backbone`` strictly.

    This is harl's one path from a weights file into a backbone module; every command, evaluation
    mode and the zoo end here (the architecture-resolving front is
    :func:`harl.eval.pretrained.load_pretrained_backbone`). The file is read with
    ``weights_only=True`` (nothing is unpickled); any missing, unexpected or mis-shaped key raises
    :class:`CheckpointMismatchError` naming it. ``ignore`` lists keys (or ``prefix.``-style
    prefixes) the caller drops explicitly, by name (a classifier's head).

    Args:
        state_dict: the file's backbone state dict when the caller has read it already
            (:func:`read_backbone_state_dict` of ``path`` and ``prefix``), so it is not read twice.
        source: how the error message names the file (default ``checkpoint '<path>'``).
    """
    sd = state_dict if state_dict is not None else read_backbone_state_dict(path, prefix=prefix)
    strict_load(backbone, sd, source=source or f"checkpoint '{path}'", ignore=ignore)
    return backbone


def read_run_config(path: str) -> Optional[DictConfig]:
    """The training config of a checkpoint: ``args.json`` beside it, else the ckpt's hyper-parameters.

    The checkpoint is read with ``weights_only=True`` only: a file that needs unpickling of
    arbitrary Python objects (it can run code from the file) gives no config here, with a warning
    saying how to proceed (``harl-zoo import ... --trust`` converts a trusted file once).
    """
    args = os.path.join(os.path.dirname(os.path.abspath(path)), "args.json")
    if os.path.isfile(args):
        with open(args) as f:
            return OmegaConf.create(json.load(f))
    if path.endswith(".ckpt"):
        import pickle
        import warnings

        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            warnings.warn(f"'{path}' has no args.json beside it and its hyper-parameters hold pickled Python "
                          "objects, which harl does not unpickle (that can run code from the file); give the "
                          "architecture explicitly, or convert a file you trust with "
                          "'harl-zoo import CKPT --out FILE --trust'")
            return None
        except Exception:  # noqa: BLE001
            return None
        cfg = (obj.get("hyper_parameters") or {}).get("cfg") if isinstance(obj, dict) else None
        if cfg is not None:
            return OmegaConf.create(cfg)
    return None
