"""Does the paper's objective through the kernel refit generalise to held-out queries, and does LDS follow it? (issue 15,
exploratory)

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/refit_objective.py --preset emoji-unet-gen \\
        --out runs/emoji-unet-gen --methods trak,dtrak,das,journeytrak

For every global ridge kernel among --methods: `learn_refit_weights` (k=20, lam=1e-4) on one seeded half of the
learning queries (`gate_halves`), then on the other half the change of each query's objective term (top-k mean / norm
of its refitted scores) against uniform weights, with its 5% bootstrap quantile; and both halves swapped (cross-fitted,
every query held out once). Last, the LDS gain (paired 95% interval) of the first half's weights on the evaluation
queries. A gate on the held-out objective would apply the weights where its lower bound is above zero. Appends to
results/refit_objective.txt. Needs the audit caches (`pwattr audit --preset P --out DIR --methods ...`). The learner
takes seconds on the UNets' kernels and minutes on the MLP's and kjv-gpt2-ft's; at N = 5,000 (ResNet-9, ViT) each half
took over 15 min at one thread, so those rows are not in the results file.
"""
import sys, time
from pathlib import Path
import numpy as np, torch
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / 'benchmarks'))
from judges import preset_run

def snr(tau:torch.Tensor, k:int=20)->np.ndarray:
    "[Q] each query's term of the paper's objective (sign flipped, no penalty): top-k mean / norm of its scores"
    return (tau.topk(k, dim=1).values.mean(1) / tau.norm(dim=1).clamp_min(1e-300)).cpu().numpy()

def main():
    a, gt, run = preset_run(__doc__)
    from pwattr.audit import parse_methods
    from pwattr.evaluate import lds
    from pwattr.safe import learn_refit_weights, gate_halves
    from pwattr.study import paired_gain
    lines = []
    for m in parse_methods(a.methods):
        rf = run.refit(m)
        if rf is None: continue
        t0 = time.time(); base = lds(run.contributions(m)[0], gt)
        xl, xe = rf[1]('learn'), rf[1]('eval')
        rng = np.random.default_rng(0); A, B = gate_halves(len(xl), rng)
        held, ws = np.zeros(len(xl)), []
        with torch.no_grad(): s1 = snr(rf[0].scores(xl))
        for fit, test in ((A, B), (B, A)):
            w = learn_refit_weights(rf[0], xl[fit], k=20, lam=1e-4).w; ws.append(w)
            with torch.no_grad(): held[test] = snr(rf[0].scores(xl[test], w)) - s1[test]
        lower = lambda g: float(np.quantile(g[rng.integers(0, len(g), (1000, len(g)))].mean(1), 0.05))
        with torch.no_grad(): g = paired_gain(base, lds(rf[0].scores(xe, ws[0]), gt))
        lines.append(f"{a.preset:15s} {m:11s} held-out objective gain {held[B].mean():+.4f} (lower {lower(held[B]):+.4f}; "
                     f"cross-fitted {held.mean():+.4f}, lower {lower(held):+.4f}) | LDS gain of the half's weights "
                     f"{g[0]:+.3f} [{g[1]:+.3f}, {g[2]:+.3f}] | {time.time() - t0:.0f} s")
        print(lines[-1], flush=True)
    with open(ROOT / 'benchmarks/results/refit_objective.txt', 'a') as f: f.write('\n'.join(lines) + '\n')

if __name__ == '__main__': main()
