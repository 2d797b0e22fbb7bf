"""kNN evaluation: every grid setting against knn_predict and a plain-loop weighted kNN."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch.nn.functional as F

from harl.eval.knn_probe import knn_eval, knn_scores
from harl.eval.pretrained import load_pretrained_backbone
from harl.ops.knn import knn_predict, topk_accuracy
from tests.test_eval_pretrained import shared_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny_ckpt(scenes_root, tmp_path_factory):
    return shared_tiny_checkpoint(scenes_root, tmp_path_factory)


def _naive_knn_top1(train_f, train_t, test_f, test_t, k, T, num_classes):
    """A plain-loop weighted kNN (cosine, exp(cos/T) weights)."""
    correct = 0
    tn = F.normalize(train_f, dim=1)
    for i in range(test_f.shape[0]):
        q = F.normalize(test_f[i], dim=0)
        sims = [(float(q @ tn[j]), int(train_t[j])) for j in range(tn.shape[0])]
        sims.sort(key=lambda s: -s[0])
        scores = [0.0] * num_classes
        for s, c in sims[:k]:
            scores[c] += float(np.exp(s / T))
        correct += int(int(np.argmax(scores)) == int(test_t[i]))
    return 100.0 * correct / test_f.shape[0]


def test_knn_matches_knn_predict_and_a_naive_loop(tiny_ckpt, scenes_root, tmp_path):
    res = knn_eval(tiny_ckpt, dataset="fashion_scenes", train_path=scenes_root, val_path=scenes_root,
                   k=[3, 20], T=[0.07, 0.5], out_dir=str(tmp_path), progress=False)
    grid = res["metrics"]["grid"]
    assert len(grid) == 4 and os.path.isfile(os.path.join(res["run_dir"], "knn_grid.csv"))
    from harl.data import build_classification_dataset
    from harl.eval.features import extract_features

    bb, info = load_pretrained_backbone(tiny_ckpt)
    mean, std = info["mean"], info["std"]
    tr = build_classification_dataset("fashion_scenes", scenes_root, "train", 32, mean, std)
    va = build_classification_dataset("fashion_scenes", scenes_root, "val", 32, mean, std)
    ftr, ttr = extract_features(bb, tr, progress=False)
    fva, tva = extract_features(bb, va, progress=False)
    for row in grid:
        scores = knn_predict(ftr, ttr, fva, 10, k=row["k"], T=row["T"], distance_func="cosine")
        assert (row["top1"], row["top5"]) == pytest.approx(topk_accuracy(scores, tva))
        assert row["top1"] == pytest.approx(_naive_knn_top1(ftr, ttr, fva, tva, row["k"], row["T"], 10))
    assert res["top1"] == max(r["top1"] for r in grid)


def test_knn_scores_drop_unlabelled_bank_items_and_euclidean():
    import torch

    g = torch.Generator().manual_seed(0)
    f = torch.randn(30, 4, generator=g)
    t = torch.arange(30) % 3
    t_unl = t.clone()
    t_unl[::5] = -1
    rows = knn_scores(f, t_unl, f[:9], t[:9], 3, [{"k": 3, "T": 0.1, "distance_func": "euclidean"}])
    keep = t_unl != -1
    ref = topk_accuracy(knn_predict(f[keep], t_unl[keep], f[:9], 3, k=3, distance_func="euclidean"), t[:9])
    assert (rows[0]["top1"], rows[0]["top5"]) == pytest.approx(ref)
