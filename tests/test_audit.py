"The console command: exit codes, errors that name what was wrong, the presets listing."
import subprocess, sys
from pathlib import Path
import pytest
from pwattr.audit import audit
from pwattr.recipes import parse_methods, RECIPES

BIN = Path(sys.executable).parent / 'pwattr'

def run(*args):
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=300)

def test_presets_lists_every_preset():
    r = run('presets')
    assert r.returncode == 0, r.stderr
    from pwattr.presets import PRESETS
    for name in PRESETS: assert name in r.stdout

def test_bad_preset_names_close_match_and_fails():
    r = run('audit', '--preset', 'fmnist-mpl', '--no_progress')
    assert r.returncode == 2 and 'fmnist-mlp' in r.stderr and 'Traceback' not in r.stderr

def test_bad_method_names_the_choices():
    with pytest.raises(ValueError, match='tracinn') as e: parse_methods('trak,tracinn')
    assert all(m in str(e.value) for m in RECIPES)

def test_missing_ground_truth_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match='pwattr.groundtruth --preset fmnist-mlp'):
        audit('fmnist-mlp', gt=tmp_path / 'none.npz', out=tmp_path / 'out', log=None)
    r = run('audit', '--gt', str(tmp_path / 'none.npz'), '--out', str(tmp_path / 'out'), '--no_progress')
    assert r.returncode == 2 and 'pwattr.groundtruth --preset fmnist-mlp' in r.stderr

def test_unknown_option_is_an_error():
    r = run('audit', '--bogus', '1')
    assert r.returncode == 2 and 'bogus' in r.stderr

# ---------------------------------------------------------------- diffusion audits (tiny emoji-unet, synthetic ground truth)
import numpy as np, torch
from scipy.stats import spearmanr
from pwattr.audit import AuditRun, learn_source, generation_seeds
from pwattr.groundtruth import GroundTruth, run_groundtruth
from pwattr.presets import get_preset

TINY_KW = dict(n_learn=6, n_show=2, K=2, gen_steps=4, journey_steps=2, proj_dim=16, progress=False)
DIFF = 'tracin,trak,dtrak,das,journeytrak'

@pytest.fixture(scope='module')
def tiny():
    "A shrunken emoji-unet (112 images, 12 steps) and a 6-subset ground truth on 4 test images made here"
    torch.set_num_threads(1)
    from pwattr.diffusion import DiffusionLDSLoss
    p = get_preset('emoji-unet').with_config(data={'per_subcategory': 1}, model={'channels': [8, 16], 'norm_groups': 4},
                                             recipe={'steps': 12, 'batch_size': 16})
    tr, te = p.load()
    qs = te[torch.arange(4)]
    fn = DiffusionLDSLoss(K=2, seeds=(0,), scheduler=p.scheduler())
    gt = run_groundtruth(lambda idx, s: p.train(tr, idx=idx, seed=s, progress=False).model,
                         lambda m, b: fn(m.eval(), b).detach(), len(tr), fn.prepare(qs.batch(), qs.ids), m=6, kind='loss',
                         query_ids=list(qs.ids), config_hash=p.config_hash, progress=False)
    return p, gt

@pytest.fixture(scope='module')
def tiny_audit(tiny, tmp_path_factory):
    p, gt = tiny
    out = tmp_path_factory.mktemp('diff') / 'audit'
    return audit(p, DIFF, gt=gt, out=out, log=None, **TINY_KW)

def _lds_by_hand(scores, gt):
    "LDS from scratch: subset sums of the scores, negated (a loss), Spearman against the retrained outputs, per query"
    preds = -(gt.masks.astype(np.float64) @ np.asarray(scores, dtype=np.float64).T)     # [S, Q]
    act = gt.outputs.mean(1)                                                               # [S, Q]
    return np.mean([spearmanr(preds[:, q], act[:, q])[0] for q in range(act.shape[1])])

