"""Training throughput of every preset: examples/s and seconds per full training run, side by side.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train_throughput.py            # all presets, full recipes
    .venv/bin/python benchmarks/train_throughput.py --presets fmnist-mlp kjv-gpt2 --repeats 2
    .venv/bin/python benchmarks/train_throughput.py --steps 20                   # quick: 20 and 40 steps, extrapolated

With --steps s, runs of s and 2s steps alternate (--repeats each, medians): the cost per step is the difference of the two
over s steps, the fixed cost (model build, optimizer, first-step warm-up) is what is left of the short run, and a full run
is estimated as fixed + full steps x per step (the fixed cost is counted once, not multiplied by the extrapolation factor).
Without --steps each preset trains its full recipe --repeats times (medians). The machine limit and the load go to
benchmarks/results/train_throughput.json.

This plans the LDS ground-truth cost: one ground truth = subsets x seeds trainings on half the training set,
so its CPU time is about subsets * seeds * (seconds per full run) / 2.
"""
import argparse, os, sys, time
from pathlib import Path
os.environ.setdefault('OMP_NUM_THREADS', '1'); os.environ.setdefault('HF_HUB_OFFLINE', '1')
import torch
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import Bench, median

def main(argv=None):
    from pwattr.presets import PRESETS, get_preset
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--presets', nargs='*', default=list(PRESETS), help='preset names (default: all)')
    ap.add_argument('--steps', type=int, default=None, help='time s and 2s steps and extrapolate to the full recipe')
    ap.add_argument('--repeats', type=int, default=3, help='alternated runs per side (medians)')
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--lds', type=int, default=50, help='subsets for the LDS cost estimate (alpha = 0.5, one seed)')
    a = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))
    B = Bench('train_throughput', vars(a))
    B.note(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device {a.device}")
    rows = []
    for name in a.presets:
        p = get_preset(name)
        t0 = time.perf_counter(); train, test = p.load(); t_load = time.perf_counter() - t0
        full = p.total_steps(len(train))
        def run(steps):
            over = {'steps': steps} if steps else {}
            return lambda: p.train(train, seed=0, progress=False, device=a.device, **over)
        if a.steps:
            s1, s2 = a.steps, 2 * a.steps
            res = B.alternate({'short': run(s1), 'long': run(s2)}, a.repeats, key=name)
            per = {c: (median(res['long'][c]) - median(res['short'][c])) / (s2 - s1) for c in ('wall', 'cpu')}
            fixed = {c: max(0.0, median(res['short'][c]) - s1 * per[c]) for c in ('wall', 'cpu')}
            last = res['long']['out']
        else:
            res = B.alternate({'full': run(None)}, a.repeats, key=name)
            per = {c: median(res['full'][c]) / full for c in ('wall', 'cpu')}; fixed = {'wall': 0.0, 'cpu': 0.0}
            last = res['full']['out']
        full_s, full_cpu = fixed['wall'] + full * per['wall'], fixed['cpu'] + full * per['cpu']
        ex_s = last.n_examples and sum(h['n'] for h in last.history) / last.steps / per['wall']
        # an LDS subset run trains on alpha = 0.5 of the data: half the steps for epoch recipes, the same for step recipes
        sub_steps = p.total_steps(len(train) // 2)
        lds_min = a.lds * (fixed['wall'] + sub_steps * per['wall']) / 60
        rows.append((name, p.domain, len(train), full, ex_s, per['wall'], full_s, full_cpu, lds_min,
                     float(last.losses()[-max(1, last.steps // 10):].mean()), t_load, fixed['wall']))
        B.note(f"  {name}: {ex_s:,.0f} ex/s, {1e3 * per['wall']:.1f} ms/step ({1e3 * per['cpu']:.1f} CPU), fixed {fixed['wall']:.2f} s, "
               f"{full_s:.1f} s per full run ({full_cpu:.1f} CPU s)")
    hdr = ('preset', 'domain', 'n_train', 'steps', 'ex/s', 's/step', 's/run', 'CPU s/run', f'LDS{a.lds} min', 'final loss', 'load s', 'fixed s')
    fmt = '{:<15} {:<14} {:>7} {:>6} {:>9} {:>8} {:>7} {:>9} {:>9} {:>10} {:>7} {:>7}'
    print(); print(fmt.format(*hdr))
    for r in rows:
        print(fmt.format(r[0], r[1], r[2], r[3], f"{r[4]:,.0f}", f"{r[5]:.3f}", f"{r[6]:.1f}", f"{r[7]:.1f}", f"{r[8]:.1f}",
                         f"{r[9]:.3f}", f"{r[10]:.2f}", f"{r[11]:.2f}"))
    if a.steps: print(f"(s/run = fixed + steps x s/step, s/step from runs of {a.steps} and {2 * a.steps} steps; final loss after {2 * a.steps} steps)")
    print("s/run is wall-clock; CPU s/run is this process's CPU time.")
    B.rec['rows'] = [dict(zip(hdr, r)) for r in rows]; B.save()
    return rows

if __name__ == '__main__': main()
