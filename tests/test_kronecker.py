"Kronecker capture, EK-FAC and LoGRA checked against independent computations (torch.func gradients, explicit matrices)"
import os, warnings
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import numpy as np, pandas as pd, pytest, torch, torch.nn as nn, torch.nn.functional as F
from torch.func import functional_call, vmap, grad, jacrev
from pwattr.kronecker import (kron_layers, layer_kind, layer_shape, to_param_grads, kron_grads, kron_projection, kron_features,
                              fit_kron_factors, ekfac_precondition, EKFAC, LoGRA, SampledCrossEntropy, SampledLMLoss,
                              ExactFisherCrossEntropy, GaussNewtonOutputs, fisher_output_for, KronCapture, damped_inverse)
from pwattr.features import CrossEntropy, LMLoss, Margin
from pwattr.models import MLP, ResNet9, ViT, gpt2_lm
from pwattr.data import ExampleSet
from pwattr.grouping import GroupSpec

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same'")
torch.set_num_threads(1)

# ------------------------------------------------------------------ helpers (independent references)
def func_grads(model, fn, batch, vmapped=True):
    "Per-example gradients of fn with torch.func (vmap over examples, or a loop where vmap cannot run)"
    params = {k: v.detach() for k, v in model.named_parameters()}
    def f(p, b): return fn(lambda *a, **kw: functional_call(model, p, a, kw), {k: v[None] for k, v in b.items()})[0]
    if vmapped: return vmap(grad(f), in_dims=(None, 0))(params, batch)
    B = len(next(iter(batch.values())))
    gs = [grad(f)(params, {k: v[i] for k, v in batch.items()}) for i in range(B)]
    return {k: torch.stack([g[k] for g in gs]) for k in gs[0]}

def as_matrix(ref, name, module):
    "torch.func gradients of one layer in the Kronecker layout [N, n_out * n_in] (bias as the last input column)"
    W = ref[f'{name}.weight']
    if layer_kind(module) == 'conv1d': W = W.transpose(-1, -2)
    W = W.flatten(2) if W.dim() > 2 else W
    if f'{name}.bias' in ref: W = torch.cat([W, ref[f'{name}.bias'][..., None]], -1)
    return W.flatten(1)

def check_capture(model, fn, batch, layers, **kw):
    G, ref = kron_grads(model, fn, batch, layers), func_grads(model, fn, batch, **kw)
    for n, m in layers.items():
        for k, v in to_param_grads(m, G[n]).items():
            r = ref[f'{n}.{k}']
            assert v.shape == r.shape, (n, k, v.shape, r.shape)
            torch.testing.assert_close(v, r, rtol=1e-4, atol=1e-5 * G[n].abs().max().item() + 1e-8)
    return G

def lm_batch(B=3, T=10, V=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (B, T), generator=g); am = torch.ones_like(ids); am[1, T - 3:] = 0
    return {'input_ids': ids, 'attention_mask': am}

@pytest.fixture(scope='module')
def gpt():
    torch.manual_seed(0)
    return gpt2_lm(vocab_size=32, n_layer=2, n_embd=16, n_head=2, n_ctx=16, bos_id=1, eos_id=2).eval()

# ------------------------------------------------------------------ capture
def test_capture_linear_mlp():
    torch.manual_seed(0)
    m = MLP(in_shape=(1, 4, 4), n_classes=5, hidden=(7, 6))
    b = {'x': torch.randn(9, 1, 4, 4), 'y': torch.randint(0, 5, (9,))}
    check_capture(m, CrossEntropy(), b, kron_layers(m))
    check_capture(m, Margin(), b, kron_layers(m))

def test_capture_conv2d_variants():
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, stride=2, bias=False),
                        nn.Conv2d(3, 3, (2, 3), padding='same', dilation=(1, 2)),
                        nn.Conv2d(3, 2, 3, padding=1, padding_mode='reflect'), nn.Flatten(), nn.Linear(18, 3))
    b = {'x': torch.randn(5, 2, 8, 8), 'y': torch.randint(0, 3, (5,))}
    L = kron_layers(cnn)
    assert [layer_kind(m) for m in L.values()] == ['conv2d'] * 4 + ['linear']
    check_capture(cnn, CrossEntropy(), b, L)

