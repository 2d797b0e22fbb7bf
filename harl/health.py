"""Health warnings: training that runs but learns nothing is reported, with the numbers.

Every ``health.every_n_steps`` optimizer steps :class:`HealthMonitor` reads values the step has
already computed (detached: the logged statistics, the batch's masks, the first crop's backbone
features) and feeds them to :class:`HealthTracker`, which applies the rules below. Each finding is
logged once, when it first holds; all findings are summarised at the end of training (log line
and ``health.json`` in the run folder). With ``health.strict: true`` a finding stops the run
(:class:`HealthError`, exit code 2 from the CLI).

Rules (``n`` = checks so far; a rule needs at least :data:`MIN_CHECKS` of them):

- **dead branch**: a valid fraction averages ≤ :data:`DEAD_FRACTION` — HARL's foreground or
  background regions (``train_frac_valid_f`` / ``_b``), HAPiCL's pixel pairs
  (``train_pix_frac_valid``), SGM's masked cells (``train_sgm_query_masked``);
- **masks almost all foreground / background**: the mean fg fraction of the batch masks is
  ≥ 1 − :data:`MASK_EXTREME` or ≤ :data:`MASK_EXTREME`;
- **collapsed representation**: the spread of the L2-normalised backbone features across the
  batch (:func:`feature_spread`, about 0.2 for a randomly initialised ResNet, 0 when every image
  gets the same feature) averages < :data:`COLLAPSE_SPREAD` over the last :data:`MIN_CHECKS` checks;
- **online classifier at chance**: from the second epoch on (the classifier has seen a full
  epoch), ``train_acc1`` averages ≤ chance + max(1 point, ¼ of chance) over labelled batches.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback

from harl.errors import TrainingHalted
from harl.errors import HealthError
from harl.utils.io import atomic_write_text

log = logging.getLogger("harl")

MIN_CHECKS = 3
DEAD_FRACTION = 0.02
MASK_EXTREME = 0.02
COLLAPSE_SPREAD = 0.01
CLASSIFIER_MIN_EPOCH = 1

#: logged valid fractions → (what they measure, what to check when they stay near 0)
VALID_FRACTIONS: Dict[str, tuple] = {
    "train_frac_valid_f": ("HARL's foreground branch", "the masks have (almost) no foreground in one of the two "
                           "views; check data.masks.root and the masks themselves"),
    "train_frac_valid_b": ("HARL's background branch", "the masks cover (almost) the whole crop; check the masks "
                           "and method_kwargs.mask_threshold (0.0 turns any fg coverage into an fg cell)"),
    "train_pix_frac_valid": ("HAPiCL's pixel pairs", "the pixel term needs fg and bg cells in both views; check "
                             "the masks"),
    "train_sgm_query_masked": ("SGM's masked cells", "no grid cell is masked; check the masking ratio and the "
                               "saliency source in method_kwargs"),
}


def feature_spread(feats: torch.Tensor) -> torch.Tensor:
    """Spread of a batch of features: mean over dimensions of the std across the batch of the
    L2-normalised features, times √C (≈ 1 for features spread uniformly on the sphere, 0 when
    all rows are equal).

    Args:
        feats: B×C (B ≥ 2).
    Returns:
        0-d float tensor.
    """
    f = F.normalize(feats.float(), dim=1)
    return f.std(dim=0).mean() * math.sqrt(f.shape[1])


def mask_fg_fraction(masks: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean foreground fraction of per-view masks (each B×1×S×S, fg ⇔ value > 0); 0-d float."""
    return torch.stack([(m > 0).float().mean() for m in masks]).mean()


@dataclass
class Signal:
    n: int = 0
    total: float = 0.0
    lo: float = math.inf
    hi: float = -math.inf
    recent: List[float] = field(default_factory=list)
    first_step: int = -1
    last_step: int = -1

    def add(self, x: float, step: int) -> None:
        self.n += 1
        self.total += x
        self.lo, self.hi = min(self.lo, x), max(self.hi, x)
        self.recent = (self.recent + [x])[-MIN_CHECKS:]
        self.first_step = step if self.first_step < 0 else self.first_step
        self.last_step = step

    @property
    def mean(self) -> float:
        return self.total / max(self.n, 1)

    def span(self) -> str:
        return f"{self.n} checks, steps {self.first_step}-{self.last_step}"


