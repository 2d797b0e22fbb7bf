"""Declared types and ranges of config values, checked once at start-up.

The schemas (:data:`harl.config.SCHEMA` and the evaluation schemas) say which keys exist; the
tables here say what each key may hold. A table maps a dotted key to a :class:`Value`
(``"optimizer.lr": Num(gt=0)``); ``[]`` in a key stands for every item of a list
(``"augmentations[].crop_size"``). :func:`check_values` walks a validated config dict against a
table and raises one :class:`~harl.errors.ConfigError` for the first bad value, naming the key,
the value *as the user gave it* (before any derived scaling) and what is expected::

    config key 'optimizer.lr' = 'abc': expected a finite number > 0

Free-form blocks (``method_kwargs``, ``optimizer.kwargs``) get their types from their declared
defaults (:func:`spec_from_default`: a float default takes any finite number, an int default an
integer, a bool a bool, a string a string) and their ranges from :data:`METHOD_KWARG_VALUES`,
a table keyed by kwarg name shared by every method that uses the name.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from harl.errors import ConfigError
from harl.registry import close_match_hint


def _config_error(msg: str) -> Exception:
    return ConfigError(msg)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class Value:
    """A value spec: :meth:`ok` says whether ``v`` is acceptable, :meth:`expected` says what is."""

    def __init__(self, nullable: bool = False):
        self.nullable = nullable

    def ok(self, v: Any) -> bool:
        if v is None:
            return self.nullable
        return self._ok(v)

    def _ok(self, v: Any) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def _what(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def expected(self) -> str:
        return self._what() + (" or null" if self.nullable else "")


class AnyValue(Value):
    def __init__(self):
        super().__init__(nullable=True)

    def _ok(self, v):
        return True

    def _what(self):
        return "anything"


class Num(Value):
    """A finite number (``integer``: an int) within the given bounds (bools are not numbers)."""

    def __init__(self, gt: Optional[float] = None, ge: Optional[float] = None, lt: Optional[float] = None,
                 le: Optional[float] = None, integer: bool = False, nullable: bool = False):
        super().__init__(nullable)
        self.gt, self.ge, self.lt, self.le, self.integer = gt, ge, lt, le, integer

    def _ok(self, v):
        if isinstance(v, bool):
            return False
        if self.integer:
            if not isinstance(v, int):
                return False
        elif not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        return ((self.gt is None or v > self.gt) and (self.ge is None or v >= self.ge)
                and (self.lt is None or v < self.lt) and (self.le is None or v <= self.le))

    def _what(self):
        kind = "an integer" if self.integer else "a finite number"
        lo = ("(", self.gt) if self.gt is not None else ("[", self.ge) if self.ge is not None else None
        hi = (")", self.lt) if self.lt is not None else ("]", self.le) if self.le is not None else None
        if lo and hi:
            return f"{kind} in {lo[0]}{lo[1]:g}, {hi[1]:g}{hi[0]}"
        if lo:
            return f"{kind} {'>' if lo[0] == '(' else '>='} {lo[1]:g}"
        if hi:
            return f"{kind} {'<' if hi[0] == ')' else '<='} {hi[1]:g}"
        return kind


def Int(**kw) -> Num:
    """An integer within bounds (``Int(ge=1)``)."""
    return Num(integer=True, **kw)


def Prob(nullable: bool = False) -> Num:
    """A probability: a number in [0, 1]."""
    return Num(ge=0, le=1, nullable=nullable)


class Bool(Value):
    def _ok(self, v):
        return isinstance(v, bool)

    def _what(self):
        return "true or false"


class Str(Value):
    """A string, optionally one of ``choices`` (the error then adds a close-match hint)."""

    def __init__(self, choices: Optional[Sequence[str]] = None, nullable: bool = False):
        super().__init__(nullable)
        self.choices = list(choices) if choices is not None else None

    def _ok(self, v):
        return isinstance(v, str) and (self.choices is None or v in self.choices)

    def _what(self):
        return f"one of {self.choices}" if self.choices is not None else "a string"


class Seq(Value):
    """A list whose items follow ``item`` (``length``: exactly that many; ``nonempty``)."""

    def __init__(self, item: Value, length: Optional[int] = None, nonempty: bool = False, nullable: bool = False):
        super().__init__(nullable)
        self.item, self.length, self.nonempty = item, length, nonempty

    def _ok(self, v):
        if not isinstance(v, (list, tuple)):
            return False
        if self.length is not None and len(v) != self.length:
            return False
        if self.nonempty and not v:
            return False
        return all(self.item.ok(x) for x in v)

    def _what(self):
        n = f"{self.length} " if self.length is not None else "a non-empty " if self.nonempty else "a "
        return f"{'a list of ' + n if self.length is not None else n + 'list of '}{_plural(self.item.expected())}"


def _plural(what: str) -> str:
    for one, many in (("an integer", "integers"), ("a finite number", "finite numbers"), ("a string", "strings"),
                      ("true or false", "booleans"), ("one of", "each one of")):
        if what.startswith(one):
            return many + what[len(one):]
    return f"values that are {what}"


class Either(Value):
    """Any one of ``options`` (e.g. ``devices``: an integer, a string or a list of integers)."""

    def __init__(self, *options: Value, nullable: bool = False):
        super().__init__(nullable)
        self.options = options

    def _ok(self, v):
        return any(o.ok(v) for o in self.options)

    def _what(self):
        return ", or ".join(o.expected() for o in self.options)


ValueTable = Mapping[str, Value]


def spec_from_default(default: Any) -> Value:
    """The type a free-form kwarg takes, read from its declared default value."""
    if default is None:
        return AnyValue()
    if isinstance(default, bool):
        return Bool()
    if isinstance(default, int):
        return Int()
    if isinstance(default, float):
        return Num()
    if isinstance(default, str):
        return Str()
    if isinstance(default, (list, tuple)):
        items = {type(x) for x in default}
        if items and items <= {int, float}:
            return Seq(Num())
        return Seq(AnyValue())
    return AnyValue()


def _walk(node: Any, parts: Sequence[str], prefix: str) -> Iterator[Tuple[str, Any]]:
    """(concrete key, value) for every place ``parts`` names in ``node`` (absent keys are skipped)."""
    if not parts:
        yield prefix, node
        return
    head, rest = parts[0], parts[1:]
    many = head.endswith("[]")
    name = head[:-2] if many else head
    if not isinstance(node, Mapping) or name not in node:
        return
    here = f"{prefix}.{name}" if prefix else name
    child = node[name]
    if many:
        if isinstance(child, (list, tuple)):
            for i, item in enumerate(child):
                yield from _walk(item, rest, f"{here}[{i}]")
        return
    yield from _walk(child, rest, here)


def bad_value(key: str, value: Any, spec: Value) -> Exception:
    """The one-line error for ``key = value`` that does not meet ``spec``."""
    hint = ""
    if isinstance(spec, Str) and spec.choices and isinstance(value, str):
        hint = close_match_hint(value, spec.choices)
    return _config_error(f"config key '{key}' = {_show(value)}: expected {spec.expected()}{hint}")


def check_value(key: str, value: Any, spec: Value) -> None:
    if not spec.ok(value):
        raise bad_value(key, value, spec)


def check_values(cfg: Mapping[str, Any], table: ValueTable, prefix: str = "") -> None:
    """Check every key of ``table`` present in ``cfg`` (a plain dict); raise on the first bad one."""
    for key, spec in table.items():
        for where, value in _walk(cfg, key.split("."), prefix):
            check_value(where, value, spec)


def check_kwargs_values(given: Mapping[str, Any], defaults: Mapping[str, Any], path: str,
                        named: Optional[ValueTable] = None) -> None:
    """Check a free-form kwargs block: a declared range by name (``named``), else the default's type."""
    named = named or {}
    for key, value in given.items():
        if value is None and key in defaults and defaults[key] is None:
            continue  # declared optional (default null), left unset
        spec = named.get(key) or spec_from_default(defaults.get(key))
        check_value(f"{path}.{key}", value, spec)