def test_capture_resnet9_and_vit():
    torch.manual_seed(0)
    res = ResNet9(width=4).eval()
    check_capture(res, CrossEntropy(), {'x': torch.randn(3, 1, 16, 16), 'y': torch.randint(0, 10, (3,))}, kron_layers(res))
    vit = ViT(img_size=8, patch=4, dim=16, depth=1, heads=2).eval()
    check_capture(vit, CrossEntropy(), {'x': torch.randn(4, 1, 8, 8), 'y': torch.randint(0, 10, (4,))}, kron_layers(vit))

def test_capture_gpt2_conv1d(gpt):
    L = kron_layers(gpt, r'\.h\.')
    assert len(L) == 8 and all(layer_kind(m) == 'conv1d' for m in L.values())
    b = lm_batch()
    for fn in (LMLoss(), LMLoss(reduction='sum')):
        check_capture(gpt, fn, b, L, vmapped=False)

def test_capture_weight_sharing():
    "A layer applied twice in one forward: per-example gradient = sum over both calls"
    class Twice(nn.Module):
        def __init__(self): super().__init__(); self.l = nn.Linear(4, 4); self.h = nn.Linear(4, 2)
        def forward(self, x): return self.h(self.l(torch.tanh(self.l(x))))
    torch.manual_seed(0); m = Twice()
    check_capture(m, CrossEntropy(), {'x': torch.randn(6, 4), 'y': torch.randint(0, 2, (6,))}, kron_layers(m))

def test_capture_leaves_grads_alone():
    m = MLP(in_shape=(3,), n_classes=2, hidden=(4,))
    kron_grads(m, CrossEntropy(), {'x': torch.randn(4, 3), 'y': torch.tensor([0, 1, 0, 1])})
    assert all(p.grad is None for p in m.parameters())

def test_projection_seeded_and_exact():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(20, 10), nn.Tanh(), nn.Linear(10, 3))
    b = {'x': torch.randn(7, 20), 'y': torch.randint(0, 3, (7,))}
    L = kron_layers(m)
    P = kron_projection(L, (3, 5), seed=4)
    assert P['0'][0].shape == (10, 3) and P['0'][1].shape == (21, 5) and P['2'][0] is None    # 3 outputs <= r_out
    G, Gp = kron_grads(m, CrossEntropy(), b, L), kron_grads(m, CrossEntropy(), b, L, P)
    ref0 = P['0'][0].T @ G['0'] @ P['0'][1]          # float32: atol scaled by the values' magnitude
    torch.testing.assert_close(Gp['0'], ref0, rtol=1e-4, atol=1e-5 * ref0.abs().max().item())
    ref2 = G['2'] @ P['2'][1]
    torch.testing.assert_close(Gp['2'], ref2, rtol=1e-4, atol=1e-5 * ref2.abs().max().item())
    assert torch.equal(kron_projection(L, (3, 5), seed=4)['0'][1], P['0'][1])
    assert not torch.equal(kron_projection(L, (3, 5), seed=5)['0'][1], P['0'][1])
    # unbiased inner products: average over many seeds approaches the exact one
    g = G['0'].flatten(1); exact = (g[0] @ g[1]).item()
    est = np.mean([(lambda Q: (Q[0].flatten() @ Q[1].flatten()).item())(kron_grads(m, CrossEntropy(), b, {'0': L['0']},
                    kron_projection({'0': L['0']}, 4, seed=s))['0']) for s in range(300)])
    assert abs(est - exact) < 0.15 * g[0].norm().item() * g[1].norm().item(), (est, exact)

