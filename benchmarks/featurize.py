"""Featurisation throughput, side by side in one run: raw per-sample gradients vs projected (dense, sparse).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/featurize.py                         # all presets, 64 examples each
    .venv/bin/python benchmarks/featurize.py --presets fmnist-mlp kjv-gpt2 --n 128 --dims 1024
    .venv/bin/python benchmarks/featurize.py --device cuda                               # on a GPU
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/featurize.py --store        # store vs memory, 50,000 examples

`--store` featurizes 50,000 examples (fmnist-mlp, untrained, random inputs, sparse projection to `--dims`) at the
default batch size 32, into a FeatureStore and in memory, alternating the sides (`--repeats`, medians), prints
the store / memory time ratio (goal <= 1.2), the time of one chunk commit, the peak RSS of each side, then kills
a child writing the store with SIGKILL and checks the resumed store is byte-identical to the uninterrupted one.

For every preset's model (untrained, seed 0; its data when available, else random inputs of the same shapes)
it times `featurize` on the same examples with
  raw       per-example per-group gradients, no projection
  sparse    sparse JL projection (nnz=4 per coordinate), `--dims` total dims split equally over the groups
  dense     dense Rademacher projection, same dims
and prints examples/s, the overhead ratio (time / raw time) and the peak memory above the process baseline
while the mode runs, warm-up included (RSS sampled every 2 ms on CPU; torch.cuda.max_memory_allocated on GPU). On a shared machine wall time
is noisy: examples per CPU-second (process time) and the CPU-time ratio are the robust numbers. Targets (issue 3): sparse overhead
<= 1.5x raw at 1024 total dims; pwattr at least as fast as traker on CPU. traker is timed (classification
presets only: its image_classification margin task, BasicProjector on CPU, the same total dims) when `trak`
is importable (pip install -e '.[peers]').
"""
import argparse, importlib.util, os, sys, tempfile, threading, time, warnings
from pathlib import Path
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pwattr.grouping import GroupSpec
from pwattr.features import featurize, Projector, output_fn

PRESETS = ['fmnist-mlp', 'fmnist-resnet9', 'fmnist-vit', 'kjv-gpt2', 'emoji-unet', 'sbemoji-cond']

def rss():
    with open('/proc/self/statm') as f: return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')

class Peak:
    "Peak memory above the baseline during a block (RSS sampled on CPU, allocator peak on CUDA)"
    def __init__(self, device): self.cuda = torch.device(device).type == 'cuda'
    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); self.base = torch.cuda.memory_allocated()
            return self
        self.base = self.peak = rss(); self.stop = False
        def watch():
            while not self.stop: self.peak = max(self.peak, rss()); time.sleep(0.002)
        self.t = threading.Thread(target=watch, daemon=True); self.t.start(); return self
    def __exit__(self, *a):
        if self.cuda: torch.cuda.synchronize(); self.mb = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        else: self.stop = True; self.t.join(); self.peak = max(self.peak, rss()); self.mb = (self.peak - self.base) / 2**20

def synthetic(domain, n, model):
    g = torch.Generator().manual_seed(0)
    if domain == 'classification':
        return {'x': torch.rand(n, 1, 28, 28, generator=g), 'y': torch.randint(0, 10, (n,), generator=g)}
    if domain == 'language':
        ids = torch.randint(0, 256, (n, 128), generator=g); return {'input_ids': ids, 'attention_mask': torch.ones_like(ids)}
    d = {'x': torch.rand(n, 3, 16, 16, generator=g) * 2 - 1}
    if hasattr(model, 'n_values'):
        for a, k in model.n_values.items(): d[a] = torch.randint(0, k, (n,), generator=g)
    return d

def setup(name, n, K):
    from pwattr.presets import get_preset
    p = get_preset(name); model = p.make_model(0).eval()
    try:
        train, _ = p.load(); data = train[list(range(min(n, len(train))))]; src = 'data'
    except Exception as e:
        data, src = synthetic(p.domain, n, model), f'random inputs ({type(e).__name__})'
    out = {'margin': output_fn('margin'), 'lm_loss': output_fn('lm_loss')}.get(p.output) or output_fn('diffusion_loss', K=K)
    return p, model, data, out, src

