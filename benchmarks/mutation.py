"""Planted-bug harness: does the test suite catch plausible wiring bugs in the methods?

Each mutant is one small text edit of the package (a view index swapped, a schedule frozen, a
target sent through the online head, a queue pointer not advanced, negatives not gathered, ...).
The harness copies the package and the tests into a temporary folder, applies *one* mutant there
(never to the working tree), runs only the test selection that guards that code, and records
whether the tests failed ("killed") or stayed green ("survived"). It prints a table, the kill
rate and the survivors.

    python -m benchmarks.mutation                 # every mutant (CPU heavy: minutes)
    python -m benchmarks.mutation --only harl_     # mutants whose name starts with harl_
    python -m benchmarks.mutation --check          # only verify every patch still applies
    python -m benchmarks.mutation --markdown out.md

First the unmutated copy runs every selection once: a red baseline would make every mutant look
killed, so the harness stops there.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: what is copied into each temporary tree
COPY = ("harl", "tests", "pytest.ini")

REF = "tests/test_method_reference.py"
SOLO = "tests/test_solo_methods.py"
#: test selections (pytest arguments), by the code they guard
SEL: Dict[str, Tuple[str, ...]] = {
    "byol": (REF, "-k", "byol_step or ema or tau"),
    "ema": (REF, "-k", "ema or tau"),
    "simclr": (REF, "-k", "simclr_step"),
    "moco": (REF, "-k", "mocov2plus"),
    "harl": (REF, "-k", "harl"),
    "hapicl": (REF, "-k", "hapicl"),
    "sgm": (REF, "-k", "sgm"),
    "ddp": ("tests/test_ddp.py", "-k", "gathered"),
    "lr": (REF, "-k", "ema_and_lr"),
    "wmse": (SOLO, "-k", "wmse"),
    "vibcreg": (SOLO, "tests/test_losses_solo_baselines.py", "-k", "vibcreg or iterative"),
    "supcon": (SOLO, "tests/test_losses_solo_baselines.py", "-k", "supcon"),
    "supcon_ddp": ("tests/test_supcon_ddp.py",),
    "deepclusterv2": (SOLO, "tests/test_losses_solo_baselines.py", "-k", "deepclusterv2 or kmeans"),
}


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str           # file inside the repository
    old: str            # exact text, must occur exactly once in the file
    new: str
    tests: str          # key of SEL
    what: str           # the bug in words


MUTANTS: List[Mutant] = [
    # ---------------------------------------------------------------- base / BYOL / EMA / τ
    Mutant("byol_target_same_view", "harl/methods/byol.py",
           "loss = loss + byol_loss(P[v2], Z_target[v1])", "loss = loss + byol_loss(P[v1], Z_target[v1])",
           "byol", "BYOL prediction regresses its own view's target"),
    Mutant("byol_target_online_projector", "harl/methods/byol.py",
           'return {**out, "z": self.momentum_projector(out["feats"])}', 'return {**out, "z": self.projector(out["feats"])}',
           "byol", "BYOL target projection through the online projector"),
    Mutant("classifier_not_detached", "harl/methods/base.py",
           'return {"feats": feats, "logits": self.classifier(feats.detach())}',
           'return {"feats": feats, "logits": self.classifier(feats)}',
           "byol", "online linear probe back-propagates into the backbone"),
    Mutant("ema_every_microbatch", "harl/methods/base.py",
           "if step > self._last_step:", "if step >= self._last_step:",
           "ema", "EMA applied on every micro-batch under gradient accumulation"),
    Mutant("tau_schedule_reversed", "harl/methods/base.py",
           "return cosine_increase(step, total, self.base_tau, self.final_tau)",
           "return cosine_increase(step, total, self.final_tau, self.base_tau)",
           "ema", "τ schedule runs from final_tau down to base_tau"),
    Mutant("tau_schedule_frozen", "harl/methods/base.py",
           "self.cur_tau = self._tau_at(step)", "self.cur_tau = self.cur_tau",
           "ema", "τ never leaves base_tau"),
    Mutant("ema_weights_swapped", "harl/methods/base.py",
           "torch._foreach_mul_(target_params, tau)\n            torch._foreach_add_(target_params, online_params, alpha=1.0 - tau)",
           "torch._foreach_mul_(target_params, 1.0 - tau)\n            torch._foreach_add_(target_params, online_params, alpha=tau)",
           "ema", "EMA keeps (1−τ) of the target instead of τ"),
    Mutant("byol_projector_not_averaged", "harl/methods/byol.py",
           "return super().momentum_pairs + [(self.projector, self.momentum_projector)]",
           "return super().momentum_pairs",
           "ema", "BYOL's target projector is never updated"),
    # ---------------------------------------------------------------- lr schedule
    Mutant("lr_not_scaled_by_accumulation", "harl/methods/base.py",
           "self.lr = float(cfg.optimizer.lr) * self.accumulate_grad_batches", "self.lr = float(cfg.optimizer.lr)",
           "lr", "lr not multiplied by accumulate_grad_batches (solo-learn convention)"),
    Mutant("lr_total_counts_microbatches", "harl/methods/base.py",
           "total = int(self.trainer.estimated_stepping_batches) if per_step else self.max_epochs",
           "total = int(self.trainer.estimated_stepping_batches) * self.accumulate_grad_batches if per_step else self.max_epochs",
           "lr", "lr schedule length counted in micro-batches"),
    Mutant("lr_cosine_frozen", "harl/optim/schedulers.py",
           "progress = min(1.0, (step - warmup_steps) / span)", "progress = 0.0",
           "lr", "lr stays at the base after warm-up (schedule frozen)"),
    # ---------------------------------------------------------------- SimCLR / gather
    Mutant("simclr_temperature_default", "harl/methods/simclr.py",
           "self.temperature = float(kw.temperature)",
           'self.temperature = float(self._DEFAULT_METHOD_KWARGS["temperature"])',
           "simclr", "SimCLR reads the default temperature instead of the configured one"),
    Mutant("moco_temperature_default", "harl/methods/mocov2plus.py",
           "self.temperature = float(kw.temperature)",
           'self.temperature = float(self._DEFAULT_METHOD_KWARGS["temperature"])',
           "moco", "MoCo reads the default temperature instead of the configured one"),
    Mutant("hapicl_pix_temperature_default", "harl/methods/hapicl.py",
           "self.pix_temperature = float(kw.pix_temperature)", "self.pix_temperature = 0.2",
           "hapicl", "pixel loss uses the default τ_x instead of the configured one"),
    Mutant("simclr_negatives_not_gathered", "harl/methods/simclr.py",
           "z_all = gather_with_grad(z)\n        idx_all = gather_with_grad(idx)\n        return nt_xent_loss(z, idx, self.temperature, z_all, idx_all, offset=rank() * z.shape[0],",
           "z_all, idx_all = z, idx\n        return nt_xent_loss(z, idx, self.temperature, z_all, idx_all, offset=0,",
           "ddp", "SimCLR negatives stay local to each process"),
    Mutant("simclr_rank_offset_zero", "harl/methods/simclr.py",
           "offset=rank() * z.shape[0]", "offset=0",
           "ddp", "rank > 0 masks the wrong rows as 'self'"),
    Mutant("keys_not_gathered", "harl/utils/distributed.py",
           "dist.all_gather(out, x.contiguous())\n    return torch.cat(out, dim=0)", "return x",
           "ddp", "queue keys are not gathered across processes"),
    # ---------------------------------------------------------------- MoCo v2+
    Mutant("moco_queues_swapped", "harl/methods/mocov2plus.py",
           "return (moco_loss(z[0], k[1], queue[1], self.temperature) + moco_loss(z[1], k[0], queue[0], self.temperature)) / 2",
           "return (moco_loss(z[0], k[1], queue[0], self.temperature) + moco_loss(z[1], k[0], queue[1], self.temperature)) / 2",
           "moco", "each query meets its own view's queue"),
    Mutant("moco_key_same_view", "harl/methods/mocov2plus.py",
           "moco_loss(z[0], k[1], queue[1], self.temperature)", "moco_loss(z[0], k[0], queue[1], self.temperature)",
           "moco", "view 1's query is contrasted with its own key"),
    Mutant("moco_enqueue_swapped", "harl/methods/mocov2plus.py",
           "self.enqueue(torch.stack([gather_no_grad(k[0]), gather_no_grad(k[1])]))",
           "self.enqueue(torch.stack([gather_no_grad(k[1]), gather_no_grad(k[0])]))",
           "moco", "view 1's keys go into view 2's queue"),
    Mutant("moco_ptr_not_advanced", "harl/methods/mocov2plus.py",
           "self.queue_ptr[0] = (ptr + n) % self.queue_size", "self.queue_ptr[0] = ptr % self.queue_size",
           "moco", "queue pointer never moves"),
    Mutant("control_queue_clone_order", "harl/methods/mocov2plus.py",
           "queue = self.queue.clone().detach()", "queue = self.queue.detach().clone()",
           "moco", "control: a behaviour-preserving edit (must survive)"),
    Mutant("moco_keys_not_normalised", "harl/methods/mocov2plus.py",
           'k = [F.normalize(x, dim=-1) for x in out["momentum_z"]]', 'k = list(out["momentum_z"])',
           "moco", "un-normalised keys are enqueued"),
    # ---------------------------------------------------------------- HARL
    Mutant("harl_fg_bg_swapped", "harl/methods/harl.py",
           "m_f, m_b = grids[v]", "m_b, m_f = grids[v]",
           "harl", "fg and bg grids swapped"),
    Mutant("harl_alpha_beta_swapped", "harl/methods/harl.py",
           'self.alpha, self.beta = sched["alpha"], sched["beta"]', 'self.alpha, self.beta = sched["beta"], sched["alpha"]',
           "harl", "α and β swapped"),
    Mutant("harl_target_other_view_mask", "harl/methods/harl.py",
           'target = self._pool(out["momentum_region_map"][v], out["momentum_feat_map"][v], m_f, m_b,',
           'target = self._pool(out["momentum_region_map"][v], out["momentum_feat_map"][v], *grids[1 - v],',
           "harl", "target pooled with the other view's mask"),
    Mutant("harl_region_target_online_projector", "harl/methods/harl.py",
           'else (region_proj, mom_region_proj)', 'else (region_proj, region_proj)',
           "harl", "region targets through the online projector"),
    Mutant("harl_schedules_frozen", "harl/methods/harl.py",
           "step, total = self.global_step, int(self.trainer.estimated_stepping_batches)",
           "step, total = 0, int(self.trainer.estimated_stepping_batches)",
           "harl", "α / β schedules frozen at step 0"),
    Mutant("harl_empty_weights_ignored", "harl/methods/harl.py",
           'weights[key] = online[f"w_{key}"]', 'weights[key] = torch.ones_like(online[f"w_{key}"])',
           "harl", "empty-region weights ignored"),
    Mutant("harl_validity_one_view", "harl/methods/harl.py",
           "valid_f = region_validity(grids[0][0], grids[1][0])", "valid_f = region_validity(grids[0][0], grids[0][0])",
           "harl", "fg validity looks at view 1 only"),
    Mutant("harl_target_global_from_online_map", "harl/methods/harl.py",
           'target["h_g"] = self.momentum_backbone.pool(out["momentum_feat_map"][v])',
           'target["h_g"] = self.momentum_backbone.pool(out["feat_map"][v])',
           "harl", "global target pooled from the online map"),
    Mutant("harl_beta_schedule_reversed", "harl/losses/harl.py",
           '"cosine": lambda step, total, base, beta_min: max(beta_min, base * cosine_coefficient(step, total)),',
           '"cosine": lambda step, total, base, beta_min: max(beta_min, base * (1 - cosine_coefficient(step, total))),',
           "harl", "β rises instead of decaying"),
    # ---------------------------------------------------------------- HAPiCL
    Mutant("hapicl_pix_weight_ignored", "harl/methods/hapicl.py",
           "total = inst + self.pix_weight * pix", "total = inst + pix",
           "hapicl", "pix_weight ignored"),
    Mutant("hapicl_momentum_pairs_same_view", "harl/methods/hapicl.py",
           'return [(out["pix"][0], target[1].detach()), (target[0].detach(), out["pix"][1])]',
           'return [(out["pix"][0], target[0].detach()), (target[1].detach(), out["pix"][1])]',
           "hapicl", "pixel target taken from the same view"),
    Mutant("hapicl_target_online_pixel_head", "harl/methods/hapicl.py",
           'out["pix"] = self.pixel_embed(self.momentum_pixel_head, out["feat_map"])',
           'out["pix"] = self.pixel_embed(self.pixel_head, out["feat_map"])',
           "hapicl", "pixel targets through the online pixel head"),
    Mutant("hapicl_masks_swapped", "harl/methods/hapicl.py",
           "fg1, fg2 = self.pixel_grids(", "fg2, fg1 = self.pixel_grids(",
           "hapicl", "view 1's mask used for view 2's cells"),
    Mutant("hapicl_spatial_boxes_swapped", "harl/methods/hapicl.py",
           'c1, c2 = (c.to(device) for c in extras["coords"][:2])', 'c2, c1 = (c.to(device) for c in extras["coords"][:2])',
           "hapicl", "crop boxes of the two views swapped in the spatial rule"),
    Mutant("hapicl_byol_same_view", "harl/methods/hapicl.py",
           "loss = byol_loss(p[1], zt[0]) + byol_loss(p[0], zt[1])", "loss = byol_loss(p[0], zt[0]) + byol_loss(p[1], zt[1])",
           "hapicl", "HAPiCL-BYOL regresses the same view"),
    Mutant("hapicl_pixel_head_not_averaged", "harl/methods/hapicl.py",
           "return super().momentum_pairs + [(self.pixel_head, self.momentum_pixel_head)]", "return super().momentum_pairs",
           "ema", "EMA pixel head never updated"),
    Mutant("hapicl_moco_enqueue_swapped", "harl/methods/hapicl.py",
           "self.enqueue(torch.stack([gather_no_grad(k[0]), gather_no_grad(k[1])]))",
           "self.enqueue(torch.stack([gather_no_grad(k[1]), gather_no_grad(k[0])]))",
           "hapicl", "HAPiCL-MoCo keys go into the other view's queue"),
    # ---------------------------------------------------------------- SGM
    Mutant("sgm_moco_hard_negatives_same_view", "harl/methods/sgm.py",
           "return (moco_loss(z[0], k[1], queue[1], self.temperature, t[1], a)\n"
           "                + moco_loss(z[1], k[0], queue[0], self.temperature, t[0], a)) / 2",
           "return (moco_loss(z[0], k[1], queue[1], self.temperature, t[0], a)\n"
           "                + moco_loss(z[1], k[0], queue[0], self.temperature, t[1], a)) / 2",
           "sgm", "MoCo query meets its own view's hard negatives"),
    Mutant("sgm_hard_scale_ignored", "harl/methods/sgm.py",
           "a = self.hard_neg_scale", "a = 1.0",
           "sgm", "hard-negative scale α ignored"),
    Mutant("sgm_simclr_hard_negatives_same_view", "harl/methods/sgm.py",
           "hard_negative_logits(z[v], t[1 - v], self.hard_neg_scale, self.temperature)",
           "hard_negative_logits(z[v], t[v], self.hard_neg_scale, self.temperature)",
           "sgm", "SimCLR anchor gets its own view's hard negatives"),
    Mutant("sgm_keys_not_filtered", "harl/methods/sgm.py",
           "keys = self.key_forward(inputs)", "keys = self.key_forward(X)",
           "sgm", "keys computed on the un-filtered views"),
    Mutant("sgm_moco_hard_negatives_online_encoder", "harl/methods/sgm.py",
           "return self.momentum_projector(self.momentum_backbone(self._prepare(x)))",
           "return self.projector(self.backbone(self._prepare(x)))",
           "sgm", "MoCo hard negatives encoded by the online encoder"),
    Mutant("sgm_moco_enqueue_swapped", "harl/methods/sgm.py",
           "self.enqueue(torch.stack([gather_no_grad(k[0]), gather_no_grad(k[1])]))",
           "self.enqueue(torch.stack([gather_no_grad(k[1]), gather_no_grad(k[0])]))",
           "sgm", "SGM keys go into the other view's queue"),
    # ---------------------------------------------------------------- W-MSE
    Mutant("wmse_batch_not_shuffled", "harl/methods/wmse.py",
           "perms = [torch.randperm(n, device=z[0].device) for _ in range(self.whitening_iters)]",
           "perms = [torch.arange(n, device=z[0].device) for _ in range(self.whitening_iters)]",
           "wmse", "W-MSE sub-batches are always the same consecutive samples"),
    Mutant("wmse_whitened_on_the_whole_batch", "harl/losses/wmse.py",
           "white[v][idx] = cholesky_whiten(z[idx], eps)", "white[v][idx] = cholesky_whiten(z, eps)[idx]",
           "wmse", "W-MSE whitens the whole batch instead of each sub-batch"),
    Mutant("wmse_one_whitening_iteration", "harl/methods/wmse.py",
           "for _ in range(self.whitening_iters)]", "for _ in range(1)]",
           "wmse", "W-MSE ignores whitening_iters"),
    # ---------------------------------------------------------------- VIbCReg
    Mutant("vibcreg_iternorm_dropped", "harl/methods/vibcreg.py",
           "last = IterNorm(kw.proj_output_dim, self.ITERNORM_GROUPS, self.ITERNORM_T) if kw.iternorm else nn.Identity()",
           "last = nn.Identity()",
           "vibcreg", "VIbCReg's projector has no IterNorm"),
    Mutant("vibcreg_covariance_not_normalised", "harl/losses/vibcreg.py",
           "zn = F.normalize(z - z.mean(dim=0), p=2, dim=0)", "zn = z - z.mean(dim=0)",
           "vibcreg", "VIbCReg's covariance term on centred but not normalised features (VICReg's)"),
    Mutant("vibcreg_cov_weight_default", "harl/methods/vibcreg.py",
           "self.cov_loss_weight = float(kw.cov_loss_weight)",
           'self.cov_loss_weight = float(self._DEFAULT_METHOD_KWARGS["cov_loss_weight"])',
           "vibcreg", "VIbCReg reads the default covariance weight instead of the configured one"),
    Mutant("iternorm_eval_batch_statistics", "harl/heads/iternorm.py",
           "if self.training:", "if True:",
           "vibcreg", "IterNorm whitens with the batch's statistics in evaluation too"),
    # ---------------------------------------------------------------- SupCon
    Mutant("supcon_positives_by_sample_index", "harl/methods/supcon.py",
           'labels = targets.repeat(len(out["z"]))', 'labels = batch[0].repeat(len(out["z"]))',
           "supcon", "SupCon's positives are the image's own views only (SimCLR)"),
    Mutant("supcon_small_crops_dropped", "harl/methods/supcon.py",
           'z = torch.cat(out["z"])', 'z = torch.cat(out["z"][: self.num_large_crops])',
           "supcon", "SupCon leaves the multi-crop small crops out"),
    Mutant("supcon_temperature_default", "harl/methods/supcon.py",
           "self.temperature = float(kw.temperature)",
           'self.temperature = float(self._DEFAULT_METHOD_KWARGS["temperature"])',
           "supcon", "SupCon reads the default temperature instead of the configured one"),
    Mutant("supcon_self_mask_offset_zero", "harl/methods/supcon.py",
           "offset=rank() * z.shape[0])", "offset=0)",
           "supcon_ddp", "SupCon on rank > 0 masks the wrong rows as 'self'"),
    Mutant("supcon_positives_not_gathered", "harl/methods/supcon.py",
           "loss = supcon_loss(z, labels, self.temperature, gather_with_grad(z), gather_no_grad(labels),\n"
           "                           offset=rank() * z.shape[0])",
           "loss = supcon_loss(z, labels, self.temperature)",
           "supcon_ddp", "SupCon's positives and negatives stay local to each process"),
    # ---------------------------------------------------------------- DeepClusterV2
    Mutant("deepclusterv2_one_bank_for_every_set", "harl/methods/deepclusterv2.py",
           "crop = (crop + 1) % self.num_large_crops", "crop = 0",
           "deepclusterv2", "every prototype set clusters the first crop's bank"),
    Mutant("deepclusterv2_small_crops_not_trained", "harl/methods/deepclusterv2.py",
           'scores = [[proto(z) for z in out["z"]] for proto in self.prototypes]',
           'scores = [[proto(z) for z in out["z"][: self.num_large_crops]] for proto in self.prototypes]',
           "deepclusterv2", "the small crops do not predict the assignments"),
    Mutant("deepclusterv2_bank_rows_overwritten", "harl/methods/deepclusterv2.py",
           "start, n = batch_idx * indexes.shape[0], indexes.shape[0]", "start, n = 0, indexes.shape[0]",
           "deepclusterv2", "every batch overwrites the first rows of the memory bank"),
    Mutant("deepclusterv2_centroids_not_copied", "harl/methods/deepclusterv2.py",
           "self.prototypes[h].weight.copy_(centroids.to(self.prototypes[h].weight.dtype))",
           "centroids = centroids",
           "deepclusterv2", "the prototypes are never set to the k-means centroids"),
    Mutant("kmeans_centroids_not_normalised", "harl/losses/deepclusterv2.py",
           "centroids[filled] = F.normalize(sums[filled] / counts[filled, None], dim=1)",
           "centroids[filled] = sums[filled] / counts[filled, None]",
           "deepclusterv2", "k-means centroids are plain means (not spherical)"),
]

#: mutants that are behaviour-preserving on purpose (controls): they must survive
CONTROLS = {"control_queue_clone_order"}


def check_patches(root: str = ROOT) -> List[str]:
    """Problems with the mutant list against the current source (empty list: all apply)."""
    problems = []
    names = [m.name for m in MUTANTS]
    if len(set(names)) != len(names):
        problems.append("duplicate mutant names")
    for m in MUTANTS:
        path = os.path.join(root, m.path)
        if not os.path.isfile(path):
            problems.append(f"{m.name}: {m.path} does not exist")
            continue
        n = open(path, encoding="utf-8").read().count(m.old)
        if n != 1:
            problems.append(f"{m.name}: target text found {n} times in {m.path} (needs exactly 1)")
        if m.tests not in SEL:
            problems.append(f"{m.name}: unknown test selection {m.tests!r}")
        if m.old == m.new:
            problems.append(f"{m.name}: the patch changes nothing")
    return problems


def make_tree(dest: str) -> None:
    for item in COPY:
        src = os.path.join(ROOT, item)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(dest, item),
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache"))
        else:
            shutil.copy2(src, os.path.join(dest, item))


def apply(tree: str, m: Mutant) -> None:
    path = os.path.join(tree, m.path)
    text = open(path, encoding="utf-8").read()
    if text.count(m.old) != 1:
        raise RuntimeError(f"{m.name}: target text not found exactly once in {m.path}")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace(m.old, m.new))


def run_tests(tree: str, args: Sequence[str], timeout: int) -> Tuple[bool, float, str]:
    """(passed, seconds, output tail) of pytest on ``args`` inside ``tree``."""
    env = dict(os.environ, PYTHONPATH=tree, WANDB_MODE="offline", WANDB_SILENT="true", PYTHONHASHSEED="0",
               PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *args]
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
        ok, out = proc.returncode == 0, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired:
        ok, out = False, "timeout"
    return ok, time.time() - t0, out[-2000:]


def markdown(rows: List[dict]) -> str:
    lines = ["| mutant | bug | tests run | killed? |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r['name']}` | {r['what']} | `{' '.join(r['tests'])}` | "
                     f"{'killed' if r['killed'] else 'SURVIVED'}{' (control)' if r['name'] in CONTROLS else ''} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=None, help="run mutants whose name starts with this prefix")
    ap.add_argument("--check", action="store_true", help="only check that every patch applies")
    ap.add_argument("--list", action="store_true", help="list the mutants")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per test run")
    ap.add_argument("--markdown", default=None, help="also write the table to this file")
    args = ap.parse_args(argv)

    problems = check_patches()
    if problems or args.check:
        for p in problems:
            print("PATCH PROBLEM:", p)
        print(f"{len(MUTANTS)} mutants, {len(problems)} problems")
        return 1 if problems else 0
    todo = [m for m in MUTANTS if args.only is None or m.name.startswith(args.only)]
    if args.list:
        for m in todo:
            print(f"{m.name:42s} {m.path:28s} {' '.join(SEL[m.tests])}")
        return 0

    with tempfile.TemporaryDirectory(prefix="harl-mutation-") as tmp:
        base = os.path.join(tmp, "baseline")
        os.makedirs(base)
        make_tree(base)
        for key in sorted({m.tests for m in todo}):
            ok, sec, out = run_tests(base, SEL[key], args.timeout)
            print(f"baseline {key:8s} {'green' if ok else 'RED'} ({sec:.0f} s)", flush=True)
            if not ok:
                print(out)
                return 2
        rows = []
        for m in todo:
            tree = os.path.join(tmp, m.name)
            os.makedirs(tree)
            make_tree(tree)
            apply(tree, m)
            ok, sec, _ = run_tests(tree, SEL[m.tests], args.timeout)
            rows.append({"name": m.name, "what": m.what, "tests": SEL[m.tests], "killed": not ok, "sec": sec})
            print(f"{m.name:42s} {'killed' if not ok else 'SURVIVED':9s} {sec:6.0f} s", flush=True)
            shutil.rmtree(tree, ignore_errors=True)
    real = [r for r in rows if r["name"] not in CONTROLS]
    killed = sum(r["killed"] for r in real)
    survivors = [r["name"] for r in real if not r["killed"]]
    controls_killed = [r["name"] for r in rows if r["name"] in CONTROLS and r["killed"]]
    print()
    print(markdown(rows))
    print()
    print(f"kill rate: {killed}/{len(real)} = {100.0 * killed / max(1, len(real)):.1f} %"
          + (f"; survivors: {', '.join(survivors)}" if survivors else "; no survivors"))
    if controls_killed:
        print(f"controls killed (a test fails on a harmless edit): {', '.join(controls_killed)}")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(rows) + "\n")
    return 0 if not survivors and not controls_killed else 1


if __name__ == "__main__":
    sys.exit(main())