# ------------------------------------------------------------------ features
def test_kron_features_exampleset_and_groupspec():
    torch.manual_seed(0)
    m = MLP(in_shape=(5,), n_classes=3, hidden=(4,))
    N = 11
    es = ExampleSet('toy', {'x': torch.randn(N, 5), 'y': torch.randint(0, 3, (N,))},
                    pd.DataFrame({'id': [f'e{i}' for i in range(N)]}))
    f = kron_features(m, Margin(), es, batch_size=4)
    assert f.ids == es.ids and f.groups == ['1', '3'] and f.dims == [4 * 6, 3 * 5]
    assert set(f.extras) == {'out', 'q'} and f.meta['layout'] == 'kron'
    ref = func_grads(m, Margin(), es.batch())
    for n in f.groups:
        want = as_matrix(ref, n, dict(m.named_modules())[n])
        torch.testing.assert_close(f.block(n), want, rtol=1e-4, atol=1e-5 * want.abs().max().item())
    torch.testing.assert_close(f.extras['out'], Margin()(m, es.batch()).detach())
    spec = GroupSpec.by_module(m, include=r'^3\.')
    assert kron_features(m, Margin(), es, layers=spec).groups == ['3']
    with pytest.raises(ValueError, match='not in Linear'):
        kron_layers(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)), GroupSpec.by_module(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))))
    with pytest.raises(KeyError, match='close matches'):
        kron_layers(m, ['3', 'fc'])
    with pytest.raises(ValueError, match='groups=2'):
        layer_shape(nn.Conv2d(4, 4, 3, groups=2))

def test_features_deterministic():
    m = MLP(in_shape=(6,), n_classes=3, hidden=(8,))
    d = {'x': torch.randn(10, 6), 'y': torch.randint(0, 3, (10,))}
    a, b = kron_features(m, CrossEntropy(), d, rank=3, seed=1), kron_features(m, CrossEntropy(), d, rank=3, seed=1)
    assert torch.equal(a.x, b.x) and a.dims == [9, 9]
    assert not torch.equal(kron_features(m, CrossEntropy(), d, rank=3, seed=2).x, a.x)

# ------------------------------------------------------------------ EK-FAC
def test_ekfac_linear_mse_equals_exact_gauss_newton():
    torch.manual_seed(0)
    lin = nn.Sequential(); lin.add_module('lin', nn.Linear(4, 3)); lin = lin.double()
    N = 30
    d = {'x': torch.randn(N, 4, dtype=torch.float64), 't': torch.randn(N, 3, dtype=torch.float64)}
    mse = lambda model, b: 0.5 * (model(b['x']) - b['t']).pow(2).sum(-1)
    fac = fit_kron_factors(lin, d, GaussNewtonOutputs(), batch_size=7)
    f = kron_features(lin, mse, d, dtype=torch.float64)
    p = {k: v.detach() for k, v in lin.named_parameters()}
    J = vmap(jacrev(lambda p, x: functional_call(lin, p, (x[None],))[0]), in_dims=(None, 0))(p, d['x'])
    Jm = torch.cat([J['lin.weight'], J['lin.bias'][..., None]], -1).flatten(2)
    GN = torch.einsum('nkp,nkq->pq', Jm, Jm) / N
    for damping in (None, 0.05):
        ek = EKFAC(fac, damping=damping).fit(f)
        lam = ek.dampings['lin']
        if damping is None: assert abs(lam - 0.1 * fac.lam['lin'].mean().item()) < 1e-12
        exact = f.x @ torch.linalg.solve(GN + lam * torch.eye(15, dtype=torch.float64), f.x.T)
        C = ek.contributions(f)
        torch.testing.assert_close(C.scores(), exact, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(ek.self_influence()[:, 0], exact.diagonal(), rtol=1e-9, atol=1e-12)

def test_ekfac_rank_one_correction():
    torch.manual_seed(1)
    m = MLP(in_shape=(5,), n_classes=4, hidden=(3,)).double()
    one = {'x': torch.randn(1, 5, dtype=torch.float64)}
    out = lambda model, b: model(b['x']).sum(-1) ** 2
    fac = fit_kron_factors(m, one, out)
    G = kron_grads(m, out, one)
    for n in fac.layers:
        torch.testing.assert_close(fac.lam[n], torch.outer(fac.eS[n], fac.eA[n]), rtol=1e-9, atol=1e-12)
        g = G[n].flatten(); v = torch.randn(1, *fac.shapes[n], dtype=torch.float64)
        direct = torch.linalg.solve(torch.outer(g, g) + 0.2 * torch.eye(len(g), dtype=torch.float64), v.flatten())
        torch.testing.assert_close(ekfac_precondition(v, fac.QS[n], fac.QA[n], fac.lam[n], 0.2).flatten(), direct)

def _fisher_diag_check(model, fisher_fn, batch, layers, vmapped=True):
    "Lambda == diag((Q_S x Q_A)^T F (Q_S x Q_A)) with F the empirical Fisher of fisher_fn from torch.func"
    fac = fit_kron_factors(model, batch, fisher_fn, layers=layers, batch_size=2)
    ref = func_grads(model, fisher_fn, batch, vmapped)
    for n, mod in layers.items():
        g = as_matrix(ref, n, mod).double()
        Fl = g.T @ g / len(g); Q = torch.kron(fac.QS[n], fac.QA[n])
        target = (Q.T @ Fl @ Q).diagonal()
        torch.testing.assert_close(fac.lam[n].flatten(), target, rtol=1e-4, atol=1e-6 * target.abs().max().item())

def test_ekfac_correction_is_fisher_diagonal_conv2d():
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 3, stride=2), nn.Flatten(), nn.Linear(8, 3))
    b = {'x': torch.randn(6, 1, 6, 6), 'y': torch.randint(0, 3, (6,))}
    _fisher_diag_check(cnn, CrossEntropy(), b, kron_layers(cnn))