def run(model, out, data, groups, proj, bs, device):
    with Peak(device) as pk:    # the peak covers the warm-up too (it builds the projection cache)
        featurize(model, out, data[list(range(bs))] if hasattr(data, 'batch') else {k: v[:bs] for k, v in data.items()},
                  groups, projector=proj, batch_size=bs, device=device, progress=False)
        t, c = time.perf_counter(), time.process_time()
        f = featurize(model, out, data, groups, projector=proj, batch_size=bs, device=device, progress=False)
        if torch.device(device).type == 'cuda': torch.cuda.synchronize()
        dt, dc = time.perf_counter() - t, time.process_time() - c
    return len(f), dt, dc, pk.mb, f.x.shape[1]

def run_traker(model, data, dims, bs, device):
    from trak import TRAKer
    from trak.projectors import BasicProjector, ProjectionType
    from trak.gradient_computers import FunctionalGradientComputer
    x, y = (data.tensors['x'], data.tensors['y']) if hasattr(data, 'tensors') else (data['x'], data['y'])
    n = len(y); grad_dim = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter('ignore')
        proj = BasicProjector(grad_dim=grad_dim, proj_dim=dims, seed=0, proj_type=ProjectionType.rademacher,
                              device=torch.device(device), block_size=100)
        tr = TRAKer(model=model, task='image_classification', train_set_size=n, save_dir=d, device=device,
                    projector=proj, proj_dim=dims, use_half_precision=False, logging_level=40)
        with Peak(device) as pk:
            tr.load_checkpoint(model.state_dict(), model_id=0)
            tr.featurize(batch=(x[:bs].to(device), y[:bs].to(device)), num_samples=bs)        # warm-up
            t, c = time.perf_counter(), time.process_time()
            for s in range(bs, n, bs):
                tr.featurize(batch=(x[s:s + bs].to(device), y[s:s + bs].to(device)), num_samples=len(y[s:s + bs]))
            dt, dc = time.perf_counter() - t, time.process_time() - c
    return n - bs, dt, dc, pk.mb