@dataclass
class Finding:
    rule: str
    step: int
    message: str


class HealthTracker:
    """The rules of the module doc applied to a stream of per-check values (no torch, no Lightning)."""

    def __init__(self, num_classes: int):
        self.num_classes = max(1, int(num_classes))
        self.signals: Dict[str, Signal] = {}
        self.findings: Dict[str, Finding] = {}
        self.checks = 0

    def observe(self, step: int, epoch: int, values: Dict[str, float]) -> List[Finding]:
        """Record one check's values; returns the findings that hold for the first time now.

        ``values`` may hold any of the :data:`VALID_FRACTIONS` keys, ``mask_fg_frac``,
        ``feature_spread`` and ``train_acc1`` (% on labelled samples; only pass it when the batch
        had labels).
        """
        self.checks += 1
        for key, x in values.items():
            if x is None or not math.isfinite(float(x)):
                continue
            if key == "train_acc1" and epoch < CLASSIFIER_MIN_EPOCH:
                continue
            self.signals.setdefault(key, Signal()).add(float(x), step)
        new = []
        for rule, msg in self._rules():
            if rule not in self.findings:
                self.findings[rule] = Finding(rule, step, msg)
                new.append(self.findings[rule])
        return new

    def _rules(self):
        s = self.signals
        for key, (what, hint) in VALID_FRACTIONS.items():
            sig = s.get(key)
            if sig and sig.n >= MIN_CHECKS and sig.mean <= DEAD_FRACTION:
                yield (f"dead:{key}", f"{what} is (almost) dead: {key} averaged {sig.mean:.3f} (max {sig.hi:.3f}) "
                                      f"over {sig.span()}, so its loss term contributes (almost) nothing; {hint}")
        sig = s.get("mask_fg_frac")
        if sig and sig.n >= MIN_CHECKS:
            if sig.mean >= 1 - MASK_EXTREME:
                yield ("masks:all_fg", f"the masks are almost all foreground: mean fg fraction {sig.mean:.3f} "
                                       f"(min {sig.lo:.3f}) over {sig.span()}; fg/bg methods learn nothing from "
                                       "the background split; check data.masks.root")
            elif sig.mean <= MASK_EXTREME:
                yield ("masks:all_bg", f"the masks are almost all background: mean fg fraction {sig.mean:.3f} "
                                       f"(max {sig.hi:.3f}) over {sig.span()}; check data.masks.root (an empty "
                                       "or wrong mask folder with data.masks.on_missing=zeros?)")
        sig = s.get("feature_spread")
        if sig and sig.n >= MIN_CHECKS and sum(sig.recent) / len(sig.recent) < COLLAPSE_SPREAD:
            yield ("collapse", f"the representation has collapsed: feature spread across the batch "
                               f"{sum(sig.recent) / len(sig.recent):.4f} over the last {len(sig.recent)} checks "
                               f"(< {COLLAPSE_SPREAD}; about 0.2 at random init; first {sig.recent[0]:.4f}, "
                               f"max {sig.hi:.4f} over {sig.span()}); lower optimizer.lr or check the loss")
        sig = s.get("train_acc1")
        chance = 100.0 / self.num_classes
        bound = chance + max(1.0, 0.25 * chance)
        if sig and sig.n >= MIN_CHECKS and sig.mean <= bound:
            yield ("chance", f"the online classifier is stuck at chance: train_acc1 averaged {sig.mean:.2f}% "
                             f"(max {sig.hi:.2f}%) over {sig.span()} from epoch {CLASSIFIER_MIN_EPOCH} on, chance "
                             f"is {chance:.2f}% for {self.num_classes} classes; the features carry no class "
                             "information, or the labels are wrong (data.train_path class folders?)")

    def summary(self) -> str:
        if not self.findings:
            return f"health: no warnings over {self.checks} checks"
        items = " | ".join(f"({i}) {f.message}" for i, f in enumerate(self.findings.values(), 1))
        return f"health: {len(self.findings)} warning(s) over {self.checks} checks: {items}"

    def to_dict(self) -> Dict[str, Any]:
        sig = {k: {"n": v.n, "mean": v.mean, "min": v.lo, "max": v.hi, "first_step": v.first_step,
                   "last_step": v.last_step} for k, v in self.signals.items()}
        return {"checks": self.checks, "signals": sig, "findings": [asdict(f) for f in self.findings.values()]}


