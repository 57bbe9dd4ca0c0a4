"Diffusion attribution: per-timestep features vs autograd, per-group sums, seeds, LDS output, and a memorised-image check"
import os, time, warnings
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import numpy as np, pytest, torch
import torch.nn.functional as F
from pwattr import data, models
from pwattr.grouping import GroupSpec
from pwattr.features import DiffusionLoss, DTRAKOutput, DASOutput, Projector, featurize
from pwattr.diffusion import (SharedNoise, timestep_features, generate_queries, journey_features, DTRAK, DAS,
                              JourneyTRAK, DiffusionLDSLoss, diffusion_outputs, lds_sign, nearest_train,
                              train_attribute_classifier, sample_quality)
from pwattr.recipes import diffusion_attribution, names

DIFFUSION_METHODS = names('diffusion', features=('diffusion',))   # the diffusion recipes

torch.set_num_threads(1)
SLOW = bool(os.environ.get('PWATTR_SLOW'))
SCH = models.ddpm_scheduler()

@pytest.fixture(scope='module')
def emoji():
    es = data.load_sbemoji(16, labels=True)
    return es[torch.arange(0, 10)], es[torch.arange(200, 203)]

@pytest.fixture(scope='module')
def unet():
    torch.manual_seed(0); return models.unet2d(sample_size=16, channels=(8, 16), attention=True, norm_groups=4).eval()

@pytest.fixture(scope='module')
def cond_unet():
    torch.manual_seed(1)
    return models.AttributeUNet({'subject': 128, 'style': 2, 'background': 4}, sample_size=16, channels=(8, 16),
                                cond_dim=16, norm_groups=4).eval()

def direct_grad(model, fn, batch, i, k, names):
    "The gradient of one (example, timestep) term by plain autograd on the module (independent of vmap and features)"
    x_t, t = batch['x_t'][i, k][None], batch['t'][i, k][None]
    if isinstance(model, models.AttributeUNet):
        eps = model(x_t, t, **{a: batch[a][i:i + 1] for a in models.ATTRIBUTES})
    else: eps = model(x_t, t).sample
    f = {'diffusion_loss': lambda e: (e - batch['noise'][i, k][None]).pow(2).mean(),
         'dtrak': lambda e: e.pow(2).mean(), 'das': lambda e: e.mean()}[fn.name](eps)
    model.zero_grad(); f.backward()
    P = dict(model.named_parameters())
    return torch.cat([P[p].grad.flatten() for p in names])

@pytest.mark.parametrize('which,fn_cls', [('unet', DTRAKOutput), ('unet', DiffusionLoss), ('cond', DASOutput)])
def test_per_timestep_features_equal_autograd(emoji, unet, cond_unet, which, fn_cls):
    tr, _ = emoji
    model = unet if which == 'unet' else cond_unet
    sub = tr[torch.arange(3)]
    if which == 'cond':   # one attribute left unspecified
        sub.tensors['style'] = torch.tensor([-1, 1, -1])
    G = GroupSpec.preset(model, 'block')
    fn = fn_cls(K=3, seed=5, timesteps='random', scheduler=SCH, **({'normalize': False} if fn_cls is DASOutput else {}))
    f, per = timestep_features(model, fn, sub, G, per_step=True)
    b = fn.prepare(sub.batch(), sub.ids)
    for i in range(3):
        for k in range(3):
            ref = direct_grad(model, fn, b, i, k, G.params)
            torch.testing.assert_close(per[k].x[i], ref, atol=1e-5 * ref.abs().max().item(), rtol=1e-4)
    # the mean over timesteps is featurize's gradient of the mean output
    at = 1e-5 * f.x.abs().max().item()                 # float32: atol scaled by the values' magnitude
    torch.testing.assert_close(f.x, featurize(model, fn, sub, G, progress=False).x, atol=at, rtol=1e-4)
    torch.testing.assert_close(f.x, sum(p.x for p in per) / 3, atol=at, rtol=1e-4)

