"""Adversarial checks: two writers racing on one store, corrupted chunks, a planted cache pickle, orphaned ground-truth
workers, and every bad CLI input refused (one line, exit code 2) before anything is trained. ~60 s on 2 cores."""
import hashlib, json, os, pickle, signal, subprocess, sys, textwrap, time, warnings
from pathlib import Path
import numpy as np, pytest, torch
from torch import nn
from pwattr.features import featurize, Projector
from pwattr.grouping import GroupSpec
from pwattr.store import FeatureStore, StoreCorrupt, StoreMismatch, StoreLocked
from pwattr.features import load_features

ROOT = Path(__file__).resolve().parent.parent
ENV = {**{k: v for k, v in os.environ.items() if k != 'IN_TEST'}, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(ROOT)}
torch.set_num_threads(1)

SETUP = '''
import torch
from torch import nn
def setup(role):
    "Model A or B (different weights), the same 61 examples"
    torch.manual_seed(0 if role == 'A' else 1)
    m = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 5))
    g = torch.Generator().manual_seed(123)
    return m, {'x': torch.randn(61, 12, generator=g), 'y': torch.randint(0, 5, (61,), generator=g)}
'''
exec(SETUP)
KW = dict(batch_size=4, progress=False)
def _proj(): return Projector(24, 'sparse', seed=4)
def _sha(x): return hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()

# --- two writers, two models, one store -------------------------------------------------------------------------
WRITER = SETUP + '''
import hashlib, json, sys, time
from pathlib import Path
torch.set_num_threads(1)
from pwattr.features import featurize, Projector
from pwattr.grouping import GroupSpec
from pwattr.store import StoreMismatch
role, base, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
other = 'B' if role == 'A' else 'A'
m, d = setup(role)
res = []
for t in range(n):            # start each trial together with the other writer (file barrier), then race
    (base / f'ready-{role}-{t}').touch()
    while not (base / f'ready-{other}-{t}').exists(): time.sleep(0.0005)
    try:
        f = featurize(m, 'margin', d, GroupSpec.by_module(m), projector=Projector(24, 'sparse', seed=4), batch_size=4,
                      store=base / f'store{t}', progress=False)
        res.append(hashlib.sha256(f.x.numpy().tobytes()).hexdigest())
    except StoreMismatch: res.append('mismatch')
(base / f'result-{role}.json').write_text(json.dumps(res))
'''

def test_two_writer_race_never_mixes_features(tmp_path):
    n = 24
    (tmp_path / 'writer.py').write_text(WRITER)
    ps = [subprocess.Popen([sys.executable, str(tmp_path / 'writer.py'), r, str(tmp_path), str(n)], env=ENV, cwd=ROOT) for r in 'AB']
    for p in ps: assert p.wait(timeout=300) == 0
    ref = {}
    for r in 'AB':
        m, d = setup(r); ref[r] = _sha(featurize(m, 'margin', d, GroupSpec.by_module(m), projector=_proj(), **KW).x.numpy())
    assert ref['A'] != ref['B']
    res = {r: json.loads((tmp_path / f'result-{r}.json').read_text()) for r in 'AB'}
    wins = {'A': 0, 'B': 0}
    for t in range(n):
        got = {r: res[r][t] for r in 'AB'}
        for r in 'AB': assert got[r] in (ref[r], 'mismatch'), (t, r, got)       # never the other model's features
        assert sorted(got.values()).count('mismatch') == 1, (t, got)            # exactly one writer wins each race
        winner = 'A' if got['A'] != 'mismatch' else 'B'; wins[winner] += 1
        st = FeatureStore(tmp_path / f'store{t}')
        assert st.complete and _sha(st.read()['x'].numpy()) == ref[winner]          # the store holds the winner's model only
    print(f"{n} races: A won {wins['A']}, B won {wins['B']}; 0 mixed")

def test_second_writer_waits_then_fails_clearly(tmp_path):
    st = FeatureStore(tmp_path / 's')
    with st.lock():
        t0 = time.perf_counter()
        with pytest.raises(StoreLocked, match='being written by another process'):
            with FeatureStore(tmp_path / 's').lock(timeout=0.3): pass
        assert time.perf_counter() - t0 >= 0.3
    with FeatureStore(tmp_path / 's').lock(timeout=0): pass                       # released with its holder

