"""Report figures (matplotlib, Agg backend; fixed sizes so a figure's pixel size is known):

- :func:`plot_curves`: per-epoch SSL loss, online linear accuracy and online kNN accuracy of
  every pretraining run (one colour per method, one line style per seed);
- :func:`plot_methods`: the method table as grouped bars with ± std error bars;
- :func:`plot_views`: example training views of a run with their masks overlaid (the original
  image and mask first, then the augmented views as the training loop sees them).

Each function writes a PNG atomically and returns its path (or None when there is nothing to draw).
"""

from __future__ import annotations

import io
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from harl.utils.io import atomic_write_bytes
from harl.report.collect import PretrainRun
from harl.report.summary import Cell

DPI = 100
#: per-method SSL loss names, tried in order (``<name>_epoch``, then the plain / per-step column)
LOSS_NAMES = ("train_harl_loss", "train_hapicl_loss", "train_neg_cos_sim", "train_nce_loss", "train_loss")


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    _plt().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def loss_name(run: PretrainRun) -> Optional[str]:
    """The SSL loss column of a run (see :data:`LOSS_NAMES`), else any ``train_*loss*`` that is
    not the online classifier's."""
    for base in LOSS_NAMES:
        if run.epoch_series(base):
            return base
    for col in sorted(run.metrics):
        base = col[:-len("_epoch")] if col.endswith("_epoch") else col[:-len("_step")] if col.endswith("_step") else col
        if base.startswith("train_") and "loss" in base and "class" not in base:
            return base
    return None


CURVE_PANELS = (("SSL loss", None), ("online linear top-1 (%)", "val_acc1"), ("online kNN top-1 (%)", "val_knn_acc1"))
CURVES_SIZE = (15.0, 4.2)


def plot_curves(runs: Sequence[PretrainRun], path: str) -> Optional[str]:
    """Training curves of ``runs``: a 1×3 grid, 1500×420 px."""
    runs = [r for r in runs if r.metrics]
    if not runs:
        return None
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 3, figsize=CURVES_SIZE)
    methods = sorted({r.method for r in runs})
    cmap = plt.get_cmap("tab10")
    colour = {m: cmap(i % 10) for i, m in enumerate(methods)}
    styles = ["-", "--", ":", "-."]
    seeds_of: Dict[str, List] = {}
    for r in runs:
        seeds_of.setdefault(r.method, [])
        if r.seed not in seeds_of[r.method]:
            seeds_of[r.method].append(r.seed)
    drawn = [False, False, False]
    for r in runs:
        style = styles[seeds_of[r.method].index(r.seed) % len(styles)]
        for i, (title, base) in enumerate(CURVE_PANELS):
            if base is None:
                base = loss_name(r)
                if base is None:
                    continue
            s = r.epoch_series(base)
            if not s:
                continue
            x = [ep + 1 for ep, _ in s]
            y = [v for _, v in s]
            axes[i].plot(x, y, style, color=colour[r.method], marker="o" if len(x) < 15 else None, markersize=3,
                         label=r.label)
            drawn[i] = True
    for i, (title, _) in enumerate(CURVE_PANELS):
        ax = axes[i]
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if not drawn[i]:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="grey")
    axes[0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _save(fig, path)


METHODS_SIZE = (12.0, 4.8)


def plot_methods(columns: Sequence[str], rows: Sequence, path: str) -> Optional[str]:
    """Grouped bars: one group per column, one bar per method (mean, ± std error bar, n seeds
    written above); 1200×480 px."""
    if not rows or not columns:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=METHODS_SIZE)
    n_methods = len(rows)
    width = 0.8 / max(1, n_methods)
    cmap = plt.get_cmap("tab10")
    x = np.arange(len(columns))
    top = max((cells[c].mean + (cells[c].std or 0.0) for _, _, cells in rows for c in cells), default=100.0)
    for j, (label, _, cells) in enumerate(rows):
        means = [cells[c].mean if c in cells else np.nan for c in columns]
        stds = [(cells[c].std or 0.0) if c in cells else 0.0 for c in columns]
        colour = "0.6" if label.startswith("random init") else cmap(j % 10)
        pos = x - 0.4 + width * (j + 0.5)
        ax.bar(pos, means, width, yerr=stds, capsize=3, color=colour, label=label, edgecolor="black", linewidth=0.4,
               hatch="//" if label.startswith("random init") else None)
        for p, c in zip(pos, columns):
            if c in cells:
                cell: Cell = cells[c]
                ax.text(p, cell.mean + (cell.std or 0.0) + 0.01 * top, f"{cell.mean:.1f}", ha="center", va="bottom",
                        fontsize=7, rotation=90 if n_methods > 3 else 0)
    ax.set_xticks(x)
    ax.set_xticklabels(columns, rotation=15, ha="right", fontsize=8)
    ax.set_ylabel("accuracy / mIoU (%)")
    ax.set_ylim(0, max(10.0, top * 1.15))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title("methods (mean ± std over seeds)")
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# example views with masks
# ---------------------------------------------------------------------------------------------

