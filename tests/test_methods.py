"""pwattr.methods against independent computations: direct formulas, kernel regression, leave-one-out retraining,
dense vs streamed top-k (property test), on-disk round trips and bounded memory."""
import os, subprocess, sys, textwrap
from dataclasses import dataclass
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st, HealthCheck
from pwattr.methods import (Contributions, StreamedContributions, TopK, GradDot, GradCos, TracInCP, TRAK, stream_topk)
from pwattr.store import NpyFile
from pwattr.ridge import trak_gcv, choose_lambda

from pwattr.features import Features

GROUPS, DIMS = ['conv', 'mlp', 'head'], [4, 6, 2]

def toy(n, seed, lr=None, dtype=torch.float64, dims=DIMS, groups=GROUPS, integer=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-3, 4, (n, sum(dims)), generator=g).to(dtype) if integer else torch.randn(n, sum(dims), generator=g, dtype=dtype)
    return Features(x=x, groups=list(groups), dims=list(dims), ids=list(range(n)),
                    extras={'q': torch.rand(n, generator=g, dtype=dtype)}, meta={} if lr is None else {'lr': lr})

def ungrouped(f): return Features(x=f.x, groups=['all'], dims=[f.x.shape[1]], ids=f.ids, extras=f.extras, meta=f.meta)

def only_group(f, j):
    o = np.cumsum([0] + list(f.dims))
    return Features(x=f.x[:, o[j]:o[j + 1]], groups=[f.groups[j]], dims=[f.dims[j]], ids=f.ids, extras=f.extras, meta=f.meta)

def kernel_regression(Xt, Xq, lam):
    return torch.linalg.solve(Xt @ Xt.T + lam * torch.eye(len(Xt), dtype=Xt.dtype), Xt @ Xq.T).T

unit = lambda x: x / x.norm(dim=1, keepdim=True)

def setups():
    tr1, q1 = toy(80, 1), toy(6, 2)
    ck, qck = [toy(80, 1, lr=0.1), toy(80, 3, lr=0.03)], [toy(6, 2), toy(6, 4)]
    lam = 0.7
    qbar = (ck[0].extras['q'] + ck[1].extras['q']) / 2
    return {
        'graddot': (lambda: GradDot(), tr1, q1, q1.x @ tr1.x.T),
        'gradcos': (lambda: GradCos(), tr1, q1, unit(q1.x) @ unit(tr1.x).T),
        'tracin': (lambda: TracInCP(), ck, qck, 0.1 * qck[0].x @ ck[0].x.T + 0.03 * qck[1].x @ ck[1].x.T),
        'trak': (lambda: TRAK(lam=lam), tr1, q1, kernel_regression(tr1.x, q1.x, lam) * tr1.extras['q']),
        'trak-ensemble': (lambda: TRAK(lam=lam), ck, qck,
                          (kernel_regression(ck[0].x, qck[0].x, lam) + kernel_regression(ck[1].x, qck[1].x, lam)) / 2 * qbar),
        'trak-noq': (lambda: TRAK(lam=lam, use_q=False), tr1, q1, kernel_regression(tr1.x, q1.x, lam)),
    }

@pytest.mark.parametrize('name', list(setups()))
def test_direct_and_ungrouped(name):
    make, tr, qu, direct = setups()[name]
    m = make().fit(tr)
    c = m.contributions(qu)
    torch.testing.assert_close(c.scores(), direct)                      # independent formula
    ung = (lambda f: [ungrouped(x) for x in f]) if isinstance(tr, list) else ungrouped
    torch.testing.assert_close(c.scores(), make().fit(ung(tr)).scores(ung(qu)))  # groups sum to the ungrouped score
    torch.testing.assert_close(m.scores(qu), c.scores())
    si = m.self_influence()
    torch.testing.assert_close(si, torch.diagonal(m.contributions(tr).S).T)   # per-group diagonal without N x N
    w = torch.tensor([0.3, 2.0, 1.1], dtype=torch.float64)
    torch.testing.assert_close(m.scores(qu, w), c.scores(w))
    torch.testing.assert_close(c.scores(w), sum(w[j] * c.group(j) for j in range(3)))

