"Per-example gradients (vmap == loop == autograd) on the project's models, outputs, projection, featurize"
import os, subprocess, sys, warnings
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import numpy as np, pandas as pd, pytest, torch
from torch import nn
from pwattr import models
from pwattr.grouping import GroupSpec
from pwattr.features import (per_example_grads, group_grads, featurize, Projector, Features, CrossEntropy, Margin, LMLoss,
                             DiffusionLoss, DTRAKOutput, DASOutput, output_fn, ddpm_alphas_cumprod)

torch.set_num_threads(1)

def reference(model, out_fn, batch, names):
    "Per-example gradients by one backward per example on the module itself"
    rows = []
    for i in range(len(next(iter(batch.values())))):
        model.zero_grad()
        out_fn(model, {k: v[i:i + 1] for k, v in batch.items()}).sum().backward()
        p = dict(model.named_parameters())
        rows.append(torch.cat([(p[n].grad if p[n].grad is not None else torch.zeros_like(p[n])).flatten() for n in names]))
    return torch.stack(rows)

def check(model, out_fn, batch, groups, tol=1e-5):
    ref = reference(model, out_fn, batch, groups.params)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        gv, ov = per_example_grads(model, out_fn, batch, groups, chunk_size=2, method='auto')
    assert not [x for x in w if 'per-example loop' in str(x.message)], [str(x.message) for x in w]
    gl, ol = per_example_grads(model, out_fn, batch, groups, method='loop')
    xv, xl = torch.cat(group_grads(gv, groups), 1), torch.cat(group_grads(gl, groups), 1)
    scale = ref.abs().max()
    assert scale > 0
    assert (xv - ref).abs().max() <= tol * max(1, scale), (xv - ref).abs().max()
    assert (xl - ref).abs().max() <= tol * max(1, scale)
    with torch.no_grad(): out = out_fn(model, batch)
    at = 1e-5 * out.abs().max().item()             # float32: atol scaled by the values' magnitude
    torch.testing.assert_close(ov, out, rtol=1e-4, atol=at); torch.testing.assert_close(ol, out, rtol=1e-4, atol=at)

def test_mlp():
    torch.manual_seed(0); m = models.MLP(in_shape=(1, 6, 6), hidden=(16,)).eval()
    b = {'x': torch.randn(5, 1, 6, 6), 'y': torch.randint(0, 10, (5,))}
    check(m, Margin(), b, GroupSpec.preset(m)); check(m, CrossEntropy(), b, GroupSpec.by_tensor(m))

def test_resnet9_groupnorm():
    torch.manual_seed(0); m = models.ResNet9(width=4).eval()
    b = {'x': torch.randn(4, 1, 16, 16), 'y': torch.randint(0, 10, (4,))}
    check(m, Margin(), b, GroupSpec.preset(m))

def test_vit():
    torch.manual_seed(0); m = models.ViT(dim=16, depth=1, heads=2).eval()
    b = {'x': torch.randn(3, 1, 28, 28), 'y': torch.randint(0, 10, (3,))}
    check(m, Margin(), b, GroupSpec.preset(m, 'block'))

def test_gpt2_lm_loss_with_padding():
    torch.manual_seed(0); m = models.gpt2_lm(n_layer=2, n_embd=32, n_head=2, n_ctx=16, pad_id=0).eval()
    ids = torch.randint(1, 256, (4, 12)); am = torch.ones_like(ids); am[2, 7:] = 0; ids[2, 7:] = 0
    b = {'input_ids': ids, 'attention_mask': am}
    for red in ['mean', 'sum']:
        torch.testing.assert_close(LMLoss(red)(m, b), models.lm_loss(m, b, red))     # independent implementation
    check(m, LMLoss(), b, GroupSpec.preset(m))
    assert m.config._attn_implementation == 'sdpa'

def _noise_like(out_fn, x, ids):
    return out_fn.prepare({'x': x}, ids)

