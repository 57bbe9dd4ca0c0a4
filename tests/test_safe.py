"Safe weights: the kernel refit equals an explicit refit, the gate keeps uniform unless agreement rises, seeded"
import numpy as np, pytest, torch
from pwattr.features import Features
from pwattr.methods import TRAK, Contributions
from pwattr.safe import (KernelRefit, refit_from, learn_refit_weights, agreement_gate, safe_weights, row_pearson,
                         ridge_by_agreement, chosen_ridge)
from pwattr.weights import GroupWeights, learn_weights, planted_contributions
from pwattr.evaluate import lds
from pwattr.groundtruth import GroundTruth

def _problem(N=60, D=(4, 6, 5), Q=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(N, sum(D), generator=g, dtype=torch.float64), torch.randn(Q, sum(D), generator=g, dtype=torch.float64),
            list(D), torch.rand(N, generator=g, dtype=torch.float64) + 0.5)

def _explicit(X, Xq, dims, w, lam, q):
    "Weight both sides by sqrt(w_j) and solve the ridge system from scratch: phi_w(q)^T (Phi_w^T Phi_w + lam I)^-1 phi_w(n) q_n"
    s = torch.cat([torch.full((d,), float(wj) ** 0.5, dtype=torch.float64) for d, wj in zip(dims, w)])
    Xs, Xqs = X * s, Xq * s
    K = torch.linalg.inv(Xs.T @ Xs + lam * torch.eye(X.shape[1], dtype=X.dtype))
    return (Xqs @ K @ Xs.T) * q

@pytest.mark.parametrize('form,N', [('primal', 60), ('dual', 60), ('auto', 8)])
def test_refit_is_a_per_group_ridge(form, N):
    X, Xq, dims, q = _problem(N=N)
    w = torch.tensor([0.3, 2.2, 0.5], dtype=torch.float64); lam = 0.4
    r = KernelRefit(X, dims, list('abc'), lam, q, form=form)
    want = _explicit(X, Xq, dims, w, lam, q)
    tol = 1e-9 * float(want.abs().max())
    assert torch.allclose(r.scores(Xq, w), want, atol=tol, rtol=0)
    S = r.contributions(Xq, w).S
    assert torch.allclose(S.sum(-1), want, atol=tol, rtol=0)
    # the identity D (D G D + lam I)^-1 D = (G + lam D^-2)^-1: a per-group ridge lam / w_j on the unweighted Gram matrix
    ridge = torch.cat([torch.full((d,), lam / float(wj), dtype=torch.float64) for d, wj in zip(dims, w)])
    alt = (Xq @ torch.linalg.inv(X.T @ X + torch.diag(ridge)) @ X.T) * q
    assert torch.allclose(r.scores(Xq, w), alt, atol=tol, rtol=0)
    if N == 8: assert r.form == 'dual'

def test_refit_from_trak_reproduces_the_method():
    X, Xq, dims, q = _problem()
    f = Features(X.float(), list('abc'), dims, list(range(60)), extras={'q': q})
    m = TRAK(kernel='global', lam_rel=0.1).fit(f)
    r = refit_from(m)
    want = m.scores(Features(Xq.float(), list('abc'), dims, list(range(7)))).double()
    assert torch.allclose(r.scores(Xq.float()), want, atol=1e-5 * float(want.abs().max()), rtol=0)   # float32 features
    with pytest.raises(ValueError, match='global'): refit_from(TRAK(kernel='block', lam_rel=0.1).fit(f))

def test_refit_learner_lowers_its_objective_and_keeps_mean_one():
    X, Xq, dims, q = _problem(N=80, Q=20, seed=1)
    r = KernelRefit(X, dims, list('abc'), 0.5, q)
    w = learn_refit_weights(r, Xq, k=5, steps=40, patience=40)
    assert w.settings['apply'] == 'refit' and min(w.history) < w.history[0]
    assert abs(float(w.w.mean()) - 1) < 1e-5 and (w.w > 0).all()
    c = Contributions(torch.randn(7, 80, 3), list('abc'))
    with pytest.raises(ValueError, match='refit'): c.scores(w)       # refit weights are not S @ w

def _planted():
    S, true = planted_contributions(Q=40, N=400, M=8, signal=(0, 1, 2, 3), strength=4., noise=2., seed=2)
    truth = S[..., :4].sum(-1).double()
    refs = {f'r{i}': truth + 3 * torch.randn(truth.shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64) for i in range(3)}
    return S.double(), refs

def test_gate_keeps_uniform_when_every_candidate_hurts():
    S, refs = _planted()
    lin = lambda w: S @ w
    bad = {'noise-heavy': (torch.tensor([0.2] * 4 + [1.8] * 4), lin), 'one-group': (torch.tensor([0.] * 7 + [8.]), lin)}
    g = agreement_gate(bad, S.sum(-1), refs)
    assert not g.use and g.chosen == 'uniform' and torch.equal(g.w, torch.ones(8))
    assert (g.table.G <= 0).all() and 'keep uniform' in g.verdict