def test_trak_block_is_a_trak_per_group():
    ck, qck = [toy(60, 1), toy(60, 3)], [toy(5, 2), toy(5, 4)]
    for lam in (None, 0.4):
        block = TRAK(kernel='block', lam=lam).fit(ck)
        c = block.contributions(qck)
        for j in range(3):
            sep = TRAK(lam=lam).fit([only_group(f, j) for f in ck]).scores([only_group(f, j) for f in qck])
            torch.testing.assert_close(c.group(j), sep)
    assert not torch.allclose(TRAK(kernel='global').fit(ck).scores(qck), TRAK(kernel='block').fit(ck).scores(qck))

def test_trak_default_lambda_is_relative():
    f = toy(50, 1)
    m = TRAK(lam_rel=0.05).fit(f)
    assert m.lams[0] == pytest.approx(0.05 * (f.x ** 2).sum(0).mean().item())
    torch.testing.assert_close(m.scores(toy(3, 2)), TRAK(lam=m.lams[0]).fit(f).scores(toy(3, 2)))

def test_ridge_influence_matches_leave_one_out():
    g = torch.Generator().manual_seed(0)
    N, d, lam = 60, 6, 1.0
    X, Xq = torch.randn(N, d, generator=g, dtype=torch.float64), torch.randn(10, d, generator=g, dtype=torch.float64)
    y = X @ torch.randn(d, generator=g, dtype=torch.float64) + 0.5 * torch.randn(N, generator=g, dtype=torch.float64)
    ridge = lambda keep: torch.linalg.solve(X[keep].T @ X[keep] + lam * torch.eye(d, dtype=X.dtype), X[keep].T @ y[keep])
    th = ridge(torch.ones(N, dtype=bool))
    loo = torch.stack([Xq @ th - Xq @ ridge(torch.arange(N) != n) for n in range(N)], 1)
    F = lambda x, **kw: Features(x=x, groups=['a', 'b'], dims=[3, 3], ids=list(range(len(x))), **kw)
    S = TRAK(lam=lam).fit(F(X, extras={'q': y - X @ th})).scores(F(Xq))
    assert np.corrcoef(S.flatten(), loo.flatten())[0, 1] >= 0.95
    # with the leverage correction 1 / (1 - h_n) the first-order score is exact for ridge regression
    h = (X * torch.linalg.solve(X.T @ X + lam * torch.eye(d, dtype=X.dtype), X.T).T).sum(1)
    torch.testing.assert_close(S / (1 - h), loo)

def test_logistic_influence_matches_leave_one_out():
    g = torch.Generator().manual_seed(1)
    N, d = 80, 5
    X, Xq = torch.randn(N, d, generator=g, dtype=torch.float64), torch.randn(10, d, generator=g, dtype=torch.float64)
    yb = (torch.rand(N, generator=g, dtype=torch.float64) < torch.sigmoid(X @ torch.randn(d, generator=g, dtype=torch.float64))).double()
    s, sq = 2 * yb - 1, 2 * (torch.rand(10, generator=g) < .5).double() - 1
    def fit(keep):
        th = torch.zeros(d, dtype=X.dtype)
        for _ in range(30):
            p = torch.sigmoid(X[keep] @ th)
            th = th - torch.linalg.solve(X[keep].T @ (X[keep] * (p * (1 - p))[:, None]) + torch.eye(d, dtype=X.dtype), X[keep].T @ (p - yb[keep]) + th)
        return th
    th = fit(torch.ones(N, dtype=bool))
    loo = torch.stack([sq * (Xq @ th) - sq * (Xq @ fit(torch.arange(N) != n)) for n in range(N)], 1)
    F = lambda x, **kw: Features(x=x, groups=['a', 'b'], dims=[2, 3], ids=list(range(len(x))), **kw)
    S = TRAK(lam=1.0).fit(F(s[:, None] * X, extras={'q': 1 - torch.sigmoid(s * (X @ th))})).scores(F(sq[:, None] * Xq))
    assert np.corrcoef(S.flatten(), loo.flatten())[0, 1] >= 0.9

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 120), nq=st.integers(1, 9), k=st.integers(1, 130), chunk=st.integers(1, 50),
       query_chunk=st.integers(1, 10), largest=st.booleans(), seed=st.integers(0, 10_000),
       method=st.sampled_from(['graddot', 'tracin', 'trak']), weighted=st.booleans())
