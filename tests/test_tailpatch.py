"Tests of pwattr.tailpatch: the tail-patch step, its sharing across lists, the random baseline and the study's errors"
import copy
import numpy as np, pytest, torch
from pwattr.data import load_kjv
from pwattr.models import gpt2_lm
from pwattr.features import output_fn
from pwattr.evaluate import tail_patch
from pwattr.audit import audit
from pwattr.evaluate import tail_patch_deltas, _take
from pwattr.tailpatch import random_proponents, as_percent, tail_patch_study, tail_patch_proponents

torch.set_num_threads(1)
LM = output_fn('lm_loss')

@pytest.fixture(scope='module')
def tiny():
    torch.manual_seed(0)
    train, query = load_kjv('train', n=24, ctx_len=48), load_kjv('heldout', n=3, ctx_len=48)
    model = gpt2_lm(vocab_size=259, n_layer=1, n_embd=16, n_head=2, n_ctx=48, bos_id=257, eos_id=258, pad_id=256)
    return model, query.batch(), train.batch()

def _manual(model, qb, tb, q, t, lr):
    "Loss decrease of query q after one SGD step on training example t, on a copy of the model"
    m = copy.deepcopy(model); m.zero_grad()
    LM(m, _take(tb, [t])).sum().backward()
    with torch.no_grad():
        l0 = LM(m, _take(qb, [q])).item()
        for p in m.parameters():
            if p.grad is not None: p -= lr * p.grad
        return l0 - LM(m, _take(qb, [q])).item()

def test_single_step_equals_manual_sgd(tiny):
    model, qb, tb = tiny
    P = torch.tensor([[5, 7], [0, 23], [11, 5]])
    d = tail_patch_deltas(model, LM, qb, tb, {'p': P}, lr=0.05, k=2)['p']
    for q in range(3):
        for c in range(2): assert d[q, c] == pytest.approx(_manual(model, qb, tb, q, int(P[q, c]), 0.05), abs=1e-6)

def test_shared_steps_match_reference_loop(tiny):
    "Stepping once per distinct example and sharing it across lists equals evaluate.tail_patch run list by list"
    model, qb, tb = tiny
    lists = {'a': random_proponents(3, 24, 4, seed=0), 'b': random_proponents(3, 24, 4, seed=1)}
    lists['c'] = lists['a'].flip(1)                               # the same pairs in another order
    d = tail_patch_deltas(model, LM, qb, tb, lists, lr=0.1, k=4)
    for lab, P in lists.items():
        want = tail_patch(model, LM, qb, tb, P, lr=0.1, k=4).deltas
        # deltas are differences of float32 losses: the error scales with the losses (~log 256), not the deltas
        loss_scale = LM(model, qb).abs().max().item()
        np.testing.assert_allclose(d[lab], want, rtol=1e-5, atol=1e-6 * loss_scale)
    np.testing.assert_array_equal(d['c'], d['a'][:, ::-1])

def test_weights_restored_and_deterministic(tiny):
    model, qb, tb = tiny
    before = [p.detach().clone() for p in model.parameters()]
    P = {'p': random_proponents(3, 24, 3, seed=2)}
    d1 = tail_patch_deltas(model, LM, qb, tb, P, lr=0.1, k=3)['p']
    d2 = tail_patch_deltas(model, LM, qb, tb, P, lr=0.1, k=3)['p']
    np.testing.assert_array_equal(d1, d2)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())

def test_planted_proponent_beats_random(tiny):
    "A training set holding a copy of the query: the step on the copy raises the query's probability most"
    model, qb, tb = tiny
    pool = {k: torch.cat([v, qb[k]]) for k, v in tb.items()}     # positions 24, 25, 26 are copies of the 3 queries
    planted = torch.tensor([[24], [25], [26]])
    rand = random_proponents(3, 24, 8, seed=0)                    # distinct verses only
    d = tail_patch_deltas(model, LM, qb, pool, {'planted': planted, 'random': rand}, lr=0.1, k=1)
    d8 = tail_patch_deltas(model, LM, qb, pool, {'random': rand}, lr=0.1, k=8)['random']
    assert (d['planted'][:, 0] > d8.max(1)).all(), (d['planted'], d8)
    assert as_percent(d['planted']).mean() > as_percent(d8).mean()

def test_first_order_closed_form(tiny):
    "For a small step the loss decrease is lr * g(query) . g(proponent)"
    model, qb, tb = tiny
    def g(b):
        model.zero_grad(); LM(model, b).sum().backward()
        v = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).clone(); model.zero_grad(); return v
    dot = float(g(_take(qb, [1])) @ g(_take(tb, [9])))
    d = tail_patch_deltas(model, LM, qb, tb, {'p': torch.tensor([[0], [9], [0]])}, lr=1e-3, k=1)['p'][1, 0]
    assert d / 1e-3 == pytest.approx(dot, rel=0.02)

