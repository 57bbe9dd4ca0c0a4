"""Cross-seed Wiener weights shrunk toward uniform by their own sampling noise (positive-part James-Stein over
bootstrap resamples of the learning queries): w = 1 + a (w_hat - 1), a = max(0, 1 - tr Var(w_hat) / ||w_hat - 1||^2).
No threshold: a follows from the measured spread of the estimate. (issue 15, exploratory; needs cross_seed.py's caches)

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/cross_seed_shrink.py --preset fmnist-resnet9 --out runs/fmnist-resnet9 --methods trak-block,ekfac,tracin
Appends to results/cross_seed.txt.
"""
import argparse, sys
from pathlib import Path
import numpy as np, torch
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / 'benchmarks'))
from cross_seed import cross_seed_covs, wiener, two_models, append_results

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--preset', required=True); ap.add_argument('--out', required=True); ap.add_argument('--methods', required=True)
    ap.add_argument('--boot', type=int, default=200)
    a = ap.parse_args()
    torch.set_num_threads(1)
    from pwattr.evaluate import lds
    from pwattr.study import oracle_lds, paired_gain
    gt, r0, r1 = two_models(a.preset, a.out)
    rng = np.random.default_rng(0)
    lines = [f"== Wiener weights shrunk by their bootstrap spread: {a.preset}"]
    for m in a.methods.split(','):
        (ce, cl), (_, cl1) = r0.contributions(m), r1.contributions(m)
        S0, S1 = cl.S.double(), cl1.S.double(); Q = S0.shape[0]
        Cw, Cx = cross_seed_covs(S0, S1)
        w = wiener(Cw.sum(0), Cx.sum(0))
        boots = torch.stack([wiener(Cw[i].sum(0), Cx[i].sum(0)) for i in (torch.from_numpy(rng.integers(0, Q, Q)) for _ in range(a.boot))])
        var = float(boots.var(0).sum()); dev = float((w - 1).pow(2).sum())
        shrink = max(0.0, 1 - var / dev) if dev > 0 else 0.0
        ws = 1 + shrink * (w - 1)
        base = lds(ce, gt)
        gw, gs = paired_gain(base, lds(ce, gt, w=w.float().numpy())), paired_gain(base, lds(ce, gt, w=ws.float().numpy()))
        orc = oracle_lds(ce, gt)[0].mean - base.mean
        lines.append(f"{m:11s} wiener {gw[0]:+.3f} [{gw[1]:+.3f}, {gw[2]:+.3f}] | tr Var {var:.3g} vs ||w-1||^2 {dev:.3g}: a = {shrink:.2f} "
                     f"-> {gs[0]:+.3f} [{gs[1]:+.3f}, {gs[2]:+.3f}] | oracle {orc:+.3f}")
        print(lines[-1], flush=True)
    append_results(lines)

if __name__ == '__main__': main()