def test_das_normalises_each_timestep(emoji, unet):
    tr, _ = emoji
    G = GroupSpec.preset(unet, 'block')
    fn = DASOutput(K=3, seed=0, scheduler=SCH)      # normalize=True by default
    fn_, per = timestep_features(unet, fn, tr[torch.arange(3)], G, normalize=False, per_step=True)
    fd = timestep_features(unet, fn, tr[torch.arange(3)], G)
    # pwattr.features implements the same normalisation inside featurize (independently): both must agree
    at = 1e-5 * fd.x.abs().max().item()
    torch.testing.assert_close(fd.x, featurize(unet, fn, tr[torch.arange(3)], G, progress=False).x, atol=at, rtol=1e-4)
    want = sum(p.x / p.x.norm(dim=1, keepdim=True) for p in per) / 3
    torch.testing.assert_close(fd.x, want, atol=at, rtol=1e-4)
    torch.testing.assert_close(fd.extras['grad_norm'], torch.stack([p.x.norm(dim=1) for p in per], 1), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(fd.x, fn_.x)

def test_same_seed_identical_features(emoji, unet, cond_unet):
    tr, _ = emoji
    G = GroupSpec.preset(unet, 'block'); P = Projector(16, seed=3)
    a = timestep_features(unet, DTRAKOutput(K=2, seed=1, timesteps='random'), tr[torch.arange(4)], G, P)
    b = timestep_features(unet, DTRAKOutput(K=2, seed=1, timesteps='random'), tr[torch.arange(4)], G, P)
    c = timestep_features(unet, DTRAKOutput(K=2, seed=2, timesteps='random'), tr[torch.arange(4)], G, P)
    assert torch.equal(a.x, b.x) and torch.equal(a.extras['mse'], b.extras['mse'])
    assert not torch.allclose(a.x, c.x)
    # generated queries: same seed -> same image, equal to models.sample with that seed and prompt
    q1 = generate_queries(cond_unet, [7, 8], [{'subject': 3}, {'style': 1, 'background': None}], SCH, steps=4)
    q2 = generate_queries(cond_unet, [7, 8], [{'subject': 3}, {'style': 1, 'background': None}], SCH, steps=4)
    assert torch.equal(q1.tensors['x'], q2.tensors['x']) and torch.equal(q1.tensors['traj_x0'], q2.tensors['traj_x0'])
    ref = models.sample(cond_unet, 1, SCH, steps=4, seed=8, style=1)
    torch.testing.assert_close(q1.tensors['x'][1:2], ref, atol=1e-5 * ref.abs().max().item(), rtol=1e-4)
    assert q1.tensors['subject'].tolist() == [3, -1] and q1.meta['seed'].tolist() == [7, 8]
    j1 = journey_features(cond_unet, q1, GroupSpec.preset(cond_unet, 'block'), Projector(8), steps=2)
    j2 = journey_features(cond_unet, q1, GroupSpec.preset(cond_unet, 'block'), Projector(8), steps=2)
    assert len(j1) == 2 and all(torch.equal(x.x, y.x) for x, y in zip(j1, j2))
    assert [f.meta['timestep'] for f in j1] == [int(q1.tensors['traj_t'][0, 0]), int(q1.tensors['traj_t'][0, -1])]

def test_shared_noise(emoji):
    tr, _ = emoji
    base = DTRAKOutput(K=2, seed=3, timesteps='random')
    b = SharedNoise(base).prepare(tr.batch(torch.arange(3)), tr.ids[:3])
    assert torch.equal(b['noise'][0], b['noise'][2]) and torch.equal(b['t'][0], b['t'][1])
    one = base.prepare(tr.batch(torch.tensor([0])), ['shared'])
    assert torch.equal(one['noise'][0], b['noise'][1])
    assert SharedNoise(DASOutput(K=2)).normalize and SharedNoise(base).K == 2

def _kernel_scores(tr, qf, lam_rel, r=None):
    "Ungrouped TRAK-style score from the concatenated features, by a plain solve (float64)"
    X, Qx = tr.x.double(), qf.x.double()
    G = X.T @ X; lam = lam_rel * G.diagonal().mean()
    s = Qx @ torch.linalg.solve(G + lam * torch.eye(len(G), dtype=G.dtype), X.T)
    return s if r is None else s * r[None]

@pytest.mark.parametrize('method', list(DIFFUSION_METHODS))
def test_sum_over_groups_equals_ungrouped(emoji, unet, method):
    tr, te = emoji
    G = GroupSpec.preset(unet, 'block'); P = Projector(24, seed=0)
    q = generate_queries(unet, [1, 2], scheduler=SCH, steps=3) if method == 'journeytrak' else te
    c, trf, qf = diffusion_attribution(method, unet, tr, q, G, P, K=2, scheduler=SCH, journey_steps=2, return_features=True,
                                       **({} if method == 'tracin' else {'lam_rel': 1e-2}))
    assert c.S.shape == (len(q), len(tr), len(G)) and c.groups == G.names
    if method == 'tracin': want = qf[0].x.double() @ trf[0].x.double().T        # lr 1, one checkpoint
    elif method == 'journeytrak': want = sum(_kernel_scores(trf, f, 1e-2) for f in qf)
    elif method == 'das':
        r = trf.extras['residual'].double(); want = _kernel_scores(trf, qf, 1e-2, r / r.mean())
    else: want = _kernel_scores(trf, qf, 1e-2)
    torch.testing.assert_close(c.scores().double(), want, rtol=1e-4, atol=1e-6 * want.abs().max().item())
    if method == 'tracin':   # and the raw, ungrouped gradients (no projection) give the plain dot product
        c2, trf2, qf2 = diffusion_attribution(method, unet, tr[torch.arange(3)], te, G, None, K=2, scheduler=SCH,
                                              noise='per_example', return_features=True)
        g = GroupSpec({'all': G.params}, unet)
        t2 = featurize(unet, DiffusionLoss(K=2, seed=0, scheduler=SCH), tr[torch.arange(3)], g, progress=False)
        q2 = featurize(unet, DiffusionLoss(K=2, seed=1, scheduler=SCH), te, g, progress=False)
        want2 = (q2.x @ t2.x.T).double()          # float32 dot products: atol scaled by the scores' magnitude
        torch.testing.assert_close(c2.scores().double(), want2, rtol=1e-4, atol=1e-5 * want2.abs().max().item())

def test_das_leverage(emoji, unet):
    tr, te = emoji
    G = GroupSpec.preset(unet, 'block'); P = Projector(24, seed=0)
    fn = DASOutput(K=2, seed=0, scheduler=SCH)
    trf = timestep_features(unet, fn, tr, G, P, normalize=True)
    qf = timestep_features(unet, DASOutput(K=2, seed=1, scheduler=SCH), te, G, P, normalize=True)
    X = trf.x.double(); Gm = X.T @ X; lam = 1e-2 * Gm.diagonal().mean()
    Kinv = torch.linalg.inv(Gm + lam * torch.eye(len(Gm), dtype=Gm.dtype))
    h = ((X @ Kinv) * X).sum(1); r = trf.extras['residual'].double(); r = r / r.mean()
    want = qf.x.double() @ Kinv @ X.T * (r / (1 - h))[None]
    got = DAS(leverage=True, lam_rel=1e-2).fit(trf).contributions(qf).scores().double()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * want.abs().max().item())
    assert (h > 0).all() and (h < 1).all()

