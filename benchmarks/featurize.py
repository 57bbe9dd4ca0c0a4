"""Featurisation throughput, side by side in one run: raw per-sample gradients vs projected (dense, sparse).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/featurize.py                         # all presets, 64 examples each
    .venv/bin/python benchmarks/featurize.py --presets fmnist-mlp kjv-gpt2 --n 128 --dims 1024
    .venv/bin/python benchmarks/featurize.py --device cuda                               # on a GPU

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

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--presets', nargs='*', default=PRESETS)
    ap.add_argument('--n', type=int, default=64, help='examples per preset')
    ap.add_argument('--batch', type=int, default=32)
    ap.add_argument('--dims', type=int, default=1024, help='total projected dims (split equally over the groups)')
    ap.add_argument('--level', default='module', help="GroupSpec.preset level: 'module' | 'block' | 'function' | 'tensor'")
    ap.add_argument('--K', type=int, default=2, help='timesteps per example for the diffusion loss')
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    a = ap.parse_args()
    warnings.filterwarnings('ignore')
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