# --- corrupted chunks ----------------------------------------------------------------------------------------------
@pytest.fixture
def stored(tmp_path):
    m, d = setup('A')
    ref = featurize(m, 'margin', d, GroupSpec.by_module(m), projector=_proj(), **KW)
    run = lambda: featurize(m, 'margin', d, GroupSpec.by_module(m), projector=_proj(), store=tmp_path / 's', **KW)
    run()
    return tmp_path / 's', run, ref

def _files(p): return {f.name: f.read_bytes() for f in sorted(Path(p).iterdir())}

def test_bitflip_is_detected_and_recomputed(stored):
    path, run, ref = stored
    good = _files(path)
    for name, row in [('x.npy', 30), ('extra_out.npy', 5)]:
        raw = bytearray((path / name).read_bytes()); raw[-4 * (61 - row) * (48 if name == 'x.npy' else 1) + 1] ^= 0x10
        (path / name).write_bytes(bytes(raw))
        with pytest.raises(StoreCorrupt, match=r'chunks \[\d+\] do not match their checksums'): FeatureStore(path).read()
        with pytest.warns(UserWarning, match='do not match their checksums'): f = run()
        assert torch.equal(f.x, ref.x) and _files(path) == good

def test_truncated_chunks_are_recomputed_never_zeros(stored):
    path, run, ref = stored
    good = _files(path)
    # an incomplete store (a killed run) whose x.npy lost its tail: the "33 of 64 rows came back zero"
    m = json.loads((path / 'manifest.json').read_text()); m['completed'] = m['completed'][:10]
    m['checksums'] = [c if i < 10 else None for i, c in enumerate(m['checksums'])]; (path / 'manifest.json').write_text(json.dumps(m, indent=1))
    with open(path / 'x.npy', 'r+b') as f: f.truncate(f.seek(0, 2) - 40 * 48 * 4)
    with pytest.raises(StoreCorrupt, match='truncated'): FeatureStore(path).verify()
    with pytest.warns(UserWarning, match='truncated'): f = run()
    assert torch.equal(f.x, ref.x) and (f.x.abs().sum(1) > 0).all() and _files(path) == good
    # a complete store with a truncated extra: refused on load, recomputed on the next run
    with open(path / 'extra_q.npy', 'r+b') as fh: fh.truncate(fh.seek(0, 2) - 8)
    with pytest.raises(StoreCorrupt, match='extra_q.npy is truncated'): FeatureStore(path).read()
    with pytest.warns(UserWarning): run()
    assert _files(path) == good

def test_other_data_same_ids_and_missing_subfolder_refused(stored, tmp_path):
    path, run, ref = stored
    m, d = setup('A')
    d2 = {**d, 'y': (d['y'] + 1) % 5}
    with pytest.raises(StoreMismatch, match='data_hash'):
        featurize(m, 'margin', d2, GroupSpec.by_module(m), projector=_proj(), store=path, **KW)
    ck = [(s, 0.1, {k: v * (1 - 0.1 * s) for k, v in m.state_dict().items()}) for s in range(3)]
    featurize(m, 'margin', d, GroupSpec.by_module(m), projector=_proj(), checkpoints=ck, store=tmp_path / 'ck', **KW)
    assert len(load_features(tmp_path / 'ck')) == 3
    import shutil; shutil.rmtree(tmp_path / 'ck' / '002')                          # the last one: invisible by numbering
    with pytest.raises(FileNotFoundError, match=r"\['002'\] are missing"): load_features(tmp_path / 'ck')