def test_ekfac_correction_is_fisher_diagonal_gpt2(gpt):
    L = kron_layers(gpt, r'h\.0\.(attn\.c_proj|mlp\.c_fc)')
    _fisher_diag_check(gpt, LMLoss(reduction='sum'), lm_batch(B=4), L, vmapped=False)

def test_ekfac_exact_fisher_cross_entropy():
    "ExactFisherCrossEntropy's pseudo-outputs give the expected Fisher E[J^T diag(p) J] exactly"
    torch.manual_seed(0)
    m = MLP(in_shape=(4,), n_classes=3, hidden=(5,)).double()
    d = {'x': torch.randn(25, 4, dtype=torch.float64)}
    fac = fit_kron_factors(m, d, ExactFisherCrossEntropy(), batch_size=10)
    p = {k: v.detach() for k, v in m.named_parameters()}
    J = vmap(jacrev(lambda p, x: torch.log_softmax(functional_call(m, p, (x[None],))[0], -1)), in_dims=(None, 0))(p, d['x'])
    pr = torch.softmax(m(d['x']), -1).detach()
    for n in fac.layers:
        Jl = torch.cat([J[f'{n}.weight'], J[f'{n}.bias'][..., None]], -1).flatten(2)
        Fl = torch.einsum('ncp,nc,ncq->pq', Jl, pr, Jl) / 25; Q = torch.kron(fac.QS[n], fac.QA[n])
        torch.testing.assert_close(fac.lam[n].flatten(), (Q.T @ Fl @ Q).diagonal())

def test_sampled_fisher_seeded_and_masked():
    torch.manual_seed(0)
    m = MLP(in_shape=(6,), n_classes=4, hidden=(5,))
    d = {'x': torch.randn(20, 6), 'y': torch.randint(0, 4, (20,))}
    fo = fisher_output_for(CrossEntropy())
    a, b = fit_kron_factors(m, d, fo, seed=3), fit_kron_factors(m, d, fo, seed=3)
    assert all(torch.equal(a.lam[n], b.lam[n]) for n in a.layers)
    assert not torch.equal(fit_kron_factors(m, d, fo, seed=4).lam['1'], a.lam['1'])
    # sequence layer: padded positions are left out of A
    class Seq(nn.Module):
        def __init__(self): super().__init__(); self.emb = nn.Embedding(10, 4); self.l = nn.Linear(4, 10)
        def forward(self, ids, attention_mask=None): return self.l(self.emb(ids))
    s = Seq().double(); ids = torch.randint(0, 10, (5, 6)); am = torch.ones_like(ids); am[:, 4:] = 0
    fac = fit_kron_factors(s, {'input_ids': ids, 'attention_mask': am}, SampledLMLoss(), layers=['l'])
    a_ = torch.cat([s.emb(ids), torch.ones(5, 6, 1, dtype=torch.float64)], -1).detach()[:, :4].reshape(-1, 5)
    A = a_.T @ a_ / 5
    eA, QA = torch.linalg.eigh(A)
    torch.testing.assert_close(fac.eA['l'], eA)
    with pytest.raises(ValueError, match='fisher_output='): fisher_output_for(object())

