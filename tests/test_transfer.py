"""Transfer linear protocol: the ℓ2 logistic regression solver against independent computations,
the penalty search on a problem whose best penalty is known in closed form, the metrics, and the
image-folder pipeline with its feature cache."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from harl.eval.transfer import (
    DEFAULT_PENALTIES,
    Standardizer,
    fit_logistic_regression,
    linear_transfer,
    logistic_objective,
    mean_per_class_accuracy,
    run_transfer,
    search_penalty,
    select_best,
    top1_accuracy,
)
from tests.test_finetune_fixtures import fake_pretrain_run, write_image_folder


def test_default_grid_is_45_log_spaced_values_from_1e_minus6_to_1e5():
    p = np.asarray(DEFAULT_PENALTIES)
    assert len(p) == 45 and p[0] == pytest.approx(1e-6) and p[-1] == pytest.approx(1e5)
    np.testing.assert_allclose(np.diff(np.log10(p)), 11 / 44)


def _np_objective(theta, X, y, k, lam):
    """The same objective written independently in numpy: mean CE + λ/2 ‖W‖² (bias unpenalised)."""
    d = X.shape[1]
    W, b = theta[: d * k].reshape(d, k), theta[d * k:]
    z = X @ W + b
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    loss = -logp[np.arange(len(y)), y].mean() + 0.5 * lam * (W ** 2).sum()
    p = np.exp(logp)
    p[np.arange(len(y)), y] -= 1.0
    p /= len(y)
    return loss, np.concatenate([(X.T @ p + lam * W).ravel(), p.sum(axis=0)])


@pytest.mark.parametrize("lam", [1e-2, 1.0])
def test_solver_matches_an_independent_scipy_minimisation(lam):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 5))
    y = rng.integers(0, 3, size=60)
    res = minimize(_np_objective, np.zeros(5 * 3 + 3), args=(X, y, 3, lam), jac=True, method="BFGS",
                   options={"gtol": 1e-10, "maxiter": 10000})
    m = fit_logistic_regression(torch.tensor(X), torch.tensor(y), 3, lam, tol=1e-10)
    assert m.converged
    assert m.loss == pytest.approx(res.fun, abs=1e-9)
    # the penalised part is unique; the bias only up to a constant shift across classes
    np.testing.assert_allclose(m.W.numpy(), res.x[:15].reshape(5, 3), atol=1e-5)
    db = m.b.numpy() - res.x[15:]
    np.testing.assert_allclose(db - db.mean(), 0.0, atol=1e-5)
    # and it is a stationary point of the torch objective (autograd)
    W, b = m.W.clone().requires_grad_(True), m.b.clone().requires_grad_(True)
    logistic_objective(W, b, torch.tensor(X), torch.tensor(y), lam).backward()
    assert float(W.grad.abs().max()) < 1e-6 and float(b.grad.abs().max()) < 1e-6


def test_penalty_search_finds_the_known_best_penalty():
    """Train: three points at x = +1 (class 1), one at x = −1 (class 0); val: x = −0.5, class 0.

    With the bias unpenalised and K = 2 softmax columns (effective w = w₁ − w₀, penalty λw²/4),
    the boundary −b/w passes through −0.5 exactly when b = w/2. The bias equation
    3σ(w + b) + σ(−w + b) = 3 then gives σ(−w/2) = 3σ(−3w/2), i.e. t = e^{−w/2} solves
    2t³ + 3t² − 1 = 0 → t = 1/2, w = ln 4, b = ln 2; the w equation gives
    λ* = [3σ(−3w/2) + σ(−w/2)] / (2w) = (1/3 + 1/3) / (2 ln 4) = 1 / (3 ln 4) ≈ 0.2404.
    For λ < λ* the val point is classified correctly (100 %), for λ > λ* not (0 %), so the search
    must pick the largest grid penalty below λ* (ties go to the largest penalty): 0.1778.
    """
    lam_star = 1.0 / (3.0 * math.log(4.0))
    X = torch.tensor([[1.0], [1.0], [1.0], [-1.0]], dtype=torch.float64)
    y = torch.tensor([1, 1, 1, 0])
    m = fit_logistic_regression(X, y, 2, lam_star, tol=1e-12)
    assert float(m.W[0, 1] - m.W[0, 0]) == pytest.approx(math.log(4.0), abs=1e-6)
    assert float(m.b[1] - m.b[0]) == pytest.approx(math.log(2.0), abs=1e-6)

    Xv, yv = torch.tensor([[-0.5]], dtype=torch.float64), torch.tensor([0])
    s = search_penalty(X, y, Xv, yv, 2, standardize=False, tol=1e-9)
    grid = np.asarray(DEFAULT_PENALTIES)
    expected = grid[grid < lam_star].max()
    assert expected == pytest.approx(10 ** (-6 + 11 * 21 / 44))  # 0.1778, not within a rounding of λ*
    assert s.best_penalty == pytest.approx(expected)
    acc = dict(zip(s.penalties, s.val_top1))
    assert all(acc[p] == 100.0 for p in s.penalties if p < lam_star)
    assert all(acc[p] == 0.0 for p in s.penalties if p > lam_star)


def test_select_best_breaks_ties_towards_the_largest_penalty_and_metric_choice():
    assert select_best([0.1, 1.0, 10.0], [80.0, 90.0, 90.0]) == 10.0
    assert select_best([0.1, 1.0, 10.0], [95.0, 90.0, 90.0]) == 0.1
    # mean per-class accuracy can pick differently from top-1 on imbalanced val data
    scores = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    targets = torch.tensor([0, 0, 0, 1])
    assert top1_accuracy(scores, targets) == 100.0
    scores2 = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    assert top1_accuracy(scores2, targets) == 75.0
    assert mean_per_class_accuracy(scores2, targets) == 50.0  # (3/3 + 0/1) / 2


def test_mean_per_class_accuracy_by_hand():
    targets = torch.tensor([0, 0, 1, 1, 1, 2])
    pred = torch.tensor([0, 1, 1, 1, 0, 2])
    scores = torch.nn.functional.one_hot(pred, 4).float()
    # class 0: 1/2, class 1: 2/3, class 2: 1/1; class 3 absent from the targets is ignored
    assert mean_per_class_accuracy(scores, targets, 4) == pytest.approx(100 * (0.5 + 2 / 3 + 1) / 3)
    assert top1_accuracy(scores, targets) == pytest.approx(100 * 4 / 6)


def test_standardizer_uses_train_statistics_and_leaves_constant_dims_finite():
    X = torch.tensor([[1.0, 5.0], [3.0, 5.0]])
    st = Standardizer.fit(X)
    torch.testing.assert_close(st(X), torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
    torch.testing.assert_close(st(torch.tensor([[5.0, 6.0]])), torch.tensor([[3.0, 1.0]]))


def test_linear_transfer_refits_on_train_plus_val_with_the_chosen_penalty():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, 8)) * 3

    def draw(n):
        y = rng.integers(0, 3, size=n)
        return torch.tensor(centres[y] + rng.normal(size=(n, 8)), dtype=torch.float32), torch.tensor(y)

    tr, va, te = draw(90), draw(30), draw(60)
    grid = [1e-3, 1e-1, 10.0]
    res = linear_transfer(tr, va, te, 3, penalties=grid)
    assert res["num_train"] == 90 and res["num_val"] == 30 and res["num_test"] == 60
    assert [r["penalty"] for r in res["search"]] == grid and res["penalty"] in grid
    # the reported test accuracy is that of a model refit on train+val (standardised on both)
    Xall, yall = torch.cat([tr[0], va[0]]), torch.cat([tr[1], va[1]])
    st = Standardizer.fit(Xall)
    m = fit_logistic_regression(st(Xall), yall, 3, res["penalty"])
    assert res["top1"] == pytest.approx(top1_accuracy(m.decision_function(st(te[0])), te[1]))
    assert res["top1"] > 90.0


def test_run_transfer_on_an_image_folder_caches_features(tmp_path, monkeypatch):
    data = write_image_folder(str(tmp_path / "data"), n_train=10, n_val=4)
    run_dir, ckpt = fake_pretrain_run(str(tmp_path), seed=3)
    kw = dict(name="toy", crop_size=32, penalties=[1e-3, 1.0, 100.0], checkpoint_dir=str(tmp_path / "tm"),
              num_workers=0, device="cpu", progress=False)
    res = run_transfer(ckpt, os.path.join(data, "train"), os.path.join(data, "val"), **kw)
    assert res["mode"] == "transfer_linear" and res["dataset"] == "toy" and res["method"] == "byol"
    assert res["seed"] == 3 and res["num_classes"] == 3 and res["feature_dim"] == 64
    assert res["num_train"] + res["num_val"] == 30 and res["num_val"] == 3  # 10 % of each class held out
    assert res["num_test"] == 12 and res["penalty"] in kw["penalties"]
    assert json.load(open(os.path.join(res["run_dir"], "results.json")))["top1"] == res["top1"]
    val_list = [ln for ln in open(os.path.join(res["run_dir"], "val_split.txt")) if not ln.startswith("#")]
    assert len(val_list) == 3
    cache = sorted(os.listdir(tmp_path / "tm" / "feature_cache"))
    assert len(cache) == 2 and all(f.endswith(".safetensors") for f in cache)

    # second run: the features come from the cache (the backbone is never run)
    import harl.eval.features as feats

    def boom(*a, **k):
        raise AssertionError("features were extracted again")

    monkeypatch.setattr(feats, "_run", boom)
    again = run_transfer(ckpt, os.path.join(data, "train"), os.path.join(data, "val"), **kw)
    assert again["top1"] == res["top1"] and again["penalty"] == res["penalty"]


def test_run_transfer_with_a_given_val_split_and_class_mismatch_error(tmp_path):
    data = write_image_folder(str(tmp_path / "data"), n_train=6, n_val=3)
    _, ckpt = fake_pretrain_run(str(tmp_path))
    res = run_transfer(ckpt, os.path.join(data, "train"), os.path.join(data, "val"), os.path.join(data, "val"),
                       crop_size=32, penalties=[0.1], checkpoint_dir=str(tmp_path / "tm"), use_cache=False,
                       num_workers=0, device="cpu", progress=False)
    assert res["num_train"] == 18 and res["num_val"] == 9 and res["val_source"] == "given"
    os.rename(os.path.join(data, "val", "c2"), os.path.join(data, "val", "c9"))
    with pytest.raises(ValueError, match=r"classes of .*val.* differ.*c2.*c9"):
        run_transfer(ckpt, os.path.join(data, "train"), os.path.join(data, "val"), crop_size=32, penalties=[0.1],
                     checkpoint_dir=str(tmp_path / "tm"), use_cache=False, num_workers=0, device="cpu",
                     progress=False)


def test_transfer_cli(tmp_path, capsys):
    from harl.cli.transfer import main

    data = write_image_folder(str(tmp_path / "data"), n_train=6, n_val=3)
    _, ckpt = fake_pretrain_run(str(tmp_path))
    rc = main(["--pretrained", ckpt, "--train", f"{data}/train", "--test", f"{data}/val", "--crop-size", "40",
               "--resize", "--penalties", "0.01,1", "--out", str(tmp_path / "out"), "--checkpoint-dir",
               str(tmp_path / "tm"), "--num-workers", "0", "--device", "cpu", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert "test top-1" in capsys.readouterr().out
    res = json.load(open(tmp_path / "out" / "results.json"))
    assert res["crop_size"] == 40 and json.load(open(tmp_path / "out" / "args.json"))["resize"] is True
    assert [r["penalty"] for r in res["search"]] == [0.01, 1.0]
    rc = main(["--pretrained", str(tmp_path / "missing.ckpt"), "--train", f"{data}/train", "--test", f"{data}/val"])
    assert rc == 2 and "missing.ckpt" in capsys.readouterr().err
