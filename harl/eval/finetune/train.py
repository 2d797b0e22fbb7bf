"""Training and evaluation loops of fine-tuning (usable without a config)."""

from __future__ import annotations

import math
import os
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from harl.checkpoint import atomic_torch_save
from harl.eval.finetune.schema import PRECISIONS


def _autocast(device: torch.device, precision: str):
    dtype = PRECISIONS[str(precision)]
    if dtype is None:
        return torch.autocast(device.type, enabled=False)
    if device.type == "cpu" and dtype == torch.float16:
        dtype = torch.bfloat16  # fp16 autocast is not meant for CPUs
    return torch.autocast(device.type, dtype=dtype)


def _split_batch(batch):
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        return batch[0], torch.as_tensor(batch[1])
    raise ValueError("dataset items must be (image, target, ...) tuples")


def _epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 1009 + 17) % (2**31 - 1)


@torch.no_grad()
def evaluate_classifier(model: nn.Module, dataset: Dataset, *, batch_size: int = 256, num_workers: int = 0,
                        device: Optional[torch.device] = None, precision: str = "32", progress: bool = False,
                        channels_last: bool = False, desc: str = "eval") -> Dict[str, float]:
    """Top-1 / top-5 (percent) and mean cross-entropy of ``model`` on ``dataset`` (items
    ``(image, target)``), in eval mode. Returns ``{"top1", "top5", "loss", "n"}``."""
    from tqdm.auto import tqdm

    device = device or next(model.parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    was = model.training
    model.eval().to(device)
    n = 0
    c1 = c5 = 0
    loss_sum = 0.0
    try:
        for batch in tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
            x, y = _split_batch(batch)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True).long()
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(device, precision):
                logits = model(x)
            logits = logits.float()
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            k = min(5, logits.shape[1])
            top = logits.topk(k, dim=1).indices
            c1 += int((top[:, 0] == y).sum())
            c5 += int((top == y[:, None]).any(dim=1).sum())
            n += int(y.numel())
    finally:
        model.train(was)
    if n == 0:
        return {"top1": float("nan"), "top5": float("nan"), "loss": float("nan"), "n": 0}
    return {"top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "loss": loss_sum / n, "n": n}


def cosine_lr(step: int, total_steps: int, base_lr: float, warmup_steps: int = 0) -> float:
    """Linear warm-up from 0 over ``warmup_steps``, then cosine from ``base_lr`` to 0 at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * progress))


def train_classifier(model: nn.Module, dataset: Dataset, *, epochs: int, lr: float, weight_decay: float = 0.0,
                     batch_size: int = 256, momentum: float = 0.9, nesterov: bool = True, schedule: str = "cosine",
                     warmup_epochs: int = 0, accumulate_grad_batches: int = 1, device: Optional[torch.device] = None,
                     precision: str = "32", num_workers: int = 0, seed: int = 0, state_path: Optional[str] = None,
                     channels_last: bool = False, progress: bool = True,
                     on_epoch_end: Optional[Callable[[Dict[str, float]], None]] = None,
                     desc: str = "finetune") -> List[Dict[str, float]]:
    """Train every parameter of ``model`` on ``dataset`` (items ``(image, target)``) with SGD.

    SGD (Nesterov momentum by default), no weight decay unless given, lr per optimizer step:
    ``schedule="cosine"`` (:func:`cosine_lr`, with ``warmup_epochs``) or ``"none"`` (constant).
    Batches are shuffled with a generator seeded from ``(seed, epoch)`` and the global RNG is
    re-seeded at each epoch start, so a resumed run sees the data an uninterrupted one would. A
    final batch of a single image is skipped (BatchNorm cannot train on it).

    ``state_path``: after every epoch the model, optimizer, scaler and history are written there
    atomically; if the file exists when training starts, training resumes after its last epoch.

    Returns the per-epoch history: ``[{"epoch", "step", "lr", "train_loss", "train_acc1"}, ...]``.
    """
    from tqdm.auto import tqdm

    if len(dataset) == 0:
        raise ValueError("train_classifier: the training set is empty")
    device = device or next(model.parameters()).device
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    batch_size = max(1, min(int(batch_size), len(dataset)))
    accumulate = max(1, int(accumulate_grad_batches))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0,
                          weight_decay=weight_decay)
    use_scaler = device.type == "cuda" and PRECISIONS[str(precision)] == torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler) if use_scaler else None

    def optimizer_step() -> None:
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)

    batches_per_epoch = len(dataset) // batch_size + (1 if len(dataset) % batch_size > 1 else 0)
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / accumulate))
    total_steps = steps_per_epoch * epochs
    warmup_steps = steps_per_epoch * int(warmup_epochs)

    history: List[Dict[str, float]] = []
    start_epoch = 0
    step = 0
    if state_path and os.path.isfile(state_path):
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        history = list(state["history"])
        start_epoch = int(state["epoch"]) + 1
        step = int(state["step"])

    for epoch in range(start_epoch, epochs):
        s = _epoch_seed(seed, epoch)
        torch.manual_seed(s)
        np.random.seed(s % (2**32 - 1))
        gen = torch.Generator().manual_seed(s)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=gen, num_workers=num_workers,
                            pin_memory=device.type == "cuda", drop_last=False)
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        opt.zero_grad(set_to_none=True)
        micro = 0
        bar = tqdm(loader, desc=f"{desc} ep {epoch + 1}/{epochs}", disable=not progress, leave=False,
                   dynamic_ncols=True)
        lr_now = cosine_lr(step, total_steps, lr, warmup_steps) if schedule == "cosine" else lr
        for batch in bar:
            x, y = _split_batch(batch)
            if x.shape[0] < 2:
                continue
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True).long()
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            lr_now = cosine_lr(step, total_steps, lr, warmup_steps) if schedule == "cosine" else lr
            for g in opt.param_groups:
                g["lr"] = lr_now
            with _autocast(device, precision):
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: the loss became {float(loss)} at epoch {epoch}, step {step} "
                                         f"(lr {lr_now:g}); try a smaller learning rate")
            (scaler.scale(loss / accumulate) if scaler else loss / accumulate).backward()
            micro += 1
            if micro % accumulate == 0:
                optimizer_step()
                step += 1
            loss_sum += float(loss.detach()) * x.shape[0]
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += int(x.shape[0])
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", lr=f"{lr_now:.3g}")
        if micro % accumulate != 0:  # flush a partial accumulation at the end of the epoch
            optimizer_step()
            step += 1
        row = {"epoch": epoch, "step": step, "lr": lr_now, "train_loss": loss_sum / max(1, seen),
               "train_acc1": 100.0 * correct / max(1, seen)}
        history.append(row)
        if state_path:
            atomic_torch_save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                               "scaler": scaler.state_dict() if scaler else None, "history": history,
                               "epoch": epoch, "step": step}, state_path)
        if on_epoch_end is not None:
            on_epoch_end(row)
    return history
