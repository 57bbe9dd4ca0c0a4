"""Weight learning at hundreds of groups: where bootstrapping fails, and time / peak memory as M grows at a fixed starting SNR.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/weights_scale.py                 # all parts
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/weights_scale.py --part curve --M 64 256
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/weights_scale.py --part null               # the null test on runs/ caches

Contributions are `planted_contributions` (Q queries x N training examples x M groups; 8 signal groups carry `n_true = k`
planted proponents per query with strength 3 and noise std 1; the other M - 8 groups are pure noise). The starting
signal-to-noise of the base method (uniform weights) is SNR = 8 x 3 / sd(sum of the M groups); `planted_noise(snr, M)`
sets the noise of the other groups to reach it, so SNR can be held fixed while M grows.

  curve : for each M and SNR: precision@k of the base method and of the learned weights, the learned weight mass on the 8
          signal groups, and `topk_null_test`'s p-value and verdict (does it warn where the learner fails?)
  scale : at one SNR (--snr), M in --M-scale: wall and CPU seconds, steps, ms per step (wall and CPU, the null test
          excluded), setup, passes over S, queries refreshed, the null test's seconds and p, peak RSS above the process
          before the call (sampled every 2 ms) against the size of S, precision
  null  : `topk_null_test` on the learning queries of every contributions cache under runs/*/cache (the committed presets'
          TracIn / TRAK / D-TRAK / ...): p, share, standardised top-k margin observed vs null (skipped without runs/)
The record goes to benchmarks/results/weights_scale.json (machine limit and load included). One run per cell (not a
comparison, so nothing is alternated); wall times on a loaded machine are inflated, CPU times less so.
"""
import argparse, os, re, sys, time, warnings
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _bench import Bench, Peak
from pwattr.weights import planted_contributions, planted_noise, learn_weights, precision_at_k, topk_null_test

