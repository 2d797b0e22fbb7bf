"""SupCon across 2 CPU processes (gloo): positives and negatives are gathered from every rank.

Each rank holds half of a batch whose labels repeat across the halves. With embeddings and labels
gathered (and the local rows placed at rank · N in the gathered batch), the mean of the two ranks'
losses equals the single-process loss on the whole batch; local-only positives, un-gathered labels
or a wrong self-mask offset change it.
"""

import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_supcon_positives_are_gathered_across_processes(tmp_path):
    from tests.ddp_gather_worker import free_port
    from tests.ddp_supcon_worker import run

    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, "-m", "tests.ddp_supcon_worker", str(r), port, str(tmp_path)], cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    try:
        outs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outs)
    r0 = torch.load(tmp_path / "supcon_rank0.pt")["loss"]
    r1 = torch.load(tmp_path / "supcon_rank1.pt")["loss"]
    single = run(0, 1)
    assert (r0 + r1) / 2 == pytest.approx(single, rel=1e-5, abs=1e-6)
    # the halves alone (nothing gathered) give another loss: the test can tell
    assert abs((run(0, 2) + run(1, 2)) / 2 - single) > 1e-4
