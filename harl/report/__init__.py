"""``harl-report``: turn run folders into a markdown report with figures.

:func:`make_report` ``(paths, out_dir, views=True, views_run=None, data_path=None, n_images=4,
title=None) -> ReportFiles`` reads every pretraining run (``args.json`` + ``metrics.csv``) and
evaluation results file under ``paths`` (:mod:`harl.report.collect`), and writes into ``out_dir``:

- ``report.md``: the method table (mean ± std over seeds; random-init baseline labelled), one row
  per run, every evaluation number with its file, and the figures;
- ``curves.png`` (training curves), ``methods.png`` (method comparison),
  ``views.png`` (example views with masks overlaid).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

from harl.utils.io import atomic_write_text
from harl.report.collect import PretrainRun, Result, discover
from harl.report.figures import plot_curves, plot_methods, plot_views
from harl.report.summary import method_markdown, method_table, results_markdown, runs_markdown


@dataclass
class ReportFiles:
    markdown: str
    figures: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    runs: List[PretrainRun] = field(default_factory=list)
    results: List[Result] = field(default_factory=list)


def _pick_views_run(runs: Sequence[PretrainRun], views_run: Optional[str]) -> Optional[PretrainRun]:
    if views_run:
        want = os.path.abspath(views_run)
        for r in runs:
            if r.run_dir == want:
                return r
        raise FileNotFoundError(f"--views-run '{views_run}' is not one of the pretraining runs found")
    with_masks = [r for r in runs if r.masks_enabled]
    return (with_masks or list(runs) or [None])[0]


def make_report(paths: Sequence[str], out_dir: str, views: bool = True, views_run: Optional[str] = None,
                data_path: Optional[str] = None, n_images: int = 4, title: Optional[str] = None) -> ReportFiles:
    """Write the report (see the module docstring); returns what was written.

    Raises FileNotFoundError when a path does not exist or nothing (no run, no results) is found.
    """
    runs, results, notes = discover(paths)
    if not runs and not results:
        raise FileNotFoundError("no pretraining run (args.json + metrics.csv) and no evaluation results (*.json with "
                                f"top1 / miou) under: {', '.join(paths)}")
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    figures: List[str] = []
    sections = [f"# {title or 'harl report'}", "",
                f"{len(runs)} pretraining run(s), {len(results)} evaluation number(s) from: "
                + ", ".join(f"`{p}`" for p in paths), ""]

    sections += ["## Methods", "", "Mean ± std over pretraining seeds (std for ≥ 2 seeds); accuracies in %. "
                 "`online` columns are the last validation values logged during pretraining.", "",
                 method_markdown(runs, results), ""]
    cols, rows = method_table(runs, results)
    p = plot_methods(cols, rows, os.path.join(out_dir, "methods.png"))
    if p:
        figures.append(p)
        sections += ["![methods](methods.png)", ""]

    sections += ["## Training curves", ""]
    p = plot_curves(runs, os.path.join(out_dir, "curves.png"))
    if p:
        figures.append(p)
        sections += ["![training curves](curves.png)", ""]
    else:
        sections += ["_No metrics.csv found._", ""]

    if views:
        sections += ["## Example views", ""]
        run = _pick_views_run(runs, views_run)
        if run is None:
            sections += ["_No pretraining run to draw views from._", ""]
        else:
            try:
                p = plot_views(run, os.path.join(out_dir, "views.png"), n_images=n_images, data_path=data_path)
                figures.append(p)
                sections += [f"Views of `{run.run_dir}` as its training loop sees them.", "",
                             "![example views](views.png)", ""]
            except Exception as err:  # noqa: BLE001 - the rest of the report is still useful
                msg = f"views of '{run.run_dir}' not drawn: {err}"
                notes.append(msg)
                sections += [f"_{msg} (pass --data-path to point at the images)._", ""]

    sections += ["## Runs", "", runs_markdown(runs, results), "",
                 "## All evaluation results", "", results_markdown(results, relto=os.getcwd()), ""]
    if notes:
        sections += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    md = os.path.join(out_dir, "report.md")
    atomic_write_text(md, "\n".join(sections))
    return ReportFiles(md, figures, notes, list(runs), list(results))


__all__ = ["make_report", "ReportFiles", "discover"]
