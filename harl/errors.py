"""Every exception harl raises on purpose, in one module at the bottom of the layer order.

Nothing here imports anything from harl (or torch), so any module may import its errors without
pulling in another layer (``docs/architecture.md``). The console commands turn the configuration
and input errors (:data:`INPUT_ERRORS`) into one ``error: …`` line and exit code 2
(:func:`harl.cli.common.run_cli`).
"""

from __future__ import annotations

import os
from typing import Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


# ---------------------------------------------------------------------------------------------
# configuration and command-line input
# ---------------------------------------------------------------------------------------------


class ConfigError(ValueError):
    """Raised for an unknown, missing or invalid configuration key."""


class UsageError(ValueError):
    """A command-line argument that cannot be used as given (one line, exit code 2)."""


class DataVerifyError(ConfigError):
    """``data.verify`` found unreadable files (all of them are listed)."""


class SubsetListError(ConfigError):
    """A subset list that does not match the dataset it is applied to."""


# ---------------------------------------------------------------------------------------------
# data files
# ---------------------------------------------------------------------------------------------


class CorruptImageError(OSError):
    """An image or mask file that exists in the listing but cannot be decoded."""

    def __init__(self, path: PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"cannot read image '{self.path}': {reason}")

    def __reduce__(self):  # keep (path, reason) through DataLoader worker pickling
        return (type(self), (self.path, self.reason))


class DataFileError(RuntimeError):
    """An item's image or mask cannot be used, raised from a DataLoader worker process.

    torch re-raises a worker's exception in the main process as ``type(text)``, where ``text`` is
    the worker's whole traceback; this class keeps only its own one-line message from it.
    """

    def __init__(self, message: str):
        marker = f"{type(self).__name__}: "
        if "Original Traceback" in message and marker in message:
            message = message[message.rindex(marker) + len(marker):].strip().splitlines()[0]
        super().__init__(message)


class DatasetNotFoundError(FileNotFoundError):
    """A data directory (or dataset file set) is missing, empty or holds no images."""


class MissingMaskError(FileNotFoundError):
    """An image has no mask file and ``data.masks.on_missing`` is ``error``."""


class MaskSizeMismatchError(ValueError):
    """A mask's H×W differs from its image's and ``data.masks.on_size_mismatch`` is ``error``."""


class IDXFormatError(ValueError):
    """An IDX file is missing, truncated or structurally wrong; the message names the file."""


class SceneTreeMismatchError(FileExistsError):
    """The output folder holds a tree made with other parameters (or not by this generator)."""


# ---------------------------------------------------------------------------------------------
# offline masks (harl-masks)
# ---------------------------------------------------------------------------------------------


class ImageReadError(RuntimeError):
    """An image or mask file could not be read (missing, truncated, corrupt, unsupported)."""


class MissingSourceMaskError(FileNotFoundError):
    """``harl-masks import``: no source mask for an image."""


class MetaMismatchError(ValueError):
    """The output folder was made by another generator or with other parameters."""


class SaliencyWeightsError(ValueError):
    """A head file is unreadable or does not match the backbone / checkpoint it is used with."""


# ---------------------------------------------------------------------------------------------
# checkpoints and training
# ---------------------------------------------------------------------------------------------


class CheckpointMismatchError(RuntimeError):
    """A checkpoint does not match the model it is loaded into."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint just written does not read back; the previous one is kept."""


class TrainingHalted(RuntimeError):
    """Training was stopped on purpose, with a one-line reason (the CLI exits with code 2)."""


class NonFiniteTrainingError(TrainingHalted):
    """A loss, gradient or weight went non-finite (more often than ``guard.max_bad_steps`` allows)."""


class HealthError(TrainingHalted):
    """A health rule failed with ``health.strict: true``."""


class TrainingStopped(RuntimeError):
    """A run stopped on purpose (bad data file); the message says why and where the state was saved."""


# ---------------------------------------------------------------------------------------------
# model zoo
# ---------------------------------------------------------------------------------------------


class ManifestError(ValueError):
    """The zoo manifest is missing, unreadable or does not follow the schema."""


class ZooDownloadError(RuntimeError):
    """A zoo file could not be obtained (or failed verification) from any source."""


class UnsupportedExport(ValueError):
    """The requested format cannot represent this architecture."""


def data_error_message(err: BaseException) -> Optional[str]:
    """The one-line message of an unreadable-data error (None: ``err`` is not one)."""
    if isinstance(err, (DataFileError, CorruptImageError, MissingMaskError, MaskSizeMismatchError)):
        return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return None


#: configuration and input errors: every console command prints them as one line ``error: ...``
#: and exits with status 2 (:func:`harl.cli.common.run_cli`); a command may add its own
INPUT_ERRORS = (
    ConfigError, UsageError, FileNotFoundError, FileExistsError, CorruptImageError, DataFileError,
    MaskSizeMismatchError, IDXFormatError, ImageReadError, MetaMismatchError, SaliencyWeightsError,
    CheckpointMismatchError, CheckpointWriteError, TrainingHalted, TrainingStopped,
    ManifestError, ZooDownloadError, UnsupportedExport,
)


__all__ = [
    "ConfigError", "UsageError", "DataVerifyError", "SubsetListError",
    "CorruptImageError", "DataFileError", "DatasetNotFoundError", "MissingMaskError", "MaskSizeMismatchError",
    "IDXFormatError", "SceneTreeMismatchError",
    "ImageReadError", "MissingSourceMaskError", "MetaMismatchError", "SaliencyWeightsError",
    "CheckpointMismatchError", "CheckpointWriteError", "TrainingHalted", "NonFiniteTrainingError", "HealthError",
    "TrainingStopped",
    "ManifestError", "ZooDownloadError", "UnsupportedExport", "INPUT_ERRORS", "data_error_message",
]