def test_ekfac_block_diagonal_sum_and_errors():
    torch.manual_seed(0)
    m = MLP(in_shape=(8,), n_classes=3, hidden=(6,))
    d = {'x': torch.randn(40, 8), 'y': torch.randint(0, 3, (40,))}
    fac = fit_kron_factors(m, d, fisher_output_for(CrossEntropy()), batch_size=16)
    f = kron_features(m, CrossEntropy(), d)
    ek = EKFAC(fac).fit(f)
    C = ek.contributions(f[:7])
    K = torch.block_diag(*[(lambda Q: Q @ torch.diag(1 / (fac.lam[n].flatten() + ek.dampings[n])) @ Q.T)(torch.kron(fac.QS[n], fac.QA[n]))
                           for n in fac.layers])
    direct = f.x[:7].double() @ K @ f.x.double().T
    tol = 1e-4 * direct.abs().max().item()
    torch.testing.assert_close(C.scores().double(), direct, rtol=1e-4, atol=tol)
    torch.testing.assert_close(C.S.sum(-1), C.scores())
    # one layer only: the contribution of that layer
    f3 = kron_features(m, CrossEntropy(), d, layers=['3'])
    C3 = EKFAC(fac).fit(f3).contributions(f3[:7])
    torch.testing.assert_close(C3.S[..., 0], C.group('3'), rtol=1e-4, atol=tol)
    with pytest.raises(ValueError, match='rank=None'): EKFAC(fac).fit(kron_features(m, CrossEntropy(), d, rank=2))
    from pwattr.features import Features
    with pytest.raises(ValueError, match='kron_features'): EKFAC(fac).fit(Features(f.x, f.groups, f.dims, f.ids))

# ------------------------------------------------------------------ LoGRA
def test_logra_identity_equals_direct_fisher_influence():
    torch.manual_seed(0)
    m = MLP(in_shape=(7,), n_classes=3, hidden=(5,))
    d = {'x': torch.randn(30, 7), 'y': torch.randint(0, 3, (30,))}
    f = kron_features(m, CrossEntropy(), d, rank=8)         # 8 >= every side: identity
    lg = LoGRA().fit(f); C = lg.contributions(f[:9])
    ref = func_grads(m, CrossEntropy(), d)
    mods = dict(m.named_modules()); S = []
    for n in ['1', '3']:
        g = as_matrix(ref, n, mods[n]).double(); Fl = g.T @ g / 30
        lam = 0.1 * torch.linalg.eigvalsh(Fl).mean()
        S.append(g[:9] @ torch.linalg.solve(Fl + lam * torch.eye(len(Fl), dtype=Fl.dtype), g.T))
    S = torch.stack(S, -1); tol = 1e-3 * S.abs().max().item()
    torch.testing.assert_close(C.S.double(), S, rtol=1e-3, atol=tol)
    torch.testing.assert_close(C.scores().double(), S.sum(-1), rtol=1e-3, atol=tol)
    torch.testing.assert_close(lg.self_influence()[:9].double(), torch.stack([S[i, i] for i in range(9)]), rtol=1e-3, atol=tol)

def test_logra_gpt2_projected(gpt):
    L = kron_layers(gpt, r'\.h\.')
    d = lm_batch(B=12, seed=1)
    f = kron_features(gpt, LMLoss(), d, layers=L, rank=4, seed=0, batch_size=5)
    assert f.dims == [16] * 8
    lg = LoGRA().fit(f); C = lg.contributions(f[:4])
    # projected features equal the Kronecker projection of the full per-layer gradients
    full = kron_features(gpt, LMLoss(), d, layers=L, batch_size=5); P = kron_projection(L, 4, seed=0)
    for j, (n, mod) in enumerate(L.items()):
        o, i = layer_shape(mod)
        Gp = P[n][0].T @ full.block(j).reshape(-1, o, i) @ P[n][1]
        torch.testing.assert_close(f.block(j), Gp.flatten(1), rtol=1e-3, atol=1e-5 * Gp.abs().max().item())
    # fisher= other features (e.g. sampled labels) changes the preconditioner only
    lg2 = LoGRA(fisher=f[:6]).fit(f)
    assert lg2.contributions(f[:4]).S.shape == C.S.shape == (4, 12, 8)
    with pytest.raises(ValueError, match='same layers'): LoGRA(fisher=kron_features(gpt, LMLoss(), d, layers=L, rank=2)).fit(f)

