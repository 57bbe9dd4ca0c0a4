"""pwattr.mislabel: flipped labels are found by self-influence; AUC and intervals are the brute-force ones; seeded; clear errors."""
import itertools
import numpy as np, pandas as pd, pytest, torch
from pwattr.data import ExampleSet
from pwattr.presets import get_preset
from pwattr.evaluate import mislabel_auc
from pwattr.mislabel import noisy_labels, auc_interval, mislabel_run, mislabel_study, MislabelRun

torch.set_num_threads(1)

def tiny_preset():
    "fmnist-mlp shrunk to 300 training images and one small hidden layer: trains in about a second"
    return get_preset('fmnist-mlp').with_config(data={'n_train': 300, 'n_test': 100}, model={'hidden': [32]},
                                                recipe={'epochs': 6})

@pytest.fixture(scope='module')
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp('mislabel')
    return out, mislabel_run(tiny_preset(), 'tracin,trak', frac=0.1, out=out, n_learn=30, proj_dim=32, n_boot=200,
                             progress=False, log=None)

def toy(n=60, C=4):
    return ExampleSet('toy', {'x': torch.randn(n, 2), 'y': torch.arange(n) % C}, pd.DataFrame({'id': [f'e{i}' for i in range(n)]}))

def test_noisy_labels_exact_and_seeded():
    es = toy()
    a, b, c = noisy_labels(es, 0.25, seed=1), noisy_labels(es, 0.25, seed=1), noisy_labels(es, 0.25, seed=2)
    fl = torch.tensor(a.meta.flipped.to_numpy(dtype=bool))
    assert int(fl.sum()) == 15
    assert torch.equal(a.tensors['y'] != es.tensors['y'], fl)            # each flip changes the class; nothing else changes
    assert torch.equal(a.tensors['y'], b.tensors['y'])
    assert not torch.equal(a.tensors['y'], c.tensors['y'])
    assert a.meta.clean_y.tolist() == es.tensors['y'].tolist()
    assert int(a.tensors['y'].max()) < 4 and int(a.tensors['y'].min()) >= 0

def test_auc_interval_is_the_pair_count():
    g = np.random.default_rng(0)
    s, p = g.integers(0, 5, 70).astype(float), g.random(70) < 0.2      # many ties
    brute = np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(s[p], s[~p])])
    auc, lo, hi = auc_interval(s, p, n_boot=300, seed=0)
    assert auc == pytest.approx(brute, abs=1e-12)
    assert lo < auc < hi and 0 <= lo and hi <= 1
    assert auc_interval(s, p, n_boot=300, seed=0) == (auc, lo, hi)
    assert auc_interval(-s, p, n_boot=0)[0] == pytest.approx(1 - brute, abs=1e-12)

def test_flipped_labels_have_higher_self_influence(study):
    _, r = study
    for m in ('tracin', 'trak'):
        si = r.self_influence[m].double().sum(1)
        assert si[r.flipped].mean() > 1.5 * si[~r.flipped].mean(), m       # planted: a wrong label is hard to fit
        assert r.table().loc[m, 'uniform'] > {'tracin': 0.62, 'trak': 0.8}[m], r.table()   # far above chance (0.5)
        assert r.table().loc[m, 'uniform'] == pytest.approx(mislabel_auc(si, r.flipped), abs=1e-12)
        w = r.weights[m].w.double()
        assert r.table().loc[m, 'learned'] == pytest.approx(mislabel_auc(r.self_influence[m].double(), r.flipped, w=w), abs=1e-12)
        assert w.min() >= 0 and w.mean().item() == pytest.approx(1, abs=1e-5)

def test_results_rows_and_intervals(study):
    _, r = study
    d = r.results.df
    assert list(d.columns) == ['method', 'weights', 'metric', 'value', 'lo', 'hi']
    assert d[['method', 'weights']].values.tolist() == [['tracin', 'uniform'], ['tracin', 'learned'], ['trak', 'uniform'], ['trak', 'learned']]
    assert (d.metric == 'mislabel AUC').all() and (d.lo <= d.value).all() and (d.value <= d.hi).all()
    assert r.settings['n_flipped'] == 30 and r.settings['n_train'] == 300

def test_seeded_and_cached(study, tmp_path):
    out, r = study
    again = mislabel_study(tiny_preset(), 'tracin,trak', out=out, n_learn=30, proj_dim=32, n_boot=200, progress=False, log=None)
    assert again.rows == r.results.rows                                   # from the cache
    fresh = mislabel_study(tiny_preset(), 'trak', out=tmp_path, n_learn=30, proj_dim=32, n_boot=200, progress=False, log=None)
    assert fresh.rows == [x for x in r.results.rows if x['method'] == 'trak']     # recomputed from scratch: identical

def test_other_seed_flips_other_examples(tmp_path):
    a = MislabelRun(tiny_preset(), 0.1, tmp_path, seed=0, n_learn=10, log=None)
    b = MislabelRun(tiny_preset(), 0.1, tmp_path, seed=1, n_learn=10, log=None)
    assert not torch.equal(a.flipped, b.flipped) and int(a.flipped.sum()) == int(b.flipped.sum()) == 30
    assert a.cache != b.cache

def test_bad_input_is_explained(tmp_path):
    with pytest.raises(ValueError, match='frac=0'): noisy_labels(toy(), frac=0)
    with pytest.raises(ValueError, match=r"tensors\['y'\]"): noisy_labels(toy().select('x'))
    with pytest.raises(ValueError, match='classifier'): mislabel_run('kjv-gpt2', 'trak', out=tmp_path)
    with pytest.raises(ValueError, match='tracinn'): mislabel_run(tiny_preset(), 'tracinn', out=tmp_path)
    with pytest.raises(ValueError, match='n_learn=0'): mislabel_run(tiny_preset(), 'trak', out=tmp_path, n_learn=0)
    with pytest.raises(KeyError, match='fmnist-vit'): mislabel_run('fmnist-vitt', 'trak', out=tmp_path)