def test_random_proponents():
    r = random_proponents(50, 10, 10, seed=5)
    assert all(sorted(row) == list(range(10)) for row in r.tolist())   # k = N: a permutation per query
    assert torch.equal(r, random_proponents(50, 10, 10, seed=5))
    assert not torch.equal(r, random_proponents(50, 10, 10, seed=6))
    with pytest.raises(ValueError, match='n_train=3'): random_proponents(2, 3, 4)
    with pytest.raises(ValueError, match='k=0'): random_proponents(2, 3, 0)

def test_as_percent():
    np.testing.assert_allclose(as_percent([0., np.log(2.), np.log(0.5)]), [0., 100., -50.])

def test_bad_input(tiny):
    model, qb, tb = tiny
    P = random_proponents(3, 24, 2, seed=0)
    with pytest.raises(ValueError, match='Q=3'): tail_patch_deltas(model, LM, qb, tb, {'p': P[:2]}, k=2)
    with pytest.raises(ValueError, match='>= k=5'): tail_patch_deltas(model, LM, qb, tb, {'p': P}, k=5)
    with pytest.raises(ValueError, match='outside'): tail_patch_deltas(model, LM, qb, tb, {'p': P + 24}, k=2)
    with pytest.raises(ValueError, match='positive'): tail_patch_deltas(model, LM, qb, tb, {'p': P}, lr=-1., k=2)
    with pytest.raises(ValueError, match='language preset'): tail_patch_study('fmnist-mlp')
    with pytest.raises(ValueError, match='bogus'): tail_patch_study(methods='tracin,bogus')
    with pytest.raises(ValueError, match='n_queries'): tail_patch_study(n_queries=1)
    with pytest.raises(ValueError, match='positive'): tail_patch_study(lr=0)

@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    from pwattr.presets import get_preset
    from pwattr.groundtruth import GroundTruth
    p = get_preset('kjv-gpt2').with_config(data={'n_train': 24, 'n_test': 10, 'ctx_len': 48},
                                         model={'n_layer': 1, 'n_embd': 16, 'n_head': 2, 'n_ctx': 48},
                                         recipe={'epochs': 1, 'batch_size': 8})
    _, test = p.load()
    g = np.random.default_rng(0)
    gt = GroundTruth(g.random((4, 24)) < .5, np.zeros((4, 1)), g.random((4, 1, 5)), test.ids[:5], kind='loss')
    return p, gt, tmp_path_factory.mktemp('tp')

def test_study_end_to_end(toy):
    p, gt, out = toy
    kw = dict(k=3, out=out, lr=0.1, n_queries=4, gt=gt, k_learn=4, proj_dim=32, progress=False, log=None)
    r = tail_patch_study(p, 'trak,ekfac', **kw)
    df = r.df
    assert list(zip(df.method, df.weights)) == [('trak', 'uniform'), ('trak', 'learned'), ('ekfac', 'uniform'),
                                                ('ekfac', 'learned'), ('random', 'uniform')]
    assert (df.metric == 'tail-patch').all() and (df.lo <= df.value).all() and (df.value <= df.hi).all()
    d = r.details
    assert len(d['query_ids']) == 4 and set(d['query_ids']) <= set(map(str, gt.query_ids))
    for (m, wn), dl in d['deltas'].items():
        assert dl.shape == (4, 3)
        assert df[(df.method == m) & (df.weights == wn)].value.item() == pytest.approx(as_percent(dl).mean())
    # the learned-weight proponents are the weighted top-k of the audit's contributions, and the weights never saw these queries
    a = audit(p, 'trak', out=out, k=4, proj_dim=32, gt=gt, progress=False, report=False, log=None)
    pos = [list(map(str, gt.query_ids)).index(q) for q in d['query_ids']]
    w = a.paper['trak']                 # tail-patch studies the paper's learned weights (the audit reports them beside its safe ones)
    assert not set(map(str, w.settings['query_ids'])) & set(d['query_ids'])
    assert torch.equal(d['proponents']['trak', 'learned'], (a.contributions['trak'].S[pos] @ w.w.to(a.contributions['trak'].S.dtype)).topk(3, dim=1).indices)
    # cached and seeded: the same call gives the same table; another seed draws other queries
    assert tail_patch_study(p, 'trak,ekfac', **kw).df.equals(df)
    r2 = tail_patch_study(p, 'trak,ekfac', **{**kw, 'seed': 1})
    assert r2.details['query_ids'] != d['query_ids'] or not np.array_equal(r2.details['proponents']['random', 'uniform'],
                                                                          d['proponents']['random', 'uniform'])

def test_study_rejects_foreign_result(toy):
    p, gt, out = toy
    a = audit(p, 'trak', out=out, k=4, proj_dim=32, gt=gt, progress=False, report=False, log=None)
    with pytest.raises(ValueError, match='not'): tail_patch_study('kjv-gpt2', 'trak', result=a, log=None)
    with pytest.raises(ValueError, match='no contributions'): tail_patch_proponents(a, ['ekfac'], [0, 1])

