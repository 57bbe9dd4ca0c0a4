"FeatureStore: kill -9 and resume ends byte-identical; mismatches refused; torchrun with 2 ranks == 1 process"
import os, signal, subprocess, sys, time, json, shutil
from pathlib import Path
import numpy as np, pytest, torch
from torch import nn
from pwattr.grouping import GroupSpec
from pwattr.features import featurize, Projector, Margin
from pwattr.store import FeatureStore, StoreMismatch
from pwattr.features import load_features

ROOT = Path(__file__).resolve().parent.parent
torch.set_num_threads(1)

JOB = r'''
import os, sys, time, torch
torch.set_num_threads(1)
from torch import nn
from pwattr.grouping import GroupSpec
from pwattr.features import featurize, Projector, Margin

class SlowMargin(Margin):
    "Margin that sleeps in prepare when PWATTR_SLOW is set (same config, so the same store)"
    def prepare(self, batch, ids):
        time.sleep(float(os.environ.get('PWATTR_SLOW', 0))); return batch

def setup():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 5))
    d = {'x': torch.randn(61, 12), 'y': torch.randint(0, 5, (61,))}
    return m, d

if __name__ == '__main__':
    dist = 'LOCAL_RANK' in os.environ
    if dist: torch.distributed.init_process_group('gloo')
    m, d = setup()
    featurize(m, SlowMargin(), d, GroupSpec.by_module(m), projector=Projector(24, sys.argv[2], seed=4), batch_size=4,
              store=sys.argv[1], progress=False)
    if dist: torch.distributed.destroy_process_group()
'''

def _env(**kw): return {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(ROOT), **kw}

@pytest.fixture(scope='module')
def job(tmp_path_factory):
    d = tmp_path_factory.mktemp('store')
    (d / 'job.py').write_text(JOB)
    subprocess.run([sys.executable, str(d / 'job.py'), str(d / 'ref'), 'sparse'], check=True, env=_env(), cwd=ROOT)
    return d

def _files(p): return {f.name: f.read_bytes() for f in sorted(Path(p).iterdir())}

def test_reference_store_is_complete_and_readable(job):
    st = FeatureStore(job / 'ref')
    assert st.complete and st.n_chunks == 16
    m = st.manifest
    assert m['completed'] == list(range(16)) and m['ids'] == list(range(61)) and m['dims'] == [24, 24]
    x = np.load(job / 'ref' / 'x.npy')                                  # readable without pwattr
    assert x.shape == (61, 48) and x.dtype == np.float32 and np.abs(x).sum(1).min() > 0
    # in-process featurize of the same model gives the same numbers
    sys.path.insert(0, str(job)); from job import setup; sys.path.pop(0)
    mdl, d = setup()
    f = featurize(mdl, 'margin', d, GroupSpec.by_module(mdl), projector=Projector(24, 'sparse', seed=4), batch_size=4, progress=False)
    assert np.array_equal(f.x.numpy(), x)

def test_kill9_then_resume_is_byte_identical(job):
    out = job / 'killed'
    p = subprocess.Popen([sys.executable, str(job / 'job.py'), str(out), 'sparse'], env=_env(PWATTR_SLOW='0.15'), cwd=ROOT)
    t0 = time.time()
    while time.time() - t0 < 300:
        try: n = len(FeatureStore(out).completed())        # manifest + the progress log
        except (FileNotFoundError, json.JSONDecodeError, KeyError): n = 0
        if n >= 3 or p.poll() is not None: break
        time.sleep(0.05)
    assert p.poll() is None, 'the job finished before it could be killed'
    os.kill(p.pid, signal.SIGKILL); p.wait()
    st = FeatureStore(out)
    done = st.completed()
    assert 3 <= len(done) < 16 and not st.complete
    with pytest.raises(RuntimeError, match='incomplete'): st.read()
    subprocess.run([sys.executable, str(job / 'job.py'), str(out), 'sparse'], check=True, env=_env(), cwd=ROOT)
    assert _files(out) == _files(job / 'ref')           # same files, same bytes, no temp files left

