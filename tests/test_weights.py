"Tests of pwattr.weights against independent computations (direct objective, torch.optim.Adam, finite differences)"
import os
os.environ.setdefault('OMP_NUM_THREADS', '1')
import numpy as np, pytest, torch
from hypothesis import given, settings, strategies as st
from pwattr.weights import (ContribSource, GroupWeights, apply_weights, check_disjoint, k_sensitivity,
                            learn_semantic_weights, learn_weights, oracle_weights, planted_contributions,
                            precision_at_k, selfsup_loss, subset_preds, _Screen, _objective)
from pwattr.evaluate import lds_from_preds
from pwattr.plots import cosine_matrix

torch.set_num_threads(1)

@pytest.fixture(scope='module')
def planted():
    return planted_contributions(Q=24, N=1500, M=12, signal=(0, 1, 2), n_true=10, seed=11)

def direct_learn(S, k, lam, lr, steps):
    "Reference learner: full scores and top-k at every step, torch's own Adam on the softmax logits"
    M = S.shape[-1]
    theta = torch.zeros(M, dtype=S.dtype, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=lr)
    hist = []
    for _ in range(steps):
        loss = selfsup_loss(S, M * torch.softmax(theta, 0), k, lam)
        hist.append(float(loss.detach()))
        opt.zero_grad(); loss.backward(); opt.step()
    return hist, M * torch.softmax(theta.detach(), 0)

def test_w1_reproduces_base_scores(planted):
    S, _ = planted
    torch.testing.assert_close(apply_weights(S, torch.ones(12)), S.sum(-1), rtol=1e-5, atol=1e-4)
    gw = GroupWeights(torch.ones(12), [f'g{j}' for j in range(12)])
    torch.testing.assert_close(gw.scores(S), S.sum(-1), rtol=1e-5, atol=1e-4)
    try:
        from pwattr.methods import Contributions
    except ImportError: return
    c = Contributions(S, gw.groups)
    torch.testing.assert_close(apply_weights(c, gw), c.scores(), rtol=1e-5, atol=1e-4)

def test_signal_groups_get_the_mass_and_precision_rises(planted):
    S, true = planted
    gw = learn_weights(S, k=10)
    assert float(gw.w[:3].sum() / gw.w.sum()) > 0.75          # 3 signal groups of 12
    base, learned = precision_at_k(S.sum(-1), true), precision_at_k(S @ gw.w, true)
    assert base < 0.15 and learned > base + 0.5, (base, learned)
    assert (gw.w >= 0).all() and abs(float(gw.w.mean()) - 1) < 1e-5

def test_trajectory_matches_direct_implementation(planted):
    "Exact top-k screening + Gram norms + own Adam == recomputing everything with torch.optim.Adam, step by step"
    S = planted[0][:10, :600].double()
    steps = 60
    ref_hist, ref_w = direct_learn(S, k=8, lam=1e-3, lr=0.05, steps=steps)
    gw = learn_weights(S, k=8, lam=1e-3, lr=0.05, steps=steps, patience=steps + 1, candidates=40)
    np.testing.assert_allclose(gw.history, ref_hist, rtol=1e-9, atol=1e-12)
    assert gw.info['query_refreshes'] > 0                      # the screen did have to refresh candidates
    assert sum(gw.info['topk_moves']) > 0 and gw.info['topk_changed'] > 0   # top-k recomputed, and it moved

def test_topk_changes_during_learning(planted):
    "The initial top-k (base method) differs from the final one; selection is recomputed at every step"
    S, true = planted
    gw = learn_weights(S, k=10)
    init_top = S.sum(-1).topk(10, dim=1).indices
    final_top = (S @ gw.w).topk(10, dim=1).indices
    assert float((init_top.sort(1).values != final_top.sort(1).values).any(1).float().mean()) > 0.8
    moves = gw.info['topk_moves']
    assert sum(m > 0 for m in moves) > 5                      # changed on many different steps, not once

def test_same_seed_identical(planted):
    S, _ = planted
    a, b = learn_weights(S, k=10, seed=1), learn_weights(S, k=10, seed=1)
    assert torch.equal(a.w, b.w) and a.history == b.history
    c, d = learn_weights(S, k=10, batch_size=6, seed=3, steps=40), learn_weights(S, k=10, batch_size=6, seed=3, steps=40)
    assert torch.equal(c.w, d.w)
    e = learn_weights(S, k=10, batch_size=6, seed=4, steps=40)
    assert not torch.equal(c.w, e.w)