def test_lds_output_and_sign(emoji, unet):
    tr, te = emoji
    fn = DiffusionLDSLoss(K=4, seeds=(0, 1, 2), scheduler=SCH)
    got = diffusion_outputs(unet, te, fn)
    want = torch.stack([diffusion_outputs(unet, te, DiffusionLoss(K=4, seed=s, scheduler=SCH)) for s in (0, 1, 2)]).mean(0)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * want.abs().max().item())
    assert torch.equal(got, diffusion_outputs(unet, te, DiffusionLDSLoss(K=4, seeds=(0, 1, 2), scheduler=SCH)))
    assert lds_sign('loss') == -1 and lds_sign('margin') == 1 and fn.kind == 'loss'
    # sign convention: a positive TracIn score means a gradient step on that training example lowers the query's loss
    model = models.unet2d(sample_size=16, channels=(8, 16), attention=False, norm_groups=4)
    G = GroupSpec.preset(model, 'block')
    q_fn, t_fn = DiffusionLoss(K=2, seed=1, scheduler=SCH), DiffusionLoss(K=2, seed=0, scheduler=SCH)
    qf = featurize(model, q_fn, te[[0]], G, progress=False); tf = featurize(model, t_fn, tr, G, progress=False)
    s = (qf.x @ tf.x.T)[0]
    for n in (int(s.argmax()), int(s.argmin())):
        lr = 1e-3 / tf.x[n].norm().item()
        m2 = __import__('copy').deepcopy(model); P = dict(m2.named_parameters())
        with torch.no_grad():
            for p, v in zip(G.params, torch.split(tf.x[n], [P[p].numel() for p in G.params])): P[p] -= lr * v.view_as(P[p])
        before = q_fn(model, q_fn.prepare(te[[0]].batch(), te.ids[:1])); after = q_fn(m2, q_fn.prepare(te[[0]].batch(), te.ids[:1]))
        torch.testing.assert_close((after - before).item(), -lr * s[n].item(), rtol=0.05, atol=1e-9)

