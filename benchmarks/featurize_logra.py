"""One faster featurisation route, measured: project Linear/Conv layers from their inputs and output gradients (LoGRA,
`pwattr.kronecker.kron_features(rank=r)`) instead of forming each per-example gradient and projecting it.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/featurize_logra.py --presets fmnist-mlp fmnist-resnet9 --n 64

Sides, alternated (--repeats each, medians, through _bench): `grads` (per-example gradients alone, as featurize.py's
baseline), `sparse/group` (pwattr's default featurize: sparse JL per group) and `logra` (kron_features with rank r per
layer: r x r dims per Linear/Conv layer, parameters of other layers not covered). The LoGRA features are a different
projection (Kronecker-structured), so this is a speed measurement of the route, not the same features. The same identity as
a drop-in projector for `featurize` (every layer kind, the same dims per group) is `pwattr.features.KronProjector`: its speed
is in featurize.py (kron/group, kron/whole) and its LDS cost in featurize_lds.py.
"""
import argparse, os, sys, warnings
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parent)); sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _bench import Bench, median
from featurize import setup, grads_only, pw_side
from pwattr.grouping import GroupSpec
from pwattr.features import Projector
from pwattr.kronecker import kron_features, kron_coverage

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--presets', nargs='*', default=['fmnist-mlp', 'fmnist-resnet9'])
    ap.add_argument('--n', type=int, default=64); ap.add_argument('--batch', type=int, default=32)
    ap.add_argument('--dims', type=int, default=1024, help='total dims of the sparse side')
    ap.add_argument('--rank', type=int, default=16, help='LoGRA rank per side of each layer (r x r dims per layer)')
    ap.add_argument('--repeats', type=int, default=3)
    a = ap.parse_args()
    warnings.filterwarnings('ignore')
    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', '1')))
    B = Bench('featurize_logra', vars(a))
    for name in a.presets:
        p, model, data, out, src = setup(name, a.n, 2)
        groups = GroupSpec.preset(model, 'module'); per = max(1, a.dims // len(groups))
        cov = kron_coverage(model)
        sides = {'grads': lambda: grads_only(model, out, data, groups, a.batch, 'cpu'),
                 'sparse/group': pw_side(model, out, data, groups, Projector(per, 'sparse', seed=0), a.batch, 'cpu'),
                 'logra': lambda: kron_features(model, out, data, rank=a.rank, batch_size=a.batch).x.shape[1]}
        for f in sides.values(): f()                       # warm-up (matrices built)
        res = B.alternate(sides, a.repeats, key=name)
        B.note(f"\n{name}: {groups.n_params:,} params, {len(data)} examples, batch {a.batch}; sparse {per * len(groups)} dims, "
               f"logra rank {a.rank} -> {res['logra']['out']} dims; kron coverage: {cov if not hasattr(cov, 'shape') else ''}")
        for s in sides: B.note(f"  {s:13s} {len(data) / median(res[s]['cpu']):9.1f} ex/cpu-s  {len(data) / median(res[s]['wall']):9.1f} ex/s")
        B.ratio(f'{name} logra / grads', res, 'logra', 'grads', same_work=False, differs='logra: hooks + Kronecker projection; grads: vmap per-example gradients only')
        B.ratio(f'{name} logra / sparse/group', res, 'logra', 'sparse/group', same_work=False, differs='different projections (Kronecker vs sparse JL), both ~1k dims')
    B.save()

if __name__ == '__main__': main()
