"""The shared mask-generation runner: walk → shard → skip done → worker pool → atomic PNGs → manifest.

Output tree ``OUT``::

    OUT/<image relpath with extension .png>      one {0,255} PNG per image
    OUT/manifest.csv     relpath,height,width,fg_fraction,n_segments,fallback  (image relpaths, sorted)
    OUT/failures.tsv     relpath<TAB>error  for every image that could not be done
    OUT/summary.json     counts, fallbacks, fg-fraction histogram
    OUT/meta.json        generator, parameters (and weights for saliency), written once
    OUT/.harl-masks/     per-shard state: journal-I-of-N.jsonl, manifest-I-of-N.csv,
                         failures-I-of-N.tsv, summary-I-of-N.json

Resumability: every finished image is appended to its shard's JSON-lines journal (one line per
image, flushed per chunk) after its PNG has been renamed into place. On restart an image counts
as done iff its PNG exists *and* a journal (of any shard layout) has a row for it; everything else
is redone, and stale ``*.tmp-*`` files of this shard's outputs are removed. Failed images are
retried on every run. ``manifest.csv``/``failures.tsv``/``summary.json`` are (re)written by
:func:`merge_manifests`, automatically at the end of a run once all ``N`` shard parts exist.

Sharding: shard ``i`` of ``n`` takes every n-th image of the sorted list starting at ``i``
(:func:`harl.masks.io.shard_select`).

The parts live beside this module, which keeps :func:`run_job` and re-exports the public names:
:mod:`harl.masks.jobs` (the job and :class:`RunOptions`), :mod:`harl.masks.pool` (worker
processes), :mod:`harl.masks.journal` (per-shard state, resume, ``meta.json``) and
:mod:`harl.masks.summary` (manifest, failures, summary, merging).
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time
from typing import Any, Dict, Optional, Sequence

from harl.masks.io import find_mask_collisions, mask_relpath, shard_select
# the public names of the runner's parts are importable from here, as before the split
from harl.masks.jobs import ImageGeneratorJob, RunOptions, process_one
from harl.masks.journal import (  # noqa: F401
    STATE_DIR,
    _scan_outputs,
    _tag,
    check_and_write_meta,
    read_all_journals,
    read_journal,
    state_dir,
)
from harl.masks.pool import _run_pool
from harl.masks.summary import (  # noqa: F401
    HIST_BINS,
    MANIFEST_FIELDS,
    RunSummary,
    _csv_text,
    _failures_text,
    _typed,
    fg_histogram,
    format_histogram,
    merge_manifests,
    read_failures,
    read_manifest,
    summarize_rows,
)
from harl.utils.io import atomic_write_text


# ---------------------------------------------------------------------------------------------
# the runner
# ---------------------------------------------------------------------------------------------


def run_job(job, relpaths: Sequence[str], out_root: str, options: RunOptions = RunOptions(),
            meta: Optional[Dict[str, Any]] = None) -> RunSummary:
    """Run ``job`` (``relpath -> (mask, info)``, with ``setup()``) over this shard of ``relpaths``.

    ``relpaths`` is the full sorted image list (all shards); the shard is taken here.
    Returns the shard's :class:`RunSummary`; the merged files are written when all shards are done.
    """
    t0 = time.perf_counter()
    out_root = os.path.abspath(out_root)
    os.makedirs(state_dir(out_root), exist_ok=True)
    if meta is not None:
        check_and_write_meta(out_root, meta, overwrite=options.overwrite)
    index, count = options.shard
    collisions = find_mask_collisions(relpaths)
    mine = shard_select(relpaths, index, count)
    tag = _tag(index, count)
    journal_path = os.path.join(state_dir(out_root), f"journal-{tag}.jsonl")

    if options.overwrite:
        records: Dict[str, Dict[str, Any]] = {}
        if os.path.exists(journal_path):
            os.remove(journal_path)
    else:
        records = read_all_journals(out_root)
    candidates = [r for r in mine if r not in collisions]
    existing = _scan_outputs(out_root, [mask_relpath(r) for r in candidates])
    done_before = set()
    if not options.overwrite:
        done_before = {r for r in candidates
                       if records.get(r, {}).get("ok") and mask_relpath(r) in existing}
    todo = [r for r in candidates if r not in done_before]
    # journal rows of this shard, starting from what is already done
    shard_records: Dict[str, Dict[str, Any]] = {r: records[r] for r in done_before}
    mine_set = set(mine)
    for r in collisions:
        if r in mine_set:
            shard_records[r] = {"ok": False, "relpath": r,
                                "error": f"mask path '{mask_relpath(r)}' is already used by '{collisions[r]}'"}

    n_done = 0
    failures_now = 0
    bar = None
    if options.progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"masks {index}/{count}" if count > 1 else "masks",
                   unit="img", dynamic_ncols=True, file=sys.stderr)
    with open(journal_path, "a", encoding="utf-8") as journal:
        def consume(results):
            nonlocal n_done, failures_now
            for res in results:
                journal.write(json.dumps(res, sort_keys=True) + "\n")
                shard_records[res["relpath"]] = res
                if res["ok"]:
                    n_done += 1
                else:
                    failures_now += 1
            journal.flush()
            if bar is not None:
                bar.update(len(results))
                if failures_now:
                    bar.set_postfix(failed=failures_now, refresh=False)

        try:
            if options.workers <= 1 or len(todo) <= 1:
                job.setup()
                for r in todo:
                    consume([process_one(job, out_root, r)])
            else:
                _run_pool(job, todo, out_root, options, consume)
        finally:
            if bar is not None:
                bar.close()

    elapsed = time.perf_counter() - t0
    rows = sorted((rec for rec in shard_records.values() if rec.get("ok")), key=lambda r: r["relpath"])
    failures = sorted((rec["relpath"], rec["error"]) for rec in shard_records.values() if not rec.get("ok"))
    summary = RunSummary(shard=(index, count), total=len(mine), skipped=len(done_before), done=n_done,
                         failures=failures, elapsed_s=elapsed, rows=[_typed(r) for r in rows], out_root=out_root)
    # compact this shard's state: the journal keeps one line per image, the parts are rewritten
    sd = state_dir(out_root)
    atomic_write_text(journal_path, "".join(json.dumps(shard_records[r], sort_keys=True) + "\n"
                                            for r in sorted(shard_records)))
    atomic_write_text(os.path.join(sd, f"manifest-{tag}.csv"), _csv_text(summary.rows))
    atomic_write_text(os.path.join(sd, f"failures-{tag}.tsv"), _failures_text(failures))
    atomic_write_text(os.path.join(sd, f"summary-{tag}.json"), json.dumps(summary.to_dict(), indent=2) + "\n")
    if options.merge:
        parts = glob.glob(os.path.join(sd, f"manifest-*-of-{count:05d}.csv"))
        if len(parts) == count:
            merge_manifests(out_root, count=count)
            summary.merged = True
    return summary


__all__ = [
    "ImageGeneratorJob", "RunOptions", "RunSummary", "check_and_write_meta",
    "fg_histogram", "format_histogram", "merge_manifests", "process_one", "read_all_journals",
    "read_failures", "read_journal", "read_manifest", "run_job", "summarize_rows",
]
