"""kill -9 at random moments, then resume: does the result come out byte-identical to an uninterrupted run?

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/reliability.py --trials 20
Two experiments, N trials each (kill times drawn from a seeded generator):
  featurize    a FeatureStore being written (one process), killed, resumed; files compared byte for byte
  groundtruth  run_groundtruth with 2 worker processes, the parent killed; orphaned workers counted after 5 s,
               then the run resumed and the .npz compared byte for byte (the .json without its timings)
"""
import argparse, json, os, signal, subprocess, sys, tempfile, textwrap, time
from pathlib import Path
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pwattr.store import FeatureStore

ROOT = Path(__file__).resolve().parent.parent
ENV = {**{k: v for k, v in os.environ.items() if k != 'IN_TEST'}, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(ROOT)}

FEAT = textwrap.dedent('''
    import os, sys, time, torch
    torch.set_num_threads(1)
    from torch import nn
    from pwattr.grouping import GroupSpec
    from pwattr.features import featurize, Projector, Margin
    class SlowMargin(Margin):
        def prepare(self, batch, ids): time.sleep(float(os.environ.get('PWATTR_SLOW', 0))); return batch
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 5))
    d = {'x': torch.randn(97, 12), 'y': torch.randint(0, 5, (97,))}
    featurize(m, SlowMargin(), d, GroupSpec.by_module(m), projector=Projector(24, 'sparse', seed=4), batch_size=4,
              store=sys.argv[1], progress=False)
''')

GT = textwrap.dedent('''
    import os, sys, torch
    torch.set_num_threads(1)
    from pwattr.groundtruth import RidgeTask, run_groundtruth
    if __name__ == '__main__':
        t = RidgeTask(n=30, d=4, q=6, noise=0.05, delay=float(os.environ.get('PWATTR_SLOW', 0)), seed=1)
        run_groundtruth(t.train_fn, t.output_fn, 30, t.queries, m=12, seeds=2, out_path=sys.argv[1], workers=2,
                        kind='loss', progress=False)
''')

def _files(p): return {f.name: f.read_bytes() for f in sorted(Path(p).iterdir()) if f.name != '.lock'}

def _children(pid):
    out = []
    for st in Path('/proc').glob('[0-9]*/stat'):
        try: s = st.read_text()
        except OSError: continue
        if int(s.rsplit(')', 1)[1].split()[1]) == pid: out.append(int(st.parent.name))
    return out

def _alive(pid):
    try: return Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0] != 'Z'
    except OSError: return False

def _json_wo_timing(p):
    d = json.loads(Path(p).read_text()); d.pop('timing')
    for k in ('wall_s_last_session', 'models_last_session'): d['meta'].pop(k, None)
    return d

def featurize_trials(n, rng, d):
    script = d / 'feat.py'; script.write_text(FEAT)
    subprocess.run([sys.executable, str(script), str(d / 'ref')], env=ENV, check=True)
    ok, killed_at = 0, []
    for i in range(n):
        out = d / f'f{i}'
        p = subprocess.Popen([sys.executable, str(script), str(out)], env={**ENV, 'PWATTR_SLOW': '0.1'})
        def n_done():                                  # chunks recorded: the manifest plus the progress log
            try: return len(FeatureStore(out).completed())
            except (OSError, ValueError, KeyError): return 0
        while n_done() < 1 and p.poll() is None: time.sleep(0.005)   # the first chunk is on disk
        t = rng.uniform(0, 1.9); time.sleep(t)             # the first group commit (0.5 s) holds ~5 chunks; ~20 more x 0.1 s
        os.kill(p.pid, signal.SIGKILL); p.wait()
        done = n_done() if (out / 'manifest.json').exists() else -1
        killed_at.append(done)
        subprocess.run([sys.executable, str(script), str(out)], env=ENV, check=True)
        same = _files(out) == _files(d / 'ref'); ok += same
        print(f"  featurize trial {i:2d}: killed {t:.2f} s after the first chunk ({done} of 25 chunks recorded) -> {'identical' if same else 'DIFFERENT'}", flush=True)
    return ok

def groundtruth_trials(n, rng, d):
    script = d / 'gt.py'; script.write_text(GT)
    subprocess.run([sys.executable, str(script), str(d / 'ref.npz')], env=ENV, check=True, cwd=d)
    ok, orphans = 0, 0
    for i in range(n):
        out = d / f'g{i}.npz'
        p = subprocess.Popen([sys.executable, str(script), str(out)], env={**ENV, 'PWATTR_SLOW': '0.3'}, cwd=d)
        while not list(out.with_suffix('.work').glob('model_*.json')) and p.poll() is None:
            time.sleep(0.01)                               # the workers are training: a first model is done
        t = rng.uniform(0, 3.5); time.sleep(t)             # 23 more models x 0.3 s on 2 workers: the kill lands anywhere
        kids = _children(p.pid)
        os.kill(p.pid, signal.SIGKILL); p.wait()
        time.sleep(5)
        left = [k for k in kids if _alive(k)]; orphans += len(left)
        for k in left: os.kill(k, signal.SIGKILL)           # clean up after a failure, so the next trial is fair
        n_done = len(list(out.with_suffix('.work').glob('model_*.json'))) if out.with_suffix('.work').exists() else 0
        subprocess.run([sys.executable, str(script), str(out)], env=ENV, check=True, cwd=d)
        same = (out.read_bytes() == (d / 'ref.npz').read_bytes()
                and _json_wo_timing(out.with_suffix('.json')) == _json_wo_timing(d / 'ref.json'))
        ok += same
        print(f"  groundtruth trial {i:2d}: killed {t:.2f} s after the first model ({n_done} of 24 models done, {len(kids)} children, "
              f"{len(left)} alive 5 s later) -> {'identical' if same else 'DIFFERENT'}", flush=True)
    return ok, orphans

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument('--trials', type=int, default=20, help='kill -9 trials per experiment')
    ap.add_argument('--seed', type=int, default=0, help='seed of the kill times')
    ap.add_argument('--only', choices=['featurize', 'groundtruth'], default=None, help='run one experiment only')
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp); res = {}
        if a.only in (None, 'featurize'):
            (d / 'f').mkdir(); res['featurize'] = featurize_trials(a.trials, rng, d / 'f')
        if a.only in (None, 'groundtruth'):
            (d / 'g').mkdir(); res['groundtruth'], orph = groundtruth_trials(a.trials, rng, d / 'g')
    if 'featurize' in res: print(f"featurize: {res['featurize']}/{a.trials} identical after kill -9 + resume")
    if 'groundtruth' in res:
        print(f"groundtruth (2 workers): {res['groundtruth']}/{a.trials} identical after kill -9 of the parent + resume; "
              f"{orph} orphaned workers alive 5 s after the kill")