def test_unet_diffusion_loss_matches_models_and_vmap():
    torch.manual_seed(0); m = models.unet2d(sample_size=8, channels=(8, 16), norm_groups=4).eval()
    x = torch.rand(3, 3, 8, 8) * 2 - 1
    sch = models.ddpm_scheduler()
    dl = DiffusionLoss(K=3, seed=5, scheduler=sch)
    b = dl.prepare({'x': x}, ['p', 'q', 'r'])
    with torch.no_grad():   # per-timestep loss from the models module (independent code), averaged over K
        ref = torch.stack([models.diffusion_loss(m, {'x': x}, sch, b['t'][:, k], b['noise'][:, k]) for k in range(3)], 1).mean(1)
        torch.testing.assert_close(dl(m, b), ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())
    torch.testing.assert_close(ddpm_alphas_cumprod().float(), sch.alphas_cumprod.float())
    check(m, dl, b, GroupSpec.preset(m), tol=1e-4)
    check(m, DTRAKOutput(K=3, seed=5), DTRAKOutput(K=3, seed=5).prepare({'x': x}, [0, 1, 2]), GroupSpec.preset(m, 'block'), tol=1e-4)

def _cond_unet():
    "A tiny conditional UNet, three images in [-1, 1] and their attribute labels (seeded)"
    torch.manual_seed(0)
    m = models.AttributeUNet({'subject': 3, 'style': 2, 'background': 2}, sample_size=8, channels=(8, 16), cond_dim=16,
                             norm_groups=4).eval()
    x = torch.rand(3, 3, 8, 8) * 2 - 1
    lab = {'subject': torch.tensor([0, 2, 1]), 'style': torch.tensor([1, 0, 1]), 'background': torch.tensor([0, 0, 1])}
    return m, x, lab

def test_conditional_unet():
    m, x, lab = _cond_unet()
    das = DASOutput(K=2, seed=0, timesteps='random')
    b = das.prepare({'x': x, **lab}, ['a', 'b', 'c'])
    with torch.no_grad():   # the labels reach the model: changing one changes the output
        o = das(m, b); o2 = das(m, {**b, 'style': 1 - b['style']})
    assert not torch.allclose(o, o2)
    g = GroupSpec.by_regex(m, {'self': r'attn1\.', 'cross': r'attn2\.', 'embed': r'^embed\.'})
    check(m, das, b, g, tol=1e-4)

def test_diffusion_noise_keyed_by_id_and_seed():
    x = torch.zeros(4, 3, 4, 4)
    a = DiffusionLoss(K=3, seed=1, timesteps='random').prepare({'x': x}, [10, 11, 12, 13])
    b = DiffusionLoss(K=3, seed=1, timesteps='random').prepare({'x': x[2:]}, [12, 13])
    assert torch.equal(a['noise'][2:], b['noise']) and torch.equal(a['t'][2:], b['t'])
    c = DiffusionLoss(K=3, seed=2, timesteps='random').prepare({'x': x}, [10, 11, 12, 13])
    assert not torch.equal(a['noise'], c['noise'])
    u = DiffusionLoss(K=4).prepare({'x': x}, [0, 1, 2, 3])['t']
    assert u.tolist() == [[0, 250, 500, 750]] * 4

def test_output_fn_registry():
    assert isinstance(output_fn('margin'), Margin) and output_fn('lm_loss_sum').reduction == 'sum'
    assert isinstance(output_fn('diffusion_loss', K=2), DiffusionLoss)
    with pytest.raises(KeyError, match='Did you mean'): output_fn('lm_los')

def test_projection_global_matrix_and_grouping_invariance():
    torch.manual_seed(0); m = models.gpt2_lm(n_layer=1, n_embd=16, n_head=2, n_ctx=8).eval()
    ids = torch.randint(0, 256, (3, 8)); b = {'input_ids': ids, 'attention_mask': torch.ones_like(ids)}
    gm = GroupSpec.preset(m)
    g, _ = per_example_grads(m, LMLoss(), b, gm)
    flat = torch.cat(group_grads(g, gm), 1).double()
    for kind in Projector.kinds:
        pr = Projector(32, kind, seed=7)
        P = torch.cat([pr.matrix(p, gm.param_sizes[p], 32) for p in gm.params]).double()
        glob = flat @ P
        for spec in [gm, GroupSpec.preset(m, 'block'), GroupSpec.by_tensor(m)]:
            blocks = pr.project(g, spec)
            torch.testing.assert_close(sum(bl.double() for bl in blocks), glob, rtol=1e-4, atol=1e-4)
            # and block j is P_j^T g_j with P_j the rows of group j
            j = len(spec) // 2; rows = torch.cat([pr.matrix(p, spec.param_sizes[p], 32) for p in spec[j]]).double()
            torch.testing.assert_close(blocks[j].double(), torch.cat([g[p] for p in spec[j]], 1).double() @ rows,
                                       rtol=1e-4, atol=1e-4)

