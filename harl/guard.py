"""The finite-training guard: a non-finite loss, gradient or weight stops the run within a step.

Checked on every optimizer step, on tensors the step already computed:

1. before the update (``on_before_optimizer_step``): the loss of each (accumulated) micro-batch and
   the gradient norms of every optimised tensor (one fused ``_foreach_norm``, one host sync);
2. after the update (``on_train_batch_end``): the norms of the optimised weights, which catches an
   update that turns finite gradients into non-finite weights (``optimizer.lr=nan``, overflow).

A bad step never reaches the weights: its gradients are dropped (``p.grad = None``, which every
torch optimizer and harl's LARS treat as "no update"; momentum buffers and weight decay are
untouched). When bad steps may be skipped, the module's buffers (BatchNorm statistics, MoCo
queues) are copied before each step and put back after a bad one, since the forward pass of a
poisoned batch has already written into them. The run then stops with :class:`NonFiniteTrainingError`, one line naming the step,
the logged loss terms that went non-finite, where the gradients went non-finite and the last good
checkpoint. With ``guard.max_bad_steps: N`` up to N bad steps are skipped instead (each one a
warning, counted in the ``guard_skipped_steps`` metric); the (N+1)-th stops the run. A weight that
became non-finite cannot be undone and always stops the run.

With ``precision: 16-mixed`` the gradient scaler owns non-finite gradients (it skips those steps
and lowers the scale), so only losses and weights are checked there.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Dict, List, Optional

import torch
from lightning.pytorch import Callback

from harl.errors import NonFiniteTrainingError

log = logging.getLogger("harl")


def _all_finite(tensors: List[torch.Tensor]) -> torch.Tensor:
    """A 0-d bool tensor: every element of every tensor is finite (one fused norm per tensor)."""
    if not tensors:
        return torch.ones((), dtype=torch.bool)
    by_device: Dict[Any, List[torch.Tensor]] = {}
    for t in tensors:
        by_device.setdefault((t.device, t.dtype), []).append(t)
    flags = []
    for group in by_device.values():
        norms = torch._foreach_norm(group)
        flags.append(torch.isfinite(torch.stack(norms).float().sum()).reshape(1))
    return torch.cat([f.to(flags[0].device) for f in flags]).all()


def _names(module: torch.nn.Module) -> Dict[int, str]:
    return {id(p): n for n, p in module.named_parameters()}


def _nonfinite_names(params: List[torch.Tensor], names: Dict[int, str], grads: bool, limit: int = 4) -> List[str]:
    """Names of parameters whose gradient (or value) has a non-finite element (the slow path)."""
    bad = []
    for p in params:
        t = p.grad if grads else p
        if t is not None and not bool(torch.isfinite(t).all()):
            bad.append(names.get(id(p), "?"))
    if len(bad) > limit:
        return bad[:limit] + [f"... ({len(bad)} tensors)"]
    return bad


def _fmt(v: Any) -> str:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return str(v)
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf") if math.isinf(x) else f"{x:.4g}"


def nonfinite_terms(step_values: Dict[str, Any]) -> List[str]:
    """``name=value`` for every logged value of the step that is not finite (loss terms first)."""
    out = []
    for name, v in step_values.items():
        try:
            x = float(v.float().mean()) if isinstance(v, torch.Tensor) else float(v)
        except (TypeError, ValueError, RuntimeError):
            continue
        if not math.isfinite(x):
            out.append((0 if "loss" in name else 1, name, x))
    return [f"{n}={_fmt(x)}" for _, n, x in sorted(out)]


def last_checkpoint(trainer) -> Optional[str]:
    """The newest checkpoint written (or resumed from) by this run, if any."""
    for cb in trainer.callbacks:
        path = getattr(cb, "last_ckpt", None)
        if path:
            return str(path)
    return str(trainer.ckpt_path) if trainer.ckpt_path else None


class FiniteGuard(Callback):
    """Stops (or, up to ``max_bad_steps`` times, skips) a step whose loss or gradients are not finite."""

    def __init__(self, max_bad_steps: int = 0):
        self.max_bad_steps = max(0, int(max_bad_steps))
        self.skipped = 0
        self.skipped_steps: List[int] = []
        self._losses: List[torch.Tensor] = []
        self._skip_this_step = False
        self._batch_idx = 0
        self._names: Dict[int, str] = {}
        self._snap: Optional[tuple] = None  # (buffers, saved copies)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _optimised(trainer) -> List[torch.Tensor]:
        return [p for opt in trainer.optimizers for g in opt.param_groups for p in g["params"]]

    @staticmethod
    def _scaler_owns_grads(trainer) -> bool:
        return getattr(trainer.precision_plugin, "scaler", None) is not None

    def _decide(self, trainer, bad: bool) -> bool:
        if getattr(trainer, "world_size", 1) > 1:  # every rank takes the same decision
            bad = bool(trainer.strategy.reduce_boolean_decision(bad, all=False))
        return bad

    def _where(self, trainer) -> str:
        return f"optimizer step {trainer.global_step + 1} (epoch {trainer.current_epoch}, batch {self._batch_idx})"

    def _checkpoint_note(self, trainer) -> str:
        ckpt = last_checkpoint(trainer)
        if ckpt:
            return f"last good checkpoint: '{ckpt}' (resume_from_checkpoint=... continues from it)"
        return "no checkpoint was written yet"

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer, pl_module) -> None:
        self._names = _names(pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._skip_this_step = False
        self._batch_idx = batch_idx
        if self.max_bad_steps and self.skipped < self.max_bad_steps:
            self._snapshot_buffers(pl_module)

    def _snapshot_buffers(self, pl_module) -> None:
        bufs = [b for b in pl_module.buffers()]
        if self._snap is None or len(self._snap[0]) != len(bufs) or any(
                a is not b or a.shape != c.shape for a, b, c in zip(self._snap[0], bufs, self._snap[1])):
            self._snap = (bufs, [b.detach().clone() for b in bufs])
            return
        with torch.no_grad():
            for src, dst in zip(bufs, self._snap[1]):
                dst.copy_(src)

    def _restore_buffers(self) -> None:
        if self._snap is None:
            return
        with torch.no_grad():
            for buf, saved in zip(*self._snap):
                buf.copy_(saved)

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        self._losses.append(loss.detach())

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        losses, self._losses = self._losses, []
        params = [p for g in optimizer.param_groups for p in g["params"]]
        grads = [] if self._scaler_owns_grads(trainer) else [p.grad for p in params if p.grad is not None]
        loss_ok = _all_finite([torch.stack([x.float().reshape(()) for x in losses])]) if losses else None
        grad_ok = _all_finite(grads)
        flags = torch.stack([loss_ok.to(grad_ok.device) if loss_ok is not None else grad_ok.new_ones(()), grad_ok])
        loss_fine, grad_fine = (bool(x) for x in flags.tolist())
        if not self._decide(trainer, not (loss_fine and grad_fine)):
            return
        parts = []
        terms = nonfinite_terms(getattr(pl_module, "step_values", {}) or {})
        if not loss_fine:
            total = next((x for x in losses if not bool(torch.isfinite(x).all())), None)
            parts.append(f"non-finite loss {_fmt(total.float().mean()) if total is not None else '?'}")
        if terms:
            parts.append("terms " + ", ".join(terms))
        if not grad_fine:
            parts.append("non-finite gradients in " + ", ".join(_nonfinite_names(params, self._names, grads=True)))
        if not self._scaler_owns_grads(trainer):
            for p in params:  # the update is not applied
                p.grad = None
        if self.skipped < self.max_bad_steps:
            self._restore_buffers()
        self._skip_this_step = True
        self.skipped += 1
        self.skipped_steps.append(trainer.global_step + 1)
        where = self._where(trainer)
        what = "; ".join(parts) if parts else "non-finite values"
        if self.skipped > self.max_bad_steps:
            allowed = (f"{self.max_bad_steps} bad step(s) allowed by guard.max_bad_steps were skipped before"
                       if self.max_bad_steps else "set guard.max_bad_steps=N to skip up to N such steps")
            raise NonFiniteTrainingError(f"training stopped at {where}: {what}; the update was not applied; "
                                         f"{self._checkpoint_note(trainer)}; {allowed}")
        if trainer.is_global_zero:
            log.warning("skipped %s: %s (bad step %d of %d allowed by guard.max_bad_steps)", where, what,
                        self.skipped, self.max_bad_steps)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.max_bad_steps:
            pl_module.log("guard_skipped_steps", float(self.skipped), on_step=True, on_epoch=False)
        if self._skip_this_step:
            return
        params = self._optimised(trainer)
        # no cross-process vote needed: after a DDP step the weights are the same on every rank
        if not bool(_all_finite([p.detach() for p in params])):
            names = _nonfinite_names(params, self._names, grads=False)
            lrs = sorted({_fmt(g["lr"]) for opt in trainer.optimizers for g in opt.param_groups})
            raise NonFiniteTrainingError(
                f"training stopped at optimizer step {trainer.global_step} (epoch {trainer.current_epoch}): the "
                f"update made weights non-finite ({', '.join(names)}) although the loss and gradients were "
                f"finite; check optimizer.lr (learning rates now: {', '.join(lrs)}), optimizer.weight_decay "
                f"and optimizer.kwargs; {self._checkpoint_note(trainer)}")

    def on_train_end(self, trainer, pl_module) -> None:
        if self.skipped and trainer.is_global_zero:
            log.warning("finite-training guard: skipped %d bad step(s) (steps %s)", self.skipped,
                        ", ".join(map(str, self.skipped_steps[:20])) + (" ..." if self.skipped > 20 else ""))