def test_mismatch_is_refused(job, tmp_path):
    sys.path.insert(0, str(job)); from job import setup; sys.path.pop(0)
    m, d = setup()
    shutil.copytree(job / 'ref', tmp_path / 's')
    before = _files(tmp_path / 's')
    kw = dict(batch_size=4, store=tmp_path / 's', progress=False)
    with pytest.raises(StoreMismatch, match='fingerprint'):
        featurize(nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 5)), 'margin', d,
                  GroupSpec({'0': ['0.weight', '0.bias'], '2': ['2.weight', '2.bias']}, m), projector=Projector(24, 'sparse', seed=4), **kw)
    with pytest.raises(StoreMismatch, match='projection'):
        featurize(m, 'margin', d, GroupSpec.by_module(m), projector=Projector(24, 'gaussian', seed=4), **kw)
    with pytest.raises(StoreMismatch, match='group spec'):
        featurize(m, 'margin', d, GroupSpec.by_tensor(m), projector=Projector(24, 'sparse', seed=4), **kw)
    with pytest.raises(StoreMismatch, match='ids'):
        featurize(m, 'margin', {k: v[:60] for k, v in d.items()}, GroupSpec.by_module(m), projector=Projector(24, 'sparse', seed=4), **kw)
    assert _files(tmp_path / 's') == before                              # nothing was touched
    # the matching run just loads it (nothing recomputed: all chunks done)
    f = featurize(m, 'margin', d, GroupSpec.by_module(m), projector=Projector(24, 'sparse', seed=4), **kw)
    assert np.array_equal(f.x.numpy(), np.load(job / 'ref' / 'x.npy'))
    assert isinstance(load_features(tmp_path / 's').x, torch.Tensor)

def test_torchrun_two_ranks_equal_single_process(job):
    torchrun = Path(sys.executable).parent / 'torchrun'
    out = job / 'dist'
    r = subprocess.run([str(torchrun), '--standalone', '--nproc_per_node=2', str(job / 'job.py'), str(out), 'sparse'],
                       env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _files(out) == _files(job / 'ref')

# --- issue 17: O(chunk) commits, memory-mapped results, a plain format; issue 13: input dtypes ---------------------
def _small():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 5)).eval()
    d = {'x': torch.randn(61, 12), 'y': torch.randint(0, 5, (61,))}
    return m, d, GroupSpec.by_module(m), Projector(24, 'sparse', seed=4)

def test_chunk_commits_do_not_rewrite_the_manifest(tmp_path, monkeypatch):
    "Per chunk: one fixed-size line appended to a log; the manifest (all ids) is written at creation and compaction only"
    import pwattr.store as S
    m, d, gs, pr = _small()
    writes, lines = [], []
    real_aw, real_wc = S.atomic_write, S.FeatureStore.write_chunk
    monkeypatch.setattr(S, 'atomic_write', lambda p, t: (writes.append(Path(p).name), real_aw(p, t))[1])
    monkeypatch.setattr(S, 'SYNC_EVERY', 0.0)                                  # a group commit after every chunk
    def spy(self, c, *a, **k):
        real_wc(self, c, *a, **k); lines.append((self.path / 'progress.rank0.log').stat().st_size)
    monkeypatch.setattr(S.FeatureStore, 'write_chunk', spy)
    f = featurize(m, 'margin', d, gs, projector=pr, batch_size=2, store=tmp_path / 's', progress=False)   # 31 chunks
    assert writes == ['manifest.json', 'manifest.json']                      # create + compact, not one per chunk
    steps = np.diff([0] + lines)
    assert len(steps) == 31 and 0 < steps.min() and steps.max() <= 30, steps  # one ~25-byte line per chunk, whatever N is
    assert not list((tmp_path / 's').glob('progress*'))                       # compacted and removed
    assert FeatureStore(tmp_path / 's').manifest['completed'] == list(range(31))
    ref = featurize(m, 'margin', d, gs, projector=pr, batch_size=2, progress=False)
    assert torch.equal(f.x, ref.x)

def test_torn_log_line_is_ignored_and_recomputed(job, tmp_path):
    "A run killed while appending: whole lines count, the torn last one does not; resume ends byte-identical"
    ref = job / 'ref'; out = tmp_path / 'k'; shutil.copytree(ref, out)
    man = json.loads((out / 'manifest.json').read_text()); sums = man['checksums']
    man['completed'] = [0, 1]; man['checksums'] = [s if c < 2 else None for c, s in enumerate(sums)]
    (out / 'manifest.json').write_text(json.dumps(man, indent=1))
    (out / 'progress.rank0.log').write_bytes(b''.join(json.dumps([c, sums[c]]).encode() + b'\n' for c in (2, 3))
                                             + b'[4, "' + sums[4][:5].encode())           # torn: no newline
    x = np.load(out / 'x.npy', mmap_mode='r+'); x[16:] = 0; x.flush(); del x              # chunks 4.. never written
    st = FeatureStore(out)
    assert st.completed() == {0, 1, 2, 3} and st.missing()[:2] == [4, 5]
    subprocess.run([sys.executable, str(job / 'job.py'), str(out), 'sparse'], check=True, env=_env(), cwd=ROOT)
    assert _files(out) == _files(ref)