def test_streaming_topk_equals_dense(n, nq, k, chunk, query_chunk, largest, seed, method, weighted):
    # integer features and weights: every score is exact in float64, so ties are real ties
    if method == 'tracin':
        tr = [toy(n, seed, lr=1.0, integer=True), toy(n, seed + 1, lr=2.0, integer=True)]
        qu = [toy(nq, seed + 2, integer=True), toy(nq, seed + 3, integer=True)]
        m = TracInCP(chunk=chunk)
    else:
        tr, qu = toy(n, seed, integer=True), toy(nq, seed + 2, integer=True)
        m = GradDot(chunk=chunk) if method == 'graddot' else TRAK(lam=1.0, chunk=chunk)
    m.fit(tr)
    w = torch.tensor([1., 3., 2.], dtype=torch.float64) if weighted else None
    dense = m.contributions(qu).scores(w)
    top = m.topk(qu, k=k, w=w, largest=largest, query_chunk=query_chunk)
    kk = min(k, n)
    ref = dense.topk(kk, 1, largest=largest).values
    assert top.values.shape == (nq, kk)
    torch.testing.assert_close(top.values, ref, rtol=1e-12, atol=1e-12)                  # same values, same order
    torch.testing.assert_close(dense.gather(1, top.indices), top.values, rtol=1e-12, atol=1e-12)  # indices carry them
    assert all(len(set(r)) == kk for r in top.indices.tolist())                          # no duplicates
    # the on-disk contributions give the same ranking
    c = m.contributions(qu)
    torch.testing.assert_close(c.topk(k, w, largest).values, ref, rtol=1e-12, atol=1e-12)

def test_streamed_contributions_roundtrip(tmp_path):
    tr, qu = [toy(50, 1), toy(50, 3)], [toy(7, 2), toy(7, 4)]
    m = TRAK(chunk=8).fit(tr, cache=tmp_path / 'psi.npy')
    assert isinstance(m._cache, NpyFile)
    dense = TRAK().fit(tr).contributions(qu)
    sc = m.contributions(qu, out=tmp_path / 'S', query_chunk=3)
    torch.testing.assert_close(sc.load().S, dense.S)
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / 'S' / 'S.npy')), dense.S)
    again = StreamedContributions(tmp_path / 'S')
    assert again.groups == GROUPS and again.train_ids == list(range(50)) and again.complete
    spans = [(sl.start, sl.stop) for sl, _ in again.chunks(16)]
    assert spans == [(0, 16), (16, 32), (32, 48), (48, 50)]
    torch.testing.assert_close(again.scores([1., 0., 2.]), dense.scores([1., 0., 2.]))
    assert torch.equal(again.topk(5).indices, dense.topk(5).indices)
    # an interrupted write is refused
    part = StreamedContributions.create(tmp_path / 'P', (2, 3, 1), ['a'], [0, 1], [0, 1, 2])
    with pytest.raises(RuntimeError, match='incomplete'): next(part.chunks())
    # training features that live on disk (NpyFile rows read with pread) give the same results
    f = NpyFile.create(tmp_path / 'x.npy', tuple(tr[0].x.shape), np.float64); f.write(0, tr[0].x)
    on_disk = Features(x=f, groups=GROUPS, dims=DIMS, ids=tr[0].ids, extras=tr[0].extras)
    for make in (GradDot, GradCos, lambda: TRAK(kernel='block')):
        torch.testing.assert_close(make().fit(on_disk).contributions(qu[0]).S, make().fit(tr[0]).contributions(qu[0]).S)
    # Contributions.save is the same format
    c2 = dense.save(tmp_path / 'C'); torch.testing.assert_close(c2.load().S, dense.S)

