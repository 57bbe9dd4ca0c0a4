"""Benchmark: learning parameter-group weights (pwattr.weights.learn_weights).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/weights.py            # Q=128, N=20,000, M=64 (goal: <= 5 s on 2 cores)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/weights.py --factory  # also stream over training-example chunks

Contributions are synthetic with a known answer (planted proponents carried by 8 of the 64 groups), so the
benchmark also reports whether the weights found the signal. Runs: in memory; streamed from a .npy file on disk
(evicted from the page cache first, read in blocks of queries; must give bitwise the same weights); optionally
from a chunk factory over training examples (how methods.StreamedContributions.chunks yields S). For scale, the
cost of one naive step (full S @ w, top-k and norm over all N, autograd) is measured too. The in-memory and streamed runs
alternate (--repeats each, medians); beside the time it prints the machine limit measured in the same process (plain matmul
GFLOP/s, memory GB/s) and what one pass over S costs at that bandwidth, so the time can be read against the hardware.
The fixed cost per step is measured on a small problem (Q=32, N=1000, M=16: CPU ms per full-batch step beyond a 1-step call;
goal <= 2 ms). The record goes to benchmarks/results/weights.json.
"""
import argparse, json, os, tempfile, time
from pathlib import Path
import sys
import numpy as np, torch
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import Bench, median
from pwattr.weights import learn_weights, planted_contributions, precision_at_k, selfsup_loss

def evict(path):
    "Drop a file's pages from the page cache (no root needed for clean pages) so the next read hits the disk"
    fd = os.open(path, os.O_RDONLY)
    try: os.fsync(fd); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)   # written pages are dirty: flush them first
    finally: os.close(fd)

def naive_step_time(S, k, reps=3):
    "CPU seconds per step of the direct implementation (scores over all N every step)"
    M = S.shape[-1]
    theta = torch.zeros(M, requires_grad=True)
    t = time.process_time()
    for _ in range(reps):
        loss = selfsup_loss(S, M * torch.softmax(theta, 0), k, 1e-4)
        g, = torch.autograd.grad(loss, theta)
        with torch.no_grad(): theta -= 0.05 * g.sign()
    return (time.process_time() - t) / reps

def step_overhead(Q=32, N=1000, M=16, k=20, steps=300, repeats=5, seed=0):
    "Fixed cost of one full-batch step on a small problem: CPU ms per step beyond a 1-step call (median of `repeats`), and wall"
    S, _ = planted_contributions(Q=Q, N=N, M=M, signal=range(8), n_true=k, strength=3., noise=2., seed=seed)
    learn_weights(S, k=k, steps=3, check=False)
    cpu, wall = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter(); learn_weights(S, k=k, steps=1, check=False)
        c1, w1 = time.process_time(), time.perf_counter(); learn_weights(S, k=k, steps=steps + 1, patience=10**9, check=False)
        c2, w2 = time.process_time(), time.perf_counter()
        cpu.append(((c2 - c1) - (c1 - c0)) / steps * 1e3); wall.append(((w2 - w1) - (w1 - w0)) / steps * 1e3)
    return median(cpu), median(wall)

def timed(f):
    "run f, return (result, CPU seconds of this process): wall time on a shared machine overstates the cost"
    t = time.process_time(); r = f(); return r, time.process_time() - t

def row(name, gw, S, true, k, cpu):
    i = gw.info
    return dict(run=name, seconds=round(gw.time, 2), cpu_s=round(cpu, 2), steps=i['n_steps'], converged=i['converged'],
                setup_s=round(i['time_setup'], 2), ms_per_step=round(1e3 * i['time_per_step'], 1),
                passes=i['passes'], query_refreshes=i['query_refreshes'], check_s=round(i['time_check'], 2),
                null_p=i['null_test']['p'] if i.get('null_test') else None,
                precision=round(precision_at_k(apply(S, gw.w), true, k), 3))