def _mapped(t:torch.Tensor, path:Path)->bool:
    "Is the memory of tensor t a mapping of the file at path? (read from /proc/self/maps)"
    a = t.data_ptr()
    for line in Path('/proc/self/maps').read_text().splitlines():
        parts = line.split()
        if len(parts) >= 6 and parts[5] == str(path.resolve()):
            lo, hi = (int(v, 16) for v in parts[0].split('-'))
            if lo <= a < hi: return True
    return False

def test_featurize_store_is_memory_mapped_and_methods_take_it(tmp_path):
    from pwattr.methods import TRAK, TracInCP
    m, d, gs, pr = _small()
    mem = featurize(m, 'margin', d, gs, projector=pr, batch_size=8, progress=False)
    mm = featurize(m, 'margin', d, gs, projector=pr, batch_size=8, store=tmp_path / 's', progress=False)
    ram = featurize(m, 'margin', d, gs, projector=pr, batch_size=8, store=tmp_path / 's', progress=False, mmap=False)
    assert _mapped(mm.x, tmp_path / 's' / 'x.npy') and not _mapped(ram.x, tmp_path / 's' / 'x.npy')
    assert not _mapped(mem.x, tmp_path / 's' / 'x.npy')
    assert torch.equal(mm.x, mem.x) and torch.equal(ram.x, mem.x) and torch.equal(mm.extras['q'], mem.extras['q'])
    assert _mapped(load_features(tmp_path / 's').x, tmp_path / 's' / 'x.npy')
    q = mem[list(range(5))]
    for meth in (lambda: TRAK(), lambda: TracInCP(lrs=[0.1])):
        a, b = meth().fit(mem).contributions(q).S, meth().fit(mm).contributions(q).S
        assert torch.equal(a, b), (a - b).abs().max()
    # a write into the returned features (copy-on-write) never reaches the store
    before = (tmp_path / 's' / 'x.npy').read_bytes(); mm.x[0] += 1
    assert (tmp_path / 's' / 'x.npy').read_bytes() == before and FeatureStore(tmp_path / 's').verify() == []

def test_features_and_contributions_read_with_plain_numpy(tmp_path):
    from pwattr.methods import TRAK
    m, d, gs, pr = _small()
    f = featurize(m, 'margin', d, gs, projector=pr, batch_size=8, progress=False)
    f.save(tmp_path / 'f')
    desc = json.loads((tmp_path / 'f' / 'features.json').read_text())      # no pwattr below: numpy + json
    x = np.load(tmp_path / 'f' / 'x.npy')
    assert np.array_equal(x, f.x.numpy()) and desc['ids'] == f.ids and desc['groups'] == f.groups
    off = np.cumsum([0] + desc['dims'])
    assert np.array_equal(x[:, off[1]:off[2]], f.block(desc['groups'][1]).numpy())
    assert np.array_equal(np.load(tmp_path / 'f' / 'extra_q.npy'), f.extras['q'].numpy())
    g = load_features(tmp_path / 'f')
    assert torch.equal(g.x, f.x) and g.meta == json.loads(json.dumps(f.meta)) and _mapped(g.x, tmp_path / 'f' / 'x.npy')
    c = TRAK().fit(f).contributions(f[list(range(4))]); c.save(tmp_path / 'c')
    S = np.load(tmp_path / 'c' / 'S.npy'); cm = json.loads((tmp_path / 'c' / 'contributions.json').read_text())
    assert np.array_equal(S, c.S.numpy()) and cm['groups'] == c.groups and cm['train_ids'] == list(range(61))

def test_wrong_input_dtypes_are_named_up_front(tmp_path):
    from pwattr.features import per_example_grads, Margin
    m, d, gs, pr = _small()
    for bad, want in [({**d, 'x': d['x'].double()}, "Input 'x' is float64 but the model's parameters are float32"),
                      ({**d, 'x': (d['x'] * 100).long()}, "Input 'x' is int64")]:
        with pytest.raises(TypeError, match=want):
            featurize(m, 'margin', bad, gs, projector=pr, batch_size=8, store=tmp_path / 's', progress=False)
        assert not (tmp_path / 's').exists()                                    # refused before any store or compute
        with pytest.raises(TypeError, match=want): per_example_grads(m, Margin(), bad, gs)
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    imgs = {'x': torch.randint(0, 256, (5, 1, 8, 8)), 'y': torch.randint(0, 3, (5,))}
    with pytest.raises(TypeError, match=r"Input 'x' is int64 \(\[1, 8, 8\] per example.*to\(torch.float32\) / 255"):
        featurize(cnn, 'cross_entropy', imgs, GroupSpec.by_module(cnn), progress=False)
    f = featurize(cnn, 'cross_entropy', {**imgs, 'x': imgs['x'].float() / 255}, GroupSpec.by_module(cnn), progress=False)
    assert len(f) == 5
