"""Featurisation throughput and peak memory of the diffusion attribution methods, side by side.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/diffusion.py                      # both presets, K in 1 4 10
    .venv/bin/python benchmarks/diffusion.py --preset emoji-unet --K 1 4 --n 16      # smaller
    .venv/bin/python benchmarks/diffusion.py --device cuda --n 256 --K 1 10 100      # on a GPU

For each preset (its model untrained: the cost does not depend on the weights) and each K, the methods run alternately in
one process on the same `n` training examples (one untimed warm-up batch first, inside the peak window), `--repeats`
runs each (A B C / C B A / ..., medians), reporting examples/s (wall and per CPU-second) and the peak RSS above the
process before the method's first run (sampled every 2 ms; torch.cuda.max_memory_allocated on a GPU). The machine
limit and the load go to benchmarks/results/diffusion.json. journeytrak's training side and trak differ only in the
timesteps they draw ('random' vs 'uniform'): the same work, so their ratio is printed as a same-work ratio; an earlier
version ran each method in its own process at a different time, and the load in between made journeytrak look 2.3x
faster than trak (20.6 vs 9.0 ex/s).
What each method featurises per example:
  tracin / trak : gradient of the denoising loss averaged over K timesteps (one vmap over B x K images)
  dtrak         : gradient of mean eps^2 averaged over K timesteps (same cost as above)
  das           : K separate per-timestep gradients, each L2-normalised before averaging (K vmap calls)
  journeytrak   : training side as trak (random timesteps); the query side (--journey) costs one loss gradient
                  per used sampling step (reported as 'journeytrak-query', K = sampling steps used)
"""
import argparse, json, os, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / 'benchmarks'))
from _bench import Bench, Peak, median

def sides_for(a, preset):
    "name -> callable featurising the timed examples, for every method at every K; (n timed, params, groups)"
    import torch
    from pwattr.presets import get_preset
    from pwattr.grouping import GroupSpec
    from pwattr.features import Projector, output_fn
    from pwattr.diffusion import timestep_features, journey_features
    from pwattr.recipes import recipe
    p = get_preset(preset); tr, _ = p.load(); dev = torch.device(a.device)
    model = p.make_model(0).to(dev).eval(); sch = p.scheduler()
    G = GroupSpec.preset(model, 'block')
    data = tr[torch.arange(min(a.n + a.batch, len(tr)))]
    warm, rest = data[torch.arange(a.batch)], data[torch.arange(a.batch, len(data))]
    def make(method, K):
        P = Projector(a.dims, seed=0)     # each method builds its own matrices, in its warm-up (peak window)
        if method == 'journeytrak-query':
            run = lambda d: journey_features(model, d, G, P, steps=list(range(K)), scheduler=sch, sampling_steps=max(K, 10),
                                             batch_size=a.batch, device=dev)
        else:
            r = recipe(method, 'diffusion'); norm = r.norm
            fn = output_fn(r.output, K=K, seed=0, timesteps=r.timesteps, scheduler=sch)
            run = lambda d: timestep_features(model, fn, d, G, P, normalize=norm, batch_size=a.batch, device=dev)
        def timed():
            run(rest)
            if dev.type == 'cuda': torch.cuda.synchronize()
        return (lambda: run(warm)), timed
    return make, len(rest), sum(G.sizes), len(G)

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--preset', nargs='+', default=['emoji-unet', 'sbemoji-cond'])
    ap.add_argument('--method', nargs='+', default=['trak', 'dtrak', 'das', 'journeytrak', 'journeytrak-query'],
                    help="tracin costs what trak costs per checkpoint; listed methods: tracin trak dtrak das journeytrak journeytrak-query")
    ap.add_argument('--K', nargs='+', type=int, default=[1, 4, 10])
    ap.add_argument('--n', type=int, default=32, help='examples timed (after one warm-up batch)')
    ap.add_argument('--batch', type=int, default=8)
    ap.add_argument('--dims', type=int, default=512, help='projected dims per group')
    ap.add_argument('--repeats', type=int, default=3, help='alternated runs per method (medians)')
    ap.add_argument('--device', default='cpu')
    a = ap.parse_args()
    import torch, warnings
    warnings.filterwarnings('ignore')
    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', '1')))
    B = Bench('diffusion', vars(a))
    rows = []
    for pr in a.preset:
        make, n, params, groups = sides_for(a, pr)
        B.note(f"\n{pr} ({params:,} parameters in {groups} groups, {a.dims} dims/group, {a.device}, batch {a.batch}, {n} examples timed)")
        for K in a.K:
            sides, peak = {}, {}
            for m in a.method:
                warm, timed = make(m, K)
                with Peak(a.device) as pk: warm()
                peak[m] = pk.mb; sides[m] = timed
            res = B.alternate(sides, a.repeats, key=f'{pr} K={K}')
            for m, r in res.items():
                rows.append({'preset': pr, 'method': m, 'K': K, 'n': n, 'examples_per_s': n / median(r['wall']),
                             'examples_per_cpu_s': n / median(r['cpu']), 'peak_MiB': peak[m], 'params': params, 'groups': groups})
                B.note(f"  {m:18s} K={K:<3d} {rows[-1]['examples_per_s']:8.2f} ex/s  {rows[-1]['examples_per_cpu_s']:8.2f} ex/cpu-s   "
                       f"warm-up peak {peak[m]:7.0f} MiB")
            if 'trak' in res and 'journeytrak' in res:
                B.ratio(f'{pr} K={K} journeytrak (training side) / trak', res, 'journeytrak', 'trak', same_work=True,
                        differs="timesteps drawn at random ('random') vs evenly spaced ('uniform'); same gradients and projection")
    if rows:
        import pandas as pd
        df = pd.DataFrame(rows)
        print('\nexamples/s, wall (rows: method, columns: K), medians of alternated runs')
        for pr, d in df.groupby('preset', sort=False):
            print(f"\n{pr}"); print(d.pivot(index='method', columns='K', values='examples_per_s').round(2).to_string())
            print('examples per CPU-second'); print(d.pivot(index='method', columns='K', values='examples_per_cpu_s').round(2).to_string())
        B.rec['rows'] = rows
    B.save()

if __name__ == '__main__': main()