def apply(S, w): return S @ w

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--Q', type=int, default=128); ap.add_argument('--N', type=int, default=20_000)
    ap.add_argument('--M', type=int, default=64); ap.add_argument('--k', type=int, default=50)
    ap.add_argument('--steps', type=int, default=300); ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--factory', action='store_true', help='also stream over training-example chunks')
    ap.add_argument('--repeats', type=int, default=3, help='alternated runs per side (medians)')
    ap.add_argument('--goal', type=float, default=5.0, help='goal for the in-memory run, wall seconds')
    ap.add_argument('--json', type=str, default=None, help='also write the results here')
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', '1')))
    B = Bench('weights', vars(a)); lim = B.rec['machine']
    nbytes = a.Q * a.N * a.M * 4
    B.note(f"threads={torch.get_num_threads()}  Q={a.Q} N={a.N} M={a.M} k={a.k} (S: {nbytes / 2**20:.0f} MiB float32); "
           f"one pass over S at {lim['memory_copy_gbps']:.1f} GB/s: {nbytes / lim['memory_copy_gbps'] / 1e9 * 1e3:.0f} ms")
    S, true = planted_contributions(Q=a.Q, N=a.N, M=a.M, signal=range(8), n_true=a.k, strength=3., noise=2., seed=a.seed)
    learn_weights(S[:2, :1000], k=5, steps=3, check=False)     # warm-up (first-call costs)
    rows = [dict(run='base method (w = 1)', precision=round(precision_at_k(S.sum(-1), true, a.k), 3))]
    naive = naive_step_time(S, a.k)
    B.note(f"naive step (full S @ w, top-k and norm over all N, autograd): {1e3 * naive:.0f} ms CPU")
    so_cpu, so_wall = step_overhead(k=20, seed=a.seed)
    B.note(f"per-step overhead, Q=32 N=1000 M=16 k=20 (300 full-batch steps beyond a 1-step call, median of 5): {so_cpu:.2f} ms CPU, "
           f"{so_wall:.2f} ms wall: goal <= 2 ms {'met' if so_cpu <= 2 else 'NOT met'} (CPU time)")
    with tempfile.TemporaryDirectory() as d:
        p = Path(d)/'S.npy'; np.save(p, S.numpy())
        sides = {'in memory': lambda: learn_weights(S, k=a.k, steps=a.steps, seed=a.seed),
                 'streamed from .npy (page cache dropped)': lambda: learn_weights(p, k=a.k, steps=a.steps, seed=a.seed)}
        if a.factory:
            mm = np.load(p, mmap_mode='r')
            sides['streamed, training-example chunks'] = lambda: learn_weights(
                lambda: ((slice(s, s + 4096), mm[:, s:s + 4096]) for s in range(0, a.N, 4096)), k=a.k, steps=a.steps, seed=a.seed)
        res = B.alternate(sides, a.repeats, before=lambda n: evict(p) if n != 'in memory' else None)
        mem = res['in memory']['out']
        for n, r in res.items():
            rows.append(row(n, r['out'], S, true, a.k, median(r['cpu'])))
            rows[-1]['wall_median_s'] = round(median(r['wall']), 2)
        disk = res['streamed from .npy (page cache dropped)']['out']
        same = torch.equal(disk.w, mem.w) and disk.history == mem.history
        if a.factory: rows[-1]['max |w - w_mem|'] = float((res['streamed, training-example chunks']['out'].w - mem.w).abs().max())
        B.ratio('streamed / in memory', res, 'streamed from .npy (page cache dropped)', 'in memory', same_work=True,
                differs='S read from a .npy in blocks (page cache dropped before each run) vs held in memory', clock='wall')
    signal_mass = float(mem.w[:8].sum() / mem.w.sum())
    print(f"{'run':40s} {'wall s':>7s} {'cpu s':>6s} {'steps':>6s} {'setup s':>8s} {'ms/step':>8s} {'passes':>7s} {'refreshed':>10s} {'check s':>8s} {'prec@k':>7s}")
    for r in rows:
        print(f"{r['run']:40s} {r.get('wall_median_s', ''):>7} {r.get('cpu_s', ''):>6} {r.get('steps', ''):>6} {r.get('setup_s', ''):>8} "
              f"{r.get('ms_per_step', ''):>8} {r.get('passes', ''):>7} {r.get('query_refreshes', ''):>10} {r.get('check_s', ''):>8} {r['precision']:>7}")
    wall = rows[1]['wall_median_s']; th = lim['threads']
    B.note(f"streamed == in memory (bitwise weights and loss history): {same}")
    B.note(f"learned weight mass on the 8 signal groups (of {a.M}): {signal_mass:.2f}; in memory {wall:.2f} s wall (median), "
           f"{rows[1]['cpu_s']} s CPU, {th} thread(s): goal <= {a.goal:g} s on 2 cores "
           f"{'met' if wall <= a.goal else 'NOT met'}{'' if th == 2 else ' (not run on 2 threads: compare with care)'}; "
           f"machine limit {lim[f'matmul_gflops_{th}threads']:.0f} GFLOP/s matmul at {th} thread(s), {lim['memory_copy_gbps']:.1f} GB/s copy; "
           f"{mem.info['passes']} passes over S = {mem.info['passes'] * nbytes / lim['memory_copy_gbps'] / 1e9:.2f} s at that bandwidth")
    out = dict(config=vars(a), naive_ms_per_step=1e3 * naive, step_overhead_ms=dict(cpu=so_cpu, wall=so_wall, Q=32, N=1000, M=16, k=20), rows=rows, streamed_equal=same, signal_mass=signal_mass)
    B.rec.update(out); B.save()
    if a.json: Path(a.json).write_text(json.dumps(out, indent=1))
    return out

if __name__ == '__main__': main()
