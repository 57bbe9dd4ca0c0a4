"""Featurisation throughput and peak memory of the diffusion attribution methods, side by side.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/diffusion.py                      # both presets, K in 1 4 10
    .venv/bin/python benchmarks/diffusion.py --preset emoji-unet --K 1 4 --n 16      # smaller
    .venv/bin/python benchmarks/diffusion.py --device cuda --n 256 --K 1 10 100      # on a GPU

For each (preset, method, K) a child process builds the preset's model (untrained: the cost does not depend on
the weights), featurises `n` training examples the way the method does, and reports examples/s (after one warm-up
batch) and its own peak memory: VmHWM of the child on CPU, torch.cuda.max_memory_allocated on a GPU.
What each method featurises per example:
  tracin / trak : gradient of the denoising loss averaged over K timesteps (one vmap over B x K images)
  dtrak         : gradient of mean eps^2 averaged over K timesteps (same cost as above)
  das           : K separate per-timestep gradients, each L2-normalised before averaging (K vmap calls)
  journeytrak   : training side as trak (random timesteps); the query side (--journey) costs one loss gradient
                  per used sampling step (reported as 'journeytrak-query', K = sampling steps used)
"""
import argparse, json, os, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

def child(a):
    import torch, warnings
    warnings.filterwarnings('ignore')
    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', '1')))
    from pwattr.presets import get_preset
    from pwattr.grouping import GroupSpec
    from pwattr.features import Projector, output_fn
    from pwattr.diffusion import timestep_features, journey_features, DIFFUSION_METHODS
    p = get_preset(a.preset); tr, _ = p.load(); dev = torch.device(a.device)
    model = p.make_model(0).to(dev).eval(); sch = p.scheduler()
    G = GroupSpec.preset(model, 'block'); P = Projector(a.dims, seed=0)
    data = tr[torch.arange(min(a.n + a.batch, len(tr)))]
    warm, rest = data[torch.arange(a.batch)], data[torch.arange(a.batch, len(data))]
    if a.method == 'journeytrak-query':
        run = lambda d: journey_features(model, d, G, P, steps=list(range(a.K)), scheduler=sch, sampling_steps=max(a.K, 10),
                                         batch_size=a.batch, device=dev)
    else:
        name, norm, _, ts = DIFFUSION_METHODS[a.method]
        fn = output_fn(name, K=a.K, seed=0, timesteps=ts, scheduler=sch)
        run = lambda d: timestep_features(model, fn, d, G, P, normalize=norm, batch_size=a.batch, device=dev)
    if dev.type == 'cuda': torch.cuda.reset_peak_memory_stats()
    run(warm)                                       # warm-up: projection matrices, kernels
    if dev.type == 'cuda': torch.cuda.synchronize()
    t = time.perf_counter(); run(rest)
    if dev.type == 'cuda': torch.cuda.synchronize()
    dt = time.perf_counter() - t
    if dev.type == 'cuda': peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = next(int(l.split()[1]) / 1024 for l in open('/proc/self/status') if l.startswith('VmHWM'))
    print(json.dumps({'preset': a.preset, 'method': a.method, 'K': a.K, 'n': len(rest), 'examples_per_s': len(rest) / dt,
                      'seconds': dt, 'peak_MiB': peak, 'device': a.device, 'params': sum(G.sizes), 'groups': len(G)}))

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--preset', nargs='+', default=['emoji-unet', 'sbemoji-cond'])
    ap.add_argument('--method', nargs='+', default=['trak', 'dtrak', 'das', 'journeytrak', 'journeytrak-query'],
                    help="tracin costs what trak costs per checkpoint; listed methods: tracin trak dtrak das journeytrak journeytrak-query")
    ap.add_argument('--K', nargs='+', type=int, default=[1, 4, 10])
    ap.add_argument('--n', type=int, default=32, help='examples timed (after one warm-up batch)')
    ap.add_argument('--batch', type=int, default=8)
    ap.add_argument('--dims', type=int, default=512, help='projected dims per group')
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        a.preset, a.method, a.K = a.preset[0], a.method[0], a.K[0]; return child(a)
    rows = []
    for pr in a.preset:
        for m in a.method:
            for K in a.K:
                cmd = [sys.executable, __file__, '--child', '--preset', pr, '--method', m, '--K', str(K), '--n', str(a.n),
                       '--batch', str(a.batch), '--dims', str(a.dims), '--device', a.device]
                r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, 'HF_HUB_OFFLINE': '1'})
                line = [l for l in r.stdout.splitlines() if l.startswith('{')]
                if r.returncode or not line:
                    print(f"{pr} {m} K={K}: failed\n{r.stderr[-2000:]}", file=sys.stderr); continue
                rows.append(json.loads(line[-1]))
                d = rows[-1]
                print(f"{pr:13s} {m:18s} K={K:<3d} {d['examples_per_s']:8.2f} ex/s   peak {d['peak_MiB']:7.0f} MiB", flush=True)
    if rows:
        import pandas as pd
        df = pd.DataFrame(rows)
        print('\nexamples/s (rows: method, columns: K)')
        for pr, d in df.groupby('preset', sort=False):
            print(f"\n{pr} ({d['params'].iloc[0]:,} parameters in {d['groups'].iloc[0]} groups, {a.dims} dims/group, {a.device})")
            print(d.pivot(index='method', columns='K', values='examples_per_s').round(2).to_string())
            print('peak memory MiB'); print(d.pivot(index='method', columns='K', values='peak_MiB').round(0).to_string())

if __name__ == '__main__': main()
