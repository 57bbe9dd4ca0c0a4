"""Which other methods should judge a method's group weights? The agreement gate (`pwattr.safe.agreement_gate`) under
three rules for its judges, on one preset's audit caches, against the committed ground truth (issue 15, exploratory).

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/judges.py --preset kjv-gpt2-ft --out runs/kjv-gpt2-ft \\
        --methods tracin,trak,trak-block,logra,ekfac

Rules (a method never judges itself):
- `default`: what `pwattr audit` does (`AuditRun.weigh`): a first-order method is judged by the curvature-corrected
  methods only and also gets the 'agreement' candidate (fitted to them on the selection half); a curvature-corrected
  method is judged by every other method.
- `curvature`: as `default`, and a curvature-corrected method too is judged by the other curvature-corrected methods
  only, with the 'agreement' candidate fitted to them.
- `adding`: judges are the methods whose group terms add up (cancellation ratio ||sum_j S_j||^2 / sum_j ||S_j||^2 >= 1
  over the centred learning-query rows; global ridge kernels cancel, < 1), with the 'agreement' candidate for every method.
- `better`: a diagnostic that reads the ground truth (so never a default): only the methods whose unweighted LDS is
  higher judge, with the 'agreement' candidate fitted to them; none higher: uniform. It asks whether agreement is a
  good signal when it points toward better methods only.
Prints per method and rule the judges, the gate's choice, G and its lower bound, the LDS gain of what it applies
(paired 95% interval) and the cross-fitted oracle's gain, then each candidate's gain if applied without the gate.
Appends to results/judges.txt. Needs the audit caches (`pwattr audit --preset P --out DIR --methods ...`).
"""
import argparse, sys, time
from pathlib import Path
import torch
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

def cancellation_ratio(S:torch.Tensor)->float:
    "||sum_j S_j||^2 / sum_j ||S_j||^2 over the centred rows of contributions [Q, N, M]: < 1 when the group terms cancel"
    S = S - S.mean(1, keepdim=True)
    return float(S.sum(-1).pow(2).sum() / S.pow(2).sum())

def preset_run(doc:str)->tuple:
    "(arguments, ground truth, `AuditRun` on the audit's caches) from --preset, --out and --methods"
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--preset', required=True); ap.add_argument('--out', required=True); ap.add_argument('--methods', required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    from pwattr.audit import AuditRun
    from pwattr.groundtruth import GT_DIR, GroundTruth
    gt = GroundTruth.load(GT_DIR / f'{a.preset}.npz')
    return a, gt, AuditRun(a.preset, gt, Path(a.out), progress=False, log=None)

def main():
    a, gt, run = preset_run(__doc__)
    from pwattr.audit import parse_methods
    from pwattr.evaluate import lds
    from pwattr.recipes import recipe
    from pwattr.safe import safe_weights
    from pwattr.study import oracle_lds, paired_gain
    from pwattr.weights import GroupWeights
    names = parse_methods(a.methods); cs = {m: run.contributions(m) for m in names}
    learn = {m: c[1] for m, c in cs.items()}
    curved = {m: recipe(m, run.p.domain).curvature for m in names}
    ratios = {m: cancellation_ratio(learn[m].S.double()) for m in names}
    L = {m: lds(cs[m][0], gt).mean for m in names}   # for the 'better' diagnostic only
    lines = [f"== {a.preset} ({time.strftime('%Y-%m-%d')}): cancellation ratios " + ', '.join(f'{m} {v:.2f}' for m, v in ratios.items())]
    print(lines[-1], flush=True)
    for m in names:
        ce = cs[m][0]; base = lds(ce, gt)
        refs = {r: c.S.sum(-1) for r, c in learn.items() if r != m}
        pick = lambda keep: {r: v for r, v in refs.items() if keep(r)}
        curv, adding, better = pick(lambda r: curved[r]), pick(lambda r: ratios[r] >= 1), pick(lambda r: L[r] > L[m])
        paper, sw = run.weigh(m, learn)   # the default: what `pwattr audit` applies (its refit learner is cached)
        rf, ws = run.refit(m), {'default': sw}
        xl = rf and rf[1]('learn')
        rw = GroupWeights(sw.info['candidates']['refit'], ce.groups) if 'refit' in sw.info['candidates'] else None
        rules = {'curvature': (curv or refs, curv or None),
                 'adding': (adding or refs, adding or refs),
                 'better': (better, better or None)}   # a diagnostic, not label-free: only the methods with a higher LDS judge
        for rule, (judges, agree) in rules.items():
            ws[rule] = safe_weights(learn[m], judges, rf and rf[0], xl, paper=paper, curvature_refs=agree, refit_weights=rw) if judges else None
        orc = oracle_lds(ce, gt)[0].mean - base.mean
        cands = {}
        for rule, w in ws.items():
            if w is None: lines.append(f"{m:11s} {rule:9s} no judges -> uniform"); print(lines[-1], flush=True); continue
            cands.update({n if n != 'agreement' else f'agreement/{rule}': c for n, c in w.info['candidates'].items()})
            g, gi = paired_gain(base, lds(run.weighted_scores(m, ce, w), gt)), w.info['gate']
            lines.append(f"{m:11s} {rule:9s} judges {','.join(w.settings['references']):28s} -> "
                         f"{gi['chosen'] + ' x' + format(gi['shrink'], 'g') if gi['use'] else 'uniform':14s} "
                         f"G {gi['gain']:+.4f} lower {gi['lower']:+.4f} | LDS gain {g[0]:+.3f} [{g[1]:+.3f}, {g[2]:+.3f}] | oracle {orc:+.3f}")
            print(lines[-1], flush=True)
        for n, w in cands.items():   # each candidate applied without the gate
            w = torch.tensor(w)
            g = paired_gain(base, lds(rf[0].scores(rf[1]('eval'), w) if n == 'refit' else ce.scores(w), gt))
            lines.append(f"{'':11s} candidate {n:18s} without the gate: {g[0]:+.3f} [{g[1]:+.3f}, {g[2]:+.3f}]")
            print(lines[-1], flush=True)
    with open(ROOT / 'benchmarks/results/judges.txt', 'a') as f: f.write('\n'.join(lines) + '\n')

if __name__ == '__main__': main()
