"""Barlow Twins, VICReg, SimSiam, MoCo v3, SwAV (Sinkhorn + swapped loss) and DINO losses against
naive element-by-element computations written from the papers' formulas."""

import math

import pytest
import torch

from harl.losses import (barlow_twins_loss, dino_loss, mocov3_loss, simsiam_loss, sinkhorn_knopp, swav_loss,
                         vicreg_loss, vicreg_terms)


def approx(x, rel=1e-4):
    return pytest.approx(x, rel=rel, abs=1e-5)


def _col(z, d):
    return [float(z[b, d]) for b in range(z.shape[0])]


def _mean(xs):
    return sum(xs) / len(xs)


def _var(xs, unbiased):
    m = _mean(xs)
    return sum((x - m) ** 2 for x in xs) / (len(xs) - (1 if unbiased else 0))


def test_barlow_twins_naive():
    torch.manual_seed(0)
    n, d = 6, 4
    z1, z2 = torch.randn(n, d) * 3 + 1, torch.randn(n, d)
    lamb, scale, eps = 0.3, 0.5, 1e-5

    def std(z):
        cols = []
        for j in range(d):
            xs = _col(z, j)
            m, v = _mean(xs), _var(xs, unbiased=False)
            cols.append([(x - m) / math.sqrt(v + eps) for x in xs])
        return cols  # d lists of n

    a, b = std(z1), std(z2)
    total = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[i][k] * b[j][k] for k in range(n)) / n
            total += (1 - c) ** 2 if i == j else lamb * c ** 2
    assert float(barlow_twins_loss(z1, z2, lamb=lamb, scale_loss=scale)) == approx(scale * total)


def test_barlow_twins_identical_decorrelated_views_give_zero():
    # columns with zero mean, unit biased variance and no cross-correlation: C = I
    z = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])
    assert float(barlow_twins_loss(z, z, eps=0.0)) == pytest.approx(0.0, abs=1e-6)


def test_vicreg_terms_naive():
    torch.manual_seed(1)
    n, d = 5, 3
    z1, z2 = torch.randn(n, d) * 0.5, torch.randn(n, d) * 2
    sim = _mean([(float(z1[b, j]) - float(z2[b, j])) ** 2 for b in range(n) for j in range(d)])
    var = 0.0
    cov = 0.0
    for z in (z1, z2):
        var += _mean([max(0.0, 1 - math.sqrt(_var(_col(z, j), True) + 1e-4)) for j in range(d)])
        means = [_mean(_col(z, j)) for j in range(d)]
        for i in range(d):
            for j in range(d):
                if i != j:
                    c = sum((float(z[b, i]) - means[i]) * (float(z[b, j]) - means[j]) for b in range(n)) / (n - 1)
                    cov += c ** 2 / d
    s, v, c = vicreg_terms(z1, z2)
    assert (float(s), float(v), float(c)) == (approx(sim), approx(var), approx(cov))
    assert float(vicreg_loss(z1, z2, 2.0, 3.0, 5.0)) == approx(2 * sim + 3 * var + 5 * cov)


def test_simsiam_naive_and_stop_gradient():
    torch.manual_seed(2)
    p = torch.randn(4, 5, requires_grad=True)
    z = torch.randn(4, 5, requires_grad=True)
    pd = p.detach()
    naive = -_mean([float(pd[b] @ z[b]) / (float(pd[b].norm()) * float(z[b].norm())) for b in range(4)])
    loss = simsiam_loss(p, z)
    assert float(loss) == approx(naive)
    loss.backward()
    assert p.grad is not None and z.grad is None


def _naive_mocov3(q, k_all, offset, T):
    total = 0.0
    for b in range(q.shape[0]):
        qn = q[b] / q[b].norm()
        logits = [float(qn @ (k_all[j] / k_all[j].norm())) / T for j in range(k_all.shape[0])]
        total += -logits[offset + b] + math.log(sum(math.exp(x) for x in logits))
    return 2 * T * total / q.shape[0]


