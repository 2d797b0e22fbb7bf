"""``harl-zoo``: list, download, verify, export, import and publish pretrained backbones.

Examples::

    harl-zoo list
    harl-zoo download harl_resnet18_fashion_scenes          # → path of the verified file
    harl-zoo verify                                          # checksums of every file on disk
    harl-zoo export harl_resnet18_fashion_scenes --format detectron2 --out r18.pkl
    harl-zoo export runs/harl/offline-1234/x-ep=99.ckpt --format torchvision --out backbone.pth
    harl-zoo import solo_byol.ckpt --from solo-learn --out byol.safetensors --trust
    harl-zoo add --checkpoint CKPT --name harl_resnet18_fashion_scenes --metrics metrics.json --license MIT
    harl-zoo readme [--check]

Errors (bad input, offline, checksum mismatch, key mismatch) print one line and exit with status 2;
``verify`` exits 1 when a file is corrupt.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

from harl.cli.common import check_args, run_cli
from harl.config_values import Int, Num
from harl.utils.io import atomic_write_text
from harl.zoo.add import add_entry, read_config_file, read_metrics
from harl.zoo.download import cached_path, entry_status, fetch_entry
from harl.zoo.manifest import load_manifest
from harl.zoo.readme import readme_is_current, readme_path, write_readme

PROG = "harl-zoo"


def _json_arg(text: str) -> Dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON: {err}") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"width\": 32}'")
    return value


def build_parser() -> argparse.ArgumentParser:
    manifest_help = "manifest file (default: $HARL_ZOO_MANIFEST, else the repository's zoo/manifest.yaml)"
    p = argparse.ArgumentParser(prog=PROG, description="harl's pretrained zoo: every file verified by sha256.")
    p.add_argument("--manifest", default=None, help=manifest_help)
    common = argparse.ArgumentParser(add_help=False)  # --manifest is accepted after the command too
    common.add_argument("--manifest", default=argparse.SUPPRESS, help=manifest_help)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("list", parents=[common], help="show the manifest's entries")
    s.add_argument("--json", action="store_true", help="print the entries as JSON")
    s.add_argument("--cache-dir", default=None, help="cache folder (default $HARL_CACHE or ~/.cache/harl)")

    s = sub.add_parser("download", parents=[common], help="fetch and verify an entry; prints the local path")
    s.add_argument("name")
    s.add_argument("--cache-dir", default=None, help="cache folder (default $HARL_CACHE or ~/.cache/harl)")
    s.add_argument("--force", action="store_true", help="download again even when a verified copy is cached")
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("--timeout", type=float, default=30.0, help="seconds per network operation")

    s = sub.add_parser("verify", parents=[common],
                       help="check the manifest, the README and the sha256 of every file on disk")
    s.add_argument("names", nargs="*", help="entries to check (default: all)")
    s.add_argument("--cache-dir", default=None)

    s = sub.add_parser("export", parents=[common], help="write a zoo entry or checkpoint in another library's format")
    s.add_argument("source", metavar="NAME|PATH", help="zoo entry name or checkpoint file")
    s.add_argument("--format", required=True, choices=["torchvision", "timm", "detectron2", "safetensors"])
    s.add_argument("--out", default=None, help="output file (default: <name>-<format>.<ext> here)")
    s.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                   help="tensor dtype (default float32)")
    s.add_argument("--backbone", default=None, help="architecture override (e.g. resnet50 or a timm name)")
    s.add_argument("--backbone-kwargs", type=_json_arg, default=None, help="JSON, e.g. '{\"cifar_stem\": true}'")
    s.add_argument("--cache-dir", default=None)

    s = sub.add_parser("import", parents=[common],
                       help="convert a solo-learn / official HARL / generic checkpoint (strict)")
    s.add_argument("source", metavar="PATH")
    s.add_argument("--from", dest="flavour", default="auto",
                   choices=["auto", "solo-learn", "harl-official", "generic"])
    s.add_argument("--out", required=True, help="output file")
    s.add_argument("--format", default="safetensors", choices=["torchvision", "timm", "detectron2", "safetensors"])
    s.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    s.add_argument("--backbone", default=None, help="architecture (default: inferred from ResNet shapes)")
    s.add_argument("--backbone-kwargs", type=_json_arg, default=None)
    s.add_argument("--report", default=None, help="also write the import report as JSON here")
    s.add_argument("--trust", action="store_true",
                   help="allow unpickling Python objects stored in the checkpoint (only for sources you trust)")

    s = sub.add_parser("add", parents=[common], help="publish a trained harl checkpoint into the manifest")
    s.add_argument("--checkpoint", required=True, help="a harl .ckpt (args.json beside it)")
    s.add_argument("--name", required=True, help="entry name (a Python identifier: it is a hub entry point)")
    s.add_argument("--metrics", required=True, help="JSON file: linear_top1, knn_top1[, dense_miou, ...] in percent")
    s.add_argument("--license", required=True, help="licence of the weights, e.g. MIT or CC-BY-4.0")
    s.add_argument("--url", action="append", default=[], help="hosted copy (repeat for mirrors, tried in order)")
    s.add_argument("--no-local", action="store_true",
                   help="do not keep the file in the repository (needs --url); it is written to --staging-dir")
    s.add_argument("--staging-dir", default=None, help="where a --no-local file is written for upload (default .)")
    s.add_argument("--device", default=None, help="hardware it was trained on, e.g. 'NVIDIA H100 80GB'")
    s.add_argument("--device-count", type=int, default=None)
    s.add_argument("--hours", type=float, default=None, help="wall-clock training time in hours")
    s.add_argument("--notes", default=None)
    s.add_argument("--config", default=None, help="training config file when no args.json is beside the ckpt")
    s.add_argument("--method", default=None)
    s.add_argument("--dataset", default=None)
    s.add_argument("--epochs", type=int, default=None)
    s.add_argument("--force", action="store_true", help="replace an existing entry of that name")

    s = sub.add_parser("readme", parents=[common], help="regenerate zoo/README.md from the manifest")
    s.add_argument("--check", action="store_true", help="only check that it is current (exit 1 if not)")
    return p


# ---------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------


def _fmt_metric(v) -> str:
    return "-" if v is None else f"{float(v):.2f}"


def cmd_list(args) -> int:
    m = load_manifest(args.manifest)
    if args.json:
        print(json.dumps([e.to_dict() for e in m.entries], indent=2))
        return 0
    if not m.entries:
        print(f"no entries in {m.path}")
        return 0
    rows = [("name", "method", "backbone", "dataset", "ep", "lin@1", "knn@1", "mIoU", "MB", "on disk")]
    for e in m.entries:
        here = []
        if e.local_path and os.path.isfile(e.local_path):
            here.append("repo")
        if os.path.isfile(cached_path(e, args.cache_dir)):
            here.append("cache")
        rows.append((e.name, e.method, e.backbone, e.dataset, str(e.epochs), _fmt_metric(e.metrics.get("linear_top1")),
                     _fmt_metric(e.metrics.get("knn_top1")), _fmt_metric(e.metrics.get("dense_miou")),
                     f"{e.size / 1e6:.1f}", "+".join(here) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def cmd_download(args) -> int:
    entry = load_manifest(args.manifest).get(args.name)
    path = fetch_entry(entry, cache_dir=args.cache_dir, progress=not args.no_progress, force=args.force,
                       timeout=args.timeout)
    print(path)
    return 0


def cmd_verify(args) -> int:
    m = load_manifest(args.manifest)  # schema errors raise here
    print(f"manifest {m.path}: valid, {len(m.entries)} entries")
    bad = 0
    if not readme_is_current(m):
        print(f"STALE    {readme_path(m)} (run `harl-zoo readme`)")
        bad += 1
    names = args.names or m.names
    for name in names:
        entry = m.get(name)
        for kind, path, problem in entry_status(entry, args.cache_dir):
            if problem is None:
                print(f"OK       {name} [{kind}] {path}")
            elif problem == "not downloaded":
                print(f"-        {name} [{kind}] not downloaded")
            else:
                print(f"CORRUPT  {name} [{kind}] {path}: {problem}")
                bad += 1
    return 1 if bad else 0


def _print_result(res, prefix: str = "wrote") -> None:
    print(f"{prefix} {res.path} ({res.format}, {len(res.keys)} tensors)")
    for n in res.notes:
        print(f"  note: {n}")


def cmd_export(args) -> int:
    from harl.zoo.export import default_output, export_weights  # lazy: keeps the command's start-up light
    from harl.zoo.models import resolve_weights  # lazy: keeps the command's start-up light

    weights, entry = resolve_weights(args.source, args.backbone, args.backbone_kwargs, args.manifest,
                                     args.cache_dir)
    stem = entry.name if entry else os.path.splitext(os.path.basename(args.source))[0]
    out = args.out or default_output(stem, args.format)
    if weights.arch_inferred:
        print(f"  architecture inferred from shapes: {weights.backbone} {weights.kwargs}", file=sys.stderr)
    _print_result(export_weights(weights, args.format, out, args.dtype))
    return 0


def cmd_import(args) -> int:
    from harl.zoo.export import export_weights  # lazy: keeps the command's start-up light
    from harl.zoo.importer import import_checkpoint  # lazy: keeps the command's start-up light

    weights, report = import_checkpoint(args.source, args.flavour, args.backbone, args.backbone_kwargs,
                                        trust=args.trust)
    print(report.to_text())
    res = export_weights(weights, args.format, args.out, args.dtype)
    if args.report:
        atomic_write_text(args.report, json.dumps(report.to_dict(), indent=2))
    _print_result(res)
    return 0


def cmd_add(args) -> int:
    hardware = None
    if args.device:
        hardware = {"device": args.device}
        if args.device_count is not None:
            hardware["count"] = args.device_count
        if args.hours is not None:
            hardware["hours"] = args.hours
    elif args.hours is not None or args.device_count is not None:
        raise ValueError("--hours / --device-count need --device")
    entry = add_entry(args.checkpoint, args.name, read_metrics(args.metrics), args.license,
                      manifest_path=args.manifest, urls=args.url, local=not args.no_local, hardware=hardware,
                      notes=args.notes, config=read_config_file(args.config) if args.config else None,
                      method=args.method, dataset=args.dataset, epochs=args.epochs, force=args.force,
                      staging_dir=args.staging_dir)
    where = entry.local_path or os.path.join(args.staging_dir or os.getcwd(), f"{entry.name}.safetensors")
    print(f"added '{entry.name}': {where} ({entry.size} bytes, sha256 {entry.sha256})")
    return 0


def cmd_readme(args) -> int:
    m = load_manifest(args.manifest)
    if args.check:
        if readme_is_current(m):
            print(f"{readme_path(m)} is current")
            return 0
        print(f"{readme_path(m)} is stale: run `harl-zoo readme`", file=sys.stderr)
        return 1
    print(f"wrote {write_readme(m)}")
    return 0


COMMANDS = {"list": cmd_list, "download": cmd_download, "verify": cmd_verify, "export": cmd_export,
            "import": cmd_import, "add": cmd_add, "readme": cmd_readme}


def _main(argv: Optional[Sequence[str]]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args, {"timeout": Num(gt=0), "device_count": Int(ge=1, nullable=True),
                              "hours": Num(ge=0, nullable=True), "epochs": Int(ge=1, nullable=True)})
    return COMMANDS[args.command](args)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Errors as every harl command reports them (:func:`harl.cli.common.run_cli`); here a
    ``ValueError`` / ``KeyError`` (a bad name, a bad option value) is an input error too."""
    return run_cli(_main, argv, input_errors=(ValueError, KeyError))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