def test_projection_preserves_inner_products_in_expectation():
    torch.manual_seed(0); a, c = torch.randn(200), torch.randn(200)
    for kind in Projector.kinds:
        est = torch.stack([(lambda P: (a @ P) @ (c @ P))(Projector(32, kind, seed=s).matrix('t', 200, 32)) for s in range(300)])
        assert abs(est.mean() - a @ c) < 4 * est.std() / 300 ** 0.5
        # E[P P^T] = I
        PPt = torch.stack([(lambda P: P @ P.T)(Projector(32, kind, seed=s).matrix('t', 20, 32)) for s in range(300)]).mean(0)
        assert (PPt - torch.eye(20)).abs().max() < 0.25

SCRIPT = r'''
import sys, torch
torch.set_num_threads(1)
from tests.test_features import tiny_features
for kind in ['gaussian', 'rademacher', 'sparse']: sys.stdout.buffer.write(tiny_features(kind).numpy().tobytes())
'''

def tiny_features(kind):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    d = {'x': torch.randn(9, 5), 'y': torch.randint(0, 3, (9,))}
    return featurize(m, 'margin', d, GroupSpec.by_module(m), projector=Projector(16, kind, seed=3), batch_size=4,
                     progress=False).x

def test_same_seed_same_features_in_any_process():
    here = b''.join(tiny_features(k).numpy().tobytes() for k in ['gaussian', 'rademacher', 'sparse'])
    there = subprocess.run([sys.executable, '-c', SCRIPT], capture_output=True, check=True,
                           cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           env={**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONHASHSEED': '123'}).stdout
    assert len(here) == 3 * 9 * 32 * 4 and here == there

def test_featurize_exampleset_and_features_api():
    from pwattr.data import ExampleSet
    torch.manual_seed(0); m = models.MLP(in_shape=(1, 4, 4), hidden=(8,), n_classes=3)
    es = ExampleSet('toy', {'x': torch.randn(10, 1, 4, 4), 'y': torch.randint(0, 3, (10,))},
                    pd.DataFrame({'id': [f'e{i}' for i in range(10)]}))
    gs = GroupSpec.preset(m)
    f = featurize(m, 'margin', es, gs, projector=Projector({'1': 8, '3': 4}), batch_size=3, progress=False)
    assert f.ids == es.ids and f.dims == [8, 4] and f.x.shape == (10, 12)
    assert set(f.extras) == {'out', 'q'}
    torch.testing.assert_close(f.extras['q'], Margin().q(m, es.batch()))
    assert torch.equal(f.block('3'), f.x[:, 8:]) and torch.equal(f.block(1), f.x[:, 8:])
    s = f[[1, 4]]; assert s.ids == ['e1', 'e4'] and torch.equal(s.extras['out'], f.extras['out'][[1, 4]])
    assert torch.equal(Features.cat([f[:4], f[4:]]).x, f.x)
    with pytest.raises(KeyError, match='Close matches'): f.block('33')
    with pytest.raises(ValueError, match='sum of dims'): Features(torch.zeros(2, 3), ['a'], [2], [0, 1])
    with pytest.raises(KeyError, match='missing for groups'): Projector({'1': 8}).dims_for(gs)
    # raw features: the concatenated per-group gradients, as the reference computes them
    raw = featurize(m, CrossEntropy(), es, gs, batch_size=4, progress=False)
    want = reference(m, CrossEntropy(), es.batch(), gs.params)
    torch.testing.assert_close(raw.x, want, rtol=1e-4, atol=1e-5 * want.abs().max().item())
    assert 'q' not in raw.extras

def test_models_ensemble():
    torch.manual_seed(0); ms = [nn.Linear(4, 3) for _ in range(3)]
    d = {'x': torch.randn(6, 4), 'y': torch.randint(0, 3, (6,))}
    fs = featurize(ms[0], 'margin', d, GroupSpec.by_module(ms[0]), projector=Projector(5), models=ms, batch_size=4, progress=False)
    assert len(fs) == 3 and len({f.meta['fingerprint'] for f in fs}) == 3
    assert torch.equal(fs[2].x, featurize(ms[2], 'margin', d, GroupSpec.by_module(ms[2]), projector=Projector(5),
                                          batch_size=4, progress=False).x)

def test_per_timestep_gradients_equal_direct_autograd():
    "Slot k of the diffusion loss = models.diffusion_loss at (t_k, noise_k), differentiated by plain autograd"
    torch.manual_seed(0); m = models.unet2d(sample_size=8, channels=(8, 16), norm_groups=4).eval()
    x = torch.rand(2, 3, 8, 8) * 2 - 1; sch = models.ddpm_scheduler()
    dl = DiffusionLoss(K=3, seed=2, timesteps='random', scheduler=sch)
    b = dl.prepare({'x': x}, ['u', 'v'])
    gs = GroupSpec.preset(m, 'block')
    for k in range(3):
        g, _ = per_example_grads(m, dl.slot(k), b, gs)
        mine = torch.cat(group_grads(g, gs), 1)
        for i in range(2):
            m.zero_grad()
            models.diffusion_loss(m, {'x': x[i:i + 1]}, sch, b['t'][i:i + 1, k], b['noise'][i:i + 1, k]).sum().backward()
            ref = torch.cat([dict(m.named_parameters())[p].grad.flatten() for p in gs.params])
            torch.testing.assert_close(mine[i], ref, rtol=1e-3, atol=1e-5 * ref.abs().max().item())
    # a repeated timestep still gets its own noise draw (JourneyTRAK uses K draws at one timestep)
    rep = DiffusionLoss(K=3, seed=2, timesteps=[500] * 3).prepare({'x': x[:1]}, ['u'])
    assert not torch.equal(rep['noise'][0, 0], rep['noise'][0, 1])

def test_das_normalized_featurize():
    torch.manual_seed(0); m = models.unet2d(sample_size=8, channels=(8, 16), norm_groups=4).eval()
    x = {'x': torch.rand(3, 3, 8, 8) * 2 - 1}; gs = GroupSpec.preset(m, 'block')
    f = featurize(m, 'das', x, gs, batch_size=2, progress=False)          # DASOutput(K=10, normalize=True)
    das = output_fn('das'); b = das.prepare(x, [0, 1, 2])
    ref = 0
    for k in range(das.K):
        g = torch.cat(group_grads(per_example_grads(m, das.slot(k), b, gs)[0], gs), 1)
        ref = ref + g / g.norm(dim=1, keepdim=True)
    torch.testing.assert_close(f.x, ref / das.K, rtol=1e-3, atol=1e-5 * (ref / das.K).abs().max().item())
    assert f.meta['output_fn']['normalize'] is True

# --- KronProjector: the Kronecker-structured projection made from layer inputs and output gradients (issue 19) ---------------
def check_kron(model, out_fn, batch, groups, k=24, seed=0, tol=1e-5):
    "KronProjector's blocks == independent per-example gradients (one backward per example) times the projection's matrix"
    from pwattr.features import KronProjector
    kp = KronProjector(k, seed=seed)
    blocks, out = kp.project_batch(model, out_fn, batch, groups)
    ref = reference(model, out_fn, batch, groups.params)
    c0 = 0
    for j, ps in enumerate(groups.groups.values()):
        n = sum(groups.param_sizes[p] for p in ps)
        want = ref[:, c0:c0 + n] @ kp.matrix(model, groups, j); c0 += n
        assert blocks[j].shape == (len(out), k)
        scale = want.abs().max()
        assert (blocks[j] - want).abs().max() <= tol * max(scale, 1e-6), (groups.names[j], (blocks[j] - want).abs().max(), scale)
    with torch.no_grad(): o = out_fn(model, batch)
    torch.testing.assert_close(out, o, rtol=1e-4, atol=1e-5 * o.abs().max().item())

def test_kron_projector_on_the_project_models():
    torch.manual_seed(0); m = models.MLP(in_shape=(1, 6, 6), hidden=(16,)).eval()
    b = {'x': torch.randn(5, 1, 6, 6), 'y': torch.randint(0, 10, (5,))}
    check_kron(m, Margin(), b, GroupSpec.preset(m)); check_kron(m, CrossEntropy(), b, GroupSpec.by_tensor(m), k=7)
    torch.manual_seed(0); r = models.ResNet9(width=4).eval()       # Conv2d + GroupNorm + Linear
    check_kron(r, Margin(), {'x': torch.randn(4, 1, 16, 16), 'y': torch.randint(0, 10, (4,))}, GroupSpec.preset(r))
    torch.manual_seed(0); v = models.ViT(dim=16, depth=1, heads=2).eval()   # cls / pos: raw parameters, by vmap
    check_kron(v, Margin(), {'x': torch.randn(3, 1, 28, 28), 'y': torch.randint(0, 10, (3,))}, GroupSpec.preset(v, 'block'))
    torch.manual_seed(0); g = models.gpt2_lm(n_layer=2, n_embd=32, n_head=2, n_ctx=16, pad_id=0).eval()
    ids = torch.randint(1, 256, (4, 12)); am = torch.ones_like(ids); am[2, 7:] = 0; ids[2, 7:] = 0
    check_kron(g, LMLoss(), {'input_ids': ids, 'attention_mask': am}, GroupSpec.preset(g), k=40, seed=2)

def test_kron_projector_diffusion():
    m, x, lab = _cond_unet()
    dl = DiffusionLoss(K=2, seed=0, timesteps='random')                  # 2 rows per example in every layer
    check_kron(m, dl, dl.prepare({'x': x, **lab}, ['a', 'b', 'c']), GroupSpec.preset(m), k=16, tol=1e-4)

def test_kron_projector_featurize_store_and_refusals(tmp_path):
    from pwattr.features import KronProjector
    torch.manual_seed(0); m = models.MLP(in_shape=(1, 4, 4), hidden=(8,), n_classes=3).eval()
    d = {'x': torch.randn(10, 1, 4, 4), 'y': torch.randint(0, 3, (10,))}
    gs = GroupSpec.preset(m)
    mem = featurize(m, 'margin', d, gs, projector=KronProjector(12, seed=4), batch_size=4, progress=False)
    st = featurize(m, 'margin', d, gs, projector=KronProjector(12, seed=4), batch_size=4, progress=False, store=str(tmp_path / 's'))
    assert torch.equal(mem.x, torch.as_tensor(np.asarray(st.x))) and mem.meta['projection']['kind'] == 'kronecker'
    other = featurize(m, 'margin', d, gs, projector=KronProjector(12, seed=5), batch_size=4, progress=False)
    assert not torch.allclose(mem.x, other.x)                              # the seed draws the factors
    with pytest.raises(ValueError, match='DAS'):
        u = models.unet2d(sample_size=8, channels=(8, 16), norm_groups=4).eval()
        featurize(u, DASOutput(K=2), {'x': torch.rand(2, 3, 8, 8)}, GroupSpec.preset(u), projector=KronProjector(8), progress=False)

def test_kron_projector_oversampled():
    from pwattr.features import KronProjector
    torch.manual_seed(0); r = models.ResNet9(width=4).eval()
    b = {'x': torch.randn(3, 1, 16, 16), 'y': torch.randint(0, 10, (3,))}
    kp1, kp3 = KronProjector(10, seed=0), KronProjector(10, seed=0, oversample=3)
    assert kp3.config()['oversample'] == 3 and 'oversample' not in kp1.config()      # stores written before keep their key
    g = GroupSpec.preset(r)
    assert not torch.allclose(kp1.matrix(r, g, 0), kp3.matrix(r, g, 0))
    ref = reference(r, Margin(), b, g.params)
    blocks, _ = kp3.project_batch(r, Margin(), b, g)
    want = ref @ torch.block_diag(*[kp3.matrix(r, g, j) for j in range(len(g))])
    assert (torch.cat(blocks, 1) - want).abs().max() <= 1e-5 * want.abs().max()