def test_mocov3_naive_local_and_gathered():
    torch.manual_seed(3)
    q, k = torch.randn(4, 6), torch.randn(4, 6)
    assert float(mocov3_loss(q, k, 0.2)) == approx(_naive_mocov3(q, k, 0, 0.2))
    # rank 1 of 2: its keys sit at rows 4..7 of the gathered keys
    k_all = torch.cat([torch.randn(4, 6), k])
    assert float(mocov3_loss(q, k, 0.5, k_all, offset=4)) == approx(_naive_mocov3(q, k_all, 4, 0.5))


def _naive_sinkhorn(scores, eps, iters):
    n, kk = scores.shape
    Q = [[math.exp(float(scores[b, k]) / eps) for b in range(n)] for k in range(kk)]  # K×N
    s = sum(sum(r) for r in Q)
    Q = [[x / s for x in r] for r in Q]
    for _ in range(iters):
        Q = [[x / sum(r) / kk for x in r] for r in Q]
        cols = [sum(Q[k][b] for k in range(kk)) for b in range(n)]
        Q = [[Q[k][b] / cols[b] / n for b in range(n)] for k in range(kk)]
    return [[Q[k][b] * n for k in range(kk)] for b in range(n)]


def test_sinkhorn_naive_and_marginals():
    torch.manual_seed(4)
    scores = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    got = sinkhorn_knopp(scores, epsilon=0.3, iters=3)
    want = _naive_sinkhorn(scores, 0.3, 3)
    for b in range(6):
        for k in range(4):
            assert float(got[b, k]) == approx(want[b][k])
    # every sample's code is a distribution; with many iterations the prototypes share the batch equally
    assert torch.allclose(got.sum(dim=1), torch.ones(6), atol=1e-5)
    many = sinkhorn_knopp(scores, epsilon=0.3, iters=200)
    assert torch.allclose(many.sum(dim=0), torch.full((4,), 6 / 4), atol=1e-3)


def test_swav_loss_naive_with_small_crops():
    torch.manual_seed(5)
    preds = [torch.randn(3, 4) for _ in range(3)]  # 2 large crops + 1 small one
    codes = [torch.softmax(torch.randn(3, 4), dim=1) for _ in range(2)]
    T = 0.1
    terms = []
    for v in range(2):
        for w in range(3):
            if w == v:
                continue
            per = []
            for b in range(3):
                logits = [float(preds[w][b, k]) / T for k in range(4)]
                lse = math.log(sum(math.exp(x) for x in logits))
                per.append(-sum(float(codes[v][b, k]) * (logits[k] - lse) for k in range(4)))
            terms.append(_mean(per))
    assert float(swav_loss(preds, codes, T)) == approx(_mean(terms))


def test_dino_loss_naive():
    torch.manual_seed(6)
    student = [torch.randn(2, 5) for _ in range(3)]
    teacher = [torch.randn(2, 5) for _ in range(2)]
    center = torch.randn(1, 5) * 0.1
    ts, tt = 0.1, 0.04
    terms = []
    for t in range(2):
        for s in range(3):
            if s == t:
                continue
            per = []
            for b in range(2):
                tl = [(float(teacher[t][b, k]) - float(center[0, k])) / tt for k in range(5)]
                m = max(tl)
                pt = [math.exp(x - m) for x in tl]
                pt = [x / sum(pt) for x in pt]
                sl = [float(student[s][b, k]) / ts for k in range(5)]
                lse = math.log(sum(math.exp(x) for x in sl))
                per.append(-sum(pt[k] * (sl[k] - lse) for k in range(5)))
            terms.append(_mean(per))
    assert float(dino_loss(student, teacher, center, ts, tt)) == approx(_mean(terms))


def test_nearest_neighbour_and_nnclr_loss_naive():
    from harl.losses import nearest_neighbour, nnclr_loss

    torch.manual_seed(7)
    z, support = torch.randn(3, 4), torch.randn(6, 4)
    nn, idx = nearest_neighbour(z, support)
    for b in range(3):
        sims = [float(z[b] @ support[j]) / (float(z[b].norm()) * float(support[j].norm())) for j in range(6)]
        assert int(idx[b]) == max(range(6), key=lambda j: sims[j])
        assert torch.allclose(nn[b], support[idx[b]] / support[idx[b]].norm(), atol=1e-6)
    p_all = torch.randn(6, 4)
    T, offset = 0.2, 3  # rank 1 of 2: the local predictions are rows 3..5
    total = 0.0
    for b in range(3):
        nb = nn[b] / nn[b].norm()
        logits = [float(nb @ (p_all[j] / p_all[j].norm())) / T for j in range(6)]
        total += -logits[offset + b] + math.log(sum(math.exp(x) for x in logits))
    assert float(nnclr_loss(nn, p_all[3:], T, p_all, offset)) == approx(total / 3)