def check_order(cfg: Mapping[str, Any], low_key: str, high_key: str) -> None:
    """``low_key`` <= ``high_key`` (both present and numbers), else one error naming both."""
    lo = _get(cfg, low_key)
    hi = _get(cfg, high_key)
    if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo > hi:
        raise _config_error(f"config key '{low_key}' = {_show(lo)} is larger than '{high_key}' = {_show(hi)}: "
                            f"expected {low_key} <= {high_key}")


def _get(cfg: Mapping[str, Any], key: str) -> Any:
    node: Any = cfg
    for p in key.split("."):
        if not isinstance(node, Mapping) or p not in node:
            return None
        node = node[p]
    return node


# ---------------------------------------------------------------------------------------------
# tables shared by several schemas
# ---------------------------------------------------------------------------------------------

DEVICES = Either(Int(ge=-1), Str(), Seq(Int(ge=0), nonempty=True))
PRECISION = Either(Str(), Int(ge=1))
MEAN_STD = Seq(Num(), length=3, nullable=True)

#: keys every training config shares (pretraining, linear, fine-tuning, transfer)
COMMON_VALUES: Dict[str, Value] = {
    "name": Str(),
    "seed": Int(ge=0),
    "max_epochs": Int(ge=1),
    "devices": DEVICES,
    "num_nodes": Int(ge=1),
    "accelerator": Str(),
    "strategy": Str(nullable=True),
    "precision": PRECISION,
    "sync_batchnorm": Bool(),
    "resume_from_checkpoint": Str(nullable=True),
    "checkpoint.enabled": Bool(),
    "checkpoint.dir": Str(),
    "checkpoint.frequency": Int(ge=1),
    "checkpoint.keep_prev": Bool(),
    "auto_resume.enabled": Bool(),
    "auto_resume.max_hours": Num(ge=0, nullable=True),  # null or 0: no age limit
    "wandb.enabled": Bool(),
    "wandb.project": Str(),
    "wandb.entity": Str(nullable=True),
    "wandb.offline": Bool(),
    "wandb.tags": Seq(Str(), nullable=True),
    "performance.disable_channel_last": Bool(),
    "data.dataset": Str(),
    "data.train_path": Str(nullable=True),
    "data.val_path": Str(nullable=True),
    "data.format": Str(),
    "data.num_workers": Int(ge=0),
    "data.fraction": Num(le=1, nullable=True),
    "data.download": Bool(),
    "data.skip_corrupt": Bool(),
    "data.num_classes": Int(ge=1, nullable=True),
    "data.verify": Str(["off", "quick", "full"]),
    "optimizer.name": Str(),
    "optimizer.batch_size": Int(ge=1),
    "optimizer.lr": Num(gt=0),
    "optimizer.classifier_lr": Num(ge=0),
    "optimizer.weight_decay": Num(ge=0),
    "optimizer.exclude_bias_n_norm_wd": Bool(),
    "scheduler.name": Str(),
    "scheduler.warmup_epochs": Num(ge=0),
    "scheduler.warmup_start_lr": Num(ge=0),
    "scheduler.min_lr": Num(ge=0),
    "scheduler.interval": Str(["step", "epoch"]),
    "scheduler.lr_decay_steps": Seq(Int(ge=0), nullable=True),
}