VIEW_CELL = 2.0  # inches per image


def _to_image(x, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """3×H×W normalised tensor → H×W×3 float in [0, 1]."""
    a = x.detach().float().cpu().numpy()
    a = a * np.asarray(std, dtype=np.float32)[:, None, None] + np.asarray(mean, dtype=np.float32)[:, None, None]
    return np.clip(a.transpose(1, 2, 0), 0.0, 1.0)


def _overlay(ax, img: np.ndarray, mask: Optional[np.ndarray]) -> None:
    ax.imshow(img, interpolation="nearest")
    if mask is not None:
        m = (np.asarray(mask).reshape(mask.shape[-2:]) > 0)
        if m.shape != img.shape[:2]:
            from PIL import Image

            m = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((img.shape[1], img.shape[0]),
                                                                             Image.NEAREST)) > 127
        tint = np.zeros(img.shape[:2] + (4,), dtype=np.float32)
        tint[m] = (1.0, 0.15, 0.15, 0.45)
        ax.imshow(tint, interpolation="nearest")
        if m.any() and not m.all():
            ax.contour(m.astype(np.float32), levels=[0.5], colors="yellow", linewidths=0.8)
    ax.set_xticks([])
    ax.set_yticks([])


def view_grid_size(n_images: int, n_views: int) -> tuple:
    """Pixel size (width, height) of :func:`plot_views`' figure."""
    return (int(round((1 + n_views) * VIEW_CELL * DPI)), int(round(n_images * VIEW_CELL * DPI)))


def plot_views(run: PretrainRun, path: str, n_images: int = 4, max_views: int = 4, seed: int = 0,
               data_path: Optional[str] = None) -> str:
    """Example views of ``run``'s training data with their masks overlaid.

    The dataset is rebuilt from the run's ``args.json`` (``data_path`` replaces
    ``data.train_path``, e.g. when the run was launched from another folder); raises the data
    layer's error (naming the path) when the images cannot be found.
    Grid: ``n_images`` rows × (1 + views) columns of 200×200 px.
    """
    import torch
    from omegaconf import OmegaConf

    from harl.data import build_pretrain_dataset, dataset_stats  # lazy: imports lightning, torch, torchvision

    cfg = OmegaConf.create(run.args)
    if data_path is not None:
        cfg.data.train_path = data_path
        if cfg.data.masks.get("root") is not None and not os.path.isdir(str(cfg.data.masks.root)):
            cfg.data.masks.root = None
    ds = build_pretrain_dataset(cfg)
    n_images = max(1, min(n_images, len(ds)))
    rng = np.random.default_rng(seed)
    picks = sorted(rng.choice(len(ds), size=n_images, replace=False).tolist())
    stats = []
    for aug in cfg.augmentations:
        for _ in range(int(aug.num_crops)):
            stats.append(dataset_stats(cfg.data.dataset, aug))
    n_views = min(max_views, len(stats))
    plt = _plt()
    w, h = view_grid_size(n_images, n_views)
    fig, axes = plt.subplots(n_images, 1 + n_views, figsize=(w / DPI, h / DPI), squeeze=False)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for row, i in enumerate(picks):
            item = ds[i]
            j, views = item[0], item[1]
            masks = item[3]["masks"] if len(item) > 3 else None
            img = ds.source.load_image(int(j))
            full_mask = ds.mask_reader(ds.source, int(j), img.size) if ds.mask_reader is not None else None
            _overlay(axes[row][0], np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0, full_mask)
            axes[row][0].set_xlabel(f"image {int(j)} + mask", fontsize=8)
            for v in range(n_views):
                mean, std = stats[v]
                m = masks[v].numpy() if masks is not None else None
                _overlay(axes[row][1 + v], _to_image(views[v], mean, std), m)
                axes[row][1 + v].set_xlabel(f"view {v + 1}", fontsize=8)
    finally:
        torch.random.set_rng_state(state)
    what = "masks overlaid (red, yellow outline)" if ds.mask_reader is not None else "no masks in this run"
    fig.suptitle(f"{run.label}: training views, {what}", fontsize=9)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.25 / (n_images * VIEW_CELL),
                        top=1 - 0.3 / (n_images * VIEW_CELL), wspace=0.08, hspace=0.2)
    return _save(fig, path)