class HealthMonitor(Callback):
    """Collects the values every ``every_n_steps`` steps, logs findings once, summarises at the end."""

    def __init__(self, every_n_steps: int = 20, strict: bool = False, run_dir: Optional[str] = None):
        self.every_n_steps = max(1, int(every_n_steps))
        self.strict = bool(strict)
        self.run_dir = run_dir
        self.tracker: Optional[HealthTracker] = None
        self._last_step = -1

    def on_fit_start(self, trainer, pl_module) -> None:
        self.tracker = HealthTracker(getattr(pl_module, "num_classes", 1))
        self._last_step = -1

    def _values(self, pl_module, batch) -> Dict[str, float]:
        names, tensors = [], []
        step_values = getattr(pl_module, "step_values", {}) or {}
        for key in VALID_FRACTIONS:
            v = step_values.get(key)
            if isinstance(v, torch.Tensor):
                names.append(key)
                tensors.append(v.float().mean())
        extras = batch[3] if len(batch) > 3 and isinstance(batch[3], dict) else None
        if extras is not None and extras.get("masks"):
            names.append("mask_fg_frac")
            tensors.append(mask_fg_fraction(extras["masks"]))
        feats = getattr(pl_module, "health_feats", None)
        if isinstance(feats, torch.Tensor) and feats.dim() == 2 and feats.shape[0] > 1:
            names.append("feature_spread")
            tensors.append(feature_spread(feats))
        acc = step_values.get("train_acc1")
        targets = batch[2] if len(batch) > 2 and isinstance(batch[2], torch.Tensor) else None
        if isinstance(acc, torch.Tensor) and targets is not None:
            names += ["train_acc1", "_labelled"]
            tensors += [acc.float(), (targets != -1).any().float()]
        if not tensors:
            return {}
        device = tensors[0].device
        values = dict(zip(names, torch.stack([t.to(device).reshape(()) for t in tensors]).tolist()))  # one sync
        if not values.pop("_labelled", 0.0):
            values.pop("train_acc1", None)
        return values

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.tracker is None or step % self.every_n_steps != 0 or step == self._last_step:
            return  # (with gradient accumulation several batches end on the same step: check once)
        self._last_step = step
        new = self.tracker.observe(step, trainer.current_epoch, self._values(pl_module, batch))
        failed = bool(new)
        if self.strict and getattr(trainer, "world_size", 1) > 1:
            failed = bool(trainer.strategy.reduce_boolean_decision(failed, all=False))
        if trainer.is_global_zero:
            for f in new:
                log.warning("health warning at step %d: %s", f.step, f.message)
        if self.strict and failed:
            msgs = "; ".join(f.message for f in new) or "a health rule failed on another process"
            raise HealthError(f"training stopped at step {step} (health.strict=true): {msgs}")

    def on_train_end(self, trainer, pl_module) -> None:
        if self.tracker is None or not trainer.is_global_zero:
            return
        log.warning(self.tracker.summary()) if self.tracker.findings else log.info(self.tracker.summary())
        if self.run_dir and os.path.isdir(self.run_dir):
            atomic_write_text(os.path.join(self.run_dir, "health.json"),
                              json.dumps(self.tracker.to_dict(), indent=2))
