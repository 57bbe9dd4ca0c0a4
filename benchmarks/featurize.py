"""Featurisation throughput, side by side in one run: raw per-sample gradients vs projected (dense, sparse).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/featurize.py                         # all presets, 64 examples each
    .venv/bin/python benchmarks/featurize.py --presets fmnist-mlp kjv-gpt2 --n 128 --dims 1024
    .venv/bin/python benchmarks/featurize.py --device cuda                               # on a GPU
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/featurize.py --store        # store vs memory, 50,000 examples

`--store` featurizes 50,000 examples (fmnist-mlp, untrained, random inputs, sparse projection to `--dims`) at the
default batch size 32, into a FeatureStore and in memory, alternating the sides (`--repeats`, medians), prints
the store / memory time ratio (goal <= 1.2), the time of one chunk commit, the peak RSS of each side, then kills
a child writing the store with SIGKILL and checks the resumed store is byte-identical to the uninterrupted one.

For every preset's model (untrained, seed 0; its data when available, else random inputs of the same shapes) it runs,
alternately (`--repeats` runs per side, A B C / C B A / ..., medians), on the same examples at the same batch size:
  grads         per-example per-group gradients alone, one batch at a time (the baseline: no [N, P] matrix is built)
  sparse/group  pwattr's default: sparse JL projection (nnz=4) of each group, `--dims` total dims split over the groups
  dense/group   dense Rademacher projection of each group, same dims
  dense/whole   dense Rademacher projection of the whole gradient (one group), `--dims` dims: the same work as traker
  kron/group    pwattr KronProjector per group, same dims: a Kronecker-structured projection made from layer inputs and
                output gradients (one batched backward with hooks), no per-example gradient formed (a different matrix: its
                LDS cost is measured by benchmarks/featurize_lds.py)
  kron/whole    KronProjector over the whole gradient (one group), `--dims` dims: the same dims and output as traker's
  traker        traker 0.3.2 (classification presets: image_classification margin task), BasicProjector Rademacher over
                the whole gradient to the same dims, with block_size = dims so it draws its matrix once and keeps it
Every side builds its matrix in an untimed warm-up run inside its peak-memory window (peak RSS above the process before
the side's warm-up, sampled every 2 ms; torch.cuda.max_memory_allocated on GPU). Printed: examples/s (wall), examples per
CPU-second (process time: the robust figure on a shared machine), CPU time / grads, peak MB, and the ratios with what
differs beside each (SAME WORK: traker vs dense/whole; the others are overhead or as-shipped ratios). The machine limit
(matmul GFLOP/s, memory GB/s) and the load average are printed first; the record goes to benchmarks/results/featurize.json.
traker is 'peer missing' unless `trak` imports (pip install -e '.[peers]').
"""
import argparse, importlib.util, os, sys, tempfile, threading, time, warnings
from pathlib import Path
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pwattr.grouping import GroupSpec
from pwattr.features import featurize, Projector, KronProjector, output_fn
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import Bench, Peak, rss, median

PRESETS = ['fmnist-mlp', 'fmnist-resnet9', 'fmnist-vit', 'kjv-gpt2', 'emoji-unet', 'sbemoji-cond']

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

def batches(data, bs):
    "(tensors, ids) of each batch of `data` (an ExampleSet or a dict of tensors)"
    t = data.tensors if hasattr(data, 'tensors') else data
    ids = list(data.ids) if hasattr(data, 'ids') else list(range(len(next(iter(t.values())))))
    n = len(ids)
    return [({k: v[s:s + bs] for k, v in t.items()}, ids[s:s + bs]) for s in range(0, n, bs)]

def grads_only(model, out, data, groups, bs, device):
    "The baseline: per-example gradients of every batch, as featurize computes them, kept one batch at a time (no [N, P] matrix)"
    from pwattr.features import per_example_grads
    dev = torch.device(device)
    for b, ids in batches(data, bs):
        b = out.prepare({k: v.to(dev) for k, v in b.items()}, ids)
        g, _ = per_example_grads(model, out, b, groups)
        del g
    if dev.type == 'cuda': torch.cuda.synchronize()

def pw_side(model, out, data, groups, proj, bs, device):
    "pwattr's featurize of all of `data` with `proj` (None: raw per-group gradients)"
    def f():
        r = featurize(model, out, data, groups, projector=proj, batch_size=bs, device=device, progress=False)
        if torch.device(device).type == 'cuda': torch.cuda.synchronize()
        return r.x.shape[1]
    return f

