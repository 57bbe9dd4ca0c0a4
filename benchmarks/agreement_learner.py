"""Does maximising agreement with the other methods raise LDS? `pwattr.safe.learn_agreement_weights` fitted for
EVERY method of every preset (all other methods as references, on the gate's selection half of the learning
queries), then scored against the committed ground truth; beside it, the label-free equal-RMS weights
w_j ~ 1 / rms(S_j) (every group one equal vote). The measurement behind restricting the agreement
candidate to first-order methods (`nbs/07b_safe.ipynb`).

Needs the audit caches of `16b_safe` (runs/demo, runs/fmnist-vit, runs/fmnist-resnet9, runs/kjv-gpt2,
runs/emoji-unet; rebuilt by the audit if missing, ~50 min). About 2 min with the caches, one thread.

    OMP_NUM_THREADS=1 python benchmarks/agreement_learner.py [--centre-queries] [--presets fmnist-mlp,emoji-unet]
"""
import argparse, time
from pathlib import Path
import numpy as np, pandas as pd, torch
from pwattr.audit import AuditRun
from pwattr.recipes import parse_methods, recipe
from pwattr.groundtruth import GroundTruth, GT_DIR
from pwattr.evaluate import lds
from pwattr.study import paired_gain
from pwattr.safe import learn_agreement_weights, gate_halves, row_pearson

PLAN = {'fmnist-mlp': ('tracin,trak,trak-block,logra,ekfac', 'runs/demo'),
        'fmnist-vit': ('tracin,trak,trak-block,ekfac', 'runs/fmnist-vit'),
        'fmnist-resnet9': ('tracin,trak,trak-block,ekfac', 'runs/fmnist-resnet9'),
        'kjv-gpt2': ('tracin,trak,trak-block,logra,ekfac', 'runs/kjv-gpt2'),
        'emoji-unet': ('tracin,trak,dtrak,das,journeytrak', 'runs/emoji-unet')}

def main(presets, centre_queries=False, seed=0):
    torch.set_num_threads(1); rows = []
    for p in presets:
        meths, out = PLAN[p]
        gt = GroundTruth.load(GT_DIR / f'{p}.npz')
        run = AuditRun(p, gt, Path(out), progress=False, log=None)
        names = parse_methods(meths); cs = {m: run.contributions(m) for m in names}   # (eval, learn)
        for m in names:
            ce, cl = cs[m]; S = cl.S.double()
            refs = {r: c[1].S.sum(-1).double() for r, c in cs.items() if r != m}
            sel, ver = gate_halves(S.shape[0], seed)
            Sf, rf = (S - S.mean(0), {r: v - v.mean(0) for r, v in refs.items()}) if centre_queries else (S, refs)
            aw = learn_agreement_weights(Sf[sel], {r: v[sel] for r, v in rf.items()}, list(cl.groups))
            w = aw.w.double()
            g_ver = min(float((row_pearson(Sf[ver] @ w, v[ver]) - row_pearson(Sf[ver].sum(-1), v[ver])).mean()) for v in rf.values())
            base, new = lds(ce, gt), lds(ce, gt, w=aw.w)
            gain, lo, hi = paired_gain(base, new)
            rms = S.pow(2).mean((0, 1)).sqrt(); w_rms = rms.clamp_min(1e-12 * float(rms.max())) ** -1
            g_rms = paired_gain(base, lds(ce, gt, w=(w_rms / w_rms.mean()).float()))
            rows.append(dict(preset=p, method=m, curvature=recipe(m, run.p.domain).curvature, M=S.shape[-1],
                             G_select=aw.info['gain'], G_verify=g_ver, lds_uniform=base.mean, lds_agreement=new.mean,
                             gain=gain, lo=lo, hi=hi, gain_rms=g_rms[0], lo_rms=g_rms[1], hi_rms=g_rms[2]))
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)
    return pd.DataFrame(rows)

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--presets', default=','.join(PLAN)); ap.add_argument('--centre-queries', action='store_true')
    a = ap.parse_args(); t0 = time.time()
    d = main(a.presets.split(','), a.centre_queries)
    name = 'agreement_learner' + ('-centred' if a.centre_queries else '')
    d.to_csv(Path(__file__).parent / 'results' / f'{name}.csv', index=False)
    print(d.round(4).to_string(index=False)); print(f'{time.time() - t0:.0f} s')
