"Metrics: LDS, per-group LDS, mislabel AUC, recall@k, tail-patch, results table"
import numpy as np, pandas as pd, pytest, torch
from scipy.stats import spearmanr
from pwattr.evaluate import (LDSResult, ResultsTable, bootstrap_ci, flip_labels, lds, mislabel_auc, per_group_lds, recall_at_k,
                             roc_auc, seed_agreement, spearman_rows, subset_predictions, tail_patch)
from pwattr.groundtruth import GroundTruth, RidgeTask, run_groundtruth

def toy(Q=50, N=150, S=40, R=1, kind='margin', seed=0, f=np.tanh):
    g = np.random.default_rng(seed)
    tau = g.normal(size=(Q, N)); masks = g.random((S, N)) < 0.5
    out = np.repeat(f((masks @ tau.T) / 10)[:, None, :], R, 1)
    return tau, GroundTruth(masks, np.arange(S * R).reshape(S, R), -out if kind == 'loss' else out, list(range(Q)), kind)

class FakeContributions:  # the methods.Contributions contract: S [Q, N, M], groups, query_ids, scores(w)
    def __init__(self, S, groups, query_ids=None): self.S, self.groups, self.query_ids = torch.as_tensor(S), groups, query_ids
    def scores(self, w=None): return self.S.sum(2) if w is None else self.S @ torch.as_tensor(w, dtype=self.S.dtype)

def test_spearman_matches_scipy_with_ties():
    g = np.random.default_rng(1)
    for _ in range(20):
        a = g.integers(0, 5, (3, 15)).astype(float); b = g.integers(0, 3, (3, 15)).astype(float)
        want = [spearmanr(a[i], b[i])[0] for i in range(3)]
        np.testing.assert_allclose(spearman_rows(a, b), want, atol=1e-12)

@pytest.mark.parametrize('kind', ['margin', 'loss'])
@pytest.mark.parametrize('f', [np.tanh, np.exp, lambda x: x ** 3])
def test_perfect_predictor_is_one(kind, f):
    tau, gt = toy(kind=kind, f=f)
    r = lds(tau, gt)
    assert r.mean == pytest.approx(1.0, abs=1e-9) and r.ci[0] == pytest.approx(1.0, abs=1e-9) and r.n == 50
    assert lds(-tau, gt).mean == pytest.approx(-1.0, abs=1e-9)        # the sign matters

def test_random_scores_near_zero_ci_covers_zero():
    tau, gt = toy(Q=200)
    for s in range(3):
        r = lds(np.random.default_rng(100 + s).normal(size=tau.shape), gt)
        assert abs(r.mean) < 0.05 and r.ci[0] < 0 < r.ci[1], r

def test_averages_over_training_seeds():
    tau, gt = toy(R=3)
    g = np.random.default_rng(0)
    noisy = GroundTruth(gt.masks, gt.seeds, gt.outputs + g.normal(size=gt.outputs.shape) * 0.05, gt.query_ids)
    pred = subset_predictions(tau, gt.masks)
    want = [spearmanr(pred[q], noisy.outputs[:, :, q].astype(np.float64).mean(1))[0] for q in range(50)]
    np.testing.assert_allclose(lds(tau, noisy).per_query, want, atol=1e-12)

def test_predictions_are_mask_sums():
    tau, gt = toy(Q=3, N=20, S=4)
    want = [[tau[q][gt.masks[j]].sum() for j in range(4)] for q in range(3)]
    np.testing.assert_allclose(subset_predictions(tau, gt.masks), want, atol=1e-12)

def test_bootstrap_seeded_and_covering():
    v = np.random.default_rng(0).normal(0.3, 0.1, 400)
    assert bootstrap_ci(v, seed=1) == bootstrap_ci(v, seed=1)
    lo, hi = bootstrap_ci(v)
    se = v.std() / np.sqrt(len(v))
    assert lo == pytest.approx(v.mean() - 1.96 * se, abs=0.3 * se) and hi == pytest.approx(v.mean() + 1.96 * se, abs=0.3 * se)

def test_contributions_and_weights():
    tau, gt = toy()
    g = np.random.default_rng(0)
    S = np.stack([tau + g.normal(size=tau.shape), g.normal(size=tau.shape)], -1)
    c = FakeContributions(S, ['good', 'noise'], query_ids=list(range(50)))
    assert lds(c, gt).mean == pytest.approx(lds(S.sum(2), gt).mean, abs=1e-12)
    assert lds(c, gt, w=[1, 0]).mean == pytest.approx(lds(S[..., 0], gt).mean, abs=1e-12)
    assert lds(c, gt, w=[1, 0]).mean > lds(c, gt).mean
    with pytest.raises(ValueError, match='query ids'): lds(FakeContributions(S, ['a', 'b'], list(range(1, 51))), gt)
    with pytest.raises(ValueError, match='queries'): lds(tau[:10], gt)