def test_factors_save_load(tmp_path):
    m = MLP(in_shape=(4,), n_classes=3, hidden=(5,))
    fac = fit_kron_factors(m, {'x': torch.randn(12, 4), 'y': torch.randint(0, 3, (12,))}, SampledCrossEntropy(), layers=r'^3$')
    fac.save(tmp_path/'f.pt')
    from pwattr.kronecker import KronFactors
    back = KronFactors.load(tmp_path/'f.pt')
    assert back.layers == ['3'] and back.n == 12 and torch.equal(back.lam['3'], fac.lam['3']) and torch.equal(back.QA['3'], fac.QA['3'])
    assert list(back.table().index) == ['3']

def test_sampled_fisher_many_samples_approaches_exact():
    torch.manual_seed(0)
    m = MLP(in_shape=(4,), n_classes=3, hidden=(5,)).double()
    d = {'x': torch.randn(10, 4, dtype=torch.float64)}
    so = SampledCrossEntropy(n_samples=600)
    assert so(m, d, generator=torch.Generator().manual_seed(0)).shape == (10, 600)
    ex = fit_kron_factors(m, d, ExactFisherCrossEntropy())
    sa = fit_kron_factors(m, d, so, seed=0)
    for n in ex.layers:
        S_ex = ex.QS[n] @ torch.diag(ex.eS[n]) @ ex.QS[n].T; S_sa = sa.QS[n] @ torch.diag(sa.eS[n]) @ sa.QS[n].T
        assert (S_sa - S_ex).norm() < 0.1 * S_ex.norm(), n
        assert (sa.lam[n].sum() - ex.lam[n].sum()).abs() < 0.1 * ex.lam[n].sum()    # trace of the Fisher
    lm = SampledLMLoss(n_samples=3)
    class Seq(nn.Module):
        def __init__(self): super().__init__(); self.emb = nn.Embedding(10, 4); self.l = nn.Linear(4, 10)
        def forward(self, ids, attention_mask=None): return self.l(self.emb(ids))
    out = lm(Seq(), {'input_ids': torch.randint(0, 10, (2, 5)), 'attention_mask': torch.ones(2, 5, dtype=torch.long)},
             generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3)

def test_damped_inverse_and_logra_projection_mismatch():
    A = torch.randn(6, 4, dtype=torch.float64); Fm = A.T @ A / 6
    K, e, d = damped_inverse(Fm)
    assert abs(d - 0.1 * torch.linalg.eigvalsh(Fm).mean().item()) < 1e-12
    torch.testing.assert_close(K, torch.linalg.inv(Fm + d * torch.eye(4, dtype=torch.float64)))
    m = MLP(in_shape=(9,), n_classes=3, hidden=(8,)); data = {'x': torch.randn(10, 9), 'y': torch.randint(0, 3, (10,))}
    f0, f1 = kron_features(m, CrossEntropy(), data, rank=4, seed=0), kron_features(m, CrossEntropy(), data, rank=4, seed=1)
    with pytest.raises(ValueError, match='same rank and seed'): LoGRA(fisher=f1).fit(f0)
    lg = LoGRA(damping={'1': 0.5, '3': 0.25}).fit(f0)
    assert lg.dampings == {'1': 0.5, '3': 0.25}

# ------------------------------------------------------------------ streamed training side
from pwattr.kronecker import stream_contributions, stream_self_influence

