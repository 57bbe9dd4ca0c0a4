"""What the oracle's group weights do to the label-free signals a default could check (issue 15, exploratory).

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/oracle_signals.py --preset fmnist-resnet9 \\
        --out runs/fmnist-resnet9 --methods tracin,trak,trak-block,ekfac

A label-free gate applies weights only where a statistic it can compute without the ground truth improves. This
script takes the cross-fitted oracle's weights (`pwattr.study.oracle_lds`, 2 folds: weights fitted to the ground truth
on half the evaluation queries, their LDS gain measured on the other half) and asks, on the *learning* queries (the
ones the default sees), whether they improve:
- `agree`: the smallest mean agreement gain (Pearson over training examples, per query) with the judges the default
  uses (`pwattr.audit.gate_judges`: the curvature-corrected methods for a first-order method, every other method otherwise),
  at the oracle's weights and at a quarter of the way to them (w = 1 + a (c - 1), a = 1 and 0.25);
- `objective`: the paper's self-supervised objective (`selfsup_loss`, k = 20; its decrease is printed, so > 0 means
  the objective prefers the oracle's weights).
A row is printed per method and fold, with the oracle's LDS gain on the held-out fold (paired 95% interval).
Where both signals fall, no gate on them can apply the oracle's weights (it could still apply other weights that gain).
Appends to results/oracle_signals.txt. Needs the audit caches (`pwattr audit --preset P --out DIR --methods ...`).
"""
import sys, time
from pathlib import Path
import torch
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / 'benchmarks'))
from judges import preset_run

def main():
    a, gt, run = preset_run(__doc__)
    from pwattr.audit import parse_methods, gate_judges
    from pwattr.evaluate import lds
    from pwattr.safe import row_pearson
    from pwattr.study import oracle_lds, paired_gain
    from pwattr.weights import selfsup_loss
    names = parse_methods(a.methods); cs = {m: run.contributions(m) for m in names}
    learn = {m: c[1] for m, c in cs.items()}
    lines = [f"== {a.preset} ({time.strftime('%Y-%m-%d')}): the oracle's weights on the learning queries "
             f"({len(learn[names[0]].query_ids)} queries); agree: smallest mean agreement gain over the judges; objective: decrease of the paper's objective"]
    print(lines[-1], flush=True)
    for m in names:
        ce, S = cs[m][0], learn[m].S.double()
        judges = {r: v.double() for r, v in gate_judges(m, learn, run.p.domain)[0].items()}
        base = S.sum(-1); r0 = {r: row_pearson(base, v) for r, v in judges.items()}
        orc, ws = oracle_lds(ce, gt)
        g = paired_gain(lds(ce, gt), orc)
        lines.append(f"{m:11s} oracle LDS gain {g[0]:+.3f} [{g[1]:+.3f}, {g[2]:+.3f}] | judges {','.join(judges)}")
        print(lines[-1], flush=True)
        obj0 = float(selfsup_loss(S, torch.ones(S.shape[-1], dtype=S.dtype), 20))
        for f, gw in enumerate(ws):
            c = gw.w.double(); out = []
            for s in (1.0, 0.25):
                w = 1 + s * (c - 1); tau = S @ w
                g = {r: float((row_pearson(tau, v) - r0[r]).mean()) for r, v in judges.items()}
                out.append(f"a={s:g}: agree {min(g.values()):+.4f} (" + ', '.join(f'{r} {x:+.4f}' for r, x in g.items()) + ")"
                           f" objective {obj0 - float(selfsup_loss(S, w, 20)):+.4f}")
            lines.append(f"{'':11s} fold {f} w=[{' '.join(f'{x:.2f}' for x in c.tolist()[:12])}{' ...' if len(c) > 12 else ''}] | " + ' | '.join(out))
            print(lines[-1], flush=True)
    with open(ROOT / 'benchmarks/results/oracle_signals.txt', 'a') as f: f.write('\n'.join(lines) + '\n')

if __name__ == '__main__': main()