def _memorise(steps, n_img=3, seed=0, every=40):
    "Train a tiny UNet on 3 very different 8x8 emoji; returns (model, train set, TracIn checkpoints)"
    es = data.load_sbemoji(16, labels=False)
    x = F.avg_pool2d(es.batch(torch.tensor([0, 300, 600, 900][:n_img]))['x'], 2)
    train = data.ExampleSet('mem', {'x': x}, es.meta.iloc[[0, 300, 600, 900][:n_img]].reset_index(drop=True), {})
    torch.manual_seed(seed)
    m = models.unet2d(sample_size=8, channels=(16, 32), attention=False, norm_groups=4)
    opt = torch.optim.AdamW(m.parameters(), lr=5e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed); xb = x.repeat(8, 1, 1, 1); cks = []
    for s in range(1, steps + 1):
        t = torch.randint(0, 1000, (len(xb),), generator=g); noise = torch.randn(xb.shape, generator=g)
        loss = models.diffusion_loss(m, {'x': xb}, SCH, t, noise).mean()
        opt.zero_grad(); loss.backward(); opt.step()
        if s % every == 0: cks.append((s, 5e-3, {k: v.detach().clone() for k, v in m.state_dict().items()}))
    return m.eval(), train, cks

def _top(method, m, train, q, cks):
    G = GroupSpec.preset(m, 'block'); P = Projector(64, seed=0)
    c = diffusion_attribution(method, m, train, q, G, P, K=10, scheduler=SCH, journey_steps=5,
                              checkpoints=cks if method == 'tracin' else None)
    return int(c.topk(1).indices[0, 0]), c.scores()[0].tolist()

@pytest.mark.skipif(not SLOW, reason='slow (~2-4 min on 2 busy cores): set PWATTR_SLOW=1')
def test_memorised_image_is_top_proponent():
    "Train a tiny UNet until it memorises 3 images; generated near-copies must get their source as top proponent"
    m, train, cks = _memorise(200)
    q = generate_queries(m, list(range(8)), scheduler=SCH, steps=20)
    d = ((q.tensors['x'][:, None] - train.tensors['x'][None]) ** 2).flatten(2).mean(2)   # [Q, N]
    order = d.min(1).values.argsort().tolist()
    best = order[0]; target = int(d[best].argmin())
    assert d[best, target] < 0.02, f"no near-copy generated (closest MSE {d[best, target]:.3f}): train longer"
    for method in DIFFUSION_METHODS:
        top, s = _top(method, m, train, q[[best]], cks)
        assert top == target, f"{method}: top proponent {top}, expected the copied image {target}; scores {s}"
    # a second near-copy of another training image: every method except JourneyTRAK must follow it
    # (JourneyTRAK's aggregated score ranks one image first for every sample of this model: a known weakness, see the report)
    second = next(i for i in order[1:] if int(d[i].argmin()) != target and d[i].min() < 0.03)
    t2 = int(d[second].argmin())
    for method in ['tracin', 'trak', 'dtrak', 'das']:
        top, s = _top(method, m, train, q[[second]], cks)
        assert top == t2, f"{method}: top proponent {top}, expected the copied image {t2}; scores {s}"