# --- store vs in memory at scale (issue 17) ---------------------------------------------------------------------------
def store_setup(n, dims, preset='fmnist-mlp'):
    "The preset's untrained model (seed 0), n seeded random inputs of its data's shapes, a sparse projection to `dims`"
    from pwattr.presets import get_preset
    p = get_preset(preset); model = p.make_model(0).eval()
    groups = GroupSpec.preset(model, 'module')
    return model, synthetic(p.domain, n, model), groups, Projector(max(1, dims // len(groups)), 'sparse', seed=0)

def store_worker(path, n, dims, bs, timed=False):
    "Child process: featurize into the store at `path` ('-': in memory); with `timed`, print one JSON line of times and RSS"
    import json, resource
    from pwattr.store import FeatureStore
    torch.set_num_threads(1)
    model, data, groups, proj = store_setup(n, dims)
    kw = dict(projector=proj, batch_size=bs, progress=False)
    if not timed: return featurize(model, 'margin', data, groups, store=path, **kw)
    featurize(model, 'margin', {k: v[:bs] for k, v in data.items()}, groups, **kw)       # warm-up
    commit = [0.0]; real = FeatureStore.write_chunk
    def spy(self, *args, **kws):
        t = time.perf_counter(); real(self, *args, **kws); commit[0] += time.perf_counter() - t
    FeatureStore.write_chunk = spy
    base = rss(); r0 = resource.getrusage(resource.RUSAGE_SELF)
    with Peak('cpu') as pk:
        t, c = time.perf_counter(), time.process_time()
        f = featurize(model, 'margin', data, groups, store=None if path == '-' else path, **kw)
        s = float(f.x.sum())            # read every row once: the result is usable (a mapped x is paged in here)
        dt, dc = time.perf_counter() - t, time.process_time() - c
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({'wall': dt, 'cpu': dc, 'user': r1.ru_utime - r0.ru_utime, 'sys': r1.ru_stime - r0.ru_stime,
                      'minflt': r1.ru_minflt - r0.ru_minflt, 'base_mb': base / 2**20, 'peak_mb': pk.peak / 2**20,
                      'maxrss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      'commit_ms': commit[0] / -(-n // bs) * 1e3, 'sum': s}))

def store_run(a):
    "Store vs in-memory featurize of `--store-n` examples at `--batch`: one process per run, alternating sides, medians, peak RSS, kill -9 + resume"
    import json, shutil, signal, statistics, subprocess
    from pwattr.store import FeatureStore
    n_chunks = -(-a.store_n // a.batch)
    _, _, groups, proj = store_setup(8, a.dims)
    print(f"store run: fmnist-mlp (untrained, seed 0), {a.store_n:,} random inputs, sparse projection to "
          f"{proj.dims_for(groups)[0] * len(groups)} dims, batch {a.batch} ({n_chunks} chunks), {a.repeats} repeats "
          f"alternating the sides, one process per run, store under {a.store_dir}", flush=True)
    root = Path(a.store_dir); root.mkdir(parents=True, exist_ok=True)
    env = {**{k: v for k, v in os.environ.items() if k != 'IN_TEST'}, 'OMP_NUM_THREADS': '1'}
    cmd = lambda path, *x: [sys.executable, __file__, '--_store_worker', str(path), '--store-n', str(a.store_n),
                            '--dims', str(a.dims), '--batch', str(a.batch), *x]
    res = {'memory': [], 'store': []}
    for r in range(a.repeats):
        for side in (['memory', 'store'] if r % 2 == 0 else ['store', 'memory']):
            shutil.rmtree(root / 'ref', ignore_errors=True)
            out = subprocess.run(cmd(root / 'ref' if side == 'store' else '-', '--_timed'), env=env, check=True,
                                 capture_output=True, text=True).stdout
            d = json.loads(out.strip().splitlines()[-1]); res[side].append(d)
            print(f"  repeat {r} {side:6s} {d['wall']:7.2f} s wall {d['cpu']:7.2f} s CPU ({d['user']:.1f} user, {d['sys']:.1f} sys, "
                  f"{d['minflt']} page faults)  peak RSS {d['peak_mb']:6.0f} MB "
                  f"(+{d['peak_mb'] - d['base_mb']:.0f} over the {d['base_mb']:.0f} MB before featurize)"
                  + (f"  chunk commits {d['commit_ms']:.2f} ms each" if side == 'store' else ''), flush=True)
    med = lambda side, k: statistics.median(d[k] for d in res[side])
    print(f"median wall: in memory {med('memory', 'wall'):.2f} s, store {med('store', 'wall'):.2f} s -> store / memory = "
          f"{med('store', 'wall') / med('memory', 'wall'):.3f} (goal <= 1.2; wall time, on a machine loaded by other work)")
    print(f"median CPU:  in memory {med('memory', 'cpu'):.2f} s, store {med('store', 'cpu'):.2f} s -> "
          f"store / memory = {med('store', 'cpu') / med('memory', 'cpu'):.3f}")
    print(f"median chunk commit (pwrite + fdatasync + one fsynced log line): {med('store', 'commit_ms'):.2f} ms")
    print(f"peak RSS (median): in memory {med('memory', 'peak_mb'):.0f} MB, store with its memory-mapped result "
          f"{med('store', 'peak_mb'):.0f} MB, of which {med('store', 'base_mb'):.0f} MB before featurize (model, inputs)")
    # kill -9 in the middle of writing, then resume: byte-identical to the uninterrupted store?
    kd = root / 'killed'; shutil.rmtree(kd, ignore_errors=True)
    p = subprocess.Popen(cmd(kd), env=env)
    def done():
        try: return len(FeatureStore(kd).completed())
        except (OSError, ValueError, KeyError): return 0
    while done() < n_chunks * a.kill_at and p.poll() is None: time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL); p.wait(); at = done()
    t = time.perf_counter(); subprocess.run(cmd(kd), env=env, check=True); dt = time.perf_counter() - t
    names = ('manifest.json', 'x.npy', 'extra_out.npy', 'extra_q.npy')
    same = all((kd / f).read_bytes() == (root / 'ref' / f).read_bytes() for f in names)
    left = sorted(x.name for x in kd.iterdir() if x.name not in names + ('.lock',))
    print(f"kill -9 after {at} of {n_chunks} chunks recorded, resumed in {dt:.1f} s (process start included): "
          f"{'byte-identical' if same else 'DIFFERENT'} to the uninterrupted store; files left over: {left or 'none'}")
    if not a.keep: shutil.rmtree(root, ignore_errors=True)

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--presets', nargs='*', default=PRESETS)
    ap.add_argument('--n', type=int, default=64, help='examples per preset')
    ap.add_argument('--batch', type=int, default=32)
    ap.add_argument('--dims', type=int, default=1024, help='total projected dims (split equally over the groups)')
    ap.add_argument('--level', default='module', help="GroupSpec.preset level: 'module' | 'block' | 'function' | 'tensor'")
    ap.add_argument('--K', type=int, default=2, help='timesteps per example for the diffusion loss')
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--store', action='store_true', help='only the store run: store vs in-memory featurize at scale')
    ap.add_argument('--store-n', type=int, default=50_000, help='examples of the store run')
    ap.add_argument('--repeats', type=int, default=3, help='repeats per side of the store run (medians)')
    ap.add_argument('--kill-at', type=float, default=0.4, help='fraction of chunks recorded when the store run is killed')
    ap.add_argument('--store-dir', default=None, help='folder for the store run (default: a temporary folder)')
    ap.add_argument('--keep', action='store_true', help='keep the store run\'s folder')
    ap.add_argument('--_store_worker', default=None, help=argparse.SUPPRESS)
    ap.add_argument('--_timed', action='store_true', help=argparse.SUPPRESS)
    a = ap.parse_args()
    warnings.filterwarnings('ignore')
    if a._store_worker: return store_worker(a._store_worker, a.store_n, a.dims, a.batch, a._timed)
    if a.store:
        torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', torch.get_num_threads())))
        a.store_dir = a.store_dir or tempfile.mkdtemp(prefix='pwattr-store-')
        return store_run(a)
    have_trak = importlib.util.find_spec('trak') is not None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {a.device}; "
          f"traker {'found' if have_trak else 'not installed (skipped)'}\n")
    rows = []
    for name in a.presets:
        p, model, data, out, src = setup(name, a.n, a.K)
        model.to(a.device)
        groups = GroupSpec.preset(model, a.level)
        per = max(1, a.dims // len(groups))
        print(f"{name}: {groups.n_params:,} params in {len(groups)} groups ({a.level}), {len(data)} examples from {src}, "
              f"output {type(out).__name__}, {per} dims per group")
        modes = [('raw', None), ('sparse', Projector(per, 'sparse', seed=0)), ('dense', Projector(per, 'rademacher', seed=0))]
        base = None
        def show(mode, n, dt, dc, mb, D):
            nonlocal base
            base = base or dc / n      # raw CPU seconds per example
            rows.append((name, mode, D, n / dt, n / dc, dc / n / base, mb))
            print(f"  {mode:8s} {D:>9,} dims  {n / dt:9.1f} ex/s  {n / dc:9.1f} ex/cpu-s  x{rows[-1][5]:5.2f}  {mb:8.1f} MB")
        for mode, proj in modes:
            n, dt, dc, mb, D = run(model, out, data, groups, proj, a.batch, a.device)
            show(mode, n, dt, dc, mb, D)
        if have_trak and p.domain == 'classification':
            try:
                n, dt, dc, mb = run_traker(model, data, per * len(groups), a.batch, a.device)
                show('traker', n, dt, dc, mb, per * len(groups))
            except Exception as e: print(f"  traker failed: {type(e).__name__}: {e}")
    print('\n| preset | mode | dims | examples/s (wall) | examples/CPU-s | CPU time / raw | peak MB |'
          '\n|---|---|---:|---:|---:|---:|---:|')
    for r in rows: print(f"| {r[0]} | {r[1]} | {r[2]:,} | {r[3]:.1f} | {r[4]:.1f} | {r[5]:.2f} | {r[6]:.1f} |")

if __name__ == '__main__':
    main()