def test_diffusion_audit_end_to_end(tiny, tiny_audit):
    p, gt = tiny; r = tiny_audit
    assert list(r.table().index) == DIFF.split(',')
    for m, c in r.contributions.items():
        assert c.S.shape == (4, 112, len(c.groups)) and list(c.query_ids) == gt.query_ids
        got = r.results.df.query("method == @m").set_index('weights').value
        assert abs(got['uniform'] - _lds_by_hand(c.S.sum(-1), gt)) < 1e-9
        assert abs(got['paper'] - _lds_by_hand(c.S.double() @ r.paper[m].w.double(), gt)) < 1e-9
        w = r.weights[m]
        if w.settings['apply'] == 'refit': rf, feats = r.run.refit(m); safe = rf.scores(feats('eval'), w)
        else: safe = c.S.double() @ w.w.double()
        assert abs(got['safe'] - _lds_by_hand(safe, gt)) < 1e-9
        if not w.info['gate']['use']: assert torch.equal(w.w, torch.ones(len(w.w)))   # kept uniform: the base method exactly
        learned_on = r.weights[m].settings['query_ids']        # generated samples, never the evaluation queries
        assert learned_on == [f'gen/{s}' for s in generation_seeds(6)] and not set(learned_on) & set(gt.query_ids)
    assert r.settings['learn_from'] == 'generated' and r.settings['n_learn'] == 6 and r.settings['proj_dim'] == 16
    assert r.showcase['queries'].ids == ['gen/50000', 'gen/50001']
    assert set(r.showcase['contributions']) == set(DIFF.split(','))
    assert r.contributions['das'].method == 'DAS' and r.per_group['das'].cross is not None   # UNet block x function
    for f in ('report.html', 'results.json', 'plots/lds.png', 'plots/heatmap-das.png', 'plots/gallery-das-0.png', 'weights/journeytrak.json'):
        assert (r.out / f).exists(), f
    assert all((r.out / 'plots' / f'gallery-{m}-0.png').exists() for m in DIFF.split(','))    # galleries for every method
    import json
    assert json.loads((r.out / 'results.json').read_text())['figure_problems'] == {}         # no overlapping or cut text

def test_report_renders_verdicts_and_any_columns(tiny_audit, monkeypatch):
    "The report shows each method's verdict when the result has one, and whatever columns `table()` returns"
    from pwattr.audit import AuditResult, write_report
    r = tiny_audit; table = AuditResult.table
    monkeypatch.setattr(AuditResult, 'table', lambda self: table(self).assign(**{'safe gain': -0.5, 'mode': 'safe'}))
    # a class-level property: `verdicts` may be a read-only property of AuditResult (the safe-weights mode)
    monkeypatch.setattr(AuditResult, 'verdicts', property(lambda self: {'das': 'Keep the uniform weights: the learned ones lose LDS on held-out queries.'}), raising=False)
    monkeypatch.setattr(r, 'paper', {'das': r.weights['das']}, raising=False)      # the paper's weights beside the applied ones
    doc = write_report(r, r.run, n_gallery=1).read_text()
    assert 'Keep the uniform weights: the learned ones lose LDS' in doc and '<th>safe gain</th>' in doc and '<th>mode</th>' in doc
    assert "fig-paper-weights-das" in doc and "fig-paper-weights-tracin" not in doc
    assert doc.count("class='neg'") >= len(DIFF.split(','))                                 # every negative 'safe gain' marked
    assert '<th>verdict</th>' in doc

def test_diffusion_audit_equals_diffusion_attribution(tiny, tiny_audit):
    "The audit's cached split-by-split path gives what one `diffusion_attribution` call gives"
    from pwattr.recipes import diffusion_attribution
    from pwattr.features import Projector
    p, gt = tiny
    run = AuditRun(p, gt, tiny_audit.out, proj_dim=16, n_learn=6, K=2, journey_steps=2, gen_steps=4, log=None, progress=False)
    model = run.model()
    for m in ('tracin', 'das', 'journeytrak'):
        want = diffusion_attribution(m, model, run.train, run.eval_q, run.groups, Projector(16, kind='sparse', seed=0), K=2,
                                     scheduler=p.scheduler(), checkpoints=run.trained['checkpoints'], journey_steps=2)
        assert torch.equal(tiny_audit.contributions[m].S, want.S), m