def test_gate_takes_the_candidate_that_helps_and_is_seeded():
    S, refs = _planted()
    lin = lambda w: S @ w
    c = {'signal': (torch.tensor([1.8] * 4 + [0.2] * 4), lin), 'noise': (torch.tensor([0.2] * 4 + [1.8] * 4), lin)}
    g = agreement_gate(c, S.sum(-1), refs)
    assert g.use and g.chosen == 'signal' and g.gain > 0 and g.lower > 0
    # the gain is the minimum over references of the mean Pearson gain on the verification half (the second half of
    # a permutation seeded by `seed`), recomputed by hand; the table's per-reference gains are over all queries
    w = 1 + g.shrink * (c['signal'][0].double() - 1)
    per_q = {n: np.array([np.corrcoef(a, b)[0, 1] - np.corrcoef(a0, b)[0, 1]
                          for a, a0, b in zip((S @ w).numpy(), S.sum(-1).numpy(), r.numpy())]) for n, r in refs.items()}
    ver = np.random.default_rng(0).permutation(S.shape[0])[S.shape[0] // 2:]
    assert abs(g.gain - min(v[ver].mean() for v in per_q.values())) < 1e-9
    row = g.table[(g.table.candidate == 'signal') & (g.table.shrink == g.shrink)].iloc[0]
    for n, v in per_q.items(): assert abs(row[f'gain vs {n}'] - v.mean()) < 1e-9
    again = agreement_gate(c, S.sum(-1), refs)
    assert again.lower == g.lower and again.table.equals(g.table)
    other = agreement_gate(c, S.sum(-1), refs, seed=1)
    assert other.use and other.gain != g.gain      # the seed moves the split (and the bootstrap)

def test_gate_needs_every_reference():
    "One reference that agrees with a bad weighting cannot outvote the others (minimum, not mean)"
    S, refs = _planted()
    lin = lambda w: S @ w
    bad = torch.tensor([0.2] * 4 + [1.8] * 4)
    refs = {**refs, 'biased': (S @ bad.double()) * 10}
    assert not agreement_gate({'bad': (bad, lin)}, S.sum(-1), refs).use

def test_safe_weights_on_contributions():
    S, refs = _planted()
    c = Contributions(S.float(), [f'g{j}' for j in range(8)], [f'q{i}' for i in range(40)])
    sw = safe_weights(c, refs)
    assert sw.settings['mode'] == 'safe' and sw.info['gate']['use'] and sw.w[:4].mean() > sw.w[4:].mean()
    assert sw.verdict.startswith('use the weights')
    none = safe_weights(c, {})
    assert not none.info['gate']['use'] and torch.equal(none.w, torch.ones(8)) and 'no reference' in none.verdict

def test_ridge_by_agreement_keeps_the_default_without_evidence():
    X, Xq, dims, q = _problem(N=80, Q=20)
    r = KernelRefit(X, dims, list('abc'), 0.1 * float((X ** 2).sum() / X.shape[1]), q)
    noise = {f'r{i}': torch.randn(20, 80, generator=torch.Generator().manual_seed(i), dtype=torch.float64) for i in range(2)}
    g = ridge_by_agreement(r, Xq, noise)
    assert chosen_ridge(g, 0.1) == 0.1
    target = r.with_ridge(3 * r.mean_diag).scores(Xq)
    g2 = ridge_by_agreement(r, Xq, {'a': target, 'b': target + 0.1 * target.std() * torch.randn(target.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)})
    assert g2.use and chosen_ridge(g2, 0.1) > 0.1

def test_lds_refuses_weights_learned_on_the_evaluation_queries():
    S, _ = _planted()
    c = Contributions(S.float(), [f'g{j}' for j in range(8)], [f'q{i}' for i in range(40)])
    gt = GroundTruth(masks=np.random.default_rng(0).random((6, 400)) < 0.5, seeds=np.zeros((6, 1)),
                     outputs=np.random.default_rng(1).normal(size=(6, 1, 40)), query_ids=[f'q{i}' for i in range(40)])
    w = learn_weights(c[:10], k=5)
    with pytest.raises(ValueError, match='used to learn'): lds(c, gt, w=w)
    lds(c, gt, w=w.w)                                   # a bare vector carries no ids: the caller's responsibility

def test_learn_weights_says_when_it_returns_uniform():
    S = torch.ones(4, 50, 3)                            # every weighting scores the same: nothing to improve
    with pytest.warns(UserWarning, match='no step improved'): w = learn_weights(S, k=5)
    assert w.info['improved'] is False and torch.allclose(w.w, torch.ones(3))

def test_gate_floor_refuses_a_consistent_but_negligible_gain():
    "A candidate that moves every query a hair towards the references passes the test but not the floor (min_gain)"
    S, refs = _planted()
    base = S.sum(-1); pull = torch.stack(list(refs.values())).mean(0)
    nudge = lambda eps: {'nudge': (torch.full((8,), 2.), lambda w: base + eps * (w.mean() - 1) * pull * base.std() / pull.std())}
    g = agreement_gate(nudge(1e-4), base, refs)
    assert not g.use and 0 < g.gain < 1e-3 and g.lower > 0 and 'less than the 0.001' in g.verdict
    assert agreement_gate(nudge(1e-4), base, refs, min_gain=0).use
    assert agreement_gate(nudge(0.5), base, refs).use     # the same direction, a real step
