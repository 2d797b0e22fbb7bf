"""ℓ2-regularised multinomial logistic regression on fixed features (the transfer linear protocol).

Objective for weights ``W`` (D×K) and bias ``b`` (K), features ``X`` (N×D), labels ``y`` (N)::

    L(W, b) = (1/N) Σ_i CE(X_i W + b, y_i) + (λ/2) ‖W‖²_F        (the bias is not penalised)

i.e. scikit-learn's ``LogisticRegression(C=1/(λN))``. It is strictly convex in ``W`` for λ > 0;
:func:`fit_logistic_regression` minimises it with full-batch L-BFGS (strong-Wolfe line search).

The protocol (BYOL / SimCLR / Kornblith et al. 2019; docs/protocols.md): standardise features with the
training statistics, fit one model per penalty of a log-spaced grid (:data:`DEFAULT_PENALTIES`,
45 values in 10⁻⁶…10⁵) on *train*, pick the penalty with the best *validation* score
(:func:`search_penalty`; ties go to the largest penalty), then refit on *train + val* with that
penalty and report *test* top-1 (and the mean per-class accuracy) — :func:`linear_transfer`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from harl.eval.features import extract_features, feature_cache_key, key_digest
from harl.eval.features import state_dict_sha256

#: 45 log-spaced penalties from 1e-6 to 1e5 (BYOL's transfer protocol)
DEFAULT_PENALTIES: Tuple[float, ...] = tuple(float(v) for v in np.logspace(-6, 5, 45))

METRICS = ("top1", "mean_per_class")


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------


def top1_accuracy(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Percent of rows of ``scores`` (N×K) whose argmax equals ``targets`` (N)."""
    if targets.numel() == 0:
        return float("nan")
    return float((scores.argmax(dim=1) == targets).double().mean() * 100.0)


def mean_per_class_accuracy(scores: torch.Tensor, targets: torch.Tensor, num_classes: Optional[int] = None) -> float:
    """Mean over the classes present in ``targets`` of each class's top-1 accuracy, in percent."""
    if targets.numel() == 0:
        return float("nan")
    pred = scores.argmax(dim=1)
    k = int(num_classes if num_classes is not None else int(targets.max()) + 1)
    correct = torch.zeros(k, dtype=torch.float64, device=targets.device)
    total = torch.zeros(k, dtype=torch.float64, device=targets.device)
    total.index_add_(0, targets, torch.ones_like(targets, dtype=torch.float64))
    correct.index_add_(0, targets, (pred == targets).double())
    present = total > 0
    return float((correct[present] / total[present]).mean() * 100.0)


def score(scores: torch.Tensor, targets: torch.Tensor, metric: str, num_classes: Optional[int] = None) -> float:
    if metric == "top1":
        return top1_accuracy(scores, targets)
    if metric == "mean_per_class":
        return mean_per_class_accuracy(scores, targets, num_classes)
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


# ---------------------------------------------------------------------------------------------
# standardisation
# ---------------------------------------------------------------------------------------------