def test_streamed_equals_in_memory(planted, tmp_path):
    S, _ = planted
    cs = 5 * 1500 * 12                                          # 5 queries per block
    mem = learn_weights(S, k=10, chunk_size=cs, candidates=64)
    np.save(tmp_path/'S.npy', S.numpy())
    disk = learn_weights(tmp_path/'S.npy', k=10, chunk_size=cs, candidates=64)
    assert disk.settings['source'] == 'numpy' and mem.info['query_refreshes'] > 0
    assert torch.equal(mem.w, disk.w) and mem.history == disk.history
    mm = np.load(tmp_path/'S.npy', mmap_mode='r')
    fac = learn_weights(lambda: ((slice(a, a + 400), mm[:, a:a + 400]) for a in range(0, 1500, 400)), k=10, candidates=64)
    torch.testing.assert_close(fac.w, mem.w, rtol=1e-4, atol=1e-4)
    try:
        from pwattr.methods import Contributions
    except ImportError: return
    c = Contributions(S, [f'g{j}' for j in range(12)])
    sc = c.save(tmp_path/'contrib')
    onfile = learn_weights(sc, k=10, chunk_size=cs, candidates=64)
    assert ContribSource(sc).kind == 'rows'
    assert torch.equal(onfile.w, mem.w) and onfile.history == mem.history

def test_screen_is_exact(planted):
    "Few candidates (many refreshes) give the same weights as all N candidates (no screen)"
    S = planted[0].double()
    a = learn_weights(S, k=10, candidates=30, steps=120)
    b = learn_weights(S, k=10, candidates=1500, steps=120)
    np.testing.assert_allclose(a.history, b.history, rtol=1e-10, atol=1e-13)
    assert a.info['query_refreshes'] > 0 and b.info['query_refreshes'] == 0

@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), k=st.integers(1, 6), C=st.integers(7, 60))
def test_fast_objective_and_gradient_match_direct(seed, k, C):
    g = torch.Generator().manual_seed(seed)
    Q, N, M = 5, 60, 7
    S = torch.randn(Q, N, M, generator=g, dtype=torch.float64) * torch.rand(M, generator=g, dtype=torch.float64).mul(3).add(0.1)
    ones = torch.ones(M, dtype=torch.float64)
    scr = _Screen(ContribSource(S), ones, C, None)
    theta = torch.randn(M, generator=g, dtype=torch.float64).requires_grad_()
    fast, _, _ = _objective(scr, theta, ones, k, 1e-2)
    th2 = theta.detach().clone().requires_grad_()
    direct = selfsup_loss(S, M * torch.softmax(th2, 0), k, 1e-2)
    torch.testing.assert_close(fast, direct, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(fast, theta)[0], torch.autograd.grad(direct, th2)[0], rtol=1e-8, atol=1e-10)

def test_gradient_finite_differences():
    g = torch.Generator().manual_seed(0)
    S = torch.randn(4, 200, 5, generator=g, dtype=torch.float64)
    w = torch.rand(5, generator=g, dtype=torch.float64) + 0.5
    wr = w.clone().requires_grad_()
    grad, = torch.autograd.grad(selfsup_loss(S, wr, 7, 0.01), wr)
    eps = 1e-6
    fd = torch.stack([(selfsup_loss(S, w + eps * e, 7, 0.01) - selfsup_loss(S, w - eps * e, 7, 0.01)) / (2 * eps)
                      for e in torch.eye(5, dtype=torch.float64)])
    torch.testing.assert_close(grad, fd, rtol=1e-6, atol=1e-8)

def test_normalize_returns_weights_for_original_S(planted):
    S, true = planted
    scale = torch.logspace(-2, 2, 12)                          # the signal groups 0-2 are the smallest
    Ssc = S * scale
    raw, nrm = learn_weights(Ssc, k=10), learn_weights(Ssc, k=10, normalize=True)
    assert precision_at_k(Ssc @ nrm.w, true) > precision_at_k(Ssc @ raw.w, true) + 0.3
    c = torch.tensor(nrm.settings['scale'])
    torch.testing.assert_close(c.double(), Ssc.double().pow(2).mean((0, 1)).sqrt(), rtol=1e-4, atol=0)
    # same problem unscaled: normalised learning is invariant to per-group scale (up to float rounding)
    nrm0 = learn_weights(S, k=10, normalize=True)
    assert precision_at_k(S @ nrm0.w, true) == pytest.approx(precision_at_k(Ssc @ nrm.w, true), abs=0.05)

def test_warm_start(planted):
    S, _ = planted
    a = learn_weights(S, k=10)
    b = learn_weights(S, k=10, init=a)
    assert b.history[0] == pytest.approx(a.info['objective_best'], rel=1e-5)
    assert b.cosine(a) > 0.99