def _toy_es(N, d_in=8, C=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ExampleSet('toy', {'x': torch.randn(N, d_in, generator=g), 'y': torch.randint(0, C, (N,), generator=g)},
                      pd.DataFrame({'id': [f't{i:03d}' for i in range(N)][::-1]}))       # ids not in positional order

def test_stream_ekfac_equals_in_memory():
    torch.manual_seed(0)
    m = MLP(in_shape=(8,), n_classes=3, hidden=(6, 5))
    es = _toy_es(53)
    fac = fit_kron_factors(m, es, fisher_output_for(CrossEntropy()), batch_size=16)
    f = kron_features(m, CrossEntropy(), es, batch_size=64)
    q = kron_features(m, Margin(), _toy_es(9, seed=1))                   # queries may use another output function
    ek = EKFAC(fac).fit(f); ref = ek.contributions(q)
    # independent reference: the block-diagonal EK-FAC inverse as one explicit matrix
    K = torch.block_diag(*[(lambda Q: Q @ torch.diag(1 / (fac.lam[n].flatten() + ek.dampings[n])) @ Q.T)(torch.kron(fac.QS[n], fac.QA[n]))
                           for n in fac.layers])
    direct = q.x.double() @ K @ f.x.double().T; tol = 1e-5 * direct.abs().max().item()
    for bs in (64, 7):
        for meth in (EKFAC(fac), EKFAC(fac).fit(f)):                      # unfitted (no training features) and fitted
            C = meth.contributions_streamed(m, es, CrossEntropy(), q, batch_size=bs)
            assert C.train_ids == es.ids and C.query_ids == q.ids and C.groups == f.groups == ['1', '3', '5']
            torch.testing.assert_close(C.S, ref.S, rtol=1e-5, atol=tol)
            torch.testing.assert_close(C.scores().double(), direct, rtol=1e-4, atol=10 * tol)
    torch.testing.assert_close(stream_contributions(EKFAC(fac), m, es, CrossEntropy(), q, query_chunk=2).S, ref.S, rtol=1e-6, atol=tol)
    # dict and iterable-of-batches training data: positional ids
    C = stream_contributions(EKFAC(fac), m, es.batch(), CrossEntropy(), q, batch_size=10)
    assert C.train_ids == list(range(53)); torch.testing.assert_close(C.S, ref.S, rtol=1e-5, atol=tol)
    b = es.batch(); it = ({k: v[i:i + 20] for k, v in b.items()} for i in range(0, 53, 20))
    C = stream_contributions(EKFAC(fac), m, it, CrossEntropy(), q)
    assert C.train_ids == list(range(53)); torch.testing.assert_close(C.S, ref.S, rtol=1e-5, atol=tol)
    # self-influence, and a subset of layers
    si = EKFAC(fac).self_influence_streamed(m, es, CrossEntropy(), batch_size=13)
    torch.testing.assert_close(si, ek.self_influence(), rtol=1e-5, atol=tol)
    torch.testing.assert_close(si.sum(1).double(), torch.einsum('nd,de,ne->n', f.x.double(), K, f.x.double()), rtol=1e-4, atol=10 * tol)
    q3 = kron_features(m, Margin(), _toy_es(9, seed=1), layers=['3'])
    C3 = EKFAC(fac).contributions_streamed(m, es, CrossEntropy(), q3, batch_size=20)
    torch.testing.assert_close(C3.S[..., 0], ref.group('3'), rtol=1e-5, atol=tol)

def test_stream_ekfac_gpt2(gpt):
    L = kron_layers(gpt, r'\.h\.0\.')
    d = lm_batch(B=11, seed=2)
    fac = fit_kron_factors(gpt, d, fisher_output_for(LMLoss()), layers=L, batch_size=4)
    f = kron_features(gpt, LMLoss(), d, layers=L, batch_size=4)
    ek = EKFAC(fac)
    ref = EKFAC(fac).fit(f).contributions(f[:3])
    C = ek.contributions_streamed(gpt, d, LMLoss(), f[:3], batch_size=5)
    torch.testing.assert_close(C.S, ref.S, rtol=1e-5, atol=1e-5 * ref.S.abs().max().item())
    torch.testing.assert_close(ek.self_influence_streamed(gpt, d, LMLoss(), batch_size=3), EKFAC(fac).fit(f).self_influence(),
                               rtol=1e-5, atol=1e-5 * ref.S.abs().max().item())

def test_stream_logra_and_errors():
    torch.manual_seed(0)
    m = MLP(in_shape=(8,), n_classes=3, hidden=(6,))
    es = _toy_es(40)
    f = kron_features(m, CrossEntropy(), es, rank=3, seed=5)
    lg = LoGRA().fit(f)
    C = lg.contributions_streamed(m, es, CrossEntropy(), f[:6], batch_size=9)
    assert C.train_ids == es.ids
    ref = lg.contributions(f[:6]); torch.testing.assert_close(C.S, ref.S, rtol=1e-5, atol=1e-6 * ref.S.abs().max().item())
    torch.testing.assert_close(lg.self_influence_streamed(m, es, CrossEntropy(), batch_size=9), lg.self_influence(), rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match='not fitted'): LoGRA().contributions_streamed(m, es, CrossEntropy(), f[:6])
    with pytest.raises(ValueError, match='same rank and seed'):
        lg.contributions_streamed(m, es, CrossEntropy(), kron_features(m, CrossEntropy(), es[list(range(6))], rank=3, seed=6))
    other = MLP(in_shape=(8,), n_classes=3, hidden=(6,))
    with pytest.raises(ValueError, match='another model'): lg.contributions_streamed(other, es, CrossEntropy(), f[:6])
    with pytest.raises(ValueError, match='one model'): stream_contributions(lg, m, es, CrossEntropy(), [f[:6], f[:6]])
    from pwattr.methods import TRAK
    ft = kron_features(m, Margin(), es, rank=3, seed=5)
    with pytest.raises(TypeError, match='cannot be streamed'): stream_contributions(TRAK().fit(ft), m, es, Margin(), ft[:4])
    fac = fit_kron_factors(m, es, fisher_output_for(CrossEntropy()))
    with pytest.raises(ValueError, match='rank=None'): EKFAC(fac).contributions_streamed(m, es, CrossEntropy(), f[:6])

_MEM_CHILD = r'''
import json, resource, sys, torch
torch.set_num_threads(1)
from pwattr.models import MLP
from pwattr.features import CrossEntropy
from pwattr.kronecker import EKFAC, kron_features, fit_kron_factors, fisher_output_for
torch.manual_seed(0)
m = MLP(in_shape=(128,), n_classes=10, hidden=(256, 256)).eval()
N = 1000; d = {'x': torch.randn(N, 128), 'y': torch.randint(0, 10, (N,))}
fac = fit_kron_factors(m, {k: v[:64] for k, v in d.items()}, fisher_output_for(CrossEntropy()))
q = kron_features(m, CrossEntropy(), {k: v[:20] for k, v in d.items()})
def peak_mb():   # VmHWM, the peak resident set size (MB); reset to the current RSS below so earlier peaks do not hide this one
    try: return [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')][0] / 1024
    except OSError: return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
try: open('/proc/self/clear_refs', 'w').write('5')
except OSError: pass
base = peak_mb()
if sys.argv[1] == 'memory': S = EKFAC(fac).fit(kron_features(m, CrossEntropy(), d)).contributions(q).S
else: S = EKFAC(fac).contributions_streamed(m, d, CrossEntropy(), q).S
print(json.dumps({'peak_mb': peak_mb() - base, 'D': q.x.shape[1], 'S': S[:2, :5].tolist()}))
'''

def test_stream_peak_memory_is_bounded(tmp_path):
    "The streamed path never holds the N x D training gradients: its peak RSS growth is a fraction of the in-memory path's"
    import json, subprocess, sys
    (tmp_path/'child.py').write_text(_MEM_CHILD)
    env = dict(os.environ, OMP_NUM_THREADS='1')
    res = {mode: json.loads(subprocess.run([sys.executable, str(tmp_path/'child.py'), mode], capture_output=True, text=True,
                                           check=True, env=env).stdout.strip().splitlines()[-1]) for mode in ('memory', 'streamed')}
    full_mb = 1000 * res['memory']['D'] * 4 / 2**20                    # the N x D float32 training gradients (~390 MB)
    assert res['memory']['peak_mb'] > 0.8 * full_mb, res              # the measurement sees them in memory...
    assert res['streamed']['peak_mb'] < 0.5 * full_mb, res            # ...and the streamed path does not hold them (~100 MB)
    S_mem = np.asarray(res['memory']['S'])
    np.testing.assert_allclose(res['streamed']['S'], S_mem, rtol=1e-5, atol=1e-5 * np.abs(S_mem).max())
