"""Pretraining: config → data, method, loggers, callbacks, Lightning Trainer → run folder.

:func:`pretrain` is what ``harl-pretrain`` runs; it is importable so tests and notebooks can run a
config directly.
"""

from __future__ import annotations

import logging
import os
import random
import warnings
from dataclasses import dataclass
from typing import Any, List, Optional

import numpy as np
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import LearningRateMonitor, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig

from harl.checkpoint import (Checkpointer, checkpoint_problem, choose_resume, new_version, preserve_metrics_on_resume,
                             run_root)
from harl.clean_stop import DataErrorStop
from harl.config import num_devices, parse_cfg, trainer_extra_kwargs
from harl.errors import ConfigError, data_error_message
from harl.data.sampling import SamplerState
from harl.guard import FiniteGuard
from harl.health import HealthMonitor
from harl.methods import METHODS
from harl.data import build_pretrain_dataset, build_pretrain_loader, build_val_dataset, build_val_loader
from harl.data import report_skipped
from harl.data.verify import verify_for_training

log = logging.getLogger("harl")


class EpochSeeder(Callback):
    """Re-seeds torch / numpy / random at the start of every epoch from (seed, epoch, rank).

    Data order and augmentations then depend only on the epoch, so a run resumed from an
    end-of-epoch checkpoint sees the same batches as an uninterrupted run.
    """

    def __init__(self, seed: int):
        self.seed = int(seed)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        s = (self.seed * 1_000_003 + trainer.current_epoch * 1009 + trainer.global_rank) % (2**31 - 1)
        torch.manual_seed(s)
        np.random.seed(s)
        random.seed(s)


def resolve_accelerator(cfg: DictConfig) -> dict:
    """Trainer accelerator/devices/strategy from the config, with clear errors on this machine."""
    acc = str(cfg.accelerator)
    if acc in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"accelerator '{acc}' was requested but no CUDA device is available; "
                          "override with accelerator=cpu (and devices=1)")
    devices: Any = cfg.devices
    if acc == "cpu" or (acc == "auto" and not torch.cuda.is_available()):
        devices = num_devices(cfg)
    elif not isinstance(devices, (int, str)):
        devices = list(devices)
    strategy = cfg.strategy or "auto"
    if strategy == "ddp" and num_devices(cfg) * int(cfg.num_nodes) == 1:
        strategy = "auto"
    return {"accelerator": acc, "devices": devices, "strategy": strategy}


def _sync_batchnorm(cfg: DictConfig, acc: dict) -> bool:
    """SyncBatchNorm only where it can run: several processes on GPUs (torch has no CPU version)."""
    if not cfg.sync_batchnorm or acc["strategy"] == "auto":
        return False
    on_gpu = acc["accelerator"] in ("gpu", "cuda") or (acc["accelerator"] == "auto" and torch.cuda.is_available())
    if not on_gpu:
        warnings.warn("sync_batchnorm is ignored on CPU (torch's SyncBatchNorm needs CUDA); "
                      "each process keeps its own BatchNorm statistics")
    return on_gpu


class SkippedFilesReporter(Callback):
    """With ``data.skip_corrupt``: logs how many unreadable files were skipped and names them once."""

    def __init__(self, dataset):
        self.dataset = dataset
        self._reported = 0

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        n = int(getattr(self.dataset, "num_skipped", 0))
        pl_module.log("data_skipped_files", float(n))
        if n > self._reported and trainer.is_global_zero:
            report_skipped(self.dataset)
            self._reported = n


@dataclass
class PretrainResult:
    run_dir: str
    version: str
    trainer: Trainer
    model: Any
    last_checkpoint: Optional[str]