def test_gcv_against_hat_matrix():
    f = toy(40, 7); y = torch.randn(40, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    tab = trak_gcv(f, lam_rels=[1e-3, 1e-1, 10.], y=y)
    yc, G = y - y.mean(), f.x.T @ f.x
    for _, r in tab.iterrows():
        H = f.x @ torch.linalg.solve(G + r.lam * torch.eye(12, dtype=G.dtype), f.x.T)
        assert r.gcv == pytest.approx((40 * ((yc - H @ yc) ** 2).sum() / (40 - H.trace()) ** 2).item(), rel=1e-8)
    best, _ = choose_lambda(f, lam_rels=[1e-3, 1e-1, 10.], y=y)
    assert best == tab.loc[tab.gcv.idxmin(), 'lam_rel']
    best, tab = choose_lambda(f, lam_rels=[1e-2, 1e-1, 1.], criterion=lambda m: -abs(m.lams[0] - 0.1 * (f.x ** 2).sum(0).mean().item()))
    assert best == 1e-1 and list(tab.lam_rel) == [1e-2, 1e-1, 1.]
    with pytest.raises(ValueError, match='pass query='): choose_lambda(f, gt=object())

def test_errors_are_helpful():
    c = Contributions(torch.zeros(2, 3, 3), GROUPS)
    with pytest.raises(KeyError, match="Close matches: \\['head'"): c.group('haed')
    with pytest.raises(ValueError, match='has 4 entries but the contributions have 3 groups: pass one weight per group'): c.scores(torch.ones(4))
    with pytest.raises(ValueError, match='Use TracInCP'): GradDot().fit([toy(5, 1), toy(5, 2)])
    with pytest.raises(ValueError, match=r"meta\['lr'\]"): TracInCP().fit([toy(5, 1), toy(5, 2)])
    with pytest.raises(ValueError, match='lam > 0'): TRAK(lam=0.).fit(toy(5, 1))
    with pytest.raises(RuntimeError, match='not fitted'): GradDot().contributions(toy(2, 1))
    with pytest.raises(ValueError, match='same GroupSpec'): GradDot().fit(toy(5, 1)).topk(toy(2, 2, groups=['a', 'b', 'c']))

def test_group_weights_align_by_name():
    S = torch.randn(2, 4, 3)
    c = Contributions(S, GROUPS)
    @dataclass
    class GW: w: torch.Tensor; groups: list
    torch.testing.assert_close(c.scores(GW(torch.tensor([2., 1., 0.]), ['head', 'conv', 'mlp'])), S @ torch.tensor([1., 0., 2.]))

def test_topk_memory_is_bounded():
    """Top-k for 64 queries over 500,000 examples: a [Q, N] float32 matrix would add 128 MB; the stream must stay far below."""
    code = textwrap.dedent('''
        import resource, torch
        from pwattr.features import Features
        from pwattr.methods import GradDot
        torch.manual_seed(0)
        tr = Features(x=torch.randn(500_000, 8), groups=['a', 'b'], dims=[4, 4], ids=list(range(500_000)))
        qu = Features(x=torch.randn(64, 8), groups=['a', 'b'], dims=[4, 4], ids=list(range(64)))
        m = GradDot(chunk=16384).fit(tr)
        m.topk(qu, k=10)                                   # warm-up: allocator and thread pools
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        top = m.topk(qu, k=100)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert torch.equal(top.indices[:, :10], m.topk(qu, k=10).indices)
        print((peak - base) / 1024)
    ''')
    env = dict(os.environ, OMP_NUM_THREADS='1')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    grew_mb = float(out.stdout.strip().splitlines()[-1])
    assert grew_mb < 40, f'top-k grew peak memory by {grew_mb:.0f} MB'

def test_half_precision_features_compute_in_float32():
    tr, qu = toy(40, 1, dtype=torch.float16), toy(4, 2, dtype=torch.float16)
    tr32 = Features(x=tr.x.float(), groups=GROUPS, dims=DIMS, ids=tr.ids, extras={'q': tr.extras['q'].float()})
    qu32 = Features(x=qu.x.float(), groups=GROUPS, dims=DIMS, ids=qu.ids)
    for make in (GradDot, GradCos, lambda: TRAK(kernel='block')):
        c = make().fit(tr).contributions(qu)
        assert c.S.dtype == torch.float32
        torch.testing.assert_close(c.S, make().fit(tr32).contributions(qu32).S, rtol=1e-3, atol=1e-3)

def test_chunks_on_the_fly_and_weights_interop(tmp_path):
    tr, qu = toy(70, 1), toy(5, 2)
    m = TRAK(chunk=16).fit(tr)
    c = m.contributions(qu)
    blocks = list(m.chunks(qu, 30))
    assert [(sl.start, sl.stop) for sl, _ in blocks] == [(0, 30), (30, 60), (60, 70)]
    torch.testing.assert_close(torch.cat([b for _, b in blocks], 1), c.S)
    sc = m.contributions(qu, out=tmp_path / 'S')
    assert isinstance(sc.S, np.memmap) and sc.S.shape == (5, 70, 3)   # what other modules read as a plain array
    np.testing.assert_allclose(np.asarray(sc.S), c.S.numpy())