def test_diffusion_audit_cache_reuse_is_identical(tiny, tiny_audit):
    p, gt = tiny; logs = []
    r2 = audit(p, DIFF, gt=gt, out=tiny_audit.out, log=logs.append, **TINY_KW)
    stages = [l for l in logs if not l.startswith(tuple(f'[{m}]' for m in DIFF.split(',')))]
    assert stages and all(l.startswith('[cached]') for l in stages), stages
    assert r2.results.rows == tiny_audit.results.rows
    for m in r2.weights: assert torch.equal(r2.weights[m].w, tiny_audit.weights[m].w)
    # the refit candidate (the slow learner of global kernels) comes from the cache, equal to a fresh learning of it
    from pwattr.safe import learn_refit_weights
    run = r2.run; rf, feats = run.refit('trak')
    assert len(list(run.cache.glob('refit-weights-trak-*.pt'))) == 1
    fresh = learn_refit_weights(rf, feats('learn'), k=20, lam=1e-4, query_ids=list(run.learn_q.ids))
    assert r2.weights['trak'].info['candidates']['refit'] == fresh.w.tolist()
    # a different number of learning queries is a different cache entry, never the stale one
    logs = []
    r3 = audit(p, 'dtrak', gt=gt, out=tiny_audit.out, log=logs.append, **{**TINY_KW, 'n_learn': 5})
    assert r3.weights['dtrak'].settings['query_ids'] == [f'gen/{s}' for s in range(5)]
    assert any('generate 5 learn' in l and l.startswith('[done') for l in logs), logs

def test_learning_queries_rule(tiny, tmp_path):
    p, gt = tiny
    assert [learn_source('diffusion'), learn_source('classification'), learn_source('language', 'test')] == ['generated', 'test', 'test']
    with pytest.raises(ValueError, match='needs a diffusion preset'): learn_source('classification', 'generated')
    with pytest.raises(ValueError, match='learn_from'): learn_source('diffusion', 'tests')
    # a ground truth over every test image leaves no test examples to learn on: 'test' refuses, 'auto' generates
    te = p.load()[1]
    full = GroundTruth(np.ones((2, 112), bool), np.zeros((2, 1)), np.zeros((2, 1, len(te))), te.ids, kind='loss')
    with pytest.raises(ValueError, match="learn_from='generated'"):
        AuditRun(p, full, tmp_path, learn_from='test', log=None)
    run = AuditRun(p, gt, tmp_path, learn_from='test', n_learn=5, log=None)      # 12 test images are not in gt: learn there
    assert len(run.learn_q) == 5 and not set(run.learn_q.ids) & set(gt.query_ids) and not run.learn_q.ids[0].startswith('gen/')
    assert not set(generation_seeds(100)) & set(generation_seeds(100, purpose='show'))
    assert not set(generation_seeds(100, seed=1)) & set(generation_seeds(100, seed=0, purpose='show'))

def test_diffusion_methods_refused_on_a_classifier():
    with pytest.raises(ValueError, match='diffusion models only'): parse_methods('trak,das', domain='classification')
    r = run('audit', '--methods', 'trak,journeytrak', '--no_progress')
    assert r.returncode == 2 and 'diffusion models only' in r.stderr and 'Traceback' not in r.stderr

