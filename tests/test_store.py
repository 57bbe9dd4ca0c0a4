"FeatureStore: kill -9 and resume ends byte-identical; mismatches refused; torchrun with 2 ranks == 1 process"
import os, signal, subprocess, sys, time, json, shutil
from pathlib import Path
import numpy as np, pytest, torch
from torch import nn
from pwattr.grouping import GroupSpec
from pwattr.features import featurize, Projector, Margin
from pwattr.store import FeatureStore, StoreMismatch, load_features

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
    with pytest.raises(RuntimeError, match='incomplete'): st.load()
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
