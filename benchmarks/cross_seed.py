"""A second, independently trained model as a label-free signal for group weights (issue 15, exploratory).

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/cross_seed.py --preset fmnist-mlp --out runs/demo \\
        --methods tracin,trak,trak-block,logra,ekfac

The audit's model (seed 0) and a second one trained with seed 1 (`AuditRun(seed=1)`: its own projection too) attribute the
same learning queries. Per method, printed against the committed ground truth (eval queries, seed-0 scores):
  agree   cross-seed agreement: mean over learning queries of the Pearson correlation (over the N training examples) of
          the two models' weighted scores, for uniform, the cross-fitted oracle's weights (mean of its folds) and the
          Wiener weights; rho = Spearman correlation, over 300 random log-normal weight vectors, between it and LDS
  wiener  w = C_within^-1 C_cross 1: the best linear estimate (from one model's group scores) of the seed-expected
          uniform score when the seed noise is independent between the two models; C_within[j,k] = cov_n(S_j, S_k) in
          one model (both averaged), C_cross the same across the two models (symmetrised); pooled over learning queries,
          each scaled by its uniform score's variance; clipped at 0, mean 1. LDS and the paired gain over uniform.
  ens     LDS of the two models' uniform scores averaged (TRAK-style ensembling), for comparison.
Results: benchmarks/results/cross_seed.txt (appended per preset).
"""
import argparse, sys, time
from pathlib import Path
import numpy as np, torch
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

def per_query_cov(A, B, scale):
    "[Q, G, G]: each query's A_q^T B_q / (N scale_q), rows centred over the N training examples"
    A = A - A.mean(1, keepdim=True); B = B - B.mean(1, keepdim=True)
    return torch.einsum('qnj,qnk->qjk', A, B) / (A.shape[1] * scale[:, None, None])

def cross_seed_covs(S0, S1):
    "Per-query within-model (both models averaged) and cross-model group covariances [Q, G, G], each query scaled by its uniform score's variance"
    scale = 0.5 * (S0.sum(-1).var(1) + S1.sum(-1).var(1))
    return 0.5 * (per_query_cov(S0, S0, scale) + per_query_cov(S1, S1, scale)), per_query_cov(S0, S1, scale)

def wiener(Cw, Cx):
    "w = C_within^-1 C_cross 1 from pooled [G, G] matrices (the cross one symmetrised), clipped at 0, mean 1"
    Cx = 0.5 * (Cx + Cx.T)
    w = torch.linalg.solve(Cw, Cx @ torch.ones(Cw.shape[0], dtype=Cw.dtype)).clamp_min(0)
    return w / w.mean()

def two_models(preset:str, out:str):
    "The committed ground truth, the audit's run (seed 0) and a seed-1 run of the same preset attributing the same learning queries"
    from pwattr.groundtruth import GroundTruth, GT_DIR
    from pwattr.audit import AuditRun
    gt = GroundTruth.load(GT_DIR / f'{preset}.npz')
    r0 = AuditRun(preset, gt, ROOT / out, progress=False, log=None)
    r1 = AuditRun(preset, gt, ROOT / out, seed=1, progress=False, log=None)
    r1.learn_q = r0.learn_q
    return gt, r0, r1

def append_results(lines:list):
    "Append lines to benchmarks/results/cross_seed.txt"
    with open(ROOT / 'benchmarks' / 'results' / 'cross_seed.txt', 'a') as f: f.write('\n'.join(lines) + '\n')

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--preset', default='fmnist-mlp'); ap.add_argument('--out', default='runs/demo')
    ap.add_argument('--methods', default='tracin,trak,trak-block,logra,ekfac'); ap.add_argument('--samples', type=int, default=300)
    a = ap.parse_args()
    torch.set_num_threads(1)
    from pwattr.evaluate import lds
    from pwattr.safe import row_pearson
    from pwattr.study import oracle_lds, paired_gain
    gt, r0, r1 = two_models(a.preset, a.out)
    rng = np.random.default_rng(0)
    lines = [f"== {a.preset} ({a.out}), {time.strftime('%Y-%m-%d')}"]
    for m in a.methods.split(','):
        t = time.time()
        (ce0, cl0), (ce1, cl1) = r0.contributions(m), r1.contributions(m)
        S0, S1 = cl0.S.double(), cl1.S.double(); G = S0.shape[-1]
        agree = lambda w: float(row_pearson(S0 @ torch.as_tensor(w, dtype=torch.float64), S1 @ torch.as_tensor(w, dtype=torch.float64)).mean())
        Cw, Cx = cross_seed_covs(S0, S1); w = wiener(Cw.sum(0), Cx.sum(0)).numpy()
        W = np.exp(rng.normal(0, 1.0, (a.samples, G)))
        rho = spearmanr([agree(v) for v in W], [lds(ce0, gt, w=v, n_boot=1).mean for v in W]).correlation
        base, wie = lds(ce0, gt), lds(ce0, gt, w=w)
        orc, ows = oracle_lds(ce0, gt); wo = np.mean([np.asarray(o.w, dtype=np.float64) for o in ows], 0)
        ens = lds((ce0.S.double().sum(-1) + ce1.S.double().sum(-1)).float(), gt)
        g = paired_gain(base, wie)
        lines.append(f"{m:11s} G={G:3d} LDS uniform {base.mean:.3f}, wiener {wie.mean:.3f} (gain {g[0]:+.3f} [{g[1]:+.3f}, {g[2]:+.3f}]), "
                     f"oracle {orc.mean:.3f}, 2-model ensemble {ens.mean:.3f} | agree uniform {agree(np.ones(G)):.3f}, "
                     f"oracle {agree(wo):.3f}, wiener {agree(w):.3f}; rho(agree, LDS) {rho:+.2f}  [{time.time() - t:.0f} s]")
        print(lines[-1])
        if G <= 8: lines.append(f"{'':11s} weights: wiener {np.round(w, 2)}, oracle {np.round(wo / wo.mean(), 2)}"); print(lines[-1])
    append_results(lines)

if __name__ == '__main__': main()
