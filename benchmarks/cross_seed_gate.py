"""Does the agreement gate (`pwattr.safe.agreement_gate`, references: the other methods' unweighted scores) let the
cross-seed Wiener weights of `cross_seed.py` through where they help and stop them where they hurt? (issue 15, exploratory)

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/cross_seed_gate.py --preset fmnist-resnet9 \\
        --out runs/fmnist-resnet9 --methods tracin,trak,trak-block,ekfac --targets trak-block,ekfac
Needs the seed-1 audit caches `cross_seed.py` leaves. Prints per target: the Wiener weights' LDS gain (paired 95%
interval), the gate's verdict, the gain of what it applies, and the oracle's. Appends to results/cross_seed.txt.
"""
import argparse, sys, time
from pathlib import Path
import numpy as np, torch
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / 'benchmarks'))
from cross_seed import cross_seed_covs, wiener, two_models, append_results
from judges import cancellation_ratio

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--preset', required=True); ap.add_argument('--out', required=True)
    ap.add_argument('--methods', required=True); ap.add_argument('--targets', required=True)
    ap.add_argument('--judges', choices=('all', 'adding'), default='all',
                    help="'adding': only references whose group terms add up (cancellation ratio >= 1, see below)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    from pwattr.evaluate import lds
    from pwattr.safe import agreement_gate
    from pwattr.study import oracle_lds, paired_gain
    gt, r0, r1 = two_models(a.preset, a.out)
    ms = a.methods.split(','); c0 = {m: r0.contributions(m) for m in ms}
    ratios = {m: cancellation_ratio(c0[m][1].S.double()) for m in ms}
    lines = [f"== gate on the Wiener weights: {a.preset}, judges {a.judges}; cancellation ratios "
             + ', '.join(f'{m} {v:.2f}' for m, v in ratios.items())]
    for m in a.targets.split(','):
        (ce, cl), (_, cl1) = c0[m], r1.contributions(m)
        S0, S1 = cl.S.double(), cl1.S.double()
        Cw, Cx = cross_seed_covs(S0, S1); w = wiener(Cw.sum(0), Cx.sum(0))
        refs = {r: c0[r][1].S.double().sum(-1) for r in ms if r != m and (a.judges == 'all' or ratios[r] >= 1)}
        g = agreement_gate({'wiener': (w, lambda v: S0 @ v.to(S0))}, S0.sum(-1), refs)
        base = lds(ce, gt)
        gw = paired_gain(base, lds(ce, gt, w=w.float().numpy())); gg = paired_gain(base, lds(ce, gt, w=g.w.float().numpy()))
        orc = oracle_lds(ce, gt)[0].mean - base.mean
        row = g.table.iloc[int(g.table['G select'].idxmax())]
        lines.append(f"{m:11s} ratio {ratios[m]:.2f} wiener {gw[0]:+.3f} [{gw[1]:+.3f}, {gw[2]:+.3f}] | gate: {g.verdict} (shrink {g.shrink}, G {g.gain:+.4f}, "
                     f"lower {g.lower:+.4f}; per reference {', '.join(f'{k[8:]} {v:+.4f}' for k, v in row.items() if str(k).startswith('gain vs'))}) "
                     f"-> applied {gg[0]:+.3f} [{gg[1]:+.3f}, {gg[2]:+.3f}] | oracle {orc:+.3f}")
        print(lines[-1], flush=True)
    append_results(lines)

if __name__ == '__main__': main()
