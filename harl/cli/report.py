"""``harl-report``: a markdown report with figures from run folders.

    harl-report trained_models/                       # every run and evaluation under it
    harl-report trained_models/harl/offline-1a2b3c4d trained_models/byol/offline-5e6f7a8b --out report/

Writes ``report.md``, ``curves.png``, ``methods.png`` and ``views.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import sys

from harl.cli.common import run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="harl-report",
        description="Read the CSV logs and evaluation results of runs and write a markdown table + PNG figures "
                    "(training curves, method comparison, example views with masks).")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="run folders or folders holding them (searched recursively), or results JSON files")
    p.add_argument("--out", default="harl-report", help="output folder (default ./harl-report)")
    p.add_argument("--title", help="report title")
    p.add_argument("--no-views", action="store_true", help="do not draw example views (needs the training images)")
    p.add_argument("--views-run", help="the run whose views to draw (default: the first run with masks)")
    p.add_argument("--data-path", help="where that run's training images are now (replaces data.train_path)")
    p.add_argument("--num-images", type=int, default=4, help="rows of the views grid")
    return p


def _report(argv) -> None:
    from harl.report import make_report  # lazy: keeps the command's start-up light

    a = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    rep = make_report(a.runs, a.out, views=not a.no_views, views_run=a.views_run, data_path=a.data_path,
                      n_images=a.num_images, title=a.title)
    print(f"report: {rep.markdown}")
    for f in rep.figures:
        print(f"figure: {f}")
    for n in rep.notes:
        print(f"note: {n}", file=sys.stderr)


def main(argv=None) -> int:
    return run_cli(_report, argv)


if __name__ == "__main__":
    sys.exit(main())
