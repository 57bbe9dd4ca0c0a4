"`pwattr audit --model/--data/--train`: your own model, data and trainer on the command line (issue 17)."
import json, os, subprocess, sys, textwrap
from pathlib import Path
import numpy as np, pytest, torch
from pwattr.audit import CustomPreset
from pwattr.cli import main

BIN = Path(sys.executable).parent / 'pwattr'

MODULE = '''
"A tiny model, data and trainer of a user's own"
import os, pandas as pd, torch
from torch import nn
from pwattr.data import ExampleSet
from pwattr.train import train_classifier

def make_model(seed):
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))

def make_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(220, 8, generator=g); y = (x @ torch.randn(8, 3, generator=g)).argmax(1)
    es = lambda s, e, split: ExampleSet(f'tiny-{split}', {'x': x[s:e], 'y': y[s:e]},
                                        pd.DataFrame({'id': [f'{split}-{i}' for i in range(e - s)]}))
    return es(0, 160, 'train'), es(160, 220, 'test')

def train_fn(model, train, idx=None, seed=0, **kw):
    with open(os.environ.get('TINY_CALLS', os.devnull), 'a') as f:   # which examples each call trained on
        f.write(f"{len(train) if idx is None else len(idx)} {seed}\\n")
    return train_classifier(model, train, idx, seed, epochs=4, batch_size=32, lr=1e-2, **kw)

def train_bare(model, train, seed=0):   # no idx, no checkpoints: returns the bare model
    return train_classifier(model, train, None, seed, epochs=1, batch_size=32, progress=False).model

def train_wrong(model, train, **kw): return 'not a model'
def make_data_wrong(): return [1, 2, 3]
def make_model_wrong(seed): return {'weights': seed}
'''

def _module(tmp_path, name):
    "Write the module under a name unique to the test (imported modules are cached by name)"
    (tmp_path / f'{name}.py').write_text(MODULE)
    return name

def _own(mod, model='make_model', data='make_data', train='train_fn'):
    return ['--model', f'{mod}:{model}', '--data', f'{mod}:{data}', '--train', f'{mod}:{train}']

