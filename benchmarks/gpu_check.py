"""The GPU check: everything harl wants to know from one short lease of a single-GPU machine.

    bash benchmarks/gpu_check.sh                      # on the GPU machine: ≤ 8 min, results in one file
    bash benchmarks/gpu_check.sh --dry-run            # CPU, tiny sizes: the same code paths (a test runs it)
    python benchmarks/gpu_check.py --out runs/gpu-check --budget-s 450 --sections env tests throughput

Sections (each guarded: a failure is recorded and the next section runs; each has a time share and
the whole run stops its last section at ``--budget-s``):

1. ``env``: torch / CUDA / GPU / CPU facts.
2. ``tests``: the CUDA-only tests (``pytest -m gpu``).
3. ``throughput``: every method family's training step inside a real Lightning fit, from its
   ImageNet-100 recipe (ResNet-50, 224 px), batch ``--batch`` with ``16-mixed`` precision and
   channels_last, on synthetic batches already on the GPU (no loader): samples/s, ms/step, peak
   GPU memory, and each method's throughput relative to BYOL (target: HARL / BYOL ≥ 0.95).
4. ``loader``: the mask-aware pretraining loader (HARL's two pipelines at 224 px, fg-aware crops)
   and the image-only one with all cores but two, against the GPU's consumption measured in 3:
   does the loader keep up?
5. ``quality``: ``benchmarks/quality.py --mode gpu`` cut to the time left (random-init floor,
   supervised ceiling, BYOL, HARL with ground-truth masks; one seed).

Everything is written to ``<out>/gpu_check.md`` (rewritten atomically after every section, so a
killed run still leaves what it measured) with a JSON copy of the numbers at its end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any, Callable, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

#: method families timed in ``throughput`` (each runs its ImageNet-100 recipe)
THROUGHPUT_METHODS = ("byol", "harl", "simclr", "hapicl_simclr", "mocov2plus", "hapicl_mocov2plus",
                      "hapicl_byol", "sgm_mocov2", "sgm_simclr")
#: share of the budget each section may use (the quality section takes whatever is left)
SHARES = {"env": 0.02, "tests": 0.12, "throughput": 0.33, "loader": 0.08}

FULL = {"backbone": ("resnet50", {}), "size": 224, "batch": 64, "steps": 100, "warmup": 10, "precision": "16-mixed",
        "loader_images": 512, "loader_image_size": 256, "loader_seconds": 8.0,
        "quality": ["--mode", "gpu", "--train", "20000", "--test", "5000", "--epochs", "10", "--seeds", "0",
                    "--probe-epochs", "100", "--workers", "12"]}
DRY = {"dry": True, "backbone": ("resnet18", {"width": 8}), "head": 32, "size": 32, "batch": 4, "steps": 2, "warmup": 1,
       "precision": "32-true", "loader_images": 24, "loader_image_size": 48, "loader_seconds": 1.0,
       "quality": ["--mode", "cpu", "--train", "64", "--test", "32", "--epochs", "1", "--seeds", "0",
                   "--probe-epochs", "2", "--width", "8", "--batch", "16", "--workers", "0"]}


def log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Report:
    """Sections of markdown plus a JSON dict of numbers, rewritten atomically after each section."""

    def __init__(self, path: str):
        self.path = path
        self.parts: List[str] = []
        self.data: Dict[str, Any] = {}

    def add(self, name: str, text: str, data: Any) -> None:
        self.parts.append(f"## {name}\n\n{text.rstrip()}\n")
        self.data[name] = data
        self.write()

    def write(self) -> None:
        body = "# harl GPU check\n\n" + "\n".join(self.parts)
        body += "\n## numbers (JSON)\n\n```json\n" + json.dumps(self.data, indent=1, default=str) + "\n```\n"
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(body)
        os.replace(tmp, self.path)


def md_table(rows: List[Dict[str, Any]], cols: List[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
        return "" if v is None else str(v)

    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------- env


def section_env(args, ctx) -> tuple:
    import torch

    info: Dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cuda_available": torch.cuda.is_available(), "cpu_count": os.cpu_count(),
                            "load_avg": os.getloadavg()[0]}
    for mod in ("torchvision", "lightning", "timm", "omegaconf", "hydra", "skimage"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception as err:  # pragma: no cover - reported, not fatal
            info[mod] = f"missing ({err.__class__.__name__})"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update({"gpu": p.name, "gpu_mem_gib": round(p.total_memory / 2**30, 1),
                     "capability": f"{p.major}.{p.minor}", "cuda": torch.version.cuda,
                     "cudnn": torch.backends.cudnn.version(), "bf16": torch.cuda.is_bf16_supported()})
    text = "\n".join(f"- {k}: {v}" for k, v in info.items())
    return text, info


# --------------------------------------------------------------------------------------------- tests


def section_tests(args, ctx) -> tuple:
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-rs",
           os.path.join(ROOT, "tests")]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=ctx["deadline"])
        out, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as err:
        out, rc = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or ""), 124
    tail = "\n".join(out.strip().splitlines()[-25:])
    data = {"returncode": rc, "seconds": round(time.time() - t0, 1), "summary": out.strip().splitlines()[-1:] }
    return f"`pytest -m gpu` exit code {rc} in {data['seconds']} s\n\n```\n{tail}\n```", data


# --------------------------------------------------------------------------------------------- throughput


def method_config(method: str, args, ctx, tmp: str):
    """The method's ImageNet-100 recipe at the check's batch/size/precision, on the check's device."""
    from harl.config import load_yaml, parse_cfg

    recipe = os.path.join(ROOT, "scripts", "pretrain", "imagenet-100", f"{method}.yaml")
    over = [f"optimizer.batch_size={args.sizes['batch']}", "data.num_workers=0", "max_epochs=1",
            f"precision={args.sizes['precision']}", "devices=1", "knn_eval.enabled=False",
            f"accelerator={'gpu' if ctx['device'] == 'cuda' else 'cpu'}", "wandb.enabled=False",
            "data.train_path=unused", "data.val_path=None"]
    if args.sizes["backbone"] is not None:
        name, kw = args.sizes["backbone"]
        over.append(f"backbone.name={name}")
        over += [f"backbone.kwargs.{k}={v}" for k, v in kw.items()]
    if method.startswith("sgm_"):
        over.append(f"method_kwargs.sgm_saliency_weights={saliency_weights(args, tmp)}")
        if args.sizes.get("dry"):  # dry run: a small frozen saliency net as well
            over.append("method_kwargs.sgm_saliency=checkpoint")
            over.append(f"method_kwargs.sgm_saliency_backbone={args.sizes['backbone'][0]}")
            over.append("method_kwargs.sgm_saliency_backbone_kwargs=" + json.dumps(args.sizes["backbone"][1])
                        .replace('"', "").replace(" ", ""))
    cfg = load_yaml(recipe, over)
    for aug in cfg.augmentations:
        aug.crop_size = args.sizes["size"]
    for key in ("proj_hidden_dim", "pred_hidden_dim", "pix_hidden_dim", "pix_output_dim"):
        if args.sizes.get("head") and key in cfg.method_kwargs:  # dry run: small heads too
            cfg.method_kwargs[key] = args.sizes["head"]
    if "queue_size" in cfg.method_kwargs:
        b = args.sizes["batch"]
        cfg.method_kwargs.queue_size = max(b, (int(cfg.method_kwargs.queue_size) // b) * b)
    return parse_cfg(cfg)


def saliency_weights(args, tmp: str) -> str:
    """A randomly initialised saliency network's weights file (the cost of the frozen forward is
    what is measured; trained weights would cost the same)."""
    import torch
    import torchvision

    path = os.path.join(tmp, "saliency.pth")
    if not os.path.isfile(path):
        if not args.sizes.get("dry"):
            sd = torchvision.models.resnet50().state_dict()
        else:
            from harl.backbones import build_backbone

            name, kw = args.sizes["backbone"]
            sd = build_backbone(name, **kw).state_dict()
        torch.save(sd, path)
    return path


def synthetic_batch(batch: int, size: int, device: str, with_masks: bool, seed: int = 0):
    """One ``[idx, [x1, x2], y(, extras)]`` batch on ``device`` (masks: a disc, full-image coords)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(batch, 3, size, size, generator=g).to(device) for _ in range(2)]
    b = [torch.arange(batch, device=device), xs, torch.randint(0, 100, (batch,), generator=g).to(device)]
    if with_masks:
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        disc = (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 3) ** 2).to(torch.uint8)
        masks = [disc[None, None].expand(batch, 1, size, size).clone().to(device) for _ in range(2)]
        coords = [torch.tensor([[0.0, 0.0, 1.0, 1.0]]).expand(batch, 4).clone().to(device) for _ in range(2)]
        b.append({"masks": masks, "coords": coords})
    return b


def time_method(method: str, args, ctx, tmp: str, time_cap: float) -> Dict[str, Any]:
    import warnings

    import torch
    from lightning.pytorch import Callback, Trainer

    from benchmarks.common import InMemoryLoader
    from harl.methods import METHODS

    torch.manual_seed(0)
    cfg = method_config(method, args, ctx, tmp)
    model = METHODS.get(method)(cfg)
    s = args.sizes
    batch = synthetic_batch(s["batch"], s["size"], ctx["device"], METHODS.get(method).uses_masks)
    n_total = s["warmup"] + s["steps"]
    cuda = ctx["device"] == "cuda"

    class Window(Callback):
        """Synchronised wall time from the first timed step to the end (stops at ``time_cap``)."""

        def __init__(self):
            self.t0, self.t1, self.steps = None, None, 0
            self.start = time.perf_counter()

        def on_train_batch_start(self, trainer, pl_module, b, batch_idx):
            if batch_idx == s["warmup"]:
                if cuda:
                    torch.cuda.synchronize()
                self.t0 = time.perf_counter()
            if time.perf_counter() - self.start > time_cap and batch_idx > s["warmup"]:
                trainer.should_stop = True

        def on_train_batch_end(self, trainer, pl_module, outputs, b, batch_idx):
            if self.t0 is not None:
                self.steps += 1

        def on_train_end(self, trainer, pl_module):
            if cuda:
                torch.cuda.synchronize()
            self.t1 = time.perf_counter()

    win = Window()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer(max_epochs=1, max_steps=n_total, accelerator="gpu" if cuda else "cpu", devices=1,
                          precision=s["precision"], logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, callbacks=[win],
                          num_sanity_val_steps=0)
        trainer.fit(model, InMemoryLoader([batch] * n_total))
    if win.t0 is None or win.steps == 0:
        raise RuntimeError(f"{method}: no timed step ran")
    sec = (win.t1 - win.t0) / win.steps
    loss_ok = all(torch.isfinite(p).all().item() for p in model.backbone.parameters())
    row = {"method": method, "backbone": cfg.backbone.name, "steps": win.steps, "ms/step": sec * 1000,
           "samples/s": s["batch"] / sec, "finite_weights": loss_ok,
           "channels_last": not cfg.performance.disable_channel_last}
    if cuda:
        row["peak_GiB"] = torch.cuda.max_memory_allocated() / 2**30
    del model, trainer
    return row


def section_throughput(args, ctx) -> tuple:
    rows: List[Dict[str, Any]] = []
    errors: Dict[str, str] = {}
    t_end = time.time() + ctx["deadline"]
    methods = list(args.methods)
    with tempfile.TemporaryDirectory() as tmp:
        for i, m in enumerate(methods):
            left = t_end - time.time()
            if left < 5:
                errors[m] = "skipped: section time share used up"
                continue
            cap = max(5.0, left / (len(methods) - i) - 8.0)  # leave time for build + warm-up
            try:
                rows.append(time_method(m, args, ctx, tmp, cap))
                log(f"throughput {m}: {rows[-1]['samples/s']:.1f} samples/s")
            except Exception as err:  # noqa: BLE001 - recorded in the report
                errors[m] = f"{err.__class__.__name__}: {err}".splitlines()[0][:300]
                log(f"throughput {m} FAILED: {errors[m]}")
                traceback.print_exc()
    byol = next((r["samples/s"] for r in rows if r["method"] == "byol"), None)
    for r in rows:
        r["vs byol"] = r["samples/s"] / byol if byol else None
    harl = next((r["vs byol"] for r in rows if r["method"] == "harl"), None)
    if rows:
        ctx["harl_samples_s"] = next((r["samples/s"] for r in rows if r["method"] == "harl"), rows[0]["samples/s"])
    s = args.sizes
    text = (f"{s['size']} px, batch {s['batch']} (two views each), precision {s['precision']}, "
            f"{s['warmup']} warm-up + up to {s['steps']} timed steps, synthetic batches on the device.\n\n")
    text += md_table(rows, ["method", "backbone", "steps", "ms/step", "samples/s", "vs byol", "peak_GiB",
                            "channels_last", "finite_weights"])
    if harl is not None:
        text += f"\n\nHARL / BYOL throughput: **{harl:.3f}** (target ≥ 0.95: {'met' if harl >= 0.95 else 'MISSED'})"
    if errors:
        text += "\n\nfailed or skipped:\n" + "\n".join(f"- {k}: {v}" for k, v in errors.items())
    return text, {"rows": rows, "errors": errors, "harl_vs_byol": harl}


# --------------------------------------------------------------------------------------------- loader


def _loader_rate(cfg, seconds: float, warm_batches: int = 2) -> Dict[str, float]:
    from harl.data import build_pretrain_dataset, build_pretrain_loader

    ds = build_pretrain_dataset(cfg)
    loader = build_pretrain_loader(cfg, ds)
    n, t0, warm = 0, None, 0
    while True:
        for b in loader:
            if warm < warm_batches:
                warm += 1
                if warm == warm_batches:
                    t0 = time.perf_counter()
                continue
            n += b[2].shape[0]
            if time.perf_counter() - t0 >= seconds:
                return {"samples": n, "seconds": time.perf_counter() - t0,
                        "samples/s": n / (time.perf_counter() - t0)}


def section_loader(args, ctx) -> tuple:
    from benchmarks.loader_throughput import make_cfg, write_images

    s = args.sizes
    workers = args.loader_workers if args.loader_workers is not None else max(0, (os.cpu_count() or 2) - 2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        write_images(tmp, s["loader_images"], s["loader_image_size"])
        gen_s = time.time() - t0
        for masks in (True, False):
            cfg = make_cfg(tmp, s["size"], s["batch"], workers, masks)
            r = _loader_rate(cfg, s["loader_seconds"])
            rows.append({"loader": "mask-aware (HARL)" if masks else "image-only", "workers": workers, **r})
            log(f"loader masks={masks}: {r['samples/s']:.1f} samples/s")
    gpu_rate = ctx.get("harl_samples_s")
    for r in rows:
        r["vs GPU"] = r["samples/s"] / gpu_rate if gpu_rate else None
    text = (f"{s['loader_images']} PNGs of {s['loader_image_size']} px (+ masks), crops to {s['size']} px, "
            f"batch {s['batch']}, {workers} workers, {s['loader_seconds']} s per loader "
            f"(images written in {gen_s:.1f} s).\n\n")
    text += md_table(rows, ["loader", "workers", "samples", "seconds", "samples/s", "vs GPU"])
    if gpu_rate:
        keeps = rows[0]["samples/s"] >= gpu_rate
        text += (f"\n\nThe GPU consumes {gpu_rate:.0f} samples/s in a HARL step; the mask-aware loader "
                 f"{'keeps up' if keeps else 'does NOT keep up'} ({rows[0]['samples/s'] / gpu_rate:.2f}×).")
    return text, {"rows": rows, "gpu_samples_s": gpu_rate}


# --------------------------------------------------------------------------------------------- quality


def section_quality(args, ctx) -> tuple:
    out = os.path.join(args.out, "quality")
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "quality.py"), "--compare", "harl", "--out", out,
           "--methods", *args.quality_methods, *args.sizes["quality"]]
    if args.fashion_mnist:
        cmd += ["--fashion-mnist", args.fashion_mnist]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.time()
    rc = 0
    with open(os.path.join(args.out, "quality.log"), "w") as logf:
        try:
            rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=logf, stderr=subprocess.STDOUT,
                                timeout=max(1.0, ctx["deadline"])).returncode
        except subprocess.TimeoutExpired:
            rc = 124
        # whatever finished (results.jsonl is appended per cell) is tabulated, also after a time-out
        subprocess.run(cmd + ["--report-only"], cwd=ROOT, env=env, stdout=logf, stderr=subprocess.STDOUT,
                       timeout=120)
    table = ""
    md = os.path.join(out, "results.md")
    if os.path.isfile(md):
        table = open(md, encoding="utf-8").read()
    rows = []
    jl = os.path.join(out, "results.jsonl")
    if os.path.isfile(jl):
        rows = [json.loads(x) for x in open(jl) if x.strip()]
        for r in rows:
            r.pop("checkpoint", None)
    text = f"`quality.py {' '.join(cmd[2:])}` exit code {rc} in {time.time() - t0:.0f} s " \
           f"({'cut by the time budget: ' if rc == 124 else ''}{len(rows)} cells finished).\n\n{table}"
    return text, {"returncode": rc, "rows": rows}


SECTIONS: Dict[str, Callable] = {"env": section_env, "tests": section_tests, "throughput": section_throughput,
                                 "loader": section_loader, "quality": section_quality}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/gpu-check")
    ap.add_argument("--budget-s", type=float, default=470.0, help="wall-clock budget of the whole check")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: exercise every code path")
    ap.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    ap.add_argument("--methods", nargs="+", default=list(THROUGHPUT_METHODS), help="throughput methods")
    ap.add_argument("--quality-methods", nargs="+", default=["random", "supervised", "byol", "harl_gt"])
    ap.add_argument("--loader-workers", type=int, default=None, help="default: all cores but two")
    ap.add_argument("--fashion-mnist", default=None, help="folder of the Fashion-MNIST IDX files")
    ap.add_argument("--batch", type=int, help="throughput batch size (default: 64; dry run 4)")
    ap.add_argument("--steps", type=int, help="throughput timed steps (default: 100)")
    ap.add_argument("--warmup", type=int, help="throughput warm-up steps (default: 10)")
    args = ap.parse_args(argv)
    args.sizes = dict(DRY if args.dry_run else FULL)
    for key in ("batch", "steps", "warmup"):
        if getattr(args, key) is not None:
            args.sizes[key] = getattr(args, key)
    os.makedirs(args.out, exist_ok=True)
    os.environ.setdefault("WANDB_MODE", "offline")
    report = Report(os.path.join(args.out, "gpu_check.md"))
    start = time.time()
    ctx: Dict[str, Any] = {"device": "cpu"}
    report.data["run"] = {"dry_run": args.dry_run, "budget_s": args.budget_s, "sections": args.sections,
                          "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; use --dry-run on a CPU machine", file=sys.stderr)
        return 2
    # decided here, not in the env section, so that any subset of sections runs on the right device
    ctx["device"] = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    for name in args.sections:
        left = args.budget_s - (time.time() - start)
        later = [n for n in args.sections[args.sections.index(name) + 1:]]
        reserve = sum(SHARES.get(n, 0.0) for n in later) * args.budget_s
        if name == "quality" or not later:  # the last section takes whatever is left
            ctx["deadline"] = max(1.0, left - 5)
        else:
            ctx["deadline"] = max(1.0, min(left - reserve, SHARES.get(name, 1.0) * args.budget_s))
        if name == "quality" and left < 30:
            report.add(name, "skipped: no time left in the budget", {"skipped": True})
            continue
        log(f"section {name} (up to {ctx['deadline']:.0f} s)")
        t0, cpu0 = time.time(), time.process_time()
        try:
            text, data = SECTIONS[name](args, ctx)
        except Exception as err:  # noqa: BLE001 - the next section still runs
            traceback.print_exc()
            text, data = f"FAILED: {err.__class__.__name__}: {err}", {"error": f"{err.__class__.__name__}: {err}"}
        wall = time.time() - t0
        text += f"\n\n(section wall {wall:.1f} s, process CPU {time.process_time() - cpu0:.1f} s, " \
                f"load average {os.getloadavg()[0]:.2f})"
        report.add(name, text, data)
    report.data["run"]["wall_s"] = round(time.time() - start, 1)
    report.write()
    log(f"done in {time.time() - start:.0f} s: {report.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
