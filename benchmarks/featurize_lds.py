"""What the faster featurisation route costs in LDS: TRAK on `KronProjector` features vs on the default sparse `Projector`,
same dims per group, same model, same ground truth.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/featurize_lds.py --runs runs                 # mlp + resnet9, seeds 0 1
    .venv/bin/python benchmarks/featurize_lds.py --presets fmnist-mlp --seeds 0 1 2 --oversample 1 4 --record featurize_lds_mlp

For each preset: its seed-0 model as the audit trains it (read from `--runs`/<preset>/cache/<config hash>/model-s0.pt
when there, never written; else trained into a temporary folder), the audit's groups ('preset'), its TRAK recipe (global
ridge kernel, Q = 1 - p, margin output, `pwattr.recipes`), the 5,000 training examples and the committed ground truth's
100 evaluation queries (pwattr/assets/groundtruth/<preset>.npz). Features of both sides are made by `featurize` at the
audit's batch size 64 with, per projection seed s, `Projector(512, 'sparse', seed=s)` (the default: the audit's own
features at s = 0) and `KronProjector(512, seed=s, oversample=c)` for each `--oversample` c. Printed per preset: the LDS of each (pwattr.evaluate.lds, 95%
bootstrap interval over queries), the paired difference kron - sparse at the same seed (mean over queries of the
per-query Spearman difference, with a paired bootstrap interval), the seed-to-seed difference of each projection
(its own noise floor), and the CPU seconds of featurising the training side (shared machine: CPU time, one run each).
Record: benchmarks/results/featurize_lds.json (+ the printed text in featurize_lds.txt when redirected).
"""
import argparse, os, sys, tempfile, time, warnings
from pathlib import Path
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / 'benchmarks'))
from _bench import Bench

def audit_run(preset, runs, tmp):
    "An AuditRun of the preset in `tmp` whose cache holds (links to) the trained model under `runs`, if there"
    from pwattr.audit import AuditRun, model_file
    from pwattr.groundtruth import GroundTruth, GT_DIR
    from pwattr.presets import get_preset
    p = get_preset(preset); gt = GroundTruth.load(GT_DIR / f'{preset}.npz')
    src = Path(runs) / preset / 'cache' / p.config_hash if runs else None
    dst = Path(tmp) / 'cache' / p.config_hash; dst.mkdir(parents=True, exist_ok=True)
    name = model_file(0, 4)
    for f in (name, name.replace('.pt', '.json')):
        if src is not None and (src / f).exists(): (dst / f).symlink_to((src / f).resolve())
    run = AuditRun(preset, gt, Path(tmp), proj_dim=512, n_learn=1, seed=0, progress=False, log=None)
    return run, gt, (src is not None and (src / name).exists())

def trak_lds(run, gt, proj, B):
    "LDS of the audit's TRAK recipe on features made with `proj`; (LDSResult, CPU s of the training side, wall s)"
    from pwattr.features import featurize, output_fn
    from pwattr.recipes import recipe
    from pwattr.evaluate import lds
    r = recipe('trak', run.p.domain); out = output_fn(r.output_name(run.p)); model = run.model()
    c0, w0 = time.process_time(), time.perf_counter()
    tr = featurize(model, out, run.train, run.groups, proj, batch_size=64, progress=False)
    c1, w1 = time.process_time() - c0, time.perf_counter() - w0
    q = featurize(model, out, run.eval_q, run.groups, proj, batch_size=64, progress=False)
    m = r.make(run).fit(tr, progress=False)
    return lds(m.contributions(q, progress=False), gt), c1, w1

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--presets', nargs='*', default=['fmnist-mlp', 'fmnist-resnet9'])
    ap.add_argument('--seeds', nargs='*', type=int, default=[0, 1])
    ap.add_argument('--dims', type=int, default=512, help='dims per group (the audit uses 512)')
    ap.add_argument('--runs', default=str(ROOT / 'runs'), help='folder of the audit runs holding the trained models (read only)')
    ap.add_argument('--oversample', nargs='*', type=int, default=[1], help="KronProjector oversample values (one 'kron' side each)")
    ap.add_argument('--record', default='featurize_lds', help='name of the JSON record under benchmarks/results/')
    a = ap.parse_args()
    warnings.filterwarnings('ignore')
    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', '1')))
    from pwattr.features import Projector, KronProjector
    from pwattr.evaluate import bootstrap_ci
    B = Bench(a.record, vars(a))
    rows = []
    for preset in a.presets:
        with tempfile.TemporaryDirectory(prefix='pwattr-flds-') as tmp:
            run, gt, cached = audit_run(preset, a.runs, tmp)
            B.note(f"\n{preset}: model {'read from ' + a.runs if cached else 'trained now'}; {len(run.groups)} groups x {a.dims} dims "
                   f"= {len(run.groups) * a.dims} dims; {len(run.train)} training examples, {gt.n_queries} queries x "
                   f"{gt.masks.shape[0]} subsets; TRAK recipe (global kernel, Q)")
            res = {}
            for s in a.seeds:
                sides = [('sparse', Projector(a.dims, 'sparse', seed=s))] + [('kron' if c == 1 else f'kron x{c}', KronProjector(a.dims, seed=s, oversample=c))
                                                                              for c in a.oversample]
                for kind, proj in sides:
                    r, cpu, wall = trak_lds(run, gt, proj, B)
                    res[kind, s] = r
                    rows.append({'preset': preset, 'projection': kind, 'seed': s, 'lds': r.mean, 'lo': r.ci[0], 'hi': r.ci[1],
                                 'featurize_train_cpu_s': cpu, 'featurize_train_wall_s': wall})
                    B.note(f"  {kind:6s} seed {s}: {r!r}; featurize {len(run.train)} training examples {cpu:6.1f} s CPU, {wall:6.1f} s wall")
            def diff(x, y, what):
                d = x.per_query - y.per_query; lo, hi = bootstrap_ci(d)
                B.note(f"  {what}: {np.nanmean(d):+.4f} [{lo:+.4f}, {hi:+.4f}] (paired over queries, 95% bootstrap)")
                return {'preset': preset, 'diff': what, 'mean': float(np.nanmean(d)), 'lo': lo, 'hi': hi}
            kinds = [k for k, _ in sides]
            for kind in kinds[1:]:
                for s in a.seeds: rows.append(diff(res[kind, s], res['sparse', s], f'{kind} - sparse, seed {s}'))
            if len(a.seeds) > 1:
                s0, s1 = a.seeds[:2]
                for kind in kinds: rows.append(diff(res[kind, s1], res[kind, s0], f'{kind} seed {s1} - seed {s0} (noise floor)'))
                ms = np.mean([res['sparse', s].mean for s in a.seeds])
                for kind in kinds[1:]:
                    mk = np.mean([res[kind, s].mean for s in a.seeds])
                    B.note(f"  mean over seeds {a.seeds}: {kind} {mk:.4f}, sparse {ms:.4f}, difference {mk - ms:+.4f}")
    B.rec['rows'] = rows
    B.save()

if __name__ == '__main__': main()
