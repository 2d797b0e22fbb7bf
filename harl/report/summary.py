"""Aggregate runs and results into tables: one row per method (mean ± std over seeds) and one row
per pretraining run, rendered as markdown.

Columns, in this order when present: ``online linear`` and ``online kNN`` (the last validation
values in a run's ``metrics.csv``), ``linear top-1``, ``kNN top-1``, ``semi-sup <subset> top-1``
(by subset size), ``fine-tune <dataset> top-1``, ``transfer <dataset> top-1``, ``dense mIoU``,
then any other column. A method's cell averages one value per pretraining seed (the newest
results file wins when a seed was evaluated twice); std is the sample standard deviation
(n − 1) and is left out for a single seed. The random-init baseline is its own, labelled row.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from harl.report.collect import RANDOM_INIT, PretrainRun, Result

ONLINE_LINEAR = "online linear"
ONLINE_KNN = "online kNN"


@dataclass
class Cell:
    values: List[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values)

    @property
    def std(self) -> Optional[float]:
        if len(self.values) < 2:
            return None
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (len(self.values) - 1))

    def text(self, digits: int = 1) -> str:
        s = f"{self.mean:.{digits}f}"
        if self.std is not None:
            s += f" ± {self.std:.{digits}f}"
        return s


def _semi_order(col: str) -> Tuple[int, float, str]:
    m = re.search(r"semi-sup ([0-9.]+)%", col)
    if m:
        return (0, float(m.group(1)), col)
    m = re.search(r"semi-sup (\d+)/class", col)
    if m:
        return (1, float(m.group(1)), col)
    return (2, 0.0, col)


def order_columns(cols: Sequence[str]) -> List[str]:
    """Canonical column order (see the module docstring)."""
    def rank(c: str):
        if c == ONLINE_LINEAR:
            return (0, (0, 0.0, c))
        if c == ONLINE_KNN:
            return (1, (0, 0.0, c))
        if c == "linear top-1":
            return (2, (0, 0.0, c))
        if c == "kNN top-1":
            return (3, (0, 0.0, c))
        if c.startswith("semi-sup"):
            return (4, _semi_order(c))
        if c.startswith("fine-tune"):
            return (5, (0, 0.0, c))
        if c.startswith("transfer"):
            return (6, (0, 0.0, c))
        if c == "dense mIoU":
            return (7, (0, 0.0, c))
        return (8, (0, 0.0, c))

    return sorted(set(cols), key=rank)


def method_label(method: str, dataset: Optional[str], multi_dataset: bool) -> str:
    if method == RANDOM_INIT:
        return "random init (baseline)"
    return f"{method} ({dataset})" if multi_dataset and dataset else method


def online_results(runs: Sequence[PretrainRun]) -> List[Result]:
    """The last online linear / kNN validation accuracies of each run, as results."""
    out = []
    for run in runs:
        for col, base in ((ONLINE_LINEAR, "val_acc1"), (ONLINE_KNN, "val_knn_acc1")):
            v = run.last(base)
            if v is not None:
                out.append(Result(run.run_dir, col, v, "online", run.method, run.seed, run.dataset, run.run_dir))
    return out


def method_table(runs: Sequence[PretrainRun], results: Sequence[Result]) -> Tuple[List[str], List[Tuple[str, int, Dict[str, Cell]]]]:
    """``(columns, rows)``; a row is ``(label, number of seeds, {column: Cell})``. Methods are
    sorted by name, the random-init baseline last."""
    allres = list(online_results(runs)) + list(results)
    datasets = {r.dataset for r in allres if r.dataset and r.method != RANDOM_INIT}
    multi = len(datasets) > 1
    # newest value per (group, column, sample)
    newest: Dict[Tuple[str, str, str], Result] = {}
    for r in allres:
        group = method_label(r.method, r.dataset, multi)
        key = (group, r.column, r.sample_key)
        if key not in newest or r.mtime >= newest[key].mtime:
            newest[key] = r
    groups: Dict[str, Dict[str, List[float]]] = {}
    samples: Dict[str, set] = {}
    for (group, col, sample), r in newest.items():
        groups.setdefault(group, {}).setdefault(col, []).append(r.value)
        samples.setdefault(group, set()).add(sample)
    cols = order_columns([c for g in groups.values() for c in g])
    names = sorted(groups, key=lambda g: (g.startswith("random init"), g))
    rows = [(g, len(samples[g]), {c: Cell(v) for c, v in groups[g].items()}) for g in names]
    return cols, rows


def _md_escape(s: str) -> str:
    return str(s).replace("|", "\\|")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: Optional[Sequence[str]] = None) -> str:
    """A GitHub markdown table with padded columns (``align``: 'l' / 'r' per column)."""
    cells = [[_md_escape(h) for h in header]] + [[_md_escape(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    align = align or ["l"] + ["r"] * (len(header) - 1)

    def fmt(r):
        return "| " + " | ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align)) + " |"

    sep = "|" + "|".join((":" + "-" * (w + 1)) if a == "l" else ("-" * (w + 1) + ":") for w, a in zip(widths, align)) + "|"
    return "\n".join([fmt(cells[0]), sep] + [fmt(r) for r in cells[1:]])


def method_markdown(runs: Sequence[PretrainRun], results: Sequence[Result]) -> str:
    cols, rows = method_table(runs, results)
    if not rows:
        return "_No metrics found._"
    header = ["method", "seeds"] + cols
    body = [[g, str(n)] + [cells[c].text() if c in cells else "–" for c in cols] for g, n, cells in rows]
    return markdown_table(header, body, ["l", "r"] + ["r"] * len(cols))


def runs_markdown(runs: Sequence[PretrainRun], results: Sequence[Result]) -> str:
    """One row per pretraining run: method, seed, dataset, epochs and its own numbers."""
    if not runs:
        return "_No pretraining runs found._"
    per_run: Dict[str, Dict[str, Result]] = {}
    for r in list(online_results(runs)) + list(results):
        if r.pretrain_run and r.method != RANDOM_INIT:
            d = per_run.setdefault(r.pretrain_run, {})
            if r.column not in d or r.mtime >= d[r.column].mtime:
                d[r.column] = r
    cols = order_columns([c for d in per_run.values() for c in d])
    header = ["run", "method", "seed", "dataset", "epochs"] + cols
    body = []
    for run in runs:
        d = per_run.get(run.run_dir, {})
        body.append([run.version, run.method, "–" if run.seed is None else str(run.seed), run.dataset or "–",
                     str(run.epochs_done)] + [f"{d[c].value:.1f}" if c in d else "–" for c in cols])
    return markdown_table(header, body, ["l", "l", "r", "l", "r"] + ["r"] * len(cols))


def results_markdown(results: Sequence[Result], relto: Optional[str] = None) -> str:
    """Every evaluation number with the file it came from."""
    import os

    if not results:
        return "_No evaluation results found._"
    body = []
    for r in sorted(results, key=lambda r: (r.method, r.column, r.seed if r.seed is not None else -1, r.path)):
        path = os.path.relpath(r.path, relto) if relto else r.path
        body.append([r.method, "–" if r.seed is None else str(r.seed), r.column, f"{r.value:.2f}",
                     "–" if r.top5 is None else f"{r.top5:.2f}", path])
    return markdown_table(["method", "seed", "metric", "value", "top-5", "file"], body,
                          ["l", "r", "l", "r", "r", "l"])
