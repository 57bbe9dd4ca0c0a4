"""Benchmarks for pwattr.methods, printed side by side in one run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/methods.py                  # all parts
    .venv/bin/python benchmarks/methods.py --part synthetic                   # fit / score time per method
    .venv/bin/python benchmarks/methods.py --part preset --preset fmnist-mlp  # the same on a preset's real features
    .venv/bin/python benchmarks/methods.py --part memory                      # top-100 for 1,000 queries x 200,000 x 2,048
    .venv/bin/python benchmarks/methods.py --part lds --preset fmnist-mlp     # LDS per method vs a stored ground truth (opt-in)

The memory part runs in a child process so its peak memory (VmHWM) is its own: the training features are
written to a temporary .npy in blocks and streamed back with pread, the queries are in memory. Targets:
peak < 2 GB and a FLOP rate at least half that of one plain torch matmul of the same size, measured in the same
child right after. Peers (dattri, traker, kronfluence) are compared only when the `peers` extra is installed.
"""
import argparse, importlib.util, os, subprocess, sys, tempfile, time
from pathlib import Path
from types import SimpleNamespace
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pwattr.methods import GradDot, GradCos, TracInCP, TRAK, NpyFile

def feats(x, groups, dims, q=None, lr=None):
    "A Features-like object (methods only read x, groups, dims, ids, extras, meta)"
    try:
        from pwattr.features import Features
        return Features(x=x, groups=list(groups), dims=list(dims), ids=list(range(x.shape[0])),
                        extras={} if q is None else {'q': q}, meta={} if lr is None else {'lr': lr})
    except Exception:
        return SimpleNamespace(x=x, groups=list(groups), dims=list(dims), ids=list(range(x.shape[0])),
                               extras={} if q is None else {'q': q}, meta={} if lr is None else {'lr': lr})

def timed(f):
    t = time.perf_counter(); out = f(); return out, time.perf_counter() - t

def peers():
    have = {p: importlib.util.find_spec(m) is not None for p, m in [('dattri', 'dattri'), ('traker', 'trak'), ('kronfluence', 'kronfluence')]}
    missing = [p for p, h in have.items() if not h]
    if missing: print(f"peers not installed, skipped: {', '.join(missing)} (pip install -e '.[peers]')")
    return have

def run_methods(loss_t, loss_q, marg_t, marg_q, label, labels=None):
    """Fit, contributions, top-100 and self-influence time per method. loss_*: loss-gradient features per checkpoint
    (Grad-Dot / Grad-Cos use the last, TracInCP all); marg_*: margin-gradient features per model (TRAK; ensemble: all)"""
    rows = []
    setups = [('GradDot', GradDot, loss_t[-1], loss_q[-1]), ('GradCos', GradCos, loss_t[-1], loss_q[-1]),
              (f'TracInCP ({len(loss_t)} ckpts)', TracInCP, loss_t, loss_q),
              ('TRAK global', lambda: TRAK(kernel='global'), marg_t[0], marg_q[0]),
              ('TRAK block', lambda: TRAK(kernel='block'), marg_t[0], marg_q[0]),
              (f'TRAK global, ensemble of {len(marg_t)}', lambda: TRAK(kernel='global'), marg_t, marg_q)]
    for name, make, t, q in setups:
        m, t_fit = timed(lambda: make().fit(t))
        c, t_con = timed(lambda: m.contributions(q))
        top, t_top = timed(lambda: m.topk(q, k=100))
        _, t_si = timed(lambda: m.self_influence())
        s = m.scores(q)
        err = ((c.scores() - s).abs().max() / s.abs().max().clamp_min(1e-30)).item()
        same = float('nan') if labels is None else (labels[0][top.indices[:, :10]] == labels[1][:, None]).double().mean().item()
        rows.append((name, t_fit, t_con, t_top, t_si, err, same))
    print(f"\n{label}")
    print(f"{'method':34s} {'fit s':>8s} {'S[q,n,j] s':>11s} {'top-100 s':>10s} {'self-inf s':>10s} {'rel |sum_j S - score|':>22s}" + (" top-10 same class" if labels is not None else ""))
    for r in rows: print(f"{r[0]:34s} {r[1]:8.3f} {r[2]:11.3f} {r[3]:10.3f} {r[4]:10.3f} {r[5]:22.1e}" + (f" {r[6]:17.2f}" if labels is not None else ""))
    return rows

