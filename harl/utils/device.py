"""The one device resolver of harl (feature extraction, fine-tuning, transfer, saliency masks)."""

from __future__ import annotations

from typing import Any, Optional

#: device words that mean "the CUDA device" (``gpu`` is Lightning's accelerator name)
CUDA_WORDS = ("cuda", "gpu")


def resolve_device(device: Optional[Any] = None, option: str = "accelerator") -> "torch.device":
    """The ``torch.device`` a user's device / accelerator choice means.

    - ``None`` or ``"auto"``: CUDA when available, else the CPU;
    - ``"cuda"`` / ``"gpu"``: CUDA, or :class:`~harl.errors.ConfigError` when no CUDA device is
      available (``option`` names the setting in that message);
    - ``"cpu"``: the CPU;
    - anything else (a ``torch.device``, ``"cuda:1"``, ``"mps"``): ``torch.device(device)``.

    The keywords are matched case-insensitively.
    """
    import torch  # lazy: the console commands' --help stays torch-free

    from harl.errors import ConfigError

    word = device.lower() if isinstance(device, str) else None
    if device is None or word == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if word in CUDA_WORDS:
        if not torch.cuda.is_available():
            raise ConfigError(f"{option} '{device}' was requested but no CUDA device is available; "
                              f"override with {option}=cpu")
        return torch.device("cuda")
    if word == "cpu":
        return torch.device("cpu")
    return torch.device(device)


__all__ = ["resolve_device", "CUDA_WORDS"]