def test_cli_audits_your_own_model_end_to_end(tmp_path):
    mod = _module(tmp_path, 'tiny_e2e'); calls = tmp_path / 'calls.txt'
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'TINY_CALLS': str(calls)}
    args = [*_own(mod), '--methods', 'tracin,trak', '--gt_subsets', '6', '--gt_queries', '30', '--n_learn', '20',
            '--proj_dim', '32', '--out', 'runs/own', '--no_progress']
    r = subprocess.run([str(BIN), 'audit', *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / 'runs' / 'own'
    res = json.loads((out / 'results.json').read_text())
    st = res['settings']
    assert (st['n_train'], st['n_eval'], st['n_learn'], st['gt_subsets'], st['methods']) == (160, 30, 20, 6, ['tracin', 'trak'])
    # the user's trainer made every model: the audited one on all 160, the ground truth's 6 on half-size subsets
    sizes = sorted(int(l.split()[0]) for l in calls.read_text().split('\n') if l)
    assert sizes == [80] * 6 + [160], sizes
    lds_ = {(row['method'], row['weights']): row['value'] for row in res['results'] if row['metric'] == 'LDS'}
    assert set(lds_) == {(m, w) for m in ('tracin', 'trak') for w in ('uniform', 'paper', 'safe')}
    assert all(np.isfinite(v) and -1 <= v <= 1 for v in lds_.values())
    # the ground truth is the user's data: 6 subsets of 80 of the 160 training rows, queries from the test split
    from pwattr.groundtruth import GroundTruth
    gt = GroundTruth.load(next((out / 'cache').glob('gt-custom-*.npz')))
    assert gt.masks.shape == (6, 160) and (gt.masks.sum(1) == 80).all()
    assert all(str(q).startswith('test-') for q in gt.query_ids) and len(gt.query_ids) == 30
    # the uniform LDS is recomputable from the ground truth and the run's contributions
    html = (out / 'report.html').read_text()
    assert f'--model {mod}:make_model --data {mod}:make_data --train {mod}:train_fn' in html and 'report' in r.stdout

def test_uniform_lds_matches_an_independent_computation(tmp_path, monkeypatch):
    "In-process run of the same path: the reported uniform LDS is the Spearman correlation of S summed over groups"
    from scipy.stats import spearmanr
    from pwattr.audit import audit
    monkeypatch.chdir(tmp_path); mod = _module(tmp_path, 'tiny_inproc')
    p = CustomPreset(f'{mod}:make_model', f'{mod}:make_data', f'{mod}:train_fn', gt_queries=20)
    r = audit(p, 'trak', n_learn=20, proj_dim=32, gt_subsets=6, out=tmp_path / 'o', progress=False, log=None, report=False)
    c, gt = r.contributions['trak'], r.run.gt
    scores = c.S.sum(-1).double().numpy()                       # [Q, N]: the base method sums the groups
    pred = gt.masks.astype(float) @ scores.T                    # [subsets, Q]: predicted output of each retrained model
    actual = gt.outputs.mean(1)                                 # [subsets, Q] (margins: higher = better supported)
    rho = np.mean([spearmanr(pred[:, q], actual[:, q]).statistic for q in range(pred.shape[1])])
    got = r.results.df.query("method == 'trak' and weights == 'uniform' and metric == 'LDS'")['value'].item()
    assert abs(got - rho) <= 1e-6 * max(1.0, abs(rho)), (got, rho)

@pytest.mark.parametrize('own,extra,msg', [
    (dict(data=None), [], '--data missing'),
    (dict(data=None, train=None), [], '--data, --train missing'),
    (dict(model='nope'), ['--gt_subsets', '4'], "has no function 'nope'"),
    (dict(model='make_modle'), ['--gt_subsets', '4'], 'did you mean make_model'),
    (dict(data='make_data_wrong'), ['--gt_subsets', '4'], 'must return (train, test), two pwattr.data.ExampleSets; it returned a list of 3'),
    (dict(model='make_model_wrong'), ['--gt_subsets', '4'], 'must return a torch.nn.Module'),
    (dict(), [], 'no LDS ground truth: pass --gt_subsets'),
    (dict(), ['--preset', 'fmnist-mlp'], 'exclude each other'),
    (dict(), ['--domain', 'language', '--gt_subsets', '4'], "'lm_loss' output on 2 test examples failed"),
    (dict(), ['--gt_subsets', '4', '--n_learn', '31'], '--n_learn 31'),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, monkeypatch, capsys, own, extra, msg):
    monkeypatch.chdir(tmp_path); mod = _module(tmp_path, 'tiny_bad')
    names = dict(model='make_model', data='make_data', train='train_fn') | own
    args = [a for k, v in names.items() if v for a in (f'--{k}', f'{mod}:{v}')]
    with pytest.raises(SystemExit) as e: main(['audit', *args, *extra, '--out', str(tmp_path / 'o'), '--no_progress'])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and msg in err and 'Traceback' not in err, err

def test_missing_module_names_the_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e: main(['audit', *_own('no_such_module_here'), '--gt_subsets', '4', '--no_progress'])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and f"no module 'no_such_module_here' in {tmp_path}" in err, err

def test_trainer_returning_the_wrong_type_fails_clearly(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path); mod = _module(tmp_path, 'tiny_wrong')
    with pytest.raises(SystemExit) as e:
        main(['audit', *_own(mod, train='train_wrong'), '--gt_subsets', '2', '--gt_queries', '20', '--n_learn', '20',
              '--out', str(tmp_path / 'o'), '--no_progress'])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2 and 'must return a pwattr.train.TrainResult or the trained torch.nn.Module; it returned a str' in err, err

def test_trainer_without_idx_gets_the_subset_and_a_final_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path); mod = _module(tmp_path, 'tiny_bare')
    p = CustomPreset(f'{mod}:make_model', f'{mod}:make_data', f'{mod}:train_bare')
    train, _ = p.load()
    r = p.train(train, idx=torch.arange(40), seed=3)
    step, lr, sd = r.checkpoints[0]
    assert (len(r.checkpoints), step, lr) == (1, 0, 1.0)
    assert all(torch.equal(sd[k], v) for k, v in r.model.state_dict().items())
    # trained on the 40-row subset: the same as training on train[:40] directly
    r2 = p.train(train[torch.arange(40)], seed=3)
    assert all(torch.equal(a, b) for a, b in zip(r.model.state_dict().values(), r2.model.state_dict().values()))
    # the config hash follows the module's source: an edited module is not read from an old cache
    h = p.config_hash; (tmp_path / f'{mod}.py').write_text(MODULE + '\n# edited\n')
    assert CustomPreset(f'{mod}:make_model', f'{mod}:make_data', f'{mod}:train_bare').config_hash != h

def _quiet_and_loud(capsys, f):
    "(result, stderr) of f(progress=False) and of f(progress=True)"
    capsys.readouterr()
    quiet = f(False); q_err = capsys.readouterr().err
    loud = f(True); l_err = capsys.readouterr().err
    return quiet, q_err, loud, l_err

def test_progress_bars_show_only_when_asked_and_change_no_number(tmp_path, monkeypatch, capsys):
    "TRAK fit and scoring over blocks, weight learning, the refit's weights, EK-FAC factors, ground-truth runs"
    from pwattr.features import featurize, output_fn, Projector
    from pwattr.methods import TRAK
    from pwattr.weights import learn_weights
    from pwattr.safe import refit_from, query_matrix, learn_refit_weights
    from pwattr.kronecker import fit_kron_factors, fisher_output_for
    from pwattr.groundtruth import run_groundtruth
    monkeypatch.chdir(tmp_path); mod = _module(tmp_path, 'tiny_bars')
    p = CustomPreset(f'{mod}:make_model', f'{mod}:make_data', f'{mod}:train_fn')
    train, test = p.load(); model = p.train(train, progress=False).model.eval()
    fn = output_fn('margin'); pr = Projector(16, kind='sparse', seed=0)
    tf = featurize(model, fn, train, projector=pr, progress=False); qf = featurize(model, fn, test, projector=pr, progress=False)
    def trak(progress):
        m = TRAK(chunk=50).fit(tf, progress=progress)
        return m, m.contributions(qf, progress=progress)
    (m0, c0), q_err, (m1, c1), l_err = _quiet_and_loud(capsys, trak)
    assert q_err == '' and 'TRAK fit' in l_err and 'kernel' in l_err and 'TRAK contributions' in l_err, l_err
    assert torch.equal(c0.S, c1.S)
    w0, q_err, w1, l_err = _quiet_and_loud(capsys, lambda pg: learn_weights(c0, k=5, steps=30, progress=pg))
    assert q_err == '' and 'learn_weights' in l_err and torch.equal(w0.w, w1.w)
    rf = refit_from(m0); Xq = query_matrix(qf)
    r0, q_err, r1, l_err = _quiet_and_loud(capsys, lambda pg: learn_refit_weights(rf, Xq, k=5, steps=20, progress=pg))
    assert q_err == '' and 'refit weights' in l_err and torch.equal(r0.w, r1.w)
    fo = fisher_output_for(output_fn('cross_entropy'))
    f0, q_err, f1, l_err = _quiet_and_loud(capsys, lambda pg: fit_kron_factors(model, train, fo, batch_size=40, progress=pg))
    assert q_err == '' and 'EK-FAC factors' in l_err and all(torch.equal(f0.lam[n], f1.lam[n]) for n in f0.lam)
    tr_fn = lambda idx, s: p.train(train, idx=idx, seed=s, progress=False).model
    out_fn = lambda m, b: fn(m.eval(), b).detach()
    g0, q_err, g1, l_err = _quiet_and_loud(capsys, lambda pg: run_groundtruth(tr_fn, out_fn, len(train), test[torch.arange(10)].batch(),
                                                                                    m=3, progress=pg))
    assert 'groundtruth' in l_err and np.array_equal(g0.outputs, g1.outputs)
    assert q_err == '' and capsys.readouterr().out == ''
