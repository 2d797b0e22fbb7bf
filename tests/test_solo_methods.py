"""solo-learn's baselines on harl's core: Barlow Twins, VICReg, SimSiam, MoCo v3, SwAV, DINO.

Reference-value tests of every training step: for one fixed small batch the test recomputes the
total loss and the gradients of a few parameters from the method's formulas, written here with
the model's own sub-modules (backbone, heads) and plain torch (no harl loss helper), and compares
them with what ``training_step`` + ``backward`` give. Plus the method-specific state (SwAV's queue
and frozen prototypes, DINO's centre / temperature schedule / frozen last layer, SimSiam's constant
predictor lr, MoCo v3's ViT heads) and the configuration errors.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from harl.config import parse_cfg
from harl.errors import ConfigError
from harl.methods import METHODS
from tests.conftest import tiny_cfg

pytestmark = pytest.mark.filterwarnings("ignore:.*self.log.*", "ignore:.*self.trainer.*")

B = 8
KW = {
    "barlow_twins": {"proj_hidden_dim": 32, "proj_output_dim": 16, "lamb": 0.02, "scale_loss": 0.5},
    "vicreg": {"proj_hidden_dim": 32, "proj_output_dim": 16, "sim_loss_weight": 20.0, "var_loss_weight": 15.0,
               "cov_loss_weight": 2.0},
    "simsiam": {"proj_hidden_dim": 32, "proj_output_dim": 16, "pred_hidden_dim": 8},
    "mocov3": {"proj_hidden_dim": 32, "proj_output_dim": 16, "pred_hidden_dim": 32, "temperature": 0.3},
    "swav": {"proj_hidden_dim": 32, "proj_output_dim": 16, "num_prototypes": 10, "queue_size": 16,
             "epoch_queue_starts": 0, "temperature": 0.2, "sk_epsilon": 0.1, "freeze_prototypes_epochs": 0},
    "nnclr": {"proj_hidden_dim": 32, "proj_output_dim": 16, "pred_hidden_dim": 32, "temperature": 0.3,
              "queue_size": 32},
    "nnbyol": {"proj_hidden_dim": 32, "proj_output_dim": 16, "pred_hidden_dim": 32, "queue_size": 32},
    "nnsiam": {"proj_hidden_dim": 32, "proj_output_dim": 16, "pred_hidden_dim": 8, "queue_size": 32},
    "ressl": {"proj_hidden_dim": 32, "proj_output_dim": 16, "temperature_q": 0.2, "temperature_k": 0.05,
              "queue_size": 32},
    "dino": {"proj_hidden_dim": 32, "proj_output_dim": 16, "num_prototypes": 20, "freeze_last_layer": 0,
             "student_temperature": 0.2, "teacher_temperature": 0.07, "warmup_teacher_temperature": 0.04,
             "warmup_teacher_temperature_epochs": 0},
    "vibcreg": {"proj_hidden_dim": 32, "proj_output_dim": 128, "sim_loss_weight": 20.0, "var_loss_weight": 15.0,
                "cov_loss_weight": 50.0},
    "deepclusterv2": {"proj_hidden_dim": 32, "proj_output_dim": 16, "num_prototypes": [5, 4], "temperature": 0.2,
                      "kmeans_iters": 2},
    "supcon": {"proj_hidden_dim": 32, "proj_output_dim": 16, "temperature": 0.3},
    "wmse": {"proj_hidden_dim": 32, "proj_output_dim": 3, "whitening_size": 4, "whitening_iters": 2},
}
NEW_METHODS = list(KW)
TWO_CROPS = [{"crop_size": 32, "num_crops": 2}]
MULTI_CROP = [{"crop_size": 32, "num_crops": 2}, {"crop_size": 16, "num_crops": 2}]


def build(method: str, seed: int = 0, augmentations=None, **kw):
    mk = dict(KW[method])
    mk.update(kw)
    cfg = parse_cfg(tiny_cfg(method, method_kwargs=mk, augmentations=augmentations or TWO_CROPS))
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return METHODS.get(method)(cfg)


def make_batch(seed: int = 0, sizes=(32, 32)):
    g = torch.Generator().manual_seed(seed)
    X = [torch.randn(B, 3, s, s, generator=g) for s in sizes]
    return [torch.arange(B), X, torch.randint(0, 10, (B,), generator=g)]


def step_and_grads(model, batch, names):
    model.zero_grad(set_to_none=True)
    loss = model.training_step(batch, 0)
    loss.backward()
    params = dict(model.named_parameters())
    return loss.detach(), {n: params[n].grad.detach().clone() for n in names}


def reference_grads(model, loss, names):
    model.zero_grad(set_to_none=True)
    loss.backward()
    params = dict(model.named_parameters())
    return loss.detach(), {n: params[n].grad.detach().clone() for n in names}


def classifier_ce(model, feats, targets):
    logits = model.classifier(torch.cat(feats).detach())
    return F.cross_entropy(logits, targets.repeat(len(feats)))


def assert_same(got, want):
    (l1, g1), (l2, g2) = got, want
    assert float(l1) == pytest.approx(float(l2), rel=1e-5, abs=1e-6)
    for name in g2:
        scale = float(g2[name].abs().max())
        assert torch.allclose(g1[name], g2[name], rtol=1e-4, atol=1e-5 * scale), name
        assert g2[name].abs().sum() > 0, f"reference gradient of {name} is zero: the test checks nothing"


def unit(x):
    return x / x.norm(dim=1, keepdim=True)


# ----------------------------------------------------------------------------- training steps


def test_barlow_twins_step_matches_reference():
    model = build("barlow_twins")
    batch = make_batch()
    names = ["backbone.conv1.weight", "projector.0.weight", "projector.6.weight"]
    got = step_and_grads(model, batch, names)

    feats = [model.backbone(x) for x in batch[1]]
    z1, z2 = (model.projector(f) for f in feats)
    a = F.batch_norm(z1, None, None, training=True, eps=1e-5)
    b = F.batch_norm(z2, None, None, training=True, eps=1e-5)
    c = torch.einsum("ni,nj->ij", a, b) / B
    eye = torch.eye(c.shape[0])
    ssl = 0.5 * (((c - eye) * eye).pow(2).sum() + 0.02 * (c * (1 - eye)).pow(2).sum())
    assert_same(got, reference_grads(model, ssl + classifier_ce(model, feats, batch[2]), names))


def test_vicreg_step_matches_reference():
    model = build("vicreg")
    batch = make_batch(1)
    names = ["backbone.conv1.weight", "projector.0.weight", "projector.6.weight"]
    got = step_and_grads(model, batch, names)

    feats = [model.backbone(x) for x in batch[1]]
    z1, z2 = (model.projector(f) for f in feats)
    d = z1.shape[1]
    inv = ((z1 - z2) ** 2).mean()
    var = sum(torch.clamp(1 - torch.sqrt(torch.var(z, dim=0) + 1e-4), min=0).mean() for z in (z1, z2))
    cov = 0
    for z in (z1, z2):
        cz = torch.cov(z.T)
        cov = cov + (cz.pow(2).sum() - cz.diagonal().pow(2).sum()) / d
    ssl = 20.0 * inv + 15.0 * var + 2.0 * cov
    assert_same(got, reference_grads(model, ssl + classifier_ce(model, feats, batch[2]), names))


def test_simsiam_step_matches_reference_with_stop_gradient():
    model = build("simsiam")
    batch = make_batch(2)
    names = ["backbone.conv1.weight", "projector.0.weight", "predictor.0.weight", "predictor.3.weight"]
    got = step_and_grads(model, batch, names)

    feats = [model.backbone(x) for x in batch[1]]
    z = [model.projector(f) for f in feats]
    p = [model.predictor(x) for x in z]
    ssl = -0.5 * ((unit(p[0]) * unit(z[1].detach())).sum(1).mean() + (unit(p[1]) * unit(z[0].detach())).sum(1).mean())
    assert_same(got, reference_grads(model, ssl + classifier_ce(model, feats, batch[2]), names))
    # the projector's output layer ends in a BN without affine, the predictor keeps a constant lr
    assert not model.projector[-1].affine
    groups = {g["name"]: g for g in model.learnable_params}
    assert groups["predictor"].get("static_lr") is True and not groups["projector"].get("static_lr")


def test_mocov3_step_matches_reference():
    model = build("mocov3")
    with torch.no_grad():  # make the EMA branch differ from the online one
        for p in list(model.momentum_backbone.parameters()) + list(model.momentum_projector.parameters()):
            p.add_(0.05 * torch.randn_like(p))
    batch = make_batch(3)
    names = ["backbone.conv1.weight", "projector.0.weight", "predictor.3.weight"]
    got = step_and_grads(model, batch, names)

    feats = [model.backbone(x) for x in batch[1]]
    q = [model.predictor(model.projector(f)) for f in feats]
    with torch.no_grad():
        k = [model.momentum_projector(model.momentum_backbone(x)) for x in batch[1]]
    T = 0.3

    def ctr(qq, kk):
        logits = unit(qq) @ unit(kk).T / T
        return -torch.log_softmax(logits, dim=1).diagonal().mean() * 2 * T

    ssl = ctr(q[0], k[1]) + ctr(q[1], k[0])
    assert_same(got, reference_grads(model, ssl + classifier_ce(model, feats, batch[2]), names))
    for p in model.momentum_projector.parameters():
        assert p.grad is None


def _sinkhorn_ref(scores, eps, iters):
    Q = torch.exp(scores / eps)  # N×K
    Q = Q / Q.sum()
    n, k = Q.shape
    for _ in range(iters):
        Q = Q / Q.sum(dim=0, keepdim=True) / k  # every prototype gets 1/K of the mass
        Q = Q / Q.sum(dim=1, keepdim=True) / n  # every sample gets 1/N
    return Q * n


def _swav_reference(model, batch, queue=None):
    feats = [model.backbone(x) for x in batch[1]]
    z = [unit(model.projector(f)) for f in feats]
    protos = unit(model.prototypes.weight)
    p = [zz @ protos.T for zz in z]
    codes = []
    with torch.no_grad():
        for v in range(2):
            scores = p[v] if queue is None else torch.cat([p[v], queue[v] @ protos.T])
            codes.append(_sinkhorn_ref(scores.detach(), 0.1, 3)[:B])
    terms = [-(codes[v] * torch.log_softmax(p[w] / 0.2, dim=1)).sum(1).mean()
             for v in range(2) for w in range(len(p)) if w != v]
    return sum(terms) / len(terms) + classifier_ce(model, feats[:2], batch[2]), z


def test_swav_step_matches_reference_then_uses_its_queue():
    model = build("swav")
    names = ["backbone.conv1.weight", "projector.0.weight", "prototypes.weight"]
    b1, b2 = make_batch(4), make_batch(5)
    got = step_and_grads(model, b1, names)
    queue = model.queue.clone()
    assert int(model.queue_filled) == B
    ref_loss, z = _swav_reference(model, b1)
    assert_same(got, reference_grads(model, ref_loss, names))
    # the queue holds the first batch's unit projections of both large crops at its front
    assert torch.allclose(queue[:, :B], torch.stack([x.detach() for x in z]), atol=1e-6)
    assert torch.count_nonzero(queue[:, B:]) == 0
    # second step: the queued projections join the Sinkhorn problem
    got = step_and_grads(model, b2, names)
    ref_loss, _ = _swav_reference(model, b2, queue=queue[:, :B])
    assert_same(got, reference_grads(model, ref_loss, names))
    ref_no_queue, _ = _swav_reference(model, b2)
    assert abs(float(ref_no_queue.detach()) - float(got[0])) > 1e-6


def test_swav_multicrop_small_crops_predict_large_crop_codes():
    model = build("swav", augmentations=MULTI_CROP, queue_size=0)
    batch = make_batch(6, sizes=(32, 32, 16, 16))
    names = ["backbone.conv1.weight", "projector.3.weight"]
    got = step_and_grads(model, batch, names)
    ref_loss, _ = _swav_reference(model, batch)
    assert_same(got, reference_grads(model, ref_loss, names))


def test_swav_prototypes_frozen_then_trained_and_unit_norm():
    model = build("swav", freeze_prototypes_epochs=1)
    loss = model.training_step(make_batch(7), 0)
    loss.backward()
    model.on_after_backward()  # epoch 0 < 1: no gradient for the prototypes
    assert model.prototypes.weight.grad is None and model.projector[0].weight.grad is not None
    assert torch.allclose(model.prototypes.normalized_weight().norm(dim=1), torch.ones(10), atol=1e-6)


def test_nnclr_step_matches_reference_and_fills_its_support_set():
    model = build("nnclr")
    with torch.no_grad():  # labelled support set: row j has label j % 10
        model.support.labels.copy_(torch.arange(32) % 10)
    queue0 = model.support.queue.clone()
    batch = make_batch(11)
    names = ["backbone.conv1.weight", "projector.0.weight", "predictor.3.weight"]
    got = step_and_grads(model, batch, names)

    feats = [model.backbone(x) for x in batch[1]]
    z = [model.projector(f) for f in feats]
    p = [model.predictor(x) for x in z]
    T = 0.3

    def nn_of(zz):
        sims = unit(zz.detach()) @ unit(queue0).T
        return unit(queue0)[sims.argmax(dim=1)]

    def ce(n, pp):
        logits = unit(n) @ unit(pp).T / T
        return -torch.log_softmax(logits, dim=1).diagonal().mean()

    ssl = (ce(nn_of(z[0]), p[1]) + ce(nn_of(z[1]), p[0])) / 2
    assert_same(got, reference_grads(model, ssl + classifier_ce(model, feats, batch[2]), names))
    # z₁ (unit) and its labels went to the front of the support set; the pointer moved by B
    assert torch.allclose(model.support.queue[:B], unit(z[0].detach()), atol=1e-6)
    assert torch.equal(model.support.queue[B:], queue0[B:]) and int(model.support.ptr) == B
    assert torch.equal(model.support.labels[:B], batch[2])
    assert model.projector[-1].affine and isinstance(model.projector[-1], torch.nn.BatchNorm1d)


@pytest.mark.parametrize("method", ["nnbyol", "nnsiam"])
def test_nn_byol_and_siam_steps_match_reference(method):
    model = build(method)
    with torch.no_grad():
        model.support.labels.copy_(torch.arange(32) % 10)
        if method == "nnbyol":  # make the EMA branch differ from the online one
            for p in list(model.momentum_backbone.parameters()) + list(model.momentum_projector.parameters()):
                p.add_(0.05 * torch.randn_like(p))
    queue0 = model.support.queue.clone()
    batch = make_batch(12)
    names = ["backbone.conv1.weight", "projector.0.weight", "predictor.0.weight"]
    got = step_and_grads(model, batch, names)

    feats = [model.backbone(x) for x in batch[1]]
    p = [model.predictor(model.projector(f)) for f in feats]
    with torch.no_grad():
        if method == "nnbyol":
            keys = [model.momentum_projector(model.momentum_backbone(x)) for x in batch[1]]
        else:
            keys = [model.projector(f) for f in feats]
    nn = [unit(queue0)[(unit(k) @ unit(queue0).T).argmax(dim=1)] for k in keys]
    cos = [(unit(p[0]) * nn[1]).sum(1).mean(), (unit(p[1]) * nn[0]).sum(1).mean()]
    ssl = (2 - 2 * cos[0]) + (2 - 2 * cos[1]) if method == "nnbyol" else -(cos[0] + cos[1]) / 2
    assert_same(got, reference_grads(model, ssl + classifier_ce(model, feats, batch[2]), names))
    assert torch.allclose(model.support.queue[:B], unit(keys[0]), atol=1e-6)
    assert torch.equal(model.support.labels[:B], batch[2]) and int(model.support.ptr) == B


def test_support_set_size_must_fit_the_global_batch():
    for method in ("nnclr", "nnbyol", "nnsiam"):
        with pytest.raises(ConfigError, match="queue_size"):
            build(method, queue_size=20)


def test_ressl_step_matches_reference_and_enqueues_the_weak_view_key():
    model = build("ressl")
    with torch.no_grad():
        for p in list(model.momentum_backbone.parameters()) + list(model.momentum_projector.parameters()):
            p.add_(0.05 * torch.randn_like(p))
    queue0 = model.queue.clone()
    batch = make_batch(13)
    names = ["backbone.conv1.weight", "projector.0.weight", "projector.2.weight"]
    got = step_and_grads(model, batch, names)

    feats = [model.backbone(x) for x in batch[1]]
    q = model.projector(feats[0])  # strong view → student
    with torch.no_grad():
        k = model.momentum_projector(model.momentum_backbone(batch[1][1]))  # weak view → teacher
    Q = unit(queue0)
    target = torch.softmax(unit(k) @ Q.T / 0.05, dim=1)
    ssl = -(target * torch.log_softmax(unit(q) @ Q.T / 0.2, dim=1)).sum(1).mean()
    assert_same(got, reference_grads(model, ssl + classifier_ce(model, feats, batch[2]), names))
    assert torch.allclose(model.queue[:B], unit(k), atol=1e-6) and int(model.queue_ptr) == B
    assert torch.equal(model.queue[B:], queue0[B:])


def test_ressl_legacy_momentum_kwargs_of_solo_learn_recipes():
    build("ressl", base_tau_momentum=0.99, final_tau_momentum=1.0, momentum_classifier=None)
    with pytest.raises(ConfigError, match="base_tau_momentum .* disagrees with momentum.base_tau"):
        build("ressl", base_tau_momentum=0.9)


def _dino_head_ref(head, f):
    h = head.mlp(f)
    h = h / h.norm(dim=1, keepdim=True)
    w = head.last_layer.weight
    w = w / w.norm(dim=1, keepdim=True)
    if head.last_layer.gain is not None:
        w = w * head.last_layer.gain
    return h @ w.T


@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_dino_multicrop_step_matches_reference(norm_last_layer):
    model = build("dino", augmentations=MULTI_CROP, norm_last_layer=norm_last_layer)
    with torch.no_grad():
        model.center.copy_(0.1 * torch.randn_like(model.center))
        for p in model.momentum_head.parameters():
            p.add_(0.05 * torch.randn_like(p))
    center0 = model.center.clone()
    batch = make_batch(8, sizes=(32, 32, 16, 16))
    names = ["backbone.conv1.weight", "head.mlp.0.weight", "head.last_layer.weight"]
    got = step_and_grads(model, batch, names)

    feats = [model.backbone(x) for x in batch[1]]
    student = [_dino_head_ref(model.head, f) for f in feats]
    with torch.no_grad():
        teacher = [_dino_head_ref(model.momentum_head, model.momentum_backbone(x)) for x in batch[1][:2]]
    terms = []
    for t in range(2):
        pt = torch.softmax((teacher[t] - center0) / 0.07, dim=1)
        for s in range(4):
            if s != t:
                terms.append(-(pt * torch.log_softmax(student[s] / 0.2, dim=1)).sum(1).mean())
    ref = sum(terms) / len(terms) + classifier_ce(model, feats[:2], batch[2])
    assert_same(got, reference_grads(model, ref, names))
    # centre: c ← 0.9 c + 0.1 · mean teacher output over both large crops
    assert torch.allclose(model.center, 0.9 * center0 + 0.1 * torch.cat(teacher).mean(0, keepdim=True), atol=1e-6)
    assert (model.head.last_layer.gain is None) == norm_last_layer


def test_dino_teacher_temperature_warmup_and_frozen_last_layer():
    from harl.methods.dino import teacher_temperature_at

    assert teacher_temperature_at(0, 0.04, 0.07, 30) == pytest.approx(0.04)
    assert teacher_temperature_at(15, 0.04, 0.07, 30) == pytest.approx(0.055)
    assert teacher_temperature_at(30, 0.04, 0.07, 30) == pytest.approx(0.07)
    assert teacher_temperature_at(3, 0.04, 0.07, 0) == pytest.approx(0.07)
    model = build("dino", freeze_last_layer=1, clip_grad=1e-3)
    model.training_step(make_batch(9), 0).backward()
    model.on_after_backward()
    assert model.head.last_layer.weight.grad is None and model.head.mlp[0].weight.grad is not None
    model.on_before_optimizer_step(None)
    for p in model.backbone.parameters():
        assert float(p.grad.norm()) <= 1e-3 * (1 + 1e-4)


def _spherical_kmeans_ref(x, init, iters):
    c = init.clone()
    for _ in range(iters):
        a = (x @ c.T).argmax(1)
        for k in range(c.shape[0]):
            if (a == k).any():
                m = x[a == k].mean(0)
                c[k] = m / m.norm()
    return c, (x @ c.T).argmax(1)


def test_deepclusterv2_memory_kmeans_and_step_match_reference():
    model = build("deepclusterv2", augmentations=MULTI_CROP)
    sizes = (32, 32, 16, 16)
    model.allocate_memory(2 * B)
    # epoch 1: no assignments yet, the loss is the classifier's only; the bank fills
    bank = []
    for step in range(2):
        batch = make_batch(30 + step, sizes=sizes)
        batch[0] = torch.arange(B) * 2 + step  # dataset indexes 0..15, interleaved
        with torch.no_grad():
            feats = [model.backbone(x) for x in batch[1]]
            ce = classifier_ce(model, feats[:2], batch[2])
        loss = model.training_step(batch, step)
        assert float(loss.detach()) == pytest.approx(float(ce), rel=1e-5)
        with torch.no_grad():
            bank.append([unit(model.projector(model.backbone(x))) for x in batch[1][:2]])
    assert torch.equal(model.memory_index, torch.cat([torch.arange(B) * 2, torch.arange(B) * 2 + 1]))
    for c in range(2):
        assert torch.allclose(model.memory_z[c], torch.cat([bank[0][c], bank[1][c]]), atol=1e-5)
    # epoch 2 starts: k-means of crop 0's bank for set 0 (5 centroids), crop 1's for set 1 (4)
    model.on_train_epoch_end()
    torch.manual_seed(77)
    model.on_train_epoch_start()
    torch.manual_seed(77)
    index = model.memory_index
    want = torch.full((2, 16), -100)
    for h, (k, c) in enumerate([(5, 0), (4, 1)]):
        x = model.memory_z[c]
        cents, assign = _spherical_kmeans_ref(x, x[torch.randperm(2 * B)[:k]], 2)
        assert torch.allclose(model.prototypes[h].weight, cents, atol=1e-5)
        want[h, index] = assign
    assert torch.equal(model.assignments, want)
    # a step of epoch 2: every crop predicts its image's assignments; the prototypes stay frozen
    batch = make_batch(40, sizes=sizes)
    batch[0] = torch.tensor([3, 0, 15, 8, 8, 1, 12, 7])
    names = ["backbone.conv1.weight", "projector.0.weight", "projector.3.weight"]
    got = step_and_grads(model, batch, names)
    assert model.prototypes[0].weight.grad is None
    feats = [model.backbone(x) for x in batch[1]]
    z = [unit(model.projector(f)) for f in feats]
    ssl = 0
    for h in range(2):
        logits = torch.cat([zz @ model.prototypes[h].weight.T for zz in z]) / 0.2
        ssl = ssl + F.cross_entropy(logits, want[h, batch[0]].repeat(4))
    assert_same(got, reference_grads(model, ssl / 2 + classifier_ce(model, feats[:2], batch[2]), names))


def test_deepclusterv2_too_many_prototypes_for_the_bank():
    for bad in ({"num_prototypes": []}, {"num_prototypes": [5, 0]}, {"kmeans_iters": -1}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            build("deepclusterv2", **bad)
    model = build("deepclusterv2", num_prototypes=[20])
    model.allocate_memory(B)
    model.training_step(make_batch(41), 0)
    model.on_train_epoch_end()
    with pytest.raises(ValueError, match=r"num_prototypes\[0\] = 20 is more than the 8 projections"):
        model.on_train_epoch_start()


@pytest.mark.parametrize("augs", ["two", "multi"])
def test_supcon_step_matches_reference_with_label_positives(augs):
    model = build("supcon", augmentations=MULTI_CROP if augs == "multi" else TWO_CROPS)
    batch = make_batch(16, sizes=(32, 32, 16, 16) if augs == "multi" else (32, 32))
    batch[2] = torch.tensor([0, 1, 2, 0, 1, 2, 3, 0])  # several images per class
    names = ["backbone.conv1.weight", "projector.0.weight", "projector.2.weight"]
    got = step_and_grads(model, batch, names)

    feats = [model.backbone(x) for x in batch[1]]
    z = unit(torch.cat([model.projector(f) for f in feats]))
    labels = batch[2].repeat(len(feats))
    n = z.shape[0]
    terms = []
    for i in range(n):
        others = [a for a in range(n) if a != i]
        log_denom = torch.logsumexp(z[i] @ z[others].T / 0.3, dim=0)
        pos = [p for p in others if labels[p] == labels[i]]
        terms.append(-torch.stack([z[i] @ z[p] / 0.3 - log_denom for p in pos]).mean())
    ssl = torch.stack(terms).mean()
    assert_same(got, reference_grads(model, ssl + classifier_ce(model, feats[:2], batch[2]), names))
    # with labels the loss is not SimCLR's (positives = own views only)
    own = unit(torch.cat([model.projector(f) for f in feats])).detach()
    idx = torch.arange(B).repeat(len(feats))
    assert abs(float(ssl.detach()) - float(torch.stack([
        -torch.stack([own[i] @ own[p] / 0.3 - torch.logsumexp(own[i] @ own[[a for a in range(n) if a != i]].T / 0.3, 0)
                      for p in range(n) if p != i and idx[p] == idx[i]]).mean() for i in range(n)]).mean())) > 1e-3


def test_supcon_needs_labels():
    with pytest.raises(ConfigError, match="needs labels"):
        parse_cfg(tiny_cfg("supcon", method_kwargs=KW["supcon"], data={"dataset": "cifar10", "no_labels": True}))
    model = build("supcon")
    batch = make_batch(17)
    batch[2][3] = -1
    with pytest.raises(ValueError, match="needs a label for every sample"):
        model.training_step(batch, 0)


def _iternorm_ref(x, channels, T=5, eps=1e-5):
    """Group-wise Newton whitening of N×D x, groups of ``channels`` consecutive channels."""
    n, d = x.shape
    out = []
    for start in range(0, d, channels):
        xc = (x[:, start:start + channels] - x[:, start:start + channels].mean(0)).T  # c×N
        sigma = xc @ xc.T / n + eps * torch.eye(channels)
        tr = torch.trace(sigma)
        p = torch.eye(channels)
        for _ in range(T):
            p = 1.5 * p - 0.5 * p @ p @ p @ (sigma / tr)
        out.append((p / tr.sqrt() @ xc).T)
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("iternorm", [True, False])
def test_vibcreg_step_matches_reference(iternorm):
    model = build("vibcreg", iternorm=iternorm)
    names = ["backbone.conv1.weight", "projector.0.weight", "projector.6.weight"]
    if iternorm:
        with torch.no_grad():
            model.projector[7].weight.uniform_(0.5, 1.5), model.projector[7].bias.uniform_(-0.5, 0.5)
        names.append("projector.7.weight")
    else:
        assert isinstance(model.projector[7], torch.nn.Identity)
    batch = make_batch(15)
    got = step_and_grads(model, batch, names)

    feats = [model.backbone(x) for x in batch[1]]
    h = [model.projector[:7](f) for f in feats]
    if iternorm:  # 128 channels in 64 groups of 2
        it = model.projector[7]
        z = [_iternorm_ref(x, 2) * it.weight + it.bias for x in h]
    else:
        z = h
    inv = ((z[0] - z[1]) ** 2).mean()
    var = sum(torch.clamp(1 - torch.sqrt(torch.var(x, dim=0) + 1e-4), min=0).mean() for x in z)
    cov = 0
    for x in z:
        corr = torch.corrcoef(x.T)  # the correlation matrix
        d = corr.shape[0]
        cov = cov + (corr.pow(2).sum() - corr.diagonal().pow(2).sum()) / (d * (d - 1))
    ssl = 20.0 * inv + 15.0 * var + 50.0 * cov
    assert_same(got, reference_grads(model, ssl + classifier_ce(model, feats, batch[2]), names))
    assert any(isinstance(m, torch.nn.GELU) for m in model.projector)


def _whiten_ref(x):
    xc = x - x.mean(0, keepdim=True)
    chol = torch.linalg.cholesky(torch.cov(xc.T))
    return xc @ torch.linalg.inv(chol).T


def test_wmse_step_matches_reference_with_shuffled_sub_batches():
    model = build("wmse")
    batch = make_batch(14)
    names = ["backbone.conv1.weight", "projector.0.weight", "projector.3.weight"]
    torch.manual_seed(123)  # the step draws one permutation of the batch per whitening iteration
    got = step_and_grads(model, batch, names)

    feats = [model.backbone(x) for x in batch[1]]
    z = [model.projector(f) for f in feats]
    torch.manual_seed(123)
    terms = []
    for _ in range(2):  # whitening_iters
        perm = torch.randperm(B)
        white = [torch.zeros_like(zz) for zz in z]
        for idx in (perm[:4], perm[4:]):  # whitening_size 4
            for v in range(2):
                white[v] = white[v].index_put((idx,), _whiten_ref(z[v][idx]))
        terms.append(((unit(white[0]) - unit(white[1])) ** 2).sum(1).mean())
    ssl = sum(terms) / len(terms)
    assert_same(got, reference_grads(model, ssl + classifier_ce(model, feats, batch[2]), names))


def test_wmse_config_errors():
    with pytest.raises(ConfigError, match="whitening_size .* must divide the per-device batch"):
        build("wmse", whitening_size=16)
    with pytest.raises(ConfigError, match="whitening_size .* must divide the per-device batch"):
        build("wmse", whitening_size=3, proj_output_dim=2)
    with pytest.raises(ConfigError, match="larger than proj_output_dim"):
        build("wmse", proj_output_dim=4)
    build("wmse", proj_output_dim=4, whitening_eps=0.1)
    with pytest.raises(ConfigError, match="at least 2 large crops and no small crops"):
        build("wmse", augmentations=MULTI_CROP)
    with pytest.raises(ConfigError, match="whitening_iters"):
        build("wmse", whitening_iters=0)


# ----------------------------------------------------------------------------- ViT backbones


@pytest.mark.parametrize("method", ["mocov3", "dino"])
def test_vit_backbone_through_timm(method):
    cfg = parse_cfg(tiny_cfg(method, method_kwargs=KW[method],
                             backbone={"name": "vit_tiny", "kwargs": {"depth": 1, "patch_size": 8}}))
    torch.manual_seed(0)
    model = METHODS.get(method)(cfg)
    assert model.features_dim == 192
    if method == "mocov3":  # a 3-layer projector on a ViT (paper), 2 layers on a ResNet
        assert sum(isinstance(m, torch.nn.Linear) for m in model.projector) == 3
    loss = model.training_step(make_batch(10), 0)
    loss.backward()
    assert torch.isfinite(loss) and model.backbone.patch_embed.proj.weight.grad is not None


def test_mocov3_resnet_projector_has_two_layers():
    model = build("mocov3")
    assert sum(isinstance(m, torch.nn.Linear) for m in model.projector) == 2


# ----------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("method", NEW_METHODS)
def test_registered_and_misspelt_kwarg_names_the_right_one(method):
    assert method in METHODS
    some_key = next(iter(KW[method]))
    bad = {some_key + "x": 1}
    with pytest.raises(ConfigError, match=f"did you mean '{some_key}'"):
        parse_cfg(tiny_cfg(method, method_kwargs=bad))


@pytest.mark.parametrize("method", ["barlow_twins", "vicreg", "simsiam", "mocov3", "nnclr", "nnbyol", "nnsiam",
                                    "ressl", "vibcreg"])
def test_two_crop_methods_refuse_multicrop(method):
    with pytest.raises(ConfigError, match="exactly 2 large crops"):
        build(method, augmentations=MULTI_CROP)


def test_swav_queue_must_fit_the_global_batch_and_simsiam_warns_on_temperature():
    with pytest.raises(ConfigError, match="queue_size"):
        build("swav", queue_size=20)
    cfg = parse_cfg(tiny_cfg("simsiam", method_kwargs={**KW["simsiam"], "temperature": 0.2}))
    with pytest.warns(UserWarning, match="temperature has no meaning for simsiam"):
        METHODS.get("simsiam")(cfg)


@pytest.mark.parametrize("method,online,target", [("mocov3", "projector", "momentum_projector"),
                                                  ("dino", "head", "momentum_head"),
                                                  ("ressl", "projector", "momentum_projector"),
                                                  ("nnbyol", "projector", "momentum_projector")])
def test_ema_covers_backbone_and_heads(method, online, target):
    model = build(method)
    with torch.no_grad():
        for p in getattr(model, online).parameters():
            p.add_(torch.randn_like(p))
    pairs = [(dict(getattr(model, online).named_parameters()), dict(getattr(model, target).named_parameters())),
             (dict(model.backbone.named_parameters()), dict(model.momentum_backbone.named_parameters()))]
    before = [{k: v.detach().clone() for k, v in t.items()} for _, t in pairs]
    model.ema_update(0.75)
    for (on, tg), old in zip(pairs, before):
        for k in on:
            assert torch.allclose(tg[k], 0.75 * old[k] + 0.25 * on[k].detach(), atol=1e-6), k