def planted(a, M, snr):
    return planted_contributions(Q=a.Q, N=a.N, M=M, signal=range(8), n_true=a.k, strength=3., noise=planted_noise(snr, M), seed=a.seed)

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--part', default='all', choices=['all', 'curve', 'scale', 'null'])
    ap.add_argument('--Q', type=int, default=32); ap.add_argument('--N', type=int, default=2000); ap.add_argument('--k', type=int, default=20)
    ap.add_argument('--M', type=int, nargs='+', default=[64, 256], help='curve part: group counts')
    ap.add_argument('--snrs', type=float, nargs='+', default=[0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0])
    ap.add_argument('--snr', type=float, default=1.0, help='scale part: the starting SNR held fixed')
    ap.add_argument('--M-scale', type=int, nargs='+', default=[16, 64, 256, 1024])
    ap.add_argument('--runs', type=str, default=str(Path(__file__).resolve().parent.parent / 'runs'), help='null part: where the caches are')
    ap.add_argument('--seed', type=int, default=0)
    a = ap.parse_args()
    warnings.filterwarnings('ignore')
    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', '1')))
    B = Bench('weights_scale' if a.part == 'all' else f'weights_scale_{a.part}', vars(a)); B.rec['curve'], B.rec['scale'], B.rec['null'] = [], [], []
    learn_weights(planted(a, 16, 1.0)[0][:2, :500], k=5, steps=3, check=False)      # warm-up
    if a.part in ('all', 'curve'):
        B.note(f"\nbootstrap curve: Q={a.Q} N={a.N} k={a.k}, 8 signal groups (strength 3), chance precision {a.k / a.N:.3f}")
        B.note(f"{'M':>5s} {'SNR':>5s} {'noise':>6s} {'base p@k':>9s} {'learned p@k':>12s} {'signal mass':>12s} {'null p':>7s} {'warns':>6s}")
        for M in a.M:
            for snr in a.snrs:
                S, true = planted(a, M, snr)
                gw = learn_weights(S, k=a.k)
                nt = gw.info['null_test']
                r = dict(M=M, snr=snr, noise=planted_noise(snr, M), base=precision_at_k(S.sum(-1), true, a.k),
                         learned=precision_at_k(S @ gw.w, true, a.k), mass=float(gw.w[:8].sum() / gw.w.sum()), null_p=nt['p'],
                         warns=nt['noise'])
                B.rec['curve'].append(r)
                B.note(f"{M:5d} {snr:5.2f} {r['noise']:6.2f} {r['base']:9.2f} {r['learned']:12.2f} {r['mass']:12.2f} {r['null_p']:7.2f} {str(r['warns']):>6s}")
    if a.part in ('all', 'scale'):
        B.note(f"\nscale at SNR {a.snr}: Q={a.Q} N={a.N} k={a.k}")
        B.note(f"{'M':>5s} {'S MiB':>6s} {'wall s':>7s} {'cpu s':>6s} {'steps':>6s} {'ms/step':>8s} {'cpu ms/step':>12s} {'setup s':>8s} {'passes':>7s} "
               f"{'refreshed':>10s} {'check s':>8s} {'null p':>7s} {'peak MiB':>9s} {'peak/S':>7s} {'base p@k':>9s} {'learned p@k':>12s}")
        for M in a.M_scale:
            S, true = planted(a, M, a.snr)
            smb = S.numel() * 4 / 2**20
            base_cpu = time.process_time(); learn_weights(S, k=a.k, steps=1, check=False); base_cpu = time.process_time() - base_cpu
            with Peak('cpu') as pk:
                t, c = time.perf_counter(), time.process_time()
                gw = learn_weights(S, k=a.k)
                dt, dc = time.perf_counter() - t, time.process_time() - c
            i = gw.info
            cpu_step = (dc - base_cpu - i['time_check'] * dc / dt) / max(1, i['n_steps'] - 1)   # CPU beyond a 1-step call, per step
            r = dict(M=M, S_mib=smb, wall=dt, cpu=dc, steps=i['n_steps'], ms_per_step=1e3 * i['time_per_step'], cpu_ms_per_step=1e3 * cpu_step,
                     setup=i['time_setup'], passes=i['passes'], refreshed=i['query_refreshes'], check=i['time_check'], null_p=i['null_test']['p'],
                     peak_mib=pk.mb, peak_over_S=pk.mb / smb,
                     base=precision_at_k(S.sum(-1), true, a.k), learned=precision_at_k(S @ gw.w, true, a.k))
            B.rec['scale'].append(r)
            B.note(f"{M:5d} {smb:6.0f} {dt:7.2f} {dc:6.2f} {r['steps']:6d} {r['ms_per_step']:8.2f} {r['cpu_ms_per_step']:12.2f} {r['setup']:8.2f} {r['passes']:7d} "
                   f"{r['refreshed']:10d} {r['check']:8.2f} {r['null_p']:7.2f} {r['peak_mib']:9.0f} {r['peak_over_S']:7.2f} {r['base']:9.2f} {r['learned']:12.2f}")
    if a.part in ('all', 'null'):
        caches = sorted(p for p in Path(a.runs).glob('*/cache/*/contrib-*.pt') if not re.search(r'-d[0-9.]+\.pt$', p.name))
        B.note(f"\nnull test (k={a.k}) on the learning queries of {len(caches)} contributions caches under {a.runs}"
               + ('' if caches else ': none found (run the presets first)'))
        if caches:
            from pwattr.audit import _load_cache
            B.note(f"{'preset':16s} {'contributions':34s} {'Q':>4s} {'N':>6s} {'M':>4s} {'p':>5s} {'share':>6s} {'observed':>9s} {'null':>6s} {'warns':>6s} {'s':>5s}")
        for p in caches:
            c = _load_cache(p); c = c[-1] if isinstance(c, tuple) else c          # (eval, learn): the learning queries
            t = time.process_time(); nt = topk_null_test(c, k=a.k, warn=False); t = time.process_time() - t
            Q, N, M = c.S.shape
            r = dict(preset=p.parts[-4], contributions=p.stem[len('contrib-'):], Q=Q, N=N, M=M, cpu_s=t, **nt)
            B.rec['null'].append(r)
            B.note(f"{r['preset']:16s} {r['contributions']:34s} {Q:4d} {N:6d} {M:4d} {nt['p']:5.2f} {nt['share']:6.2f} {nt['observed']:9.2f} "
                   f"{nt['null']:6.2f} {str(nt['noise']):>6s} {t:5.2f}")
    B.save()

if __name__ == '__main__': main()