def test_memorised_image_fast():
    "Faster variant: a briefly trained model; the query is a lightly perturbed copy of a training image"
    m, train, cks = _memorise(40, every=20)
    g = torch.Generator().manual_seed(0)
    for target in (1, 2):
        x = (train.tensors['x'][target:target + 1] + 0.05 * torch.randn(1, 3, 8, 8, generator=g)).clamp(-1, 1)
        q = data.ExampleSet('copy', {'x': x}, train.meta.iloc[[target]].reset_index(drop=True).assign(id='copy'), {})
        for method in DIFFUSION_METHODS:
            top, s = _top(method, m, train, q, cks)
            assert top == target, f"{method}: top proponent {top}, expected the copied image {target}; scores {s}"

def test_nearest_train_against_loop():
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(6, 3, 5, 5, generator=g) * 2 - 1, torch.rand(9, 3, 5, 5, generator=g) * 2 - 1
    d, i = nearest_train(a, b, chunk=4)            # chunks must not change the answer
    full = torch.stack([torch.stack([((a[q] - b[n]) ** 2).mean().sqrt() for n in range(9)]) for q in range(6)])
    torch.testing.assert_close(d, full.min(1).values, rtol=1e-5, atol=1e-6 * full.max().item())
    assert torch.equal(i, full.argmin(1))
    d2, i2 = nearest_train(b[[4, 0]], b)
    assert i2.tolist() == [4, 0] and d2.max() < 1e-6

def test_attribute_classifier_and_sample_quality(emoji, cond_unet):
    es = data.load_sbemoji(16, labels=True)
    few = es[torch.isin(es.tensors['subject'], torch.tensor([0, 5, 9]))]
    clf = train_attribute_classifier(few, 'subject', epochs=20, seed=0)
    again = train_attribute_classifier(few, 'subject', epochs=20, seed=0)   # seeded: the same judge
    assert all(torch.equal(x, y) for x, y in zip(clf.model.state_dict().values(), again.model.state_dict().values()))
    assert clf.values == [0, 5, 9] and clf.names == [es.info['subjects'][v] for v in (0, 5, 9)]
    with torch.no_grad(): want = torch.tensor([0, 5, 9])[clf.model(few.tensors['x']).argmax(1)]
    assert torch.equal(clf.predict(few.tensors['x'], batch_size=7), want)
    with pytest.raises(ValueError, match='never occur in training'):
        train_attribute_classifier(few, 'subject', heldout=es[(es.tensors['subject'] == 2).nonzero()[0]], epochs=1)
    # sample_quality: the samples are models.sample's with the prompts; hits = judge's label == prompted subject
    prompts = [{'subject': 5}, {'subject': 9, 'style': 1}, {'background': 2}, {'subject': 0}]
    q = sample_quality(cond_unet, few, SCH, n=4, seed=2, steps=3, classifier=clf, prompts=prompts, heldout=few[torch.arange(2)])
    ref = models.sample(cond_unet, 4, SCH, steps=3, seed=2, subject=torch.tensor([5, 9, -1, 0]),
                        style=torch.tensor([-1, 1, -1, -1]), background=torch.tensor([-1, -1, 2, -1]))
    torch.testing.assert_close(q.x, ref, rtol=1e-5, atol=1e-6)
    pred = clf.predict(ref)
    h = q.hits
    assert torch.isnan(h[2]) and torch.equal(h[[0, 1, 3]], (pred[[0, 1, 3]] == torch.tensor([5, 9, 0])).float())
    assert abs(q.match_rate - h[[0, 1, 3]].mean().item()) < 1e-6
    d, i = nearest_train(ref, few.tensors['x'])
    torch.testing.assert_close(q.nn_dist, d); assert torch.equal(q.nn_idx, i)
    assert torch.equal(q.reference['held-out real'], torch.zeros(2))     # held-out images here are training images
    assert q.captions[1] == f"{es.info['subjects'][9]}/{es.info['styles'][1]}" and q.captions[2] == es.info['backgrounds'][2]
    s = q.summary(); assert list(s.index) == ['samples', 'noise', 'held-out real'] and 'subject match' in s
    with pytest.raises(ValueError, match='one prompt per sample'): sample_quality(cond_unet, few, SCH, n=3, steps=2, prompts=prompts)
    from pwattr.plots import overlapping_text
    import matplotlib.pyplot as plt
    fig = q.plot(4, 4, train=few, title='a long title that says what the figure shows, ' * 4)   # wider than the figure on one line
    assert overlapping_text(fig) == [], overlapping_text(fig)
    plt.close(fig)