def test_errors(planted, tmp_path):
    S, _ = planted
    with pytest.raises(ValueError, match='smaller than the number of training examples'): learn_weights(S[:, :20], k=20)
    bad = S.clone(); bad[3, 7, 2] = float('inf')
    with pytest.raises(ValueError, match="NaN/Inf .*query 3, training example 7, group 'g2'"): learn_weights(bad, k=5)
    with pytest.raises(ValueError, match='group names for 12 groups'): learn_weights(S, k=5, groups=['a'])
    with pytest.raises(ValueError, match='init has 3 entries'): learn_weights(S, k=5, init=[1., 1., 1.])
    with pytest.raises(ValueError, match='12 groups|groups'): apply_weights(S[..., :4], torch.ones(12))
    with pytest.raises(ValueError, match='empty'): learn_weights(S, k=5, query_idx=[])
    with pytest.raises(ValueError, match='were used to learn'): check_disjoint([1, 2], [2, 3])
    with pytest.raises(FileNotFoundError): learn_weights(tmp_path/'missing.npy', k=5)

def test_learning_queries_refused_at_evaluation(planted, tmp_path):
    S, _ = planted
    ids = [f'q{i}' for i in range(24)]
    gw = learn_weights(S, k=10, query_idx=range(16), query_ids=ids[:16])
    apply_weights(S[16:], gw, query_ids=ids[16:])              # fine
    with pytest.raises(ValueError, match='1 evaluation queries'): apply_weights(S[15:], gw, query_ids=ids[15:])
    back = GroupWeights.load(gw.save(tmp_path/'w.json'))
    assert torch.equal(back.w, gw.w) and back.history == gw.history and back.groups == gw.groups
    with pytest.raises(ValueError): back.scores(S[:2], query_ids=ids[:2])

def test_semantic_and_cosine():
    parts = [planted_contributions(Q=12, N=1200, M=12, signal=sig, strength=3., seed=s)[0] for s, sig in enumerate([(0, 1, 2), (8, 9, 10)])]
    tab = learn_semantic_weights(torch.cat(parts), {'a': range(12), 'b': range(12, 24)}, k=10)
    assert tab.loc['a'].iloc[:3].sum() / tab.loc['a'].sum() > 0.7 and tab.loc['b'].iloc[8:11].sum() / tab.loc['b'].sum() > 0.7
    cos = cosine_matrix(tab)
    x, y = tab.loc['a'].to_numpy(float), tab.loc['b'].to_numpy(float)
    assert cos.loc['a', 'b'] == pytest.approx(x @ y / np.linalg.norm(x) / np.linalg.norm(y), rel=1e-9)
    assert cos.loc['a', 'b'] < 0.5

def test_k_sensitivity_tables(planted):
    S, _ = planted
    ks = k_sensitivity(S, ks=(8, 20), k_eval=5)
    w8, w20 = ks.weights[8].w, ks.weights[20].w
    assert ks.cosine.loc['k=8', 'k=20'] == pytest.approx(float(w8 @ w20 / w8.norm() / w20.norm()), rel=1e-5)
    a, b = (S @ w8).topk(5).indices, (S @ w20).topk(5).indices
    ov = np.mean([len(set(x.tolist()) & set(y.tolist())) / 5 for x, y in zip(a, b)])
    assert ks.overlap.loc['k=8', 'k=20'] == pytest.approx(ov)

def test_oracle_recovers_true_weights():
    S, _ = planted_contributions(Q=30, N=300, M=6, signal=(0,), noise=1., seed=3)
    g = torch.Generator().manual_seed(1)
    masks = torch.rand(48, 300, generator=g) < 0.5
    preds = subset_preds(S, masks)
    ref = torch.einsum('qnm,sn->qsm', S.double(), masks.double())
    torch.testing.assert_close(preds, ref)
    w_true = torch.tensor([2., 0, 0, 1., 0, 0], dtype=torch.float64)
    actual = preds @ w_true + 0.5 * torch.randn(30, 48, generator=g, dtype=torch.float64)
    from scipy.stats import spearmanr
    lq = lds_from_preds(preds, actual, w_true)
    assert float(lq[4]) == pytest.approx(spearmanr((preds[4] @ w_true).numpy(), actual[4].numpy())[0], abs=1e-10)
    orc = oracle_weights(preds, actual, range(15), range(15, 30))
    assert float(torch.nn.functional.cosine_similarity(orc.w.double(), w_true, dim=0)) > 0.97
    assert orc.lds.loc['eval', 'oracle'] > orc.lds.loc['eval', 'base']
    with pytest.raises(ValueError, match='were used to learn'): oracle_weights(preds, actual, range(15), range(10, 30))