def test_ressl_loss_naive():
    from harl.losses import ressl_loss

    torch.manual_seed(8)
    q, k, queue = torch.randn(3, 4), torch.randn(3, 4), torch.randn(5, 4)
    tq, tk = 0.1, 0.04

    def sims(x, b):
        xb = x[b] / x[b].norm()
        return [float(xb @ (queue[j] / queue[j].norm())) for j in range(5)]

    total = 0.0
    for b in range(3):
        lk = [s / tk for s in sims(k, b)]
        m = max(lk)
        pk = [math.exp(x - m) for x in lk]
        pk = [x / sum(pk) for x in pk]
        lq = [s / tq for s in sims(q, b)]
        lse = math.log(sum(math.exp(x) for x in lq))
        total += -sum(pk[j] * (lq[j] - lse) for j in range(5))
    assert float(ressl_loss(q, k, queue, tq, tk)) == approx(total / 3)


def _naive_cholesky_whiten(rows, eps=0.0):
    """rows: list of N lists of D floats → whitened rows L⁻¹(x − μ), all in plain Python."""
    n, d = len(rows), len(rows[0])
    mu = [sum(r[j] for r in rows) / n for j in range(d)]
    xc = [[r[j] - mu[j] for j in range(d)] for r in rows]
    cov = [[(1 - eps) * sum(x[i] * x[j] for x in xc) / (n - 1) + (eps if i == j else 0.0) for j in range(d)]
           for i in range(d)]
    L = [[0.0] * d for _ in range(d)]  # Cholesky–Banachiewicz
    for i in range(d):
        for j in range(i + 1):
            s = sum(L[i][k] * L[j][k] for k in range(j))
            L[i][j] = math.sqrt(cov[i][i] - s) if i == j else (cov[i][j] - s) / L[j][j]
    out = []
    for x in xc:  # forward substitution: L w = x
        w = [0.0] * d
        for i in range(d):
            w[i] = (x[i] - sum(L[i][k] * w[k] for k in range(i))) / L[i][i]
        out.append(w)
    return out


def test_cholesky_whiten_naive_and_identity_covariance():
    from harl.losses import cholesky_whiten

    torch.manual_seed(4)
    x = torch.randn(7, 3) @ torch.tensor([[2.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.1, 0.0, 0.5]]) + 3
    for eps in (0.0, 0.2):
        want = torch.tensor(_naive_cholesky_whiten(x.tolist(), eps))
        assert torch.allclose(cholesky_whiten(x, eps), want, atol=1e-4)
    w = cholesky_whiten(x)
    assert torch.allclose(torch.cov(w.T), torch.eye(3), atol=1e-4)


def test_wmse_loss_naive_sub_batches_views_and_iterations():
    from harl.losses import wmse_loss

    torch.manual_seed(5)
    n, d, size = 8, 2, 4
    views = [torch.randn(n, d) for _ in range(3)]
    perms = [torch.randperm(n), torch.randperm(n)]
    total, count = 0.0, 0
    for perm in perms:
        white = [[None] * n for _ in views]
        for start in range(0, n, size):
            idx = [int(i) for i in perm[start:start + size]]
            for v, z in enumerate(views):
                for i, w in zip(idx, _naive_cholesky_whiten([z[i].tolist() for i in idx])):
                    white[v][i] = w
        for a in range(3):
            for b in range(a + 1, 3):
                terms = []
                for i in range(n):
                    na = math.sqrt(sum(x * x for x in white[a][i]))
                    nb = math.sqrt(sum(x * x for x in white[b][i]))
                    terms.append(sum((x / na - y / nb) ** 2 for x, y in zip(white[a][i], white[b][i])))
                total += sum(terms) / n
                count += 1
    assert float(wmse_loss(views, perms, size)) == approx(total / count)
    # another shuffle gives other sub-batches and another loss
    assert float(wmse_loss(views, [torch.arange(n)], size)) != approx(float(wmse_loss(views, perms[:1], size)))