def test_disk_full_is_a_clear_oserror(tmp_path, monkeypatch):
    import shutil as sh, pwattr.store as S
    monkeypatch.setattr(S.shutil, 'disk_usage', lambda p: sh._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    m, d = setup('A')
    with pytest.raises(OSError, match=r'Not enough disk space for the feature store at .*s: it needs \d+ bytes'):
        featurize(m, 'margin', d, GroupSpec.by_module(m), projector=_proj(), store=tmp_path / 's', **KW)
    assert not (tmp_path / 's' / 'manifest.json').exists()                        # nothing half-made

# --- the audit cache never unpickles -------------------------------------------------------------------------------
def test_planted_pickle_in_audit_cache_does_not_run(tmp_path):
    from pwattr.audit import cached
    marker = tmp_path / 'pwned'
    class Boom:
        def __reduce__(self): return (os.system, (f'touch {marker}',))
    torch.save({'state_dict': Boom()}, tmp_path / 'model-s0.pt')                 # what a real cache file looks like
    (tmp_path / 'raw.pt').write_bytes(pickle.dumps(Boom()))
    (tmp_path / 'junk.pt').write_bytes(b'\x00garbage')
    for f in ('model-s0.pt', 'raw.pt', 'junk.pt'):
        with pytest.warns(UserWarning, match='unusable'):
            assert cached(tmp_path / f, lambda: {'ok': torch.ones(2)}, log=None)['ok'].sum() == 2
        assert torch.equal(cached(tmp_path / f, lambda: 1 / 0, log=None)['ok'], torch.ones(2))   # the recomputed result is cached
    assert not marker.exists()

# --- ground-truth workers die with their parent --------------------------------------------------------------------
GT = textwrap.dedent('''
    import sys, torch
    torch.set_num_threads(1)
    from pwattr.groundtruth import RidgeTask, run_groundtruth
    if __name__ == '__main__':       # spawned workers import this file
        t = RidgeTask(n=30, d=4, q=6, delay=0.4, seed=1)
        run_groundtruth(t.train_fn, t.output_fn, 30, t.queries, m=60, out_path=sys.argv[1], workers=2, progress=False)
''')

def _children(pid:int)->list:
    out = []
    for st in Path('/proc').glob('[0-9]*/stat'):
        try: s = st.read_text()
        except OSError: continue
        if int(s.rsplit(')', 1)[1].split()[1]) == pid: out.append(int(st.parent.name))
    return out

def _alive(pid:int)->bool:
    try: return Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0] != 'Z'
    except OSError: return False

@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='reads /proc')
def test_orphan_groundtruth_workers_exit(tmp_path):
    (tmp_path / 'gt.py').write_text(GT)
    p = subprocess.Popen([sys.executable, str(tmp_path / 'gt.py'), str(tmp_path / 'o.npz')], env=ENV, cwd=tmp_path)
    t0 = time.time()
    while len(list((tmp_path / 'o.work').glob('model_*.json'))) < 2:            # the workers are training
        assert p.poll() is None and time.time() - t0 < 120; time.sleep(0.05)
    kids = _children(p.pid)
    assert len([k for k in kids if _alive(k)]) >= 2, kids
    os.kill(p.pid, signal.SIGKILL); p.wait()
    t1 = time.time()
    while any(_alive(k) for k in kids) and time.time() - t1 < 15: time.sleep(0.1)
    assert not any(_alive(k) for k in kids), f"orphaned workers still alive {time.time() - t1:.1f} s after the parent died"
    print(f"{len(kids)} children gone {time.time() - t1:.2f} s after kill -9 of the parent")

# --- bad input: one line, exit code 2, before any training ---------------------------------------------------------
@pytest.fixture
def no_training(monkeypatch):
    from pwattr import presets, groundtruth
    calls = []
    def boom(*a, **k): calls.append(1); raise AssertionError('training started')
    monkeypatch.setattr(presets.Preset, 'train', boom)
    monkeypatch.setattr(groundtruth, 'run_groundtruth', boom)
    return calls

def _refused(main, argv, capsys, limit_s=15):
    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as e: main(argv)
    dt = time.perf_counter() - t0
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert e.value.code == 2, (argv, e.value.code, out.err)
    assert len(lines) == 1 and 'error:' in lines[0] and 'Traceback' not in out.err, (argv, out.err)
    assert dt < limit_s, (argv, dt)
    return lines[0]

AUDIT_BAD = [(['--proj_dim', '-1'], '--proj_dim'), (['--n_learn', '-5'], '--n_learn'), (['--seed', '-1'], '--seed'),
             (['--k', '-1'], '--k'), (['--k', '5000'], 'smaller than the 5000 training examples'), (['--lam', '-1'], '--lam'),
             (['--lam', 'nan'], '--lam'), (['--workers', '-3'], '--workers'), (['--gt_subsets', '-1'], '--gt_subsets'),
             (['--n_learn', '100000'], '--n_learn 100000'), (['--timesteps', '0'], '--timesteps'),
             (['--methods', 'trak,nope'], 'Unknown method'), (['--preset', 'nope'], '--preset'),
             (['--gt', 'missing.npz'], 'no LDS ground truth'), (['--out', '/proc/pwattr-audit'], 'not writable'),
             (['--device', 'cuda:0' if not torch.cuda.is_available() else 'cuda:99'], '--device')]