def part_synthetic(n=20_000, q=200, groups=8, gdim=128, ckpts=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    names, dims = [f'g{j}' for j in range(groups)], [gdim] * groups
    D = sum(dims)
    train = [feats(torch.randn(n, D, generator=g), names, dims, q=torch.rand(n, generator=g), lr=0.1 / (c + 1)) for c in range(ckpts)]
    query = [feats(torch.randn(q, D, generator=g), names, dims) for _ in range(ckpts)]
    run_methods(train, query, train, query, f"synthetic features: {n} train x {q} queries x {D} dims in {groups} groups, "
                f"float32, {torch.get_num_threads()} thread(s)")

def part_preset(name='fmnist-mlp', n_train=2000, n_query=100, proj_dim=256, ckpts=3, models=3):
    try:
        from pwattr.features import featurize, Projector
        from pwattr.presets import get_preset
    except ImportError as e:
        print(f"\npreset part skipped: {e} (needs pwattr.features.featurize and pwattr.presets)"); return
    p = get_preset(name)
    tr, te = p.load()
    tr_s, te_s = tr[list(range(min(n_train, len(tr))))], te[list(range(min(n_query, len(te))))]
    res, t_train = timed(lambda: p.train(tr, seed=0, checkpoints=ckpts, progress=False))
    others = [p.train(tr, seed=s, progress=False).model for s in range(1, models)]
    proj = Projector(dims=proj_dim, seed=0)
    kw = dict(projector=proj, progress=False)
    # loss gradients at each checkpoint (TracInCP, Grad-Dot/Cos); margin gradients of independently trained models (TRAK)
    f_ck, t_ck = timed(lambda: featurize(res.model, 'cross_entropy', tr_s, checkpoints=res.checkpoints, **kw))
    q_ck = featurize(res.model, 'cross_entropy', te_s, checkpoints=res.checkpoints, **kw)
    f_m, t_m = timed(lambda: featurize(res.model, p.output, tr_s, models=[res.model] + others, **kw))
    q_m = featurize(res.model, p.output, te_s, models=[res.model] + others, **kw)
    print(f"\n{name}: trained in {t_train:.1f} s; featurized {len(tr_s)} training examples at {len(f_ck)} checkpoints in "
          f"{t_ck:.1f} s and with {len(f_m)} models in {t_m:.1f} s ({len(f_m[0].groups)} groups x {proj_dim} projected dims)")
    y = (tr_s.tensors['y'], te_s.tensors['y']) if 'y' in tr_s.tensors else None
    run_methods(f_ck, q_ck, f_m, q_m, f"{name}: {len(tr_s)} train x {len(te_s)} queries, groups {f_m[0].groups}", labels=y)

def part_lds(name='fmnist-mlp', gt_path=None, proj_dim=256, ckpts=3, models=3):
    "LDS of each method against a stored ground truth (pwattr.groundtruth) on the preset's full training set"
    try:
        from pwattr.features import featurize, Projector
        from pwattr.presets import get_preset
        from pwattr.groundtruth import GroundTruth
        from pwattr.evaluate import lds
    except ImportError as e:
        print(f"\nLDS part skipped: {e}"); return
    root = Path(__file__).resolve().parent.parent
    gt_path = Path(gt_path or root / 'pwattr' / 'assets' / 'groundtruth' / f'{name}.npz')
    if not gt_path.exists(): print(f"\nLDS part skipped: no ground truth at {gt_path} (python -m pwattr.groundtruth --preset {name})"); return
    gt = GroundTruth.load(gt_path)
    p = get_preset(name); tr, te = p.load()
    pos = {str(i): k for k, i in enumerate(te.ids)}
    te_q = te[[pos[str(i)] for i in gt.query_ids]]
    res = p.train(tr, seed=0, checkpoints=ckpts, progress=False)
    others = [p.train(tr, seed=s, progress=False).model for s in range(1, models)]
    kw = dict(projector=Projector(dims=proj_dim, seed=0), progress=False)
    (f_ck, q_ck), t_ck = timed(lambda: (featurize(res.model, 'cross_entropy', tr, checkpoints=res.checkpoints, **kw),
                                         featurize(res.model, 'cross_entropy', te_q, checkpoints=res.checkpoints, **kw)))
    (f_m, q_m), t_m = timed(lambda: (featurize(res.model, p.output, tr, models=[res.model] + others, **kw),
                                     featurize(res.model, p.output, te_q, models=[res.model] + others, **kw)))
    best, _ = __import__('pwattr.methods', fromlist=['choose_lambda']).choose_lambda(f_m[0])
    print(f"\n{name} LDS ({gt.n_subsets} subsets x {gt.n_seeds} seeds, {gt.n_queries} queries, {len(tr)} training examples; "
          f"features {t_ck + t_m:.0f} s, {len(f_m[0].groups)} groups x {proj_dim} dims; GCV-chosen lam_rel {best:.2g})")
    setups = [('GradDot (final ckpt)', GradDot(), f_ck[-1], q_ck[-1]), ('GradCos (final ckpt)', GradCos(), f_ck[-1], q_ck[-1]),
              (f'TracInCP ({len(f_ck)} ckpts)', TracInCP(), f_ck, q_ck),
              ('TRAK global (lam_rel=0.1)', TRAK(), f_m[0], q_m[0]), ('TRAK block (lam_rel=0.1)', TRAK(kernel='block'), f_m[0], q_m[0]),
              (f'TRAK global, lam_rel={best:.2g} (GCV)', TRAK(lam_rel=best), f_m[0], q_m[0]),
              *[(f'TRAK global, lam_rel={r:g}', TRAK(lam_rel=r), f_m[0], q_m[0]) for r in (1e-3, 1e-2, 0.3, 1.0)],
              (f'TRAK global, ensemble of {len(f_m)}', TRAK(), f_m, q_m),
              (f'TRAK block, ensemble of {len(f_m)}', TRAK(kernel='block'), f_m, q_m)]
    print(f"{'method':40s} {'LDS':>7s} {'95% CI':>16s}   per-group LDS (each group alone)")
    for nm, m, t, q in setups:
        c = m.fit(t).contributions(q)
        r = lds(c, gt)
        per = [lds(c.group(j), gt).mean for j in range(len(c.groups))]
        print(f"{nm:40s} {r.mean:7.3f} [{r.ci[0]:6.3f}, {r.ci[1]:6.3f}]   " + ' '.join(f"{g}:{v:.3f}" for g, v in zip(c.groups, per)))

def _vm(key):
    for line in open('/proc/self/status'):
        if line.startswith(key): return int(line.split()[1]) * 1024
    return 0

def part_memory_child(n, dims, queries, k, groups, method, folder, seed=0):
    torch.manual_seed(seed)
    names, gd = [f'g{j}' for j in range(groups)], [dims // groups] * groups
    path = Path(folder) / 'train_features.npy'
    f = NpyFile.create(path, (n, dims), np.float32)
    block = 16_384
    for b, a in enumerate(range(0, n, block)):        # synthetic training features, written block by block
        gen = torch.Generator().manual_seed(seed * 1_000_003 + b)
        f.write(a, torch.randn(min(block, n - a), dims, generator=gen))
    train = feats(f, names, gd, q=torch.rand(n, generator=torch.Generator().manual_seed(seed + 1)))
    query = feats(torch.randn(queries, dims, generator=torch.Generator().manual_seed(seed + 2)), names, gd)
    m = (GradDot(chunk=block) if method == 'graddot' else TRAK(chunk=block))
    _, t_fit = timed(lambda: m.fit(train, cache=None if method == 'graddot' else Path(folder) / 'psi.npy'))
    m.topk(feats(query.x[:8], names, gd), k=k)     # warm-up (thread pools, page cache)
    top, t_top = timed(lambda: m.topk(query, k=k))
    peak = _vm('VmHWM')
    # correctness: a dense [5, N] computation for five queries
    few = feats(query.x[:5], names, gd)
    dense = torch.cat([s for _, s in m._blocks(m._check(few), None, block)], 1)
    ok = torch.equal(dense.topk(k, 1).indices, top.indices[:5]) or torch.allclose(dense.topk(k, 1).values, top.values[:5])
    flops = 2.0 * queries * n * dims
    # the reference: one plain torch matmul of the same size, in memory, same process and threads
    A, B = query.x, torch.randn(n, dims)
    (A[:8] @ B[:4096].T)
    _, t_mm = timed(lambda: A @ B.T)
    del B
    rate, ref = flops / t_top / 1e9, flops / t_mm / 1e9
    print(f"\nmemory benchmark: top-{k} proponents for {queries} queries over {n} training features of {dims} dims "
          f"(float32, {method}, training side streamed from disk, {torch.get_num_threads()} thread(s))")
    if method != 'graddot': print(f"  fit (Gram, Cholesky, K phi(n) to disk): {t_fit:.1f} s")
    print(f"  {'':24s} {'time s':>8s} {'GFLOP/s':>9s} {'peak memory':>12s}")
    print(f"  {'pwattr streamed top-k':24s} {t_top:8.2f} {rate:9.1f} {peak / 2**30:10.2f} GB")
    print(f"  {'plain torch matmul':24s} {t_mm:8.2f} {ref:9.1f} {'(in memory)':>12s}")
    print(f"  FLOP rate ratio {rate / ref:.2f} (target >= 0.5): {'PASS' if rate / ref >= 0.5 else 'FAIL'}; "
          f"peak {peak / 2**30:.2f} GB (target < 2 GB): {'PASS' if peak < 2 * 2**30 else 'FAIL'}; "
          f"top-k matches a dense computation: {'PASS' if ok else 'FAIL'}")

def part_memory(n=200_000, dims=2048, queries=1000, k=100, groups=8, method='graddot'):
    with tempfile.TemporaryDirectory(dir=os.environ.get('PWATTR_BENCH_DIR')) as d:
        cmd = [sys.executable, __file__, '--part', 'memory-child', '--n', str(n), '--dims', str(dims), '--queries', str(queries),
               '--k', str(k), '--groups', str(groups), '--method', method, '--dir', d]
        subprocess.run(cmd, check=True)

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--part', default='all', choices=['all', 'synthetic', 'preset', 'memory', 'memory-child', 'lds'])
    ap.add_argument('--preset', default='fmnist-mlp')
    ap.add_argument('--n', type=int, default=200_000); ap.add_argument('--dims', type=int, default=2048)
    ap.add_argument('--queries', type=int, default=1000); ap.add_argument('--k', type=int, default=100)
    ap.add_argument('--groups', type=int, default=8); ap.add_argument('--method', default='graddot', choices=['graddot', 'trak'])
    ap.add_argument('--dir', default=None); ap.add_argument('--gt', default=None)
    a = ap.parse_args()
    if a.part == 'memory-child':
        part_memory_child(a.n, a.dims, a.queries, a.k, a.groups, a.method, a.dir); sys.exit()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    peers()
    if a.part in ('all', 'synthetic'): part_synthetic()
    if a.part in ('all', 'preset'): part_preset(a.preset)
    if a.part == 'lds': part_lds(a.preset, a.gt)
    if a.part in ('all', 'memory'): part_memory(a.n, a.dims, a.queries, a.k, a.groups, a.method)
