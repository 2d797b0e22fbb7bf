"""The GPU check's --dry-run (CPU, tiny sizes) runs every section but the CUDA tests, so the script
that a rare GPU lease runs cannot rot between leases."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_gpu_check_dry_run_writes_every_section(tmp_path):
    from tests.conftest import write_synthetic_fashion_mnist

    fm = write_synthetic_fashion_mnist(str(tmp_path / "fmnist"), n_train=80, n_test=40)
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), HARL_FASHION_MNIST=fm, PYTHON=sys.executable,
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_check.sh"), "--dry-run", "--budget-s", "900",
                           "--sections", "env", "throughput", "loader", "quality",
                           "--quality-methods", "random", "supervised", "harl_gt"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = (out / "gpu_check.md").read_text()
    data = json.loads(re.search(r"```json\n(.*)\n```", report, re.S).group(1))
    assert data["run"]["dry_run"] is True
    from benchmarks.gpu_check import THROUGHPUT_METHODS

    assert not data["throughput"]["errors"], data["throughput"]["errors"]
    rows = {r["method"]: r for r in data["throughput"]["rows"]}
    assert set(rows) == set(THROUGHPUT_METHODS)
    assert all(r["samples/s"] > 0 and r["finite_weights"] for r in rows.values())
    assert rows["harl"]["vs byol"] == pytest.approx(rows["harl"]["samples/s"] / rows["byol"]["samples/s"])
    assert [r["loader"] for r in data["loader"]["rows"]] == ["mask-aware (HARL)", "image-only"]
    assert data["quality"]["returncode"] == 0, (out / "quality.log").read_text()[-3000:]
    cells = {r["method"] for r in data["quality"]["rows"]}
    assert cells == {"random", "supervised", "harl_gt"}
    assert all(0 <= r["unseen_linear_top1"] <= 100 and 0 <= r["unseen_knn_top1"] <= 100
               for r in data["quality"]["rows"])  # every method is also probed on unseen backgrounds
    assert "linear, unseen bg" in report
    assert "random (floor)" in report and "supervised (ceiling)" in report
    assert "fraction of the floor→ceiling gap closed" in report
