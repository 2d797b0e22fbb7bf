"""CUDA-only tests (``pytest -m gpu``; skipped without a GPU): what the CPU suite cannot see.

- every method family's training step runs on the GPU under ``16-mixed`` and ``bf16-mixed`` with
  channels_last, keeps its weights finite and changes them;
- in fp32 the first step's loss and gradients on the GPU equal the CPU's (tensors made on the wrong
  device, or CPU-only ops inside a step, break this);
- ``pretrain`` end to end on the GPU writes a checkpoint whose backbone loads strictly on the CPU.

``benchmarks/gpu_check.sh`` runs these first on a lent GPU machine.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

from tests.conftest import scenes_cfg, tiny_cfg

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

TINY = {
    "hapicl_simclr": {"proj_hidden_dim": 64, "proj_output_dim": 32, "pix_hidden_dim": 32, "pix_output_dim": 16},
    "hapicl_mocov2plus": {"proj_hidden_dim": 64, "proj_output_dim": 32, "queue_size": 64,
                          "pix_hidden_dim": 32, "pix_output_dim": 16},
    "hapicl_byol": {"proj_hidden_dim": 64, "proj_output_dim": 32, "pred_hidden_dim": 64,
                    "pix_hidden_dim": 32, "pix_output_dim": 16},
    "sgm_mocov2": {"proj_hidden_dim": 64, "proj_output_dim": 32, "queue_size": 64, "sgm_saliency": "heuristic_mask"},
    "sgm_simclr": {"proj_hidden_dim": 64, "proj_output_dim": 32, "sgm_saliency": "heuristic_mask"},
    "supervised": {},
}
METHODS_UNDER_TEST = ("byol", "simclr", "mocov2plus", "harl", "hapicl_simclr", "hapicl_mocov2plus", "hapicl_byol",
                      "sgm_mocov2", "sgm_simclr", "supervised")
#: methods whose step draws no random numbers (SGM draws its masks), so CPU and GPU must agree
DETERMINISTIC = ("byol", "simclr", "mocov2plus", "harl", "hapicl_simclr", "hapicl_mocov2plus", "hapicl_byol",
                 "supervised")


def _cfg(method: str, accelerator: str, precision: str, channels_last: bool):
    from harl.config import parse_cfg
    from harl.methods import METHODS

    raw = tiny_cfg(method, accelerator=accelerator, precision=precision)
    if method in TINY:
        defaults = METHODS.get(method).default_method_kwargs()
        raw["method_kwargs"] = {k: v for k, v in TINY[method].items() if k in defaults}
    raw["performance"] = {"disable_channel_last": not channels_last}
    if METHODS.get(method).uses_masks or method.startswith("sgm_"):
        raw["data"]["masks"] = {"enabled": True, "root": "unused"}
    return parse_cfg(raw)


def _batch(method: str, device: str, b: int = 8, size: int = 32):
    from benchmarks.gpu_check import synthetic_batch
    from harl.methods import METHODS

    masks = METHODS.get(method).uses_masks or method.startswith("sgm_")
    batch = synthetic_batch(b, size, device, masks)
    batch[2] = batch[2] % 10
    return batch


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
@pytest.mark.parametrize("method", METHODS_UNDER_TEST)
def test_training_steps_on_gpu(method, precision):
    from lightning.pytorch import Callback, Trainer

    from benchmarks.common import InMemoryLoader
    from harl.methods import METHODS

    torch.manual_seed(0)
    model = METHODS.get(method)(_cfg(method, "gpu", precision, channels_last=True))
    before = {k: v.detach().clone() for k, v in model.backbone.state_dict().items()}
    seen = []

    class DeviceProbe(Callback):  # Lightning moves the model back to the CPU after fit: look during it
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            seen.append((next(pl_module.backbone.parameters()).device.type, float(loss)))

    trainer = Trainer(max_steps=3, accelerator="gpu", devices=1, precision=precision, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[DeviceProbe()])
    trainer.fit(model, InMemoryLoader([_batch(method, "cuda")] * 3))
    after = model.backbone.state_dict()
    assert [d for d, _ in seen] == ["cuda"] * 3
    assert all(torch.isfinite(torch.tensor(loss)) for _, loss in seen), seen
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    changed = [k for k, v in after.items() if v.is_floating_point() and not torch.equal(v, before[k].to(v.device))]
    assert changed, f"{method}: no backbone weight changed in 3 steps"


@pytest.mark.parametrize("method", DETERMINISTIC)
def test_first_step_matches_cpu_in_fp32(method):
    from harl.methods import METHODS

    torch.manual_seed(0)
    cpu = METHODS.get(method)(_cfg(method, "cpu", "32-true", channels_last=False))
    gpu = copy.deepcopy(cpu).cuda()
    for m in (cpu, gpu):
        m.log_dict = m.log = lambda *a, **k: None  # no trainer attached: logging is a no-op here
        if hasattr(m, "current_schedules"):  # HARL's α/β read the trainer's step count
            m.current_schedules = lambda: {"alpha": 0.7, "beta": 0.7}
        m.train()
    prev = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        losses = []
        for m, dev in ((cpu, "cpu"), (gpu, "cuda")):
            out = m.training_step(_batch(method, dev), 0)
            loss = out["loss"] if isinstance(out, dict) else out
            loss.backward()
            losses.append(loss.detach().cpu())
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = prev
    assert torch.allclose(losses[0], losses[1], rtol=1e-4, atol=1e-4), (method, losses)
    g_cpu = cpu.backbone.conv1.weight.grad
    g_gpu = gpu.backbone.conv1.weight.grad.cpu()
    assert torch.allclose(g_cpu, g_gpu, rtol=1e-3, atol=1e-5 * float(g_cpu.abs().max()) + 1e-7), method


def test_pretrain_on_gpu_checkpoint_loads_on_cpu(tmp_path, scenes_root):
    from harl.eval.pretrained import load_pretrained_backbone
    from harl.train import pretrain

    cfg = scenes_cfg("harl", scenes_root, str(tmp_path / "ckpt"), max_epochs=1, accelerator="gpu",
                     precision="16-mixed")
    cfg["performance"] = {"disable_channel_last": False}
    res = pretrain(cfg)
    assert res.last_checkpoint and os.path.isfile(res.last_checkpoint)
    net, _ = load_pretrained_backbone(res.last_checkpoint)
    assert next(net.parameters()).device.type == "cpu"
    x = torch.randn(2, 3, 32, 32)
    assert torch.isfinite(net(x)).all()