def test_per_group_one_group_equals_lds_and_views_sum():
    tau, gt = toy()
    g = np.random.default_rng(2)
    S = np.stack([a * tau + g.normal(size=tau.shape) for a in [0, .2, .5, 1.]], -1)
    groups = ['l0.attn', 'l0.mlp', 'l1.attn', 'l1.mlp']
    one = per_group_lds(S.sum(2, keepdims=True), gt, groups=['all_params'])
    assert one.view('group').lds['all_params'] == pytest.approx(lds(S.sum(2), gt, n_boot=1000).mean, abs=1e-12)
    pg = per_group_lds(FakeContributions(S, groups), gt, views={'block': {'l0.attn': 'l0', 'l0.mlp': 'l0', 'l1.attn': 'l1', 'l1.mlp': 'l1'},
                                                             'function': lambda n: n.split('.')[1]}, cross=True)
    for j, n in enumerate(groups): assert pg.view('group').lds[n] == pytest.approx(lds(S[..., j], gt).mean, abs=1e-12)
    assert pg.view('block').lds['l1'] == pytest.approx(lds(S[..., 2] + S[..., 3], gt).mean, abs=1e-12)
    assert pg.view('function').lds['mlp'] == pytest.approx(lds(S[..., 1] + S[..., 3], gt).mean, abs=1e-12)
    assert pg.view('all').lds['all'] == pytest.approx(lds(S.sum(2), gt).mean, abs=1e-12)
    assert pg.cross.loc['l1', 'attn'] == pytest.approx(lds(S[..., 2], gt).mean, abs=1e-12)
    w = np.array([0., 1., 2., 3.])
    assert per_group_lds(S, gt, w=w).view('all').lds['all'] == pytest.approx(lds(S @ w, gt).mean, abs=1e-12)
    # chunking over the training set does not change anything
    from pwattr.evaluate import group_predictions
    np.testing.assert_allclose(group_predictions(torch.tensor(S), gt.masks, chunk=7), group_predictions(S, gt.masks), atol=1e-9)
    with pytest.raises(ValueError, match='no label'): per_group_lds(S, gt, groups=groups, views={'block': {'l0.attn': 'l0'}})
    assert '<table' in pg._repr_html_()

def test_ridge_known_datamodel_lds_close_to_one():
    for lam, floor in [(1000., 0.999), (10., 0.95), (1., 0.9)]:
        t = RidgeTask(n=60, d=5, q=20, lam=lam, seed=0)
        gt = run_groundtruth(t.train_fn, t.output_fn, 60, t.queries, m=100, progress=False)
        X, y, Z = t.X, t.y, t.queries
        H = 0.5 * X.T @ X + lam * torch.eye(5, dtype=X.dtype)
        th = torch.linalg.solve(H, 0.5 * X.T @ y)
        tau = (Z @ torch.linalg.solve(H, X.T)) * (y - X @ th)[None]
        assert lds(tau, gt).mean > floor, (lam, lds(tau, gt))
        # scores say how much an example helps (raises the output = lowers a loss): the same scores against the
        # negated output recorded as a loss give the same LDS, the opposite scores give its negative
        gtl = GroundTruth(gt.masks, gt.seeds, -gt.outputs, gt.query_ids, 'loss')
        assert lds(tau, gtl).mean == pytest.approx(lds(tau, gt).mean, abs=1e-12)
        assert lds(-tau, gtl).mean == pytest.approx(-lds(tau, gt).mean, abs=1e-12)

def _auc_pairs(s, p):
    pos, neg = s[p], s[~p]
    return ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))

def test_auc_matches_pair_count():
    g = np.random.default_rng(0)
    for t in range(30):
        n = int(g.integers(5, 200)); p = g.random(n) < g.uniform(0.05, 0.5); p[0], p[1] = True, False
        s = np.round(g.normal(size=n) + p * g.uniform(0, 2), int(g.integers(0, 3)))
        assert roc_auc(s, p) == pytest.approx(_auc_pairs(s, p), abs=1e-12)
        assert mislabel_auc(torch.tensor(s), torch.tensor(p)) == pytest.approx(_auc_pairs(s, p), abs=1e-12)
    s = g.normal(size=(100, 3)); p = g.random(100) < 0.2
    assert mislabel_auc(s, p, w=[0.5, 0, 2]) == pytest.approx(_auc_pairs(s @ [0.5, 0, 2], p), abs=1e-12)
    with pytest.raises(ValueError, match='positives'): roc_auc([1, 2], [False, False])

def test_recall_at_k_by_loops():
    g = np.random.default_rng(0)
    N, Q, k = 50, 8, 5
    tl = {'style': g.integers(0, 3, N), 'subject': g.integers(0, 10, N)}
    ql = {'style': g.integers(0, 3, Q), 'subject': g.integers(0, 10, Q)}
    top = np.stack([g.permutation(N)[:k] for _ in range(Q)])
    r = recall_at_k(top, ql, tl)
    for a in tl:
        share = np.mean([np.mean([tl[a][i] == ql[a][q] for i in top[q]]) for q in range(Q)])
        setr = [sum(tl[a][i] == ql[a][q] for i in top[q]) / min(k, (tl[a] == ql[a][q]).sum()) for q in range(Q)
                if (tl[a] == ql[a][q]).sum() > 0]
        assert r.loc[a, 'share'] == pytest.approx(share) and r.loc[a, 'set_recall'] == pytest.approx(np.mean(setr))