def test_vibcreg_terms_naive():
    from harl.losses import vibcreg_loss, vibcreg_terms

    torch.manual_seed(6)
    n, d = 6, 4
    z1, z2 = torch.randn(n, d) * 2 + 1, torch.randn(n, d)
    sim = sum(float(z1[b, j] - z2[b, j]) ** 2 for b in range(n) for j in range(d)) / (n * d)
    var, cov = 0.0, 0.0
    for z in (z1, z2):
        cols = [_col(z, j) for j in range(d)]
        var += _mean([max(0.0, 1 - math.sqrt(_var(c, unbiased=True) + 1e-4)) for c in cols])
        cen = [[x - _mean(c) for x in c] for c in cols]
        nrm = [[x / math.sqrt(sum(y * y for y in c)) for x in c] for c in cen]
        off = [sum(a * b for a, b in zip(nrm[i], nrm[j])) ** 2 for i in range(d) for j in range(d) if i != j]
        cov += _mean(off)
    s, v, c = vibcreg_terms(z1, z2)
    assert (float(s), float(v), float(c)) == (approx(sim), approx(var), approx(cov))
    assert float(vibcreg_loss(z1, z2, 2.0, 3.0, 5.0)) == approx(2 * sim + 3 * var + 5 * cov)


def _mm(a, b):
    return [[sum(a[i][k] * b[k][j] for k in range(len(b))) for j in range(len(b[0]))] for i in range(len(a))]


def test_iterative_whitening_naive_and_nearly_white():
    from harl.heads.iternorm import IterNorm, iterative_whitening, iternorm_groups

    assert iternorm_groups(2048, 64) == (64, 32) and iternorm_groups(16, 64) == (16, 1)
    assert iternorm_groups(24, 5) == (12, 2) and iternorm_groups(10, 4) == (10, 1)
    torch.manual_seed(7)
    n, d, groups, T, eps = 9, 6, 2, 5, 1e-5
    x = torch.randn(n, d) @ torch.randn(d, d) + 2
    out, mean, wm = iterative_whitening(x, groups, T, eps)
    c = d // groups
    want = [[0.0] * d for _ in range(n)]
    for g in range(groups):
        ch = list(range(g * c, (g + 1) * c))
        cols = [_col(x, j) for j in ch]
        cen = [[v - _mean(col) for v in col] for col in cols]  # c lists of n
        sigma = [[sum(a * b for a, b in zip(cen[i], cen[j])) / n + (eps if i == j else 0.0) for j in range(c)]
                 for i in range(c)]
        tr = sum(sigma[i][i] for i in range(c))
        sn = [[v / tr for v in row] for row in sigma]
        p = [[1.0 if i == j else 0.0 for j in range(c)] for i in range(c)]
        for _ in range(T):
            p3s = _mm(_mm(_mm(p, p), p), sn)
            p = [[1.5 * p[i][j] - 0.5 * p3s[i][j] for j in range(c)] for i in range(c)]
        w = [[v / math.sqrt(tr) for v in row] for row in p]
        res = _mm(w, cen)  # c×n
        for i, j in enumerate(ch):
            for b in range(n):
                want[b][j] = res[i][b]
    assert torch.allclose(out, torch.tensor(want), atol=1e-4)
    # one channel per group: Σ_N = 1 keeps P = 1, i.e. plain standardisation (biased variance)
    single, _, _ = iterative_whitening(x, d, T, eps)
    assert torch.allclose(single, (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + eps), atol=1e-5)
    # the layer: batch statistics in training (running ones updated), running statistics in evaluation
    layer = IterNorm(d, groups, T, eps, momentum=0.25)
    with torch.no_grad():
        layer.weight.fill_(2.0), layer.bias.fill_(0.5)
    assert torch.allclose(layer(x), 2 * out + 0.5, atol=1e-5)
    assert torch.allclose(layer.running_mean, 0.25 * mean, atol=1e-6)
    assert torch.allclose(layer.running_wm, 0.75 * torch.eye(c) + 0.25 * wm, atol=1e-6)
    layer.eval()
    y = torch.randn(4, d)
    xc = y.T.reshape(groups, c, 4) - layer.running_mean
    assert torch.allclose(layer(y), 2 * (layer.running_wm @ xc).reshape(d, 4).T + 0.5, atol=1e-5)