@dataclass
class Standardizer:
    """Per-dimension ``(x − mean) / std`` with statistics of the data it was fitted on
    (population std; constant dimensions get std 1)."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def fit(cls, X: torch.Tensor, eps: float = 1e-8) -> "Standardizer":
        mean = X.mean(dim=0)
        std = X.std(dim=0, unbiased=False)
        std = torch.where(std > eps, std, torch.ones_like(std))
        return cls(mean, std)

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        return (X - self.mean) / self.std


# ---------------------------------------------------------------------------------------------
# fitting
# ---------------------------------------------------------------------------------------------


@dataclass
class LogisticModel:
    """A fitted model: ``W`` D×K, ``b`` K; ``penalty`` λ; ``loss`` the final objective value."""

    W: torch.Tensor
    b: torch.Tensor
    penalty: float
    loss: float
    iterations: int
    converged: bool

    def decision_function(self, X: torch.Tensor) -> torch.Tensor:
        """Class scores N×K for features N×D."""
        return X.to(self.W.dtype) @ self.W + self.b


def logistic_objective(W: torch.Tensor, b: torch.Tensor, X: torch.Tensor, y: torch.Tensor, penalty: float) -> torch.Tensor:
    """``mean CE(XW + b, y) + (λ/2)‖W‖²`` (see module docstring)."""
    return F.cross_entropy(X @ W + b, y) + 0.5 * penalty * (W * W).sum()


def fit_logistic_regression(X: torch.Tensor, y: torch.Tensor, num_classes: int, penalty: float, *,
                            max_iter: int = 1000, tol: float = 1e-5, history_size: int = 20,
                            init: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> LogisticModel:
    """Minimise the objective above for ``X`` (N×D, any float dtype: the fit runs in that dtype
    on X's device), ``y`` (N, int in [0, num_classes)) and penalty λ ≥ 0.

    ``init``: (W, b) to warm-start from (e.g. the solution for a neighbouring penalty).
    ``converged`` is True when the largest gradient entry fell below ``tol`` (or the objective
    stopped changing) before ``max_iter`` L-BFGS iterations.
    """
    if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0]:
        raise ValueError(f"expected X N×D and y N, got {tuple(X.shape)} and {tuple(y.shape)}")
    if penalty < 0 or not math.isfinite(penalty):
        raise ValueError(f"penalty must be a finite number >= 0, got {penalty}")
    if not X.is_floating_point():
        X = X.float()
    y = y.to(device=X.device, dtype=torch.long)
    d = X.shape[1]
    if init is None:
        W = torch.zeros(d, num_classes, dtype=X.dtype, device=X.device)
        b = torch.zeros(num_classes, dtype=X.dtype, device=X.device)
    else:
        W, b = (t.detach().to(device=X.device, dtype=X.dtype).clone() for t in init)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=int(max_iter), tolerance_grad=float(tol),
                            tolerance_change=float(tol) * 1e-3, history_size=int(history_size),
                            line_search_fn="strong_wolfe")

    n = X.shape[0]
    onehot = F.one_hot(y, num_classes).to(X.dtype)

    def value_and_grad():
        # analytic gradient (no autograd graph): dL/dW = Xᵀ(P − Y)/N + λW, dL/db = mean(P − Y)
        logits = X @ W + b
        loss = F.cross_entropy(logits, y) + 0.5 * penalty * (W * W).sum()
        r = (torch.softmax(logits, dim=1) - onehot) / n
        return loss, X.T @ r + penalty * W, r.sum(dim=0)

    def closure():
        loss, gW, gb = value_and_grad()
        W.grad, b.grad = gW, gb
        return loss

    with torch.no_grad():
        opt.step(closure)
        loss, gW, gb = value_and_grad()
    state = opt.state[W]
    iters = int(state.get("n_iter", 0))
    grad_max = float(max(gW.abs().max(), gb.abs().max()))
    converged = grad_max <= tol * 10 or iters < max_iter
    return LogisticModel(W.detach(), b.detach(), float(penalty), float(loss.detach()), iters, bool(converged))


# ---------------------------------------------------------------------------------------------
# penalty search and the full protocol
# ---------------------------------------------------------------------------------------------


@dataclass
class PenaltySearch:
    """Validation scores per penalty and the chosen one."""

    penalties: List[float]
    val_top1: List[float]
    val_mean_per_class: List[float]
    metric: str
    best_penalty: float
    converged: List[bool] = field(default_factory=list)

    def rows(self) -> List[Dict[str, float]]:
        return [{"penalty": p, "val_top1": t, "val_mean_per_class": m, "converged": c}
                for p, t, m, c in zip(self.penalties, self.val_top1, self.val_mean_per_class, self.converged)]


def select_best(penalties: Sequence[float], scores: Sequence[float]) -> float:
    """The penalty with the highest score; ties (within 1e-9) go to the **largest** penalty
    (the simplest model among equally good ones)."""
    if len(penalties) == 0:
        raise ValueError("empty penalty grid")
    best = max(scores)
    return max(p for p, s in zip(penalties, scores) if s >= best - 1e-9)


def search_penalty(train_X: torch.Tensor, train_y: torch.Tensor, val_X: torch.Tensor, val_y: torch.Tensor,
                   num_classes: int, penalties: Sequence[float] = DEFAULT_PENALTIES, metric: str = "top1",
                   standardize: bool = True, progress: bool = False, **fit_kwargs) -> PenaltySearch:
    """Fit on train for every penalty (largest first, each warm-started from the previous
    solution), score on val, and pick the best with :func:`select_best`."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if standardize:
        st = Standardizer.fit(train_X)
        train_X, val_X = st(train_X), st(val_X)
    order = sorted({float(p) for p in penalties}, reverse=True)
    val_y = val_y.to(train_X.device)
    res: Dict[float, Tuple[float, float, bool]] = {}
    init = None
    it = order
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(order, desc="penalty search", unit="fit")
    for p in it:
        model = fit_logistic_regression(train_X, train_y, num_classes, p, init=init, **fit_kwargs)
        init = (model.W, model.b)
        s = model.decision_function(val_X)
        res[p] = (top1_accuracy(s, val_y), mean_per_class_accuracy(s, val_y, num_classes), model.converged)
    grid = sorted(res)
    top1 = [res[p][0] for p in grid]
    mpc = [res[p][1] for p in grid]
    conv = [res[p][2] for p in grid]
    best = select_best(grid, top1 if metric == "top1" else mpc)
    if not res[best][2]:
        warnings.warn(f"logistic regression did not converge for the chosen penalty {best:g} "
                      f"(max_iter={fit_kwargs.get('max_iter', 1000)}); consider raising max_iter")
    return PenaltySearch(grid, top1, mpc, metric, best, conv)


def linear_transfer(train: Tuple[torch.Tensor, torch.Tensor], val: Tuple[torch.Tensor, torch.Tensor],
                    test: Tuple[torch.Tensor, torch.Tensor], num_classes: int,
                    penalties: Sequence[float] = DEFAULT_PENALTIES, metric: str = "top1",
                    standardize: bool = True, progress: bool = False, **fit_kwargs) -> Dict:
    """The whole transfer linear protocol on (features, targets) pairs.

    Returns ``{"top1", "mean_per_class", "penalty", "metric", "search": [...], "refit_converged",
    "num_train", "num_val", "num_test"}`` (accuracies in percent, on *test*).
    """
    (Xtr, ytr), (Xva, yva), (Xte, yte) = train, val, test
    search = search_penalty(Xtr, ytr, Xva, yva, num_classes, penalties, metric, standardize, progress, **fit_kwargs)
    Xall = torch.cat([Xtr, Xva.to(Xtr.device)])
    yall = torch.cat([ytr, yva.to(ytr.device)])
    Xte = Xte.to(Xtr.device)
    if standardize:
        st = Standardizer.fit(Xall)
        Xall, Xte = st(Xall), st(Xte)
    model = fit_logistic_regression(Xall, yall, num_classes, search.best_penalty, **fit_kwargs)
    s = model.decision_function(Xte)
    yte = yte.to(s.device)
    return {
        "top1": top1_accuracy(s, yte),
        "mean_per_class": mean_per_class_accuracy(s, yte, num_classes),
        "penalty": search.best_penalty,
        "metric": metric,
        "search": search.rows(),
        "refit_converged": model.converged,
        "num_train": int(len(ytr)),
        "num_val": int(len(yva)),
        "num_test": int(len(yte)),
    }


# ---------------------------------------------------------------------------------------------
# the protocol on an image dataset: frozen backbone → cached features → logistic regression
# ---------------------------------------------------------------------------------------------


def _features(backbone, info, dataset, *, split_name: str, data_path: str, cache_dir: Optional[str], crop: int,
              in_tf, batch_size: int, num_workers: int, device, progress: bool):
    """Features of ``dataset`` with :func:`harl.eval.features.extract_features`, cached under
    ``cache_dir`` by a key naming the weights, data, split and transforms."""
    cache_path = None
    key = None
    if cache_dir:
        if info.get("random_init") or not info.get("sha256"):
            # no file names the weights: key on the weights themselves (the extractor's default key)

            tag = state_dict_sha256(backbone)[:16]
        else:
            key = feature_cache_key(info["sha256"], data_path, split_name, f"{dataset.transform!r}|{in_tf!r}",
                                    info.get("backbone_name"), backbone_kwargs=info.get("backbone_kwargs"),
                                    prefix=info.get("prefix"), crop_size=crop, kind="pooled")
            tag = key_digest(key)[:16]
        cache_path = os.path.join(cache_dir, f"{split_name}-{tag}.safetensors")
    out = extract_features(backbone, dataset, batch_size=batch_size, num_workers=num_workers, device=device,
                           progress=progress, input_transform=in_tf, cache_path=cache_path, cache_key=key,
                           desc=f"features ({split_name})")
    return out[0], out[1]


def run_transfer(pretrained: Optional[str], train_path: str, test_path: str, val_path: Optional[str] = None, *,
                 dataset: str = "custom", name: Optional[str] = None, val_fraction: float = 0.1, split_seed: int = 0,
                 crop_size: Optional[int] = None, resize: bool = False, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None, backbone_name: Optional[str] = None,
                 backbone_kwargs: Optional[dict] = None, random_init: bool = False, seed: int = 5,
                 eval_highpass: Optional[bool] = None, penalties: Sequence[float] = DEFAULT_PENALTIES,
                 metric: str = "top1", max_iter: int = 1000, tol: float = 1e-5, out_dir: Optional[str] = None,
                 checkpoint_dir: str = "trained_models", cache_dir: Optional[str] = None, use_cache: bool = True,
                 batch_size: int = 256, num_workers: int = 4, device: Optional[str] = None,
                 fit_device: Optional[str] = None, skip_corrupt: bool = False, progress: bool = True) -> Dict:
    """The transfer linear protocol (docs/protocols.md) for an image dataset.

    ``train_path`` / ``test_path`` (and ``val_path`` when the dataset provides a validation split,
    e.g. DTD) are read with :func:`harl.data.build_classification_dataset` for ``dataset``
    (``custom``: any ImageFolder tree; ``cifar10``/``cifar100``/``stl10``/``fashion_mnist``: the
    torchvision / IDX files, ``test_path`` read as their test split). Without ``val_path`` a
    class-stratified ``val_fraction`` of train is held out (seeded; the list is saved). Images get
    the dataset's deterministic evaluation transform at ``crop_size`` (default: the pretraining's
    crop; ``resize=True``: every image resized to crop × crop instead, e.g. CIFAR's 32 px images to
    224 for an ImageNet model) with the pretraining's normalisation; features come from the frozen backbone, cached in
    ``cache_dir`` (default ``<checkpoint_dir>/feature_cache``) and reused on later runs.

    Writes ``results.json`` (``mode: transfer_linear``, ``top1``, ``mean_per_class``, ``penalty``,
    the whole search, …) into ``out_dir`` (default ``<checkpoint_dir>/transfer/<name>-<digest>``)
    and returns the same dict.
    """
    from harl.checkpoint import atomic_write_text  # lazy: imports lightning
    from harl.data import build_classification_dataset, dataset_stats  # lazy: imports lightning, torchvision
    from harl.eval.finetune.files import _pretrain_facts  # lazy: imports lightning
    from harl.utils.device import resolve_device
    from harl.eval.pretrained import load_pretrained_backbone  # lazy: imports lightning
    from harl.eval.subsets import holdout_split, write_subset_list  # lazy: imports lightning, torchvision

    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if pretrained is None and not random_init:
        raise ValueError("run_transfer needs a pretrained checkpoint (or random_init=True with backbone_name)")
    backbone, info = load_pretrained_backbone(pretrained, backbone_name, backbone_kwargs, random_init=random_init,
                                              seed=seed)
    info["seed_used"] = seed
    facts = _pretrain_facts(pretrained)
    crop = int(crop_size or facts.get("crop_size") or 224)
    d_mean, d_std = dataset_stats(dataset)
    mean = list(mean) if mean is not None else (info.get("mean") or list(d_mean))
    std = list(std) if std is not None else (info.get("std") or list(d_std))
    in_tf = None
    if eval_highpass if eval_highpass is not None else bool(info.get("highpass")):
        from harl.ops.filters import HighPass

        in_tf = HighPass(int(info.get("hp_kernel") or 11), float(info.get("hp_sigma") or 5.0))

    def ds(path, split):
        d = build_classification_dataset(dataset, path, split, crop, mean, std, train_augment=False,
                                         skip_corrupt=skip_corrupt)
        if resize:
            from harl.data import EvalGeometry, EvalTransform  # lazy: imports lightning, torchvision

            d.transform = EvalTransform(EvalGeometry(resize=(crop, crop)), mean, std)
        return d

    train_ds, test_ds = ds(train_path, "train"), ds(test_path, "val")
    val_ds = ds(val_path, "val") if val_path else None
    for other, what in ((test_ds, test_path), (val_ds, val_path)):
        if other is not None and train_ds.classes and other.classes and list(other.classes) != list(train_ds.classes):
            only_train = sorted(set(train_ds.classes) - set(other.classes))[:5]
            only_other = sorted(set(other.classes) - set(train_ds.classes))[:5]
            raise ValueError(f"the classes of '{what}' differ from those of '{train_path}' (labels would not match): "
                             f"only in train {only_train}, only in '{what}' {only_other}")
    label = name or (dataset if dataset != "custom" else os.path.basename(os.path.dirname(os.path.abspath(train_path)))
                     or "custom")
    spec = {"pretrained": os.path.abspath(pretrained) if pretrained else None, "random_init": random_init,
            "backbone": info.get("backbone_name"), "train": os.path.abspath(train_path),
            "val": os.path.abspath(val_path) if val_path else None, "test": os.path.abspath(test_path),
            "dataset": dataset, "val_fraction": None if val_path else val_fraction, "split_seed": split_seed,
            "crop": crop, "resize": bool(resize), "mean": mean, "std": std, "highpass": in_tf is not None,
            "penalties": [float(p) for p in penalties], "metric": metric, "max_iter": max_iter, "tol": tol}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]
    out_dir = os.path.abspath(out_dir or os.path.join(checkpoint_dir, "transfer", f"{label}-{digest}"))
    os.makedirs(out_dir, exist_ok=True)
    atomic_write_text(os.path.join(out_dir, "args.json"), json.dumps({"name": label, **spec}, indent=2) + "\n")
    cache_dir = None if not use_cache else os.path.abspath(cache_dir or os.path.join(checkpoint_dir, "feature_cache"))
    dev = resolve_device(device)
    common = dict(cache_dir=cache_dir, crop=crop, in_tf=in_tf, batch_size=batch_size, num_workers=num_workers,
                  device=dev, progress=progress)
    Xtr, ytr = _features(backbone, info, train_ds, split_name="train", data_path=train_path, **common)
    Xte, yte = _features(backbone, info, test_ds, split_name="test", data_path=test_path, **common)
    if val_ds is not None:
        Xva, yva = _features(backbone, info, val_ds, split_name="val", data_path=val_path, **common)
    else:
        tr_pos, va_pos = holdout_split(ytr.numpy(), val_fraction, split_seed)
        write_subset_list(os.path.join(out_dir, "val_split.txt"), train_ds.source, va_pos,
                          header=f"validation part of '{train_path}' (val_fraction={val_fraction}, seed={split_seed})")
        tr_t, va_t = torch.as_tensor(tr_pos), torch.as_tensor(va_pos)
        Xtr, ytr, Xva, yva = Xtr[tr_t], ytr[tr_t], Xtr[va_t], ytr[va_t]
    num_classes = int(max(int(ytr.max()), int(yva.max()), int(yte.max())) + 1)
    num_classes = max(num_classes, len(getattr(train_ds, "classes", []) or []))
    fdev = torch.device(fit_device) if fit_device else dev
    to = lambda t: t.to(fdev)  # noqa: E731
    res = linear_transfer((to(Xtr), to(ytr)), (to(Xva), to(yva)), (to(Xte), to(yte)), num_classes,
                          penalties=penalties, metric=metric, progress=progress, max_iter=max_iter, tol=tol)
    results = {
        "mode": "transfer_linear",
        "dataset": label,
        **res,
        "num_classes": num_classes,
        "feature_dim": int(Xtr.shape[1]),
        "crop_size": crop,
        "method": "random_init" if info.get("random_init") else info.get("method"),
        "pretrain_method": info.get("method"),
        "seed": facts.get("seed"),
        "random_init": bool(info.get("random_init")),
        "pretrained": info.get("path"),
        "pretrained_sha256": info.get("sha256"),
        "pretrain_run": facts.get("pretrain_run"),
        "backbone": info.get("backbone_name"),
        "val_source": "given" if val_ds is not None else f"held out {val_fraction:g} of train",
        "run_dir": out_dir,
    }
    atomic_write_text(os.path.join(out_dir, "results.json"), json.dumps(results, indent=2, default=str) + "\n")
    return results
