"""The study's tools against independent computations on a problem with a known answer."""
import numpy as np, pytest, torch
from pwattr.evaluate import lds
from pwattr.groundtruth import GroundTruth
from pwattr.methods import Contributions
from pwattr.study import paired_gain, oracle_lds, compare_weights, sweep, spread, lds_cosine, objective_vs_lds

def known(Q=24, N=300, S=40, seed=0, loss=False):
    "Group 0 carries the true linear influence T, groups 1-2 noise; outputs are exactly linear in the subset"
    g = torch.Generator().manual_seed(seed)
    T = torch.zeros(Q, N)
    for q in range(Q): T[q, torch.randperm(N, generator=g)[:12]] = 1 + torch.rand(12, generator=g)
    C = torch.stack([T + 0.1 * torch.randn(Q, N, generator=g), 0.5 * torch.randn(Q, N, generator=g), 2 * torch.randn(Q, N, generator=g)], -1)
    masks = torch.rand(S, N, generator=g) < 0.5
    out = (masks.double() @ T.double().T)[:, None, :].numpy()
    if loss: out = -out      # a loss falls when helpful examples are present: LDS flips the sign
    gt = GroundTruth(masks.numpy(), np.arange(S)[:, None], out, [f'q{i}' for i in range(Q)], kind='loss' if loss else 'margin')
    return Contributions(C, ['signal', 'noise', 'loud'], gt.query_ids), gt

def test_paired_gain_matches_manual_bootstrap():
    c, gt = known()
    a, b = lds(c, gt), lds(c, gt, w=[3., 0, 0])
    d = b.per_query - a.per_query
    idx = np.random.default_rng(0).integers(0, len(d), (2000, len(d)))
    lo, hi = np.quantile(d[idx].mean(1), [.025, .975])
    assert paired_gain(a, b) == pytest.approx((d.mean(), lo, hi))
    with pytest.raises(ValueError, match='same queries'):
        paired_gain(a, lds(Contributions(c.S[:5], c.groups, gt.query_ids[:5]), GroundTruth(gt.masks, gt.seeds, gt.outputs[:, :, :5], gt.query_ids[:5])))

@pytest.mark.parametrize('loss', [False, True])
def test_oracle_finds_the_signal_group_and_is_cross_fitted(loss):
    c, gt = known(loss=loss)
    o, ws = oracle_lds(c, gt, folds=3)
    assert all(int(w.w.argmax()) == 0 for w in ws)
    assert o.mean > 0.9 and lds(c, gt).mean < 0.5
    parts = np.array_split(np.random.default_rng(0).permutation(len(gt.query_ids)), 3)
    for p, w in zip(parts, ws): np.testing.assert_allclose(o.per_query[p], lds(c, gt, w=w.w).per_query[p])
    with pytest.raises(ValueError, match='folds'): oracle_lds(c, gt, folds=1)

def test_compare_weights_rows_equal_direct_calls():
    from pwattr.weights import learn_weights
    c, gt = known(); cl, _ = known(seed=1)
    res, ws = compare_weights(c, cl, gt, 'toy', settings={'a': dict(k=10, lam=1e-4)})
    d = res.df.set_index(['weights', 'metric']).value
    assert d['uniform', 'LDS'] == pytest.approx(lds(c, gt).mean)
    assert d['a', 'LDS'] == pytest.approx(lds(c, gt, w=learn_weights(cl, k=10, lam=1e-4).w).mean)
    assert d['a', 'gain'] == pytest.approx(d['a', 'LDS'] - d['uniform', 'LDS'])
    assert d['a', 'LDS'] > d['uniform', 'LDS'] + 0.3      # the planted signal is learnable self-supervised
    assert set(ws) == {'a', 'oracle'}

def test_sweep_is_seeded_and_consistent():
    c, gt = known(); cl, _ = known(seed=1)
    a = sweep(c, cl, gt, ks=(5,), lams=(1e-4, 1.0), normalize=(False, True))
    b = sweep(c, cl, gt, ks=(5,), lams=(1e-4, 1.0), normalize=(False, True))
    assert a.drop(columns='seconds').equals(b.drop(columns='seconds'))
    np.testing.assert_allclose(a.gain, a.lds - lds(c, gt).mean)

def test_spread_and_cosine_by_hand():
    import pandas as pd
    pg = {'a': pd.Series({'x': .4, 'y': .1, 'z': .2}), 'b': pd.Series({'x': .1, 'y': .4})}
    s = spread(pg)
    assert s.loc['a', 'best'] == 'x' and s.loc['a', 'range'] == pytest.approx(.3) and s.loc['a', 'std'] == pytest.approx(np.std([.4, .1, .2]))
    cos = lds_cosine(pg)
    assert cos.loc['a', 'b'] == pytest.approx((.4 * .1 + .1 * .4) / (np.hypot(.4, .1) ** 2))
    # centred: the Pearson correlation over the shared groups
    pg3 = {'a': pd.Series({'x': .4, 'y': .1, 'z': .2}), 'b': pd.Series({'x': .3, 'y': .0, 'z': .5})}
    assert lds_cosine(pg3, center=True).loc['a', 'b'] == pytest.approx(np.corrcoef([.4, .1, .2], [.3, .0, .5])[0, 1])

def test_objective_vs_lds_agrees_with_selfsup_loss():
    from pwattr.weights import selfsup_loss
    c, gt = known()
    d = objective_vs_lds(c, gt, [[1, 1, 1], [0, 3, 0]], k=10)
    assert d.objective[1] == pytest.approx(float(selfsup_loss(c.S.double(), torch.tensor([0., 3, 0], dtype=torch.float64), 10)))
    assert d.lds[1] == pytest.approx(lds(c, gt, w=[0., 3, 0]).mean, abs=1e-6)