def test_verdicts_caution_when_the_base_topk_looks_like_noise():
    "A method whose base top-k fails `topk_null_test` (planted pure noise) gets a caution beside its gate verdict; one with signal does not"
    import torch
    from pwattr.audit import AuditResult
    from pwattr.evaluate import ResultsTable
    from pwattr.weights import learn_weights, planted_contributions
    signal, _ = planted_contributions(Q=16, N=400, M=4, signal=(0, 1), strength=4., noise=1., seed=0)
    noise = torch.randn(16, 400, 4, generator=torch.Generator().manual_seed(1))
    with pytest.warns(UserWarning, match='indistinguishable'): pn = learn_weights(noise, k=10)
    ps = learn_weights(signal, k=10)
    assert pn.info['null_test']['noise'] and not ps.info['null_test']['noise']
    r = AuditResult('x', ResultsTable(), {}, {'a': ps, 'b': pn}, {}, Path('.'), paper={'a': ps, 'b': pn})
    v = r.verdicts
    assert 'b' in v and v['b'].startswith('Caution') and f"p = {pn.info['null_test']['p']:.2f}" in v['b']
    assert 'a' not in v

def test_contributions_with_another_regularisation(tiny, tiny_audit):
    "`reg` refits the method at another relative ridge: the same scores as the kernel refit at that ridge; the default is the cached result"
    p, gt = tiny
    run = AuditRun(p, gt, tiny_audit.out, proj_dim=16, n_learn=6, K=2, journey_steps=2, gen_steps=4, log=None, progress=False)
    base, = run.contributions('dtrak', splits=('eval',))
    same, = run.contributions('dtrak', splits=('eval',), reg=0.1)            # the recipe's default: the cached result
    assert torch.equal(base.S, same.S)
    got, = run.contributions('dtrak', splits=('eval',), reg=3.0)
    rf, feats = run.refit('dtrak')
    want = rf.with_ridge(3.0 * rf.mean_diag).scores(feats('eval'))
    scale = want.abs().max().item()
    assert (got.S.sum(-1).double() - want).abs().max().item() < 1e-4 * scale      # float32 fit vs float64 refit
    assert (got.S.sum(-1).double() - base.S.sum(-1).double()).abs().max().item() > 1e-2 * scale   # the ridge did change them
    with pytest.raises(ValueError, match="no regularisation to set.*ekfac"): run.contributions('tracin', reg=1.0)

def test_first_order_method_is_judged_by_the_curvature_corrected_methods():
    "TracIn's safe weights are checked against EK-FAC alone: agreement with Grad-Dot (first-order too) cannot tell a missing curvature scale"
    from types import SimpleNamespace
    from pwattr.methods import Contributions
    g = torch.Generator().manual_seed(0)
    Q, N, M = 40, 300, 3
    S = torch.randn(Q, N, M, generator=g) * torch.tensor([1., 3., 9.])     # groups on very different scales
    w_true = torch.tensor([2.5, 0.5, 0.05])                                  # what a curvature correction supplies
    ids = [f'q{i}' for i in range(Q)]
    mk = lambda X, m: Contributions(X, ['a', 'b', 'c'], ids, list(range(N)), m)
    noise = lambda: 0.3 * torch.randn(Q, N, 1, generator=g)
    learn = {'tracin': mk(S, 'TracInCP'),
             'graddot': mk(S + noise() * S.std(), 'GradDot'),                       # first-order: the same unweighted scores, noisily
             'ekfac': mk((S * w_true) + noise() * (S * w_true).std(), 'EKFAC')}     # curvature-corrected: the right scale
    run = SimpleNamespace(p=SimpleNamespace(domain='classification'), learn_q=SimpleNamespace(ids=ids), progress=False, refit=lambda m: None)
    paper, safe = AuditRun.weigh(run, 'tracin', learn)
    assert safe.info['gate']['use'] and safe.info['gate']['chosen'] == 'agreement', safe.verdict
    assert safe.settings['references'] == ['ekfac']
    w = safe.w / safe.w.sum() * w_true.sum()
    assert (w - w_true).abs().max() < 0.25 * w_true.max(), (w, w_true)               # it recovers the scale EK-FAC applies
    _, safe_ek = AuditRun.weigh(run, 'ekfac', learn)                                 # a curvature method is judged by every other method
    assert safe_ek.settings['references'] == ['tracin', 'graddot']
