"""Stopping a pretraining run cleanly on an unreadable data file.

Without ``data.skip_corrupt``, an image or mask that cannot be read (corrupt, truncated, empty,
not an image, a missing mask with ``on_missing=error``, a mask of the wrong size) stops the run.
Nothing of the epoch is lost: :class:`DataErrorStop` (a Lightning callback) catches the error in
``on_exception``, writes a checkpoint of the state so far (model, optimizer, scheduler, loop
progress, and the sampler's position inside the epoch) under the run's usual checkpoint name, and
the run ends with :class:`TrainingStopped`: one line naming the file, the step and the checkpoint
(``harl-pretrain`` exits with code 2). After the file is fixed (or ``data.skip_corrupt=true`` is
set), rerunning the same command with ``auto_resume.enabled=true`` continues from the batch
that failed: :class:`~harl.data.sampling.EpochShuffleSampler` skips the samples the run had
already trained on in that epoch.

Errors raised inside DataLoader worker processes are carried to the main process as
:class:`~harl.errors.DataFileError` (torch re-raises a worker's exception with the
worker's traceback as its message; ``DataFileError`` keeps only its own line).
"""

from __future__ import annotations

import logging
from typing import Optional

from lightning.pytorch import Callback

from harl.errors import TrainingStopped, data_error_message
from harl.utils.io import atomic_write_with

log = logging.getLogger("harl")


class DataErrorStop(Callback):
    """On an unreadable-data error during fit: save the state so far, then stop with one line.

    ``checkpointer``: the run's :class:`~harl.checkpoint.Checkpointer` (names the file);
    ``sampler_state``: the :class:`~harl.data.sampling.SamplerState` callback (records where in the
    epoch to continue). With several processes (DDP) no checkpoint is written (the other ranks
    cannot join a collective save from an exception handler); the last regular checkpoint stays.
    """

    def __init__(self, checkpointer, sampler_state, batch_size: int):
        self.checkpointer = checkpointer
        self.sampler_state = sampler_state
        self.batch_size = int(batch_size)
        self.message: Optional[str] = None
        self.saved: Optional[str] = None

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        msg = data_error_message(exception)
        if msg is None or trainer.sanity_checking or not trainer.training:
            if msg is not None:
                self.message = msg
            return
        epoch = int(trainer.current_epoch)
        done = int(trainer.fit_loop.epoch_loop.batch_progress.current.completed)
        step = int(trainer.global_step)
        self.message = f"{msg} (stopped at epoch {epoch}, batch {done}, step {step})"
        if trainer.world_size > 1:
            return
        path = self.checkpointer.ckpt_path(epoch)
        self.sampler_state.override = {"sampler_epoch": epoch, "skip_samples": done * self.batch_size}
        try:
            atomic_write_with(path, lambda tmp: trainer.save_checkpoint(tmp, weights_only=False), fsync=False,
                              tmp=path + ".tmp")
            self.saved = path
        except Exception as err:  # noqa: BLE001 - the data error is what the user must see
            log.warning("could not save the state before stopping: %s", err)
        finally:
            self.sampler_state.override = None

    def stop_error(self) -> TrainingStopped:
        where = (f"; the state so far is saved in '{self.saved}': fix or remove the file (or set "
                 "data.skip_corrupt=true) and rerun with auto_resume.enabled=true to continue from this batch"
                 if self.saved else "; fix or remove the file (or set data.skip_corrupt=true) and rerun")
        return TrainingStopped(f"{self.message}{where}")


__all__ = ["DataErrorStop"]