def test_study_paper_and_safe_weights(toy):
    "weights=('paper', 'safe'): 'paper' is the default 'learned' list under the audit's label; 'safe' lists follow the audit's safe weights"
    p, gt, out = toy
    kw = dict(k=3, out=out, lr=0.1, n_queries=4, gt=gt, k_learn=4, proj_dim=32, progress=False, log=None)
    d0 = tail_patch_study(p, 'trak,ekfac', **kw).details
    r = tail_patch_study(p, 'trak,ekfac', **kw, weights=('paper', 'safe'))
    assert list(zip(r.df.method, r.df.weights))[:3] == [('trak', 'uniform'), ('trak', 'paper'), ('trak', 'safe')] and len(r) == 7
    d = r.details
    for m in ('trak', 'ekfac'):
        assert torch.equal(d['proponents'][m, 'paper'], d0['proponents'][m, 'learned'])
        np.testing.assert_allclose(d['deltas'][m, 'paper'], d0['deltas'][m, 'learned'], rtol=0, atol=1e-6 * np.abs(d0['deltas'][m, 'learned']).max())
    a = audit(p, 'trak,ekfac', out=out, k=4, proj_dim=32, gt=gt, progress=False, report=False, log=None)
    pos = [list(map(str, gt.query_ids)).index(q) for q in d['query_ids']]
    w = a.weights['ekfac']; assert w.settings.get('apply') != 'refit'       # EK-FAC's safe weights apply as S @ w
    S = a.contributions['ekfac'].S
    assert torch.equal(d['proponents']['ekfac', 'safe'], (S[pos] @ w.w.to(S.dtype)).topk(3, dim=1).indices)
    with pytest.raises(ValueError, match='oracle'): tail_patch_study(p, 'trak', **kw, weights=('paper', 'oracle'))
    with pytest.raises(ValueError, match='at most once'): tail_patch_study(p, 'trak', **kw, weights=('paper', 'paper'))

def test_safe_proponents_use_the_audits_scoring():
    "Safe weights that re-solve a kernel (apply='refit') are ranked by the run's weighted_scores, not by S @ w"
    from types import SimpleNamespace
    from pwattr.methods import Contributions
    g = torch.Generator().manual_seed(0)
    S = torch.randn(3, 8, 2, generator=g)
    c = Contributions(S, ['a', 'b'], ['q0', 'q1', 'q2'], list(range(8)), 'trak')
    gw = lambda s: SimpleNamespace(w=torch.ones(2), settings=s)
    refit_scores = -S.sum(-1)                                     # the refit ranks opposite to S @ w: the lists must follow it
    run = SimpleNamespace(weighted_scores=lambda m, cc, w: refit_scores if w.settings.get('apply') == 'refit' else cc.scores(w.w))
    res = SimpleNamespace(contributions={'trak': c}, paper={'trak': gw({})}, weights={'trak': gw({'apply': 'refit'})}, run=run)
    pr = tail_patch_proponents(res, ['trak'], [2, 0], k=3, weights=('paper', 'safe'))
    assert torch.equal(pr['trak', 'paper'], S.sum(-1)[[2, 0]].topk(3, dim=1).indices)
    assert torch.equal(pr['trak', 'safe'], refit_scores[[2, 0]].topk(3, dim=1).indices)
    assert pr['random', 'uniform'].shape == (2, 3)
    with pytest.raises(ValueError, match='oracle'): tail_patch_proponents(res, ['trak'], [0], k=2, weights=('oracle',))

def test_study_cache_follows_the_weights(toy):
    "Given an audit, the cache entry depends on the weights it applies: changed weights (a new gate, a new learner) are never served stale"
    p, gt, out = toy
    kw = dict(k=3, out=out, lr=0.1, n_queries=4, gt=gt, progress=False, log=None)
    a = audit(p, 'trak,ekfac', out=out, k=4, proj_dim=32, gt=gt, progress=False, report=False, log=None)
    d1 = tail_patch_study(p, 'trak,ekfac', result=a, weights=('paper', 'safe'), **kw).details
    S = a.contributions['ekfac'].S
    new = torch.zeros(S.shape[-1]); new[-1] = float(S.shape[-1])          # all weight on the last group
    a.weights['ekfac'].w = new
    d2 = tail_patch_study(p, 'trak,ekfac', result=a, weights=('paper', 'safe'), **kw).details
    pos = [list(map(str, gt.query_ids)).index(q) for q in d2['query_ids']]
    assert torch.equal(d2['proponents']['ekfac', 'safe'], (S[pos] @ new.to(S.dtype)).topk(3, dim=1).indices)
    assert d1['settings']['weights_hash'] != d2['settings']['weights_hash']
