"""Linear evaluation (solo-learn's ``main_linear``) and the probe training loop shared with the dense probe.

- :class:`ProbeModule`: a LightningModule = (optional) backbone + head + task. Frozen mode
  (default) keeps the backbone in eval mode for the whole run (BatchNorm statistics included:
  :meth:`ProbeModule.train` re-applies ``eval()``), with ``requires_grad=False`` and features
  computed under ``no_grad``; ``finetune=True`` trains it with the head's lr. With
  ``backbone=None`` the module trains on cached features. Validation metrics are accumulated as
  sums over the whole validation set (not means of batch means) and reduced across devices.
- :class:`ClassificationTask`: pooled features → ``nn.Linear`` → CE (optional label smoothing);
  metrics ``val_loss``, ``val_acc1``, ``val_acc5``.
- :func:`fit_probe`: Lightning Trainer with the CSV logger (+ wandb when enabled), atomic
  checkpoints every ``checkpoint.frequency`` epochs (:class:`harl.checkpoint.Checkpointer`),
  per-epoch reseeding and resume.
- :func:`run_linear` (mode ``linear``) and the Python API :func:`linear_probe`.

Protocols: ``augmented`` (solo-learn: train RandomResizedCrop + flip through the backbone each
step, val Resize/CenterCrop per dataset) and ``cached`` (features of the train and val images
extracted once with the validation transform, no augmentation, then the same head, optimizer and
schedule on the cached features).
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any, Dict, List, Optional

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from harl.data.sampling import EpochSeededDataset, EpochShuffleSampler
from harl.eval.runner import EVAL_MODES, EvalContext, build_datasets, cache_path_for, evaluate
from harl.checkpoint import Checkpointer, preserve_metrics_on_resume
from harl.eval.features import extract_feature_maps, extract_features
from harl.eval.linear_config import build_linear_cfg
from harl.eval.linear_config import trainer_extra_kwargs
from harl.optim import StepDecay, WarmupCosine, build_optimizer
from harl.train import EpochSeeder, resolve_accelerator


# ---------------------------------------------------------------------------------------------
# tasks
# ---------------------------------------------------------------------------------------------


class ClassificationTask:
    """Global-pooled features → linear classifier. Batches are ``(x, targets)``."""

    name = "classification"
    primary = "val_acc1"  # the metric "best" refers to

    def __init__(self, num_classes: int, label_smoothing: float = 0.0, head_norm: Optional[str] = None):
        self.num_classes = int(num_classes)
        self.label_smoothing = float(label_smoothing)
        self.head_norm = head_norm

    def make_head(self, num_features: int) -> nn.Module:
        """``nn.Linear(C, classes)``; with ``head_norm="batchnorm"`` preceded by a parameter-free
        ``BatchNorm1d(C, affine=False)`` (MAE's linear-probe trick: still a linear classifier at
        evaluation, but the lr no longer depends on the feature scale of each backbone)."""
        linear = nn.Linear(int(num_features), self.num_classes)
        if self.head_norm == "batchnorm":
            return nn.Sequential(nn.BatchNorm1d(int(num_features), affine=False, momentum=None), linear)
        return linear

    @staticmethod
    def backbone_features(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """B×3×H×W → pooled B×C."""
        return backbone(x)

    def loss(self, out: torch.Tensor, batch, train: bool = True) -> torch.Tensor:
        return F.cross_entropy(out, batch[1], label_smoothing=self.label_smoothing if train else 0.0,
                               ignore_index=-1)

    #: order of the sums accumulated during validation
    sums = ("loss", "n", "correct1", "correct5")

    def val_sums(self, out: torch.Tensor, batch) -> torch.Tensor:
        y = batch[1]
        n = y.shape[0]
        loss = F.cross_entropy(out, y, reduction="sum")
        k = min(5, out.shape[1])
        top = out.topk(k, dim=1).indices
        hit = top == y.view(-1, 1)
        return torch.stack([loss.detach().double(), torch.tensor(float(n), dtype=torch.float64, device=out.device),
                            hit[:, :1].any(1).sum().double(), hit.any(1).sum().double()])

    @staticmethod
    def metrics(s: torch.Tensor) -> Dict[str, float]:
        n = max(float(s[1]), 1.0)
        return {"val_loss": float(s[0]) / n, "val_acc1": 100.0 * float(s[2]) / n, "val_acc5": 100.0 * float(s[3]) / n}


# ---------------------------------------------------------------------------------------------
# module
# ---------------------------------------------------------------------------------------------


class ProbeModule(pl.LightningModule):
    """Backbone (frozen unless ``finetune``) + head, trained for ``task`` (see module docstring).

    Args:
        task: :class:`ClassificationTask` or :class:`harl.eval.dense.DenseTask`.
        num_features: C of the features the head sees.
        backbone: None when training on cached features (then inputs are features).
        optimizer: ``{name, lr (already scaled), weight_decay, kwargs}``.
        scheduler: ``{name, lr_decay_steps, warmup_epochs, warmup_start_lr, min_lr, interval}``.
        input_transform: applied to image batches before the backbone (e.g. ``HighPass``).
    """

    def __init__(self, task, num_features: int, backbone: Optional[nn.Module] = None, *, finetune: bool = False,
                 optimizer: Dict[str, Any], scheduler: Dict[str, Any], max_epochs: int,
                 input_transform: Optional[nn.Module] = None, channels_last: bool = False,
                 hparams: Optional[Dict[str, Any]] = None):
        super().__init__()
        self.task = task
        self.backbone = backbone
        self.finetune = bool(finetune) and backbone is not None
        self.head = task.make_head(num_features)
        self.input_transform = input_transform
        self.optim_cfg = dict(optimizer)
        self.sched_cfg = dict(scheduler)
        self.max_epochs = int(max_epochs)
        self.channels_last = bool(channels_last) and backbone is not None
        self.history: List[Dict[str, Any]] = []
        self._val: Optional[torch.Tensor] = None
        if hparams:
            self.save_hyperparameters({"cfg": hparams})
        if backbone is not None:
            backbone.requires_grad_(self.finetune)
            backbone.train(self.finetune)

    # -- modes -----------------------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        if self.backbone is not None and not self.finetune:
            self.backbone.eval()  # frozen: BatchNorm keeps its pretrained statistics
        return self

    def on_train_epoch_start(self) -> None:
        # Lightning keeps submodules in the mode they had; make the backbone's explicit every epoch
        self.head.train()
        if self.backbone is not None:
            self.backbone.train(self.finetune)

    def on_fit_start(self) -> None:
        if self.channels_last:
            self.backbone.to(memory_format=torch.channels_last)

    # -- forward ---------------------------------------------------------------------------------
    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.backbone is None:
            return x
        if self.input_transform is not None:
            x = self.input_transform(x)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.finetune:
            return self.task.backbone_features(self.backbone, x)
        with torch.no_grad():
            return self.task.backbone_features(self.backbone, x).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    # -- steps -----------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int):
        out = self(batch[0])
        loss = self.task.loss(out, batch, train=True)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch[0].shape[0])
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val = None

    def validation_step(self, batch, batch_idx: int):
        out = self(batch[0])
        s = self.task.val_sums(out, batch)
        self._val = s if self._val is None else self._val + s

    def on_validation_epoch_end(self) -> None:
        s = self._val
        if s is None:
            return
        s = self.trainer.strategy.reduce(s, reduce_op="sum") if self.trainer.world_size > 1 else s
        metrics = self.task.metrics(s.cpu())
        self.log_dict({k: float(v) for k, v in metrics.items() if not math.isnan(v)}, sync_dist=False)
        if not self.trainer.sanity_checking:
            entry = {"epoch": int(self.current_epoch)}
            entry.update(metrics)
            self.history = [h for h in self.history if h["epoch"] != entry["epoch"]] + [entry]

    # -- optimisation ----------------------------------------------------------------------------
    def configure_optimizers(self):
        params = list(self.head.parameters())
        if self.finetune:
            params += list(self.backbone.parameters())
        o = self.optim_cfg
        optimizer = build_optimizer(o["name"], [{"params": params}], lr=float(o["lr"]),
                                    weight_decay=float(o["weight_decay"]), **dict(o.get("kwargs") or {}))
        s = self.sched_cfg
        if s["name"] == "none":
            return optimizer
        per_step = s.get("interval", "step") == "step"
        total = int(self.trainer.estimated_stepping_batches) if per_step else self.max_epochs
        steps_per_epoch = total / self.max_epochs if per_step else 1
        if s["name"] in ("warmup_cosine", "cosine"):
            warmup = int(round(float(s.get("warmup_epochs", 0)) * steps_per_epoch)) if s["name"] == "warmup_cosine" else 0
            scheduler = WarmupCosine(optimizer, warmup_steps=warmup, total_steps=total,
                                     warmup_start_lr=float(s.get("warmup_start_lr", 0.0)) if warmup else 0.0,
                                     min_lr=float(s.get("min_lr", 0.0)))
        else:  # step: ×0.1 at the given epochs
            milestones = [int(round(float(e) * steps_per_epoch)) for e in (s.get("lr_decay_steps") or [])]
            scheduler = StepDecay(optimizer, milestones)
        return [optimizer], [{"scheduler": scheduler, "interval": "step" if per_step else "epoch", "frequency": 1}]

    # -- checkpoint extras -----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        checkpoint["harl_eval_history"] = list(self.history)

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        self.history = list(checkpoint.get("harl_eval_history", []))


# ---------------------------------------------------------------------------------------------
# training loop plumbing
# ---------------------------------------------------------------------------------------------


class EpochProgress(Callback):
    """One tqdm bar over epochs (cached protocol: epochs take milliseconds)."""

    def __init__(self, total: int, primary: str, desc: str = "probe"):
        self.total, self.primary, self.desc = total, primary, desc
        self.bar = None

    def on_train_start(self, trainer, pl_module):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.total, initial=trainer.current_epoch, desc=self.desc, unit="epoch",
                        dynamic_ncols=True, leave=False)

    def on_train_epoch_end(self, trainer, pl_module):
        if self.bar is not None:
            self.bar.update(1)
            value = trainer.callback_metrics.get(self.primary)
            if value is not None:
                self.bar.set_postfix({self.primary: f"{float(value):.2f}"})

    def on_train_end(self, trainer, pl_module):
        if self.bar is not None:
            self.bar.close()


def optimizer_cfg(cfg: DictConfig) -> Dict[str, Any]:
    return {"name": cfg.optimizer.name, "lr": float(cfg.optimizer.lr), "weight_decay": float(cfg.optimizer.weight_decay),
            "kwargs": OmegaConf.to_container(cfg.optimizer.kwargs, resolve=True)}


def scheduler_cfg(cfg: DictConfig) -> Dict[str, Any]:
    return OmegaConf.to_container(cfg.scheduler, resolve=True)


def fit_probe(ctx: EvalContext, module: ProbeModule, train_loader, val_loader, *, per_epoch_bar: bool) -> ProbeModule:
    """Train ``module`` with Lightning in ``ctx.run_dir`` (CSV/wandb logs, checkpoints, resume)."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import TQDMProgressBar
    from lightning.pytorch.loggers import CSVLogger

    cfg = ctx.cfg
    if ctx.resume_ckpt and _finished(ctx.resume_ckpt, module, int(cfg.max_epochs)):
        return module
    if isinstance(getattr(train_loader, "sampler", None), EpochShuffleSampler):
        train_loader.sampler.epoch_source = lambda: module.trainer.current_epoch
    if ctx.resume_ckpt is not None:
        preserve_metrics_on_resume(ctx.run_dir)
    loggers: List[Any] = [CSVLogger(save_dir=ctx.run_dir, name="", version="")]
    if cfg.wandb.enabled:
        from lightning.pytorch.loggers import WandbLogger

        os.environ.setdefault("WANDB_SILENT", "true")
        loggers.append(WandbLogger(name=cfg.name, project=cfg.wandb.project, entity=cfg.wandb.entity,
                                   offline=bool(cfg.wandb.offline), id=ctx.version, save_dir=ctx.run_dir,
                                   tags=list(cfg.wandb.tags) if cfg.wandb.tags else None, resume="allow"))
    callbacks: List[Callback] = [EpochSeeder(int(cfg.seed))]
    if ctx.checkpoints:
        callbacks.append(Checkpointer(cfg, ctx.run_dir, ctx.version, enabled=True,
                                      frequency=int(cfg.checkpoint.frequency), keep_prev=bool(cfg.checkpoint.keep_prev)))
    extra = trainer_extra_kwargs(cfg)
    show = bool(extra.pop("enable_progress_bar", True)) and ctx.progress
    if per_epoch_bar:
        if show:
            callbacks.append(EpochProgress(int(cfg.max_epochs), module.task.primary, desc=f"{cfg.mode} probe"))
        extra["enable_progress_bar"] = False
    else:
        if show:
            callbacks.append(TQDMProgressBar(refresh_rate=max(1, int(extra.pop("progress_bar_refresh_rate", 1) or 1))))
        extra["enable_progress_bar"] = show
    steps = len(train_loader)
    limit = extra.get("limit_train_batches")
    if isinstance(limit, int) and not isinstance(limit, bool):
        steps = min(steps, limit)
    elif isinstance(limit, float):
        steps = int(math.ceil(steps * limit))
    extra.setdefault("log_every_n_steps", max(1, min(50, steps)))
    extra.setdefault("enable_model_summary", False)
    acc = resolve_accelerator(cfg)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*`isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
        # a frozen backbone is in eval mode on purpose; args.json is written before the logger starts
        warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode at the start of training.*")
        warnings.filterwarnings("ignore", message=".*Experiment logs directory .* exists and is not empty.*")
        trainer = Trainer(max_epochs=int(cfg.max_epochs), num_nodes=int(cfg.num_nodes), precision=cfg.precision,
                          sync_batchnorm=bool(cfg.sync_batchnorm) and module.finetune and acc["strategy"] != "auto",
                          logger=loggers, callbacks=callbacks, enable_checkpointing=False,
                          default_root_dir=ctx.run_dir, **acc, **extra)
        trainer.fit(module, train_loader, val_loader, ckpt_path=ctx.resume_ckpt)
    return module


def _finished(ckpt_path: str, module: ProbeModule, max_epochs: int) -> bool:
    """True (and ``module`` restored from it) when ``ckpt_path`` is the last epoch's checkpoint of a
    finished run: re-running such an evaluation reports its results without touching its logs."""
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    if int(ckpt.get("epoch", -1)) + 1 < max_epochs or "harl_eval_history" not in ckpt:
        return False
    module.load_state_dict(ckpt["state_dict"])
    module.on_load_checkpoint(ckpt)
    return True


def summarize_history(history: List[Dict[str, Any]], primary: str, keys: Dict[str, str]) -> Dict[str, Any]:
    """Final-epoch metrics (renamed by ``keys``: logged name → result name) + the best epoch by ``primary``."""
    if not history:
        raise RuntimeError("the probe recorded no validation epoch (is the validation set empty?)")
    last = history[-1]
    out: Dict[str, Any] = {new: last[old] for old, new in keys.items() if old in last}
    best = max(history, key=lambda h: (-math.inf if math.isnan(h[primary]) else h[primary]))
    out[f"best_{keys[primary]}"] = best[primary]
    out["best_epoch"] = best["epoch"]
    out["epochs"] = len(history)
    out["history"] = history
    return out


# ---------------------------------------------------------------------------------------------
# mode: linear
# ---------------------------------------------------------------------------------------------


def _loader(ds, cfg: DictConfig, shuffle: bool, drop_last: bool = False, workers: Optional[int] = None,
            random_items: bool = True) -> DataLoader:
    """Train loaders (``shuffle``) draw order and (with ``random_items``) augmentations from
    (seed, epoch, index) (:mod:`harl.data.sampling`); the epoch is read from the probe's trainer when
    each epoch starts (:func:`fit_probe` attaches it), so resumed runs repeat the uninterrupted run.
    Val loaders are sequential."""
    workers = int(cfg.data.num_workers) if workers is None else workers
    sampler = None
    if shuffle:
        sampler = EpochShuffleSampler(len(ds), int(cfg.seed))
        ds = EpochSeededDataset(ds, int(cfg.seed), seed_items=random_items)
    return DataLoader(ds, batch_size=int(cfg.optimizer.batch_size), shuffle=False, sampler=sampler,
                      num_workers=workers, pin_memory=torch.cuda.is_available(), drop_last=drop_last,
                      persistent_workers=False)


def cached_tensors(ctx: EvalContext, dataset, split: str, kind: str = "pooled"):
    """Features (or feature maps) of ``dataset`` through the cache of ``ctx`` (see features.py)."""
    path, key = cache_path_for(ctx, split, dataset, kind)
    common = dict(batch_size=int(ctx.cfg.optimizer.batch_size), num_workers=int(ctx.cfg.data.num_workers),
                  progress=ctx.progress, input_transform=ctx.input_transform, cache_path=path, cache_key=key,
                  channels_last=not ctx.cfg.performance.disable_channel_last, desc=f"{split} {kind}")
    if kind == "maps":
        return extract_feature_maps(ctx.backbone, dataset, **common)
    out = extract_features(ctx.backbone, dataset, **common)
    return out[0], out[1]


def seed_head(cfg: DictConfig) -> None:
    """Seed the global RNG right before a head is created: its initialisation then does not depend
    on how much randomness earlier steps consumed (e.g. a feature-cache hit vs. an extraction)."""
    torch.manual_seed(int(cfg.seed))


def _linear_module(ctx: EvalContext, num_features: int, backbone: Optional[nn.Module]) -> ProbeModule:
    cfg = ctx.cfg
    seed_head(cfg)
    task = ClassificationTask(int(cfg.data.num_classes), float(cfg.label_smoothing), cfg.head_norm)
    return ProbeModule(task, num_features, backbone, finetune=bool(cfg.finetune), optimizer=optimizer_cfg(cfg),
                       scheduler=scheduler_cfg(cfg), max_epochs=int(cfg.max_epochs),
                       input_transform=ctx.input_transform if backbone is not None else None,
                       channels_last=not cfg.performance.disable_channel_last,
                       hparams=OmegaConf.to_container(cfg, resolve=True))


@EVAL_MODES.register("linear")
def run_linear(ctx: EvalContext) -> Dict[str, Any]:
    """Mode ``linear``: returns ``{top1, top5, best_top1, best_epoch, epochs, history, n_train, n_val}``."""
    cfg = ctx.cfg
    keys = {"val_acc1": "top1", "val_acc5": "top5", "val_loss": "val_loss"}
    if cfg.protocol == "cached":
        train_ds, val_ds = build_datasets(ctx, train_augment=False, with_masks=False)
        ftr, ttr = cached_tensors(ctx, train_ds, "train")
        fva, tva = cached_tensors(ctx, val_ds, "val")
        module = _linear_module(ctx, ftr.shape[1], None)
        train_loader = _loader(TensorDataset(ftr, ttr), cfg, shuffle=True, workers=0, random_items=False)
        val_loader = _loader(TensorDataset(fva, tva), cfg, shuffle=False, workers=0)
        fit_probe(ctx, module, train_loader, val_loader, per_epoch_bar=True)
        n_train, n_val = len(ttr), len(tva)
    else:
        train_ds, val_ds = build_datasets(ctx, train_augment=True, with_masks=False)
        num_features = int(getattr(ctx.backbone, "num_features", 0) or ctx.info.get("num_features") or 0)
        module = _linear_module(ctx, num_features, ctx.backbone)
        drop_last = bool(cfg.finetune) and len(train_ds) > int(cfg.optimizer.batch_size)
        fit_probe(ctx, module, _loader(train_ds, cfg, True, drop_last), _loader(val_ds, cfg, False),
                  per_epoch_bar=False)
        n_train, n_val = len(train_ds), len(val_ds)
    out = summarize_history(module.history, "val_acc1", keys)
    out.update({"n_train": n_train, "n_val": n_val})
    return out


# ---------------------------------------------------------------------------------------------
# Python API
# ---------------------------------------------------------------------------------------------


def linear_probe(pretrained: Optional[str] = None, *, dataset: str, train_path: str, val_path: str,
                 protocol: str = "cached", backbone: Optional[str] = None, backbone_kwargs: Optional[dict] = None,
                 random_init: bool = False, max_epochs: int = 100, lr: float = 0.1, batch_size: int = 256,
                 out_dir: str = "trained_models", progress: bool = True,
                 overrides: Optional[Dict[str, Any]] = None, **top_level) -> Dict[str, Any]:
    """Linear probe of a checkpoint (or of a random-init backbone); returns the results dict of
    :func:`harl.eval.runner.evaluate` (``top1``, ``top5``, ``metrics``, ``results_path``, ...).

    ``random_init=True`` with a checkpoint evaluates a random initialisation of the same
    architecture; without one it needs ``backbone`` (+ ``backbone_kwargs``). Any config key can be
    set through ``overrides`` (dotted paths) or as a top-level keyword (``finetune=True``,
    ``random_init_baseline=True``, ``eval_highpass=True``, ``accelerator="cpu"`` ...).

    >>> res = linear_probe("trained_models/byol/offline-1a2b3c4d/byol-...-ep=19.ckpt",
    ...                    dataset="fashion_scenes", train_path="datasets/fashion-scenes",
    ...                    val_path="datasets/fashion-scenes", max_epochs=100)   # doctest: +SKIP
    >>> res["top1"], res["results_path"]                                        # doctest: +SKIP
    """
    over = {"optimizer.lr": lr, "optimizer.batch_size": batch_size, "checkpoint.dir": out_dir}
    over.update(overrides or {})
    cfg = build_linear_cfg("linear", pretrained, dataset, train_path, val_path, backbone=backbone,
                           backbone_kwargs=backbone_kwargs, random_init=random_init, overrides=over,
                           protocol=protocol, max_epochs=max_epochs, **top_level)
    return evaluate(cfg, progress=progress)


__all__ = ["ProbeModule", "ClassificationTask", "fit_probe", "run_linear", "linear_probe", "summarize_history",
           "cached_tensors", "EpochProgress"]