def test_audit_bad_inputs_refused_before_compute(tmp_path, capsys, no_training):
    from pwattr.cli import main
    (tmp_path / 'f').write_text('x')
    for extra, msg in AUDIT_BAD + [(['--out', str(tmp_path / 'f')], 'is a file')]:
        line = _refused(main, ['audit', '--out', str(tmp_path / 'out'), *extra], capsys)
        assert msg in line, (extra, line)
    assert not no_training and not (tmp_path / 'out').exists()

def test_groundtruth_bad_inputs_refused_before_training(tmp_path, capsys, no_training):
    from pwattr.groundtruth import main
    P = ['--preset', 'fmnist-mlp', '--out', str(tmp_path / 'g.npz')]
    cases = [(['--preset', 'nope'], 'unknown preset'), (P + ['--subsets', '0'], '--subsets'), (P + ['--seeds', '0'], '--seeds'),
             (P + ['--alpha', '1.5'], '--alpha'), (P + ['--queries', '0'], '--queries'), (P + ['--query-seed', '-1'], '--query-seed'),
             (P + ['--seed', '-1'], '--seed'), (P + ['--workers', '-3'], '--workers'), (P + ['--threads', '0'], '--threads'),
             (P + ['--device', 'cuda:0' if not torch.cuda.is_available() else 'cuda:99'], '--device'),
             (P + ['--out', str(tmp_path)], 'is a directory'), (P + ['--out', '/proc/x/g.npz'], 'not writable')]
    for argv, msg in cases:
        line = _refused(main, argv, capsys)
        assert msg in line, (argv, line)
    assert not no_training and not (tmp_path / 'g.work').exists()

def test_cli_entry_points_and_help(tmp_path, capsys):
    "The installed commands: one line + exit 2 in a fresh process; every option's help shows its default; --K still works"
    import re
    pwattr_cmd = Path(sys.executable).parent / 'pwattr'
    for cmd, msg in [([sys.executable, '-m', 'pwattr.groundtruth', '--preset', 'fmnist-mlp', '--workers', '-3'], '--workers'),
                     ([str(pwattr_cmd), 'audit', '--k', '-1', '--out', str(tmp_path / 'o')], '--k'),
                     ([str(pwattr_cmd), 'groundtruth', '--preset', 'fmnist-mlp', '--alpha', '2'], '--alpha')]:
        r = subprocess.run(cmd, env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and msg in r.stderr, (cmd, r.stderr)
    from pwattr import cli, groundtruth
    for main, argv in [(cli.main, ['audit', '-h']), (groundtruth.main, ['-h'])]:
        with pytest.raises(SystemExit): main(argv)
        text = capsys.readouterr().out
        entries = [e for e in re.split(r'\n  (?=-)', text.split('options:', 1)[1]) if e.strip() and not e.startswith('-h')]
        assert len(entries) >= 13, entries
        for e in entries: assert '(default:' in ' '.join(e.split()), e         # every option shows its default
    with pytest.raises(SystemExit): cli.main(['audit', '-h'])
    helptext = capsys.readouterr().out
    assert '--timesteps' in helptext and '--K ' not in helptext and '--k K, --topk K' in helptext   # no option differs only by case
    with pytest.raises(SystemExit) as e: cli.main(['audit', '--K', '0', '--out', str(tmp_path / 'o')])
    err = capsys.readouterr().err
    assert e.value.code == 2 and '--K is deprecated' in err and '--timesteps must be >= 1' in err

def test_lds_refuses_bad_weights_and_scores():
    from pwattr.evaluate import lds
    from pwattr.groundtruth import GroundTruth
    from pwattr.methods import Contributions
    g = np.random.default_rng(0)
    masks = g.random((20, 30)) < 0.5; S = torch.randn(4, 30, 2)
    gt = GroundTruth(masks, np.arange(20)[:, None], g.normal(size=(20, 1, 4)), list(range(4)))
    c = Contributions(S, ['a', 'b'])
    for w, msg in [(torch.tensor([1., float('nan')]), 'NaN or inf'), (torch.tensor([1., -1.]), '>= 0')]:
        with pytest.raises(ValueError, match=msg): lds(c, gt, w=w)
    bad = S.sum(-1).clone(); bad[2, 3] = float('inf')
    with pytest.raises(ValueError, match='scores of 1 queries'): lds(bad, gt)