def test_supcon_loss_naive_local_and_gathered():
    from harl.losses import supcon_loss

    torch.manual_seed(8)
    m, d, T = 10, 5, 0.3
    z_all = torch.randn(m, d)
    labels_all = torch.tensor([0, 1, 0, 2, 1, 0, 2, 2, 1, 3])
    labels_all[9] = 1  # every anchor has a positive
    unit_rows = [[float(v) for v in (r / r.norm())] for r in z_all]

    def anchor_loss(i):
        sims = [sum(a * b for a, b in zip(unit_rows[i], unit_rows[j])) / T for j in range(m)]
        denom = sum(math.exp(sims[a]) for a in range(m) if a != i)
        pos = [p for p in range(m) if p != i and labels_all[p] == labels_all[i]]
        return -sum(math.log(math.exp(sims[p]) / denom) for p in pos) / len(pos)

    assert float(supcon_loss(z_all, labels_all, T)) == approx(_mean([anchor_loss(i) for i in range(m)]))
    # rows 4..7 are this process's block of the gathered batch
    local = supcon_loss(z_all[4:8], labels_all[4:8], T, z_all, labels_all, offset=4)
    assert float(local) == approx(_mean([anchor_loss(i) for i in range(4, 8)]))
    with pytest.raises(ValueError, match="no positive"):
        supcon_loss(z_all[:3], torch.tensor([0, 1, 2]), T)


def test_kmeans_cosine_naive():
    from harl.losses import kmeans_cosine

    torch.manual_seed(9)
    x = torch.nn.functional.normalize(torch.randn(12, 3).abs(), dim=1)  # positive octant
    init = torch.nn.functional.normalize(torch.tensor([[1.0, 0.2, 0], [0, 1.0, 0.2], [0.2, 0, 1.0], [-5.0, -5.0, -5.0]]), dim=1)
    rows = [[float(v) for v in r] for r in x]
    cents = [[float(v) for v in r] for r in init]

    def assign_all():
        return [max(range(len(cents)), key=lambda k: sum(a * b for a, b in zip(r, cents[k]))) for r in rows]

    for _ in range(3):
        lab = assign_all()
        for k in range(len(cents)):
            mine = [r for r, a in zip(rows, lab) if a == k]
            if mine:  # an empty cluster keeps its centroid
                mean = [sum(col) / len(mine) for col in zip(*mine)]
                norm = math.sqrt(sum(v * v for v in mean))
                cents[k] = [v / norm for v in mean]
    lab = assign_all()
    got_c, got_a = kmeans_cosine(x, init, 3)
    assert got_a.tolist() == lab
    assert torch.allclose(got_c, torch.tensor(cents), atol=1e-5)
    assert torch.allclose(got_c[3], init[3])  # (-1,-1,-1)/√3 is nobody's nearest here: kept
    assert 3 not in lab and len(set(lab)) == 3


def test_deepclusterv2_loss_naive_with_ignored_and_empty():
    from harl.losses import deepclusterv2_loss

    torch.manual_seed(10)
    b, T = 4, 0.5
    scores = [[torch.randn(b, 3) for _ in range(3)], [torch.randn(b, 2) for _ in range(3)]]
    assign = torch.tensor([[0, 2, -100, 1], [1, 1, 0, -100]])
    total = 0.0
    for h in range(2):
        terms = []
        for crop in scores[h]:
            for i in range(b):
                a = int(assign[h, i])
                if a == -100:
                    continue
                row = [float(v) / T for v in crop[i]]
                terms.append(-(row[a] - math.log(sum(math.exp(v) for v in row))))
        total += _mean(terms)
    assert float(deepclusterv2_loss(scores, assign, T)) == approx(total / 2)
    s = [[torch.randn(b, 3, requires_grad=True)]]
    none = deepclusterv2_loss(s, torch.full((1, b), -100), T)
    assert float(none) == 0.0 and none.requires_grad