def pretrain(cfg: DictConfig, callbacks: Optional[List[Callback]] = None) -> PretrainResult:
    """Run pretraining for a (raw or parsed) config; returns the run folder and the trained model."""
    if "num_large_crops" not in cfg or cfg.num_large_crops is None:
        cfg = parse_cfg(cfg)
    method_cls = METHODS.get(cfg.method)
    seed_everything(int(cfg.seed), workers=True, verbose=False)

    ckpt_path = cfg.resume_from_checkpoint
    run_dir = None
    if ckpt_path is not None and not os.path.isfile(str(ckpt_path)):
        raise ConfigError(f"resume_from_checkpoint '{ckpt_path}' does not exist")
    if ckpt_path is not None and checkpoint_problem(str(ckpt_path)) is not None:
        raise ConfigError(f"resume_from_checkpoint '{ckpt_path}' is not a complete checkpoint "
                          f"({checkpoint_problem(str(ckpt_path))}); resume from an earlier one or start over")
    if ckpt_path is None and cfg.auto_resume.enabled:
        choice = choose_resume(cfg)
        ckpt_path, run_dir = choice.ckpt, choice.run_dir
        log.warning(choice.message)
    if ckpt_path is not None and run_dir is None:
        run_dir = os.path.dirname(os.path.abspath(str(ckpt_path)))
    version = os.path.basename(run_dir) if run_dir else new_version(cfg.wandb.enabled)
    if run_dir is None:
        run_dir = os.path.join(run_root(cfg), version)

    train_ds = build_pretrain_dataset(cfg)
    val_ds = build_val_dataset(cfg) if not cfg.no_validation else None
    if (cfg.data.get("verify") or "off") != "off":  # every file checked before the first step (harl.data.verify)

        verify_for_training(cfg, train_ds, val_ds)
    train_loader = build_pretrain_loader(cfg, train_ds)
    val_loader = build_val_loader(cfg, val_ds) if val_ds is not None else None

    model = method_cls(cfg)

    if ckpt_path is not None:
        preserve_metrics_on_resume(run_dir)
    loggers: List[Any] = [CSVLogger(save_dir=run_dir, name="", version="")]
    if cfg.wandb.enabled:
        from lightning.pytorch.loggers import WandbLogger

        os.environ.setdefault("WANDB_SILENT", "true")
        loggers.append(WandbLogger(name=cfg.name, project=cfg.wandb.project, entity=cfg.wandb.entity,
                                   offline=bool(cfg.wandb.offline), id=version, save_dir=run_dir,
                                   tags=list(cfg.wandb.tags) if cfg.wandb.tags else None, resume="allow"))

    sampler_state = SamplerState(train_loader.sampler)
    checkpointer = Checkpointer(cfg, run_dir, version, enabled=cfg.checkpoint.enabled,
                                frequency=cfg.checkpoint.frequency, keep_prev=cfg.checkpoint.keep_prev)
    data_stop = DataErrorStop(checkpointer, sampler_state, int(cfg.optimizer.batch_size))
    cbs: List[Callback] = [
        EpochSeeder(cfg.seed),
        sampler_state,
        checkpointer,
        LearningRateMonitor(logging_interval="step"),
        data_stop,
    ]
    if cfg.guard.enabled:
        cbs.append(FiniteGuard(max_bad_steps=cfg.guard.max_bad_steps))
    if cfg.health.enabled:
        cbs.append(HealthMonitor(every_n_steps=cfg.health.every_n_steps, strict=cfg.health.strict, run_dir=run_dir))
    if cfg.data.skip_corrupt:
        cbs.append(SkippedFilesReporter(train_ds))
    extra = trainer_extra_kwargs(cfg)
    if extra.get("enable_progress_bar", True):
        cbs.append(TQDMProgressBar(refresh_rate=max(1, int(extra.pop("progress_bar_refresh_rate", 1) or 1))))
    cbs.extend(callbacks or [])

    acc = resolve_accelerator(cfg)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        # a mid-epoch checkpoint (harl.clean_stop) stores the sampler's position: resuming from it is exact
        warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")
        trainer = Trainer(
            max_epochs=int(cfg.max_epochs),
            num_nodes=int(cfg.num_nodes),
            precision=cfg.precision,
            sync_batchnorm=_sync_batchnorm(cfg, acc),
            accumulate_grad_batches=int(cfg.accumulate_grad_batches),
            logger=loggers,
            callbacks=cbs,
            enable_checkpointing=False,
            default_root_dir=run_dir,
            use_distributed_sampler=False,  # the pretraining sampler shards across ranks itself
            **acc,
            **extra,
        )
        try:
            trainer.fit(model, train_loader, val_loader, ckpt_path=ckpt_path)
        except Exception as err:
            if data_error_message(err) is None or data_stop.message is None:
                raise
            raise data_stop.stop_error() from None
    return PretrainResult(run_dir, version, trainer, model, checkpointer.last_ckpt)