#: the ``data.masks`` block of pretraining (and its subset in the evaluation schemas)
MASKS_VALUES: Dict[str, Value] = {
    "data.masks.enabled": Bool(),
    "data.masks.root": Str(nullable=True),
    "data.masks.val_root": Str(nullable=True),
    "data.masks.suffix": Str(),
    "data.masks.on_missing": Str(["error", "ones", "zeros"]),
    "data.masks.on_size_mismatch": Str(["error", "resize"]),
    "data.masks.min_fg_frac": Prob(nullable=True),
    "data.masks.max_tries": Int(ge=1),
    "data.masks.crop_fallback": Str(["last", "best"]),
    "data.masks.vflip_prob": Prob(),
}

#: one augmentation pipeline (``augmentations[]`` of pretraining)
AUGMENTATION_VALUES: Dict[str, Value] = {
    "rrc.enabled": Bool(),
    "rrc.crop_min_scale": Num(gt=0, le=1),
    "rrc.crop_max_scale": Num(gt=0, le=1),
    "color_jitter.prob": Prob(),
    "color_jitter.brightness": Num(ge=0),
    "color_jitter.contrast": Num(ge=0),
    "color_jitter.saturation": Num(ge=0),
    "color_jitter.hue": Num(ge=0, le=0.5),
    "grayscale.prob": Prob(),
    "gaussian_blur.prob": Prob(),
    "gaussian_blur.sigma_min": Num(gt=0),
    "gaussian_blur.sigma_max": Num(gt=0),
    "solarization.prob": Prob(),
    "equalization.prob": Prob(),
    "horizontal_flip.prob": Prob(),
    "mean": MEAN_STD,
    "std": Seq(Num(gt=0), length=3, nullable=True),
    "crop_size": Int(ge=1),
    "num_crops": Int(ge=1),
}