def test_tail_patch_closed_form_and_restores():
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 1, bias=False).double()
    loss = lambda m, b: 0.5 * (m(b['x']).squeeze(-1) - b['y']) ** 2
    tr = {'x': torch.randn(8, 3, dtype=torch.float64), 'y': torch.randn(8, dtype=torch.float64)}
    qb = {'x': torch.randn(3, 3, dtype=torch.float64), 'y': torch.randn(3, dtype=torch.float64)}
    w0 = lin.weight.detach().clone()[0]
    prop = np.array([[0, 1, 2, 3], [4, 5, 6, 7], [7, 0, 3, 1]])
    r = tail_patch(lin, loss, qb, tr, prop, lr=0.05, k=3)
    assert r.deltas.shape == (3, 3)
    for q in range(3):
        for c in range(3):
            i = prop[q, c]; w1 = w0 - 0.05 * (w0 @ tr['x'][i] - tr['y'][i]) * tr['x'][i]
            ql = lambda w: 0.5 * (w @ qb['x'][q] - qb['y'][q]) ** 2
            assert r.deltas[q, c] == pytest.approx(float(ql(w0) - ql(w1)), abs=1e-12)
    assert torch.equal(lin.weight.detach()[0], w0) and lin.weight.grad is None
    assert r.mean == pytest.approx(r.deltas.mean())

def test_results_table():
    tau, gt = toy()
    rt = ResultsTable().add('TRAK', 'uniform', 'LDS', lds(tau, gt)).add('TRAK', 'learned', 'LDS', 0.5, 0.4, 0.6)
    rt.add('TRAK', 'uniform', 'AUC', 0.7)
    d = rt.df
    assert list(d.columns) == ['method', 'weights', 'metric', 'value', 'lo', 'hi'] and len(d) == 3
    assert d.value[0] == pytest.approx(1.0) and d.lo[1] == 0.4 and np.isnan(d.hi[2])
    html = rt._repr_html_(); assert '0.5000 [0.4000, 0.6000]' in html and 'AUC' in html
    import matplotlib; matplotlib.use('Agg'); rt.plot()

def test_tail_patch_gpt2_matches_manual_step():
    "On a tiny GPT-2 with the LM loss: same numbers as copying the model and stepping by hand; the model is unchanged"
    import copy, os
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    from pwattr.models import gpt2_lm
    from pwattr.features import output_fn
    torch.manual_seed(0)
    model = gpt2_lm(vocab_size=40, n_layer=1, n_embd=16, n_head=2, n_ctx=12, bos_id=38, eos_id=39).eval()
    lm = output_fn('lm_loss')
    g = torch.Generator().manual_seed(0)
    mk = lambda n: {'input_ids': torch.randint(0, 38, (n, 12), generator=g), 'attention_mask': torch.ones(n, 12, dtype=torch.long)}
    train, query = mk(6), mk(2)
    train['attention_mask'][0, 8:] = 0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prop = np.array([[0, 3], [5, 1]])
    r = tail_patch(model, lm, query, train, prop, lr=0.5, k=2)
    for q in range(2):
        for c in range(2):
            m2 = copy.deepcopy(model); opt = torch.optim.SGD(m2.parameters(), lr=0.5)
            i = int(prop[q, c]); lm(m2, {k: v[i:i + 1] for k, v in train.items()}).sum().backward(); opt.step()
            with torch.no_grad():
                qb = {k: v[q:q + 1] for k, v in query.items()}
                want = float(lm(model, qb)[0] - lm(m2, qb)[0])
            assert r.deltas[q, c] == pytest.approx(want, rel=1e-4, abs=1e-6)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

def test_flip_labels():
    y = torch.arange(200) % 10
    y2, flipped = flip_labels(y, 0.1, n_classes=10, seed=0)
    assert flipped.sum() == 20 and ((y2 != y) == flipped).all() and y2.dtype == y.dtype
    assert ((y2 >= 0) & (y2 < 10)).all()
    y3, f3 = flip_labels(y, 0.1, n_classes=10, seed=0); assert torch.equal(y2, y3) and torch.equal(flipped, f3)
    assert not torch.equal(flip_labels(y, 0.1, 10, seed=1)[1], flipped)

def test_seed_agreement_by_hand():
    tau, gt = toy(R=4)
    g = np.random.default_rng(5)
    noisy = GroundTruth(gt.masks, gt.seeds, gt.outputs + g.normal(size=gt.outputs.shape) * 0.1, gt.query_ids)
    o = noisy.outputs.astype(np.float64)
    want = [spearmanr((o[:, 0, q] + o[:, 2, q]) / 2, (o[:, 1, q] + o[:, 3, q]) / 2)[0] for q in range(50)]
    r = seed_agreement(noisy)
    np.testing.assert_allclose(r.per_query, want, atol=1e-12); assert 0 < r.mean < 1
    with pytest.raises(ValueError, match='R >= 2'): seed_agreement(gt_one := toy(R=1)[1])