class TrakerSide:
    "traker 0.3.2 featurising all of `data` (image_classification margin task, BasicProjector keeping its whole matrix)"
    def __init__(self, model, data, dims, bs, device):
        self.model, self.dims, self.bs, self.device = model, dims, bs, device
        t = data.tensors if hasattr(data, 'tensors') else data
        self.x, self.y = t['x'], t['y']; self.proj = self.tr = None
        self.tmp = tempfile.TemporaryDirectory(prefix='pwattr-bench-traker-')
    def build(self):
        "The projector: block_size = proj_dim, so its matrix is drawn once (in __init__) and kept"
        from trak.projectors import BasicProjector, ProjectionType
        grad_dim = sum(p.numel() for p in self.model.parameters())
        self.proj = BasicProjector(grad_dim=grad_dim, proj_dim=self.dims, seed=0, proj_type=ProjectionType.rademacher,
                                   device=torch.device(self.device), block_size=self.dims)
    def fresh(self):
        "A fresh TRAKer on the kept projector (traker writes each example once: one TRAKer per run), untimed"
        from trak import TRAKer
        import logging
        self.tr = TRAKer(model=self.model, task='image_classification', train_set_size=len(self.y),
                         save_dir=str(Path(self.tmp.name) / f'r{time.perf_counter_ns()}'), device=self.device,
                         projector=self.proj, proj_dim=self.dims, use_half_precision=False, logging_level=logging.ERROR)
        self.tr.load_checkpoint(self.model.state_dict(), model_id=0)
    def __call__(self):
        x, y, bs, dev = self.x, self.y, self.bs, self.device
        for s in range(0, len(y), bs):
            self.tr.featurize(batch=(x[s:s + bs].to(dev), y[s:s + bs].to(dev)), num_samples=len(y[s:s + bs]))
        if torch.device(dev).type == 'cuda': torch.cuda.synchronize()
        return self.dims

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
    ap.add_argument('--max-matrix-gb', type=float, default=2.0, help='skip whole-gradient dense sides above this matrix size')
    ap.add_argument('--K', type=int, default=2, help='timesteps per example for the diffusion loss')
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--store', action='store_true', help='only the store run: store vs in-memory featurize at scale')
    ap.add_argument('--store-n', type=int, default=50_000, help='examples of the store run')
    ap.add_argument('--repeats', type=int, default=3, help='alternated repeats per side (medians), also of the store run')
    ap.add_argument('--kill-at', type=float, default=0.4, help='fraction of chunks recorded when the store run is killed')
    ap.add_argument('--store-dir', default=None, help='folder for the store run (default: a temporary folder)')
    ap.add_argument('--keep', action='store_true', help='keep the store run\'s folder')
    ap.add_argument('--record', default='featurize', help='name of the JSON record under benchmarks/results/')
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
    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', torch.get_num_threads())))
    B = Bench(a.record, vars(a))
    B.note(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {a.device}; traker "
           f"{'found' if have_trak else 'missing: peer missing (pip install -e .[peers])'}; {a.repeats} alternated repeats per side, "
           "medians; every side builds its projection matrix in an untimed warm-up inside its peak-memory window")
    rows = []
    for name in a.presets:
        p, model, data, out, src = setup(name, a.n, a.K)
        model.to(a.device)
        groups = GroupSpec.preset(model, a.level)
        per = max(1, a.dims // len(groups)); D = per * len(groups)
        whole = GroupSpec({'all': [q for ps in groups.groups.values() for q in ps]}, model=model)
        B.note(f"\n{name}: {groups.n_params:,} params in {len(groups)} groups ({a.level}), {len(data)} examples from {src}, "
               f"output {type(out).__name__}, batch {a.batch}; {per} dims per group = {D} dims")
        sides = {'grads': lambda: grads_only(model, out, data, groups, a.batch, a.device),
                 'sparse/group': pw_side(model, out, data, groups, Projector(per, 'sparse', seed=0), a.batch, a.device),
                 'dense/group': pw_side(model, out, data, groups, Projector(per, 'rademacher', seed=0), a.batch, a.device),
                 'dense/whole': pw_side(model, out, data, whole, Projector(D, 'rademacher', seed=0), a.batch, a.device),
                 'kron/group': pw_side(model, out, data, groups, KronProjector(per, seed=0), a.batch, a.device),
                 'kron/whole': pw_side(model, out, data, whole, KronProjector(D, seed=0), a.batch, a.device)}
        what = {'grads': 'per-example gradients alone, one batch at a time (the baseline)',
                'sparse/group': f'pwattr default: sparse JL (nnz 4) per group, {per} dims each',
                'dense/group': f'pwattr: dense Rademacher per group, {per} dims each',
                'dense/whole': f'pwattr: dense Rademacher over the whole gradient (one group), {D} dims: traker\'s work',
                'kron/group': f'pwattr KronProjector per group, {per} dims each (from layer inputs x output gradients)',
                'kron/whole': f'pwattr KronProjector over the whole gradient (one group), {D} dims',
                'traker': f'traker 0.3.2: BasicProjector Rademacher over the whole gradient, {D} dims, matrix kept'}
        tk = None
        gb = groups.n_params * D * 4 / 2**30
        if gb > a.max_matrix_gb:
            B.note(f"  dense/whole and traker skipped: a whole-gradient [{groups.n_params:,}, {D}] matrix is {gb:.1f} GB "
                   f"(> --max-matrix-gb {a.max_matrix_gb:g}); pwattr would stream its row blocks, traker cannot keep it")
            sides.pop('dense/whole')
        elif have_trak and p.domain == 'classification':
            try: tk = TrakerSide(model, data, D, a.batch, a.device); sides['traker'] = tk
            except Exception as e: B.note(f"  traker failed to set up: {type(e).__name__}: {e}")
        elif not have_trak: B.note("  traker: peer missing")
        else: B.note(f"  traker: no task for a {p.domain} preset (classification only)")
        peak = {}
        for n_, f in list(sides.items()):        # peak pass: warm-up (builds the matrix) + one full run, per side
            try:
                with Peak(a.device) as pk:
                    if n_ == 'traker': tk.build(); tk.fresh()
                    f()
                peak[n_] = pk.mb
            except Exception as e:
                B.note(f"  {n_} failed: {type(e).__name__}: {str(e)[:300]}"); sides.pop(n_)
        res = B.alternate(sides, a.repeats, key=name, before=lambda n_: tk.fresh() if n_ == 'traker' else None)
        n = len(data)
        for n_ in sides:
            r = res[n_]; w, c = median(r['wall']), median(r['cpu'])
            rows.append((name, n_, D if n_ != 'grads' else groups.n_params, n / w, n / c, c / median(res['grads']['cpu']), peak[n_]))
            B.note(f"  {n_:13s} {n / w:9.1f} ex/s  {n / c:9.1f} ex/cpu-s  x{rows[-1][5]:5.2f} of grads  peak {peak[n_]:8.1f} MB  ({what[n_]})")
        B.ratio(f'{name} sparse/group / grads (projection overhead)', res, 'sparse/group', 'grads', same_work=False,
                differs='sparse/group = grads + per-group sparse projection + the [N, D] result')
        if 'dense/whole' in res: B.ratio(f'{name} dense/whole / grads', res, 'dense/whole', 'grads', same_work=False,
                differs='dense/whole = grads + whole-gradient dense projection')
        KD = ('Kronecker-structured random matrix (hooks + one batched backward; per-example gradients formed only for parameters '
              'outside Linear/Conv/Embedding/norm layers)')
        if 'kron/group' in res: B.ratio(f'{name} kron/group / grads (projection overhead, Kronecker route)', res, 'kron/group', 'grads',
                same_work=False, differs=f'kron/group: {KD}, {per} dims per group; grads: vmap per-example gradients alone')
        if 'kron/whole' in res:
            other = 'traker' if 'traker' in res else 'dense/whole' if 'dense/whole' in res else None
            if other: B.ratio(f'{name} {other} / pwattr kron/whole', res, other, 'kron/whole', same_work=False,
                differs=f'same dims ({D}) over the whole gradient and same output function (the issue\'s "same projection work"), '
                        f'but a different matrix: {other} dense Rademacher, kron/whole {KD}; LDS cost: benchmarks/featurize_lds.py'
                        + ('' if other == 'traker' else '; traker has no task for this preset: pwattr dense/whole runs at parity with it'))
        if 'traker' in res:
            B.ratio(f'{name} traker / pwattr dense/whole', res, 'traker', 'dense/whole', same_work=True,
                    differs=f'same projection work ({D} Rademacher dims over the whole gradient, margin output); '
                            'different code (traker concatenates the gradient, writes a memmap)')
            B.ratio(f'{name} traker (matrix kept) / pwattr default sparse/group', res, 'traker', 'sparse/group', same_work=False,
                    differs=f'traker: dense {D} dims over the whole gradient; pwattr: sparse {per} dims per group')
        B.rec.setdefault('rows', []).extend(dict(zip(('preset', 'side', 'dims', 'ex_per_s_wall', 'ex_per_cpu_s', 'cpu_over_grads', 'peak_mb'), r)) for r in rows[-len(sides):])
    print('\n| preset | side | dims | examples/s (wall) | examples/CPU-s | CPU time / grads | peak MB |'
          '\n|---|---|---:|---:|---:|---:|---:|')
    for r in rows: print(f"| {r[0]} | {r[1]} | {r[2]:,} | {r[3]:.1f} | {r[4]:.1f} | {r[5]:.2f} | {r[6]:.1f} |")
    B.save()

if __name__ == '__main__':
    main()
