"""``zoo/README.md``: the manifest rendered as tables (generated; a test checks it is current)."""

from __future__ import annotations

import os
from typing import List, Optional

from harl.zoo.manifest import Manifest, ZooEntry, load_manifest
from harl.utils.io import atomic_write_text

README_NAME = "README.md"


def readme_path(manifest: Manifest) -> str:
    """The README lives beside the manifest."""
    return os.path.join(manifest.root, README_NAME)


def _metric(value) -> str:
    return "–" if value is None else f"{float(value):.2f}"


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _where(e: ZooEntry) -> str:
    parts = []
    if e.file:
        parts.append("repo")
    if e.urls:
        parts.append(f"{len(e.urls)} URL" + ("s" if len(e.urls) > 1 else ""))
    return " + ".join(parts)


def _hardware(e: ZooEntry) -> str:
    hw = e.hardware
    if not hw:
        return "–"
    text = f"{hw.get('count', 1)}× {hw['device']}"
    if hw.get("hours") is not None:
        text += f", {float(hw['hours']):.2f} h"
    return text


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_readme(manifest: Manifest) -> str:
    """Markdown for ``manifest`` (deterministic: same manifest → same bytes)."""
    rel = os.path.basename(manifest.path)
    lines: List[str] = [
        "# harl pretrained zoo",
        "",
        f"<!-- Generated from {rel} by `harl-zoo readme`. Do not edit: edit the manifest (`harl-zoo add`) "
        "and regenerate. tests/test_zoo_manifest.py fails when this file is stale. -->",
        "",
        "Every file is checked against its sha256 before it is used. Metrics are percentages "
        "(top-1 accuracy, mIoU) on the dataset's test split; see `docs/zoo.md` for the protocols, "
        "the manifest schema and how to load, export and import checkpoints.",
        "",
    ]
    if not manifest.entries:
        lines += ["No published weights yet.", ""]
        return "\n".join(lines)
    lines += [
        "| name | method | backbone | dataset | epochs | linear top-1 | kNN top-1 | dense mIoU | size | "
        "dtype | source | licence |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for e in manifest.entries:
        m = e.metrics
        lines.append("| " + " | ".join(_cell(c) for c in (
            f"`{e.name}`", e.method, e.backbone, e.dataset, e.epochs, _metric(m.get("linear_top1")),
            _metric(m.get("knn_top1")), _metric(m.get("dense_miou")), _size(e.size), e.dtype, _where(e),
            e.license)) + " |")
    lines += ["", "## Files and checksums", ""]
    for e in manifest.entries:
        lines.append(f"### `{e.name}`")
        lines.append("")
        lines.append(f"- sha256: `{e.sha256}` ({e.size} bytes, {e.format}, {e.dtype})")
        if e.backbone_kwargs:
            kw = ", ".join(f"{k}={v}" for k, v in sorted(e.backbone_kwargs.items()))
            lines.append(f"- backbone kwargs: {kw}")
        if e.file:
            lines.append(f"- in the repository: `{os.path.basename(manifest.root)}/{e.file}`")
        for u in e.urls:
            lines.append(f"- {u}")
        lines.append(f"- trained on: {_hardware(e)}")
        extra = e.metrics.get("extra") or {}
        for k in ("linear_top5", "knn_top5"):
            if e.metrics.get(k) is not None:
                lines.append(f"- {k}: {_metric(e.metrics[k])}")
        for k in sorted(extra):
            lines.append(f"- {k}: {float(extra[k]):.4g}")
        if e.notes:
            lines.append(f"- notes: {_cell(e.notes)}")
        lines.append("")
    return "\n".join(lines)


def write_readme(manifest: Manifest) -> str:
    """Regenerate the README beside ``manifest`` atomically; returns its path."""
    path = readme_path(manifest)
    atomic_write_text(path, render_readme(manifest))
    return path


def readme_is_current(manifest: Optional[Manifest] = None) -> bool:
    """True when the README on disk equals :func:`render_readme` of the manifest."""
    manifest = manifest or load_manifest()
    path = readme_path(manifest)
    if not os.path.isfile(path):
        return False
    with open(path, encoding="utf-8") as f:
        return f.read() == render_readme(manifest)