#: ranges of ``method_kwargs`` by name (every method using the name); types come from the defaults
METHOD_KWARG_VALUES: Dict[str, Value] = {
    **{k: Int(ge=1) for k in ("proj_hidden_dim", "proj_output_dim", "pred_hidden_dim", "proj_layers",
                              "pix_hidden_dim", "pix_output_dim", "pix_upsample", "queue_size", "grid_size",
                              "hp_kernel", "fill_blur_kernel")},
    "num_hard_negatives": Int(ge=0),
    **{k: Num(gt=0) for k in ("temperature", "pix_temperature", "pix_pos_radius", "hp_sigma", "fill_blur_sigma",
                              "hard_neg_scale")},
    **{k: Prob() for k in ("alpha_base", "lambda_base", "beta_min", "mask_weight", "mask_threshold",
                           "sgm_mask_threshold", "fg_cap", "focal_prob", "pos_focal_frac", "neg_focal_frac",
                           "spatial_prob")},
    **{k: Num(ge=0) for k in ("pix_weight", "pool_eps", "pos_noise_std", "neg_noise_std", "fg_std_factor")},
    **{k: Seq(Prob(), length=2) for k in ("pos_ratio", "neg_ratio")},
    "sgm_saliency_input_size": Int(ge=1, nullable=True),
    "label_smoothing": Num(ge=0, lt=1),
}

#: ``momentum`` block of momentum methods
MOMENTUM_VALUES: Dict[str, Value] = {
    "momentum.base_tau": Prob(),
    "momentum.final_tau": Prob(),
    "momentum.classifier": Bool(),
}

#: pretraining: top level, optimizer, scheduler, data, masks, momentum, augmentations
PRETRAIN_VALUES: Dict[str, Value] = {
    **COMMON_VALUES,
    **MASKS_VALUES,
    **MOMENTUM_VALUES,
    **{f"augmentations[].{k}": v for k, v in AUGMENTATION_VALUES.items()},
    "method": Str(),
    "backbone.name": Str(),
    "data.no_labels": Bool(),
    "knn_eval.enabled": Bool(),
    "knn_eval.k": Int(ge=1),
    "knn_eval.T": Num(gt=0),
    "debug_augmentations": Bool(),
    "no_validation": Bool(),
    "accumulate_grad_batches": Int(ge=1),
    "guard.enabled": Bool(),
    "guard.max_bad_steps": Int(ge=0),
    "health.enabled": Bool(),
    "health.strict": Bool(),
    "health.every_n_steps": Int(ge=1),
}


def check_pretrain_values(out: Dict[str, Any]) -> None:
    """Types, ranges and orderings of a validated pretraining config (plain dict, before parse_cfg's scaling)."""
    check_values(out, PRETRAIN_VALUES)
    for i, aug in enumerate(out.get("augmentations") or []):
        _check_aug_order(aug, f"augmentations[{i}]")


def _check_aug_order(aug: Mapping[str, Any], where: str) -> None:
    for lo, hi in (("rrc.crop_min_scale", "rrc.crop_max_scale"), ("gaussian_blur.sigma_min", "gaussian_blur.sigma_max")):
        a, b = _get(aug, lo), _get(aug, hi)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a > b:
            raise _config_error(f"config key '{where}.{lo}' = {_show(a)} is larger than '{where}.{hi}' = {_show(b)}: "
                                f"expected {lo} <= {hi}")


__all__: List[str] = [
    "Value", "Num", "Int", "Prob", "Bool", "Str", "Seq", "Either", "AnyValue", "spec_from_default",
    "check_value", "check_values", "check_kwargs_values", "check_order", "bad_value",
    "COMMON_VALUES", "MASKS_VALUES", "AUGMENTATION_VALUES", "METHOD_KWARG_VALUES", "MOMENTUM_VALUES",
    "PRETRAIN_VALUES", "check_pretrain_values",
]
