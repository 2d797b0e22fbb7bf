"""Fault-injection suite (the long cases): kill -9, bad inputs, disk full, broken downloads.

Every case runs the real command lines in subprocesses on tiny data (resnet18 width 8, 32 px,
CPU) and checks an outcome, then prints one table row: case, expected behaviour, observed, pass.
The fast cases live in ``tests/test_faults.py``; ``docs/reliability.md`` holds the last table.

    .venv/bin/python benchmarks/faults.py [--only SUBSTRING] [--markdown OUT.md]

Cases:

- pretraining killed with SIGKILL mid-epoch, after a checkpoint, during a checkpoint write (a torn
  ``.ckpt.tmp`` left behind) and between write and rename (a complete ``.ckpt.tmp``); the rerun
  with ``auto_resume`` must end with weights *bitwise* equal to an uninterrupted run;
- mask generation (``harl-masks felzenszwalb --workers 2``) killed at three points; every PNG is
  opened afterwards (0 corrupt), no worker survives, the rerun completes (0 missing);
- bad inputs: a corrupt, truncated, zero-byte and mislabelled (text saved as ``.jpg``) training
  image, a missing mask read in a loader worker, wrong value types on the command line, and
  ``data.verify=full`` over all of them: exit code 2, one line, no traceback;
- disk full (a file-size limit, ``RLIMIT_FSIZE``) while writing a checkpoint and while writing
  masks: the previous checkpoint stays intact and loadable, no bad file under a final name;
- downloads from a server on 127.0.0.1 that cuts the body, sends fewer bytes than announced,
  sends wrong bytes, answers 404, or is too slow: one error line, never a file under the final name.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import http.server
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import yaml
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
       "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONHASHSEED": "0"}

CASES: List[Tuple[str, str, Callable[[str], Tuple[str, bool]]]] = []


def case(name: str, expected: str):
    def register(fn):
        CASES.append((name, expected, fn))
        return fn
    return register


# --------------------------------------------------------------------------------------------- helpers


def write_folder(root: str, n_per_class: int = 8, size: int = 32, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    for c in range(2):
        os.makedirs(os.path.join(root, f"c{c}"), exist_ok=True)
        for k in range(n_per_class):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
                os.path.join(root, f"c{c}", f"{k:02d}.png"))
    return root


def write_masks(img_root: str, mask_root: str) -> str:
    for d, _, files in os.walk(img_root):
        for f in files:
            rel = os.path.relpath(os.path.join(d, f), img_root)
            out = os.path.join(mask_root, os.path.splitext(rel)[0] + ".png")
            os.makedirs(os.path.dirname(out), exist_ok=True)
            m = np.zeros((32, 32), np.uint8)
            m[8:24, 8:24] = 255
            Image.fromarray(m).save(out)
    return mask_root


def pretrain_cfg(data: str, ckpt_dir: str, method: str = "byol", epochs: int = 3, **over) -> dict:
    kw = {"proj_hidden_dim": 64, "proj_output_dim": 32}
    if method in ("byol", "harl"):
        kw["pred_hidden_dim"] = 64
    cfg = {
        "name": f"faults-{method}", "method": method,
        "backbone": {"name": "resnet18", "kwargs": {"width": 8}},
        "method_kwargs": kw,
        "data": {"dataset": "custom", "train_path": data, "num_workers": 0},
        "augmentations": [{"crop_size": 32, "num_crops": 2}],
        "optimizer": {"name": "lars", "batch_size": 4, "lr": 0.3, "weight_decay": 1e-5,
                      "kwargs": {"eta": 0.02, "clip_lr": True, "exclude_bias_n_norm": True}},
        "scheduler": {"name": "warmup_cosine", "warmup_epochs": 1},
        "checkpoint": {"enabled": True, "dir": ckpt_dir, "frequency": 1},
        "auto_resume": {"enabled": True},
        "max_epochs": epochs, "accelerator": "cpu", "devices": 1, "no_validation": True,
        "performance": {"disable_channel_last": True},
        "enable_progress_bar": False, "enable_model_summary": False, "log_every_n_steps": 1,
    }
    for key, value in over.items():
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return cfg


def write_yaml(path: str, cfg: dict) -> str:
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


def run(argv: List[str], timeout: float = 600, fsize: Optional[int] = None) -> subprocess.CompletedProcess:
    def limit():
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    return subprocess.run([sys.executable, *argv], env=ENV, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=limit if fsize is not None else None)


def one_line_error(proc: subprocess.CompletedProcess, code: int = 2) -> Tuple[bool, str]:
    err = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("error:")]
    ok = proc.returncode == code and len(err) == 1 and "Traceback" not in proc.stderr
    return ok, f"exit {proc.returncode}; " + (err[0][:150] if err else (proc.stderr.strip().splitlines() or [""])[-1][:150])


def final_ckpt(ckpt_dir: str) -> Optional[str]:
    found = sorted(glob.glob(os.path.join(ckpt_dir, "*", "*", "*.ckpt")))
    return found[-1] if found else None


def weights(path: str) -> Dict[str, "object"]:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def same_weights(a: str, b: str) -> bool:
    import torch

    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def children(pid: int) -> List[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    st = f.read()
            except OSError:
                continue
            if int(st[st.rindex(")") + 2:].split()[1]) == pid:
                out.append(int(d))
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
    except OSError:
        return False
    return st[st.rindex(")") + 2] != "Z"


_REFERENCE: Dict[str, str] = {}


def reference(work: str) -> str:
    """Final checkpoint of an uninterrupted 3-epoch run (computed once)."""
    if "ckpt" not in _REFERENCE:
        data = write_folder(os.path.join(work, "ref-data"))
        cfg = write_yaml(os.path.join(work, "ref.yaml"), pretrain_cfg(data, os.path.join(work, "ref-ckpt")))
        proc = run(["-m", "harl.cli.pretrain", cfg])
        if proc.returncode != 0:
            raise RuntimeError(f"reference run failed: {proc.stderr[-500:]}")
        _REFERENCE["ckpt"] = final_ckpt(os.path.join(work, "ref-ckpt"))
        _REFERENCE["data"] = data
    return _REFERENCE["ckpt"]


def start_and_kill(argv: List[str], when: Callable[[], bool], timeout: float = 300) -> Tuple[bool, List[int]]:
    """Start ``argv``; SIGKILL it as soon as ``when()`` holds; returns (killed, its children at that time)."""
    proc = subprocess.Popen([sys.executable, *argv], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    kids: List[int] = []
    try:
        while time.time() - t0 < timeout and proc.poll() is None:
            if when():
                kids = children(proc.pid)
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True, kids
            time.sleep(0.02)
        return False, kids
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------------------------- pretraining kills


def _kill_case(work: str, tag: str, when_factory, inject=None) -> Tuple[str, bool]:
    ref = reference(work)
    ck = os.path.join(work, f"ck-{tag}")
    cfg = write_yaml(os.path.join(work, f"{tag}.yaml"), pretrain_cfg(_REFERENCE["data"], ck))
    killed, _ = start_and_kill(["-m", "harl.cli.pretrain", cfg], when_factory(ck))
    if not killed:
        return "the run ended before the kill point", False
    state = ", ".join(sorted(os.path.basename(p) .split("-")[-1] for p in glob.glob(os.path.join(ck, "*", "*", "*.ckpt*"))))
    if inject is not None:
        state += "; " + inject(ck)
    proc = run(["-m", "harl.cli.pretrain", cfg])
    if proc.returncode != 0:
        return f"resume failed: exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}", False
    ok = same_weights(ref, final_ckpt(ck))
    return f"killed with [{state}] on disk; resumed run bitwise equal: {ok}", ok


def _ckpts(ck: str, pattern: str = "*.ckpt") -> List[str]:
    return glob.glob(os.path.join(ck, "*", "*", pattern))


@case("pretrain: kill -9 mid-epoch", "auto-resume from the last checkpoint, final weights bitwise equal")
def kill_mid_epoch(work):
    def when(ck):
        t = {"first": None}

        def f():
            if t["first"] is None and _ckpts(ck, "*ep=0.ckpt"):
                t["first"] = time.time()
            return t["first"] is not None and time.time() - t["first"] > 0.3
        return f
    return _kill_case(work, "mid", when)


@case("pretrain: kill -9 right after a checkpoint", "auto-resume from it, final weights bitwise equal")
def kill_after_ckpt(work):
    return _kill_case(work, "after", lambda ck: (lambda: bool(_ckpts(ck, "*ep=0.ckpt"))))


def _torn(complete: bool):
    def inject(ck):
        src = _ckpts(ck, "*ep=0.ckpt")[0]
        data = open(src, "rb").read()
        dst = src.replace("ep=0.ckpt", "ep=1.ckpt.tmp")
        with open(dst, "wb") as f:
            f.write(data if complete else data[: len(data) // 3])
        return f"{'complete' if complete else 'torn (1/3)'} ep=1.ckpt.tmp planted"
    return inject


@case("pretrain: kill -9 during a checkpoint write",
      "the torn .ckpt.tmp is never loaded; resume from the previous checkpoint, bitwise equal")
def kill_during_write(work):
    return _kill_case(work, "write", lambda ck: (lambda: bool(_ckpts(ck, "*ep=0.ckpt"))), inject=_torn(False))


@case("pretrain: kill -9 between write and rename",
      "the unrenamed .ckpt.tmp is ignored; resume from the previous checkpoint, bitwise equal")
def kill_before_rename(work):
    return _kill_case(work, "rename", lambda ck: (lambda: bool(_ckpts(ck, "*ep=0.ckpt"))), inject=_torn(True))


# --------------------------------------------------------------------------------------------- mask generation


@case("harl-masks: kill -9 at 3 points (workers 2)",
      "0 corrupt PNG after each kill, no worker left, rerun completes with 0 missing")
def kill_masks(work):
    from harl.data.image_io import read_mask

    imgs = write_folder(os.path.join(work, "mask-imgs"), n_per_class=100, size=96)
    out = os.path.join(work, "mask-out")
    argv = ["-m", "harl.cli.masks", "felzenszwalb", "--images", imgs, "--out", out, "--workers", "2",
            "--chunksize", "1", "--no-progress"]
    n_total = 200
    notes, ok = [], True

    def pngs():
        return glob.glob(os.path.join(out, "**", "*.png"), recursive=True)

    for target in (5, 60, 140):
        killed, kids = start_and_kill(argv, lambda: len(pngs()) >= target)
        time.sleep(2.0)
        survivors = [k for k in kids if alive(k)]
        for k in survivors:
            os.kill(k, signal.SIGKILL)
        corrupt = 0
        for p in pngs():
            try:
                read_mask(p)
            except Exception:  # noqa: BLE001
                corrupt += 1
        notes.append(f"kill at {len(pngs())}: {corrupt} corrupt, {len(survivors)} orphans")
        ok &= killed and corrupt == 0 and not survivors
    proc = run(argv)
    bad = 0
    for p in pngs():
        try:
            read_mask(p)
        except Exception:  # noqa: BLE001
            bad += 1
    missing = n_total - len(pngs())
    ok &= proc.returncode == 0 and bad == 0 and missing == 0
    return "; ".join(notes) + f"; rerun exit {proc.returncode}: {bad} corrupt, {missing} missing", ok


# --------------------------------------------------------------------------------------------- bad inputs


def _bad_file(work: str, tag: str, damage: Callable[[str], str], workers: int = 0) -> Tuple[str, bool]:
    data = write_folder(os.path.join(work, f"bad-{tag}"))
    name = damage(data)
    ck = os.path.join(work, f"ck-bad-{tag}")
    cfg = write_yaml(os.path.join(work, f"bad-{tag}.yaml"),
                     pretrain_cfg(data, ck, epochs=1, **{"data.num_workers": workers}))
    proc = run(["-m", "harl.cli.pretrain", cfg])
    ok, text = one_line_error(proc)
    saved = _ckpts(ck)
    ok &= name in proc.stderr and len(saved) == 1
    return f"{text}; checkpoint saved: {bool(saved)}", ok


def _corrupt(data):
    p = os.path.join(data, "c1", "03.png")
    b = bytearray(open(p, "rb").read())
    b[60:] = os.urandom(len(b) - 60)
    open(p, "wb").write(bytes(b))
    return p


def _truncated(data):
    p = os.path.join(data, "c1", "03.png")
    b = open(p, "rb").read()
    open(p, "wb").write(b[: len(b) // 2])
    return p


def _zero(data):
    p = os.path.join(data, "c1", "03.png")
    open(p, "wb").close()
    return p


def _text_jpg(data):
    p = os.path.join(data, "c1", "notes.jpg")
    open(p, "w").write("this is a text file saved with a .jpg name\n")
    return p


for _tag, _fn in (("corrupt", _corrupt), ("truncated", _truncated), ("zero-byte", _zero), ("text-as-jpg", _text_jpg)):
    case(f"bad input: {_tag} image in the training folder (2 loader workers)",
         "clean stop: exit 2, one line naming the file, state saved for auto-resume")(
        lambda work, _t=_tag, _f=_fn: _bad_file(work, _t, _f, workers=2))


@case("bad input: missing mask read in a loader worker",
      "clean stop: exit 2, one line naming the mask file")
def missing_mask(work):
    data = write_folder(os.path.join(work, "mm-data"))
    masks = write_masks(data, os.path.join(work, "mm-masks"))
    os.remove(os.path.join(masks, "c0", "05.png"))
    cfg = write_yaml(os.path.join(work, "mm.yaml"), pretrain_cfg(
        data, os.path.join(work, "ck-mm"), method="harl", epochs=1,
        **{"data.num_workers": 2, "data.masks.enabled": True, "data.masks.root": masks}))
    proc = run(["-m", "harl.cli.pretrain", cfg])
    ok, text = one_line_error(proc)
    return text, ok and "05.png" in proc.stderr


@case("bad input: data.verify=full over 4 bad files",
      "exit 2 before training, every bad file listed at once")
def verify_all(work):
    data = write_folder(os.path.join(work, "v-data"))
    names = [os.path.basename(f(data)) for f in (_zero, _text_jpg)]
    p = os.path.join(data, "c0", "01.png")
    b = open(p, "rb").read()
    open(p, "wb").write(b[: len(b) // 2])
    p2 = os.path.join(data, "c0", "02.png")
    b = bytearray(open(p2, "rb").read())
    b[60:] = os.urandom(len(b) - 60)
    open(p2, "wb").write(bytes(b))
    cfg = write_yaml(os.path.join(work, "v.yaml"), pretrain_cfg(data, os.path.join(work, "ck-v"), epochs=1,
                                                                  **{"data.verify": "full"}))
    proc = run(["-m", "harl.cli.pretrain", cfg])
    listed = sum(n in proc.stderr for n in names + ["01.png", "02.png"])
    ok = proc.returncode == 2 and listed == 4 and "Traceback" not in proc.stderr and not _ckpts(os.path.join(work, "ck-v"))
    return f"exit {proc.returncode}; {listed}/4 files listed; nothing trained: {not _ckpts(os.path.join(work, 'ck-v'))}", ok


for _ov in ("optimizer.lr=abc", "optimizer.batch_size=abc", "optimizer.weight_decay=abc",
            "method_kwargs.alpha_base=abc", "momentum.base_tau=abc", "optimizer.lr=-1"):
    case(f"bad input: {_ov} on the command line", "exit 2, one line naming key, value and expectation")(
        lambda work, _o=_ov: _bad_override(work, _o))


def _bad_override(work, override):
    data = write_folder(os.path.join(work, "ov-data"), n_per_class=2)
    cfg = write_yaml(os.path.join(work, "ov.yaml"), pretrain_cfg(data, os.path.join(work, "ck-ov"), method="harl"))
    proc = run(["-m", "harl.cli.pretrain", cfg, override])
    ok, text = one_line_error(proc)
    key, value = override.split("=")
    return text, ok and f"'{key}' = " in proc.stderr and value in proc.stderr


# --------------------------------------------------------------------------------------------- disk full


@case("disk full while writing a checkpoint (file-size limit)",
      "one error line, the previous checkpoint intact and loadable, no file under a new final name")
def disk_full_ckpt(work):
    data = write_folder(os.path.join(work, "df-data"))
    ck = os.path.join(work, "ck-df")
    cfg = write_yaml(os.path.join(work, "df.yaml"), pretrain_cfg(data, ck))
    killed, _ = start_and_kill(["-m", "harl.cli.pretrain", cfg], lambda: bool(_ckpts(ck, "*ep=0.ckpt")))
    if not killed:
        return "could not stop the first run after epoch 0", False
    prev = _ckpts(ck, "*ep=0.ckpt")[0]
    digest = hashlib.sha256(open(prev, "rb").read()).hexdigest()
    size = os.path.getsize(prev)
    proc = run(["-m", "harl.cli.pretrain", cfg], fsize=size // 2)
    ok, text = one_line_error(proc, code=1)
    intact = hashlib.sha256(open(prev, "rb").read()).hexdigest() == digest
    try:
        weights(prev)
        loads = True
    except Exception:  # noqa: BLE001
        loads = False
    newer = [p for p in _ckpts(ck) if p != prev]
    ok &= intact and loads and not newer
    return f"{text}; previous intact: {intact}, loads: {loads}; new final files: {len(newer)}", ok


@case("disk full while writing masks (file-size limit)",
      "no corrupt PNG under a final name; the rerun without the limit completes")
def disk_full_masks(work):
    from harl.data.image_io import read_mask

    imgs = write_folder(os.path.join(work, "dfm-imgs"), n_per_class=20, size=64)
    out = os.path.join(work, "dfm-out")
    argv = ["-m", "harl.cli.masks", "felzenszwalb", "--images", imgs, "--out", out, "--no-progress"]
    proc = run(argv, fsize=3000)
    first = f"exit {proc.returncode}: {(proc.stderr.strip().splitlines() or [''])[-1][:100]}"
    tb = "Traceback" in proc.stderr

    def bad():
        n = 0
        for p in glob.glob(os.path.join(out, "**", "*.png"), recursive=True):
            try:
                read_mask(p)
            except Exception:  # noqa: BLE001
                n += 1
        return n
    corrupt = bad()
    proc2 = run(argv)
    n = len(glob.glob(os.path.join(out, "**", "*.png"), recursive=True))
    ok = corrupt == 0 and proc2.returncode == 0 and bad() == 0 and n == 40 and not tb
    return f"limited run {first}; {corrupt} corrupt; rerun exit {proc2.returncode}, {n}/40 masks", ok


# --------------------------------------------------------------------------------------------- downloads


PAYLOAD = os.urandom(200_000)
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        path = self.path.strip("/")
        if path == "missing":
            self.send_error(404)
            return
        body = PAYLOAD
        if path == "wrong":
            body = os.urandom(len(PAYLOAD))
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        if path == "slow":
            time.sleep(3)
        if path in ("cut", "short"):
            body = body[: len(body) // 2]
        try:
            self.wfile.write(body)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            return
        if path == "cut":
            self.connection.shutdown(2)


def _download(work: str, path: str) -> Tuple[str, bool]:
    from harl.zoo.download import download_file

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    dest = os.path.join(work, f"dl-{path}", "model.safetensors")
    try:
        download_file([f"http://127.0.0.1:{srv.server_address[1]}/{path}"], dest, SHA, len(PAYLOAD),
                      progress=False, retries=1, timeout=1.0)
        return "download claimed success", False
    except Exception as err:  # noqa: BLE001
        msg = str(err)
        ok = type(err).__name__ == "ZooDownloadError" and "\n" not in msg and not os.path.exists(dest)
        return f"{type(err).__name__}: {msg[:110]}...; file under final name: {os.path.exists(dest)}", ok
    finally:
        srv.shutdown()
        srv.server_close()


for _p, _what in (("cut", "connection cut midway"), ("short", "body shorter than announced"),
                  ("wrong", "wrong checksum"), ("missing", "HTTP 404"), ("slow", "slow server (timeout 1 s)")):
    case(f"download: {_what}", "one error line, never a file under the final name")(
        lambda work, _q=_p: _download(work, _q))


# --------------------------------------------------------------------------------------------- runner


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None, help="run the cases whose name contains this")
    ap.add_argument("--markdown", default=None, help="also write the table as Markdown here")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args(argv)
    work = tempfile.mkdtemp(prefix="harl-faults-")
    rows = []
    t0 = time.time()
    try:
        for name, expected, fn in CASES:
            if args.only and args.only not in name:
                continue
            t = time.time()
            try:
                observed, ok = fn(work)
            except Exception as err:  # noqa: BLE001 - a crashing case is a failed case
                observed, ok = f"case crashed: {type(err).__name__}: {err}", False
            rows.append((name, expected, observed, ok, time.time() - t))
            print(f"[{'PASS' if ok else 'FAIL'}] {name} ({time.time() - t:.0f} s): {observed}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    passed = sum(r[3] for r in rows)
    lines = ["| fault | expected behaviour | observed | pass |", "|---|---|---|---|"]
    lines += [f"| {n} | {e} | {o.replace('|', '/')} | {'yes' if ok else 'NO'} |" for n, e, o, ok, _ in rows]
    table = "\n".join(lines)
    print()
    print(table)
    print(f"\n{passed}/{len(rows)} cases passed in {time.time() - t0:.0f} s "
          f"(load average {os.getloadavg()[0]:.2f}, CPU s of children "
          f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime:.0f})")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    return 0 if passed == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
