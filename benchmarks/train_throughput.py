"""Training throughput of every preset: examples/s and seconds per full training run, side by side.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train_throughput.py            # all presets, full recipes
    .venv/bin/python benchmarks/train_throughput.py --presets fmnist-mlp kjv-gpt2 --repeats 2
    .venv/bin/python benchmarks/train_throughput.py --steps 20                   # quick: 20 steps each, extrapolated

This plans the LDS ground-truth cost: one ground truth = subsets x seeds trainings on half the training set,
so its CPU time is about subsets * seeds * (seconds per full run) / 2.
"""
import argparse, os, sys, time
os.environ.setdefault('OMP_NUM_THREADS', '1'); os.environ.setdefault('HF_HUB_OFFLINE', '1')
import torch

def main(argv=None):
    from pwattr.presets import PRESETS, get_preset
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--presets', nargs='*', default=list(PRESETS), help='preset names (default: all)')
    ap.add_argument('--steps', type=int, default=None, help='train only this many steps and extrapolate to the full recipe')
    ap.add_argument('--repeats', type=int, default=1, help='runs per preset (the fastest is reported)')
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--lds', type=int, default=50, help='subsets for the LDS cost estimate (alpha = 0.5, one seed)')
    a = ap.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device {a.device}", flush=True)
    rows = []
    for name in a.presets:
        p = get_preset(name)
        t0 = time.perf_counter(); train, test = p.load(); t_load = time.perf_counter() - t0
        full = p.total_steps(len(train)); best = None
        for r in range(a.repeats):
            over = {'steps': a.steps} if a.steps else {}
            t0, c0 = time.perf_counter(), time.process_time()
            res = p.train(train, seed=r, progress=False, device=a.device, **over)
            cpu = time.process_time() - c0
            if best is None or res.seconds < best[0].seconds: best = (res, cpu)
        res, cpu = best
        scale = full / res.steps
        full_s, full_cpu = res.seconds * scale, cpu * scale
        # an LDS subset run trains on alpha = 0.5 of the data: half the steps for epoch recipes, the same for step recipes
        sub_steps = p.total_steps(len(train) // 2)
        lds_min = a.lds * full_s * sub_steps / full / 60
        rows.append((name, p.domain, len(train), full, res.examples_per_s, res.seconds / res.steps, full_s, full_cpu,
                     lds_min, float(res.losses()[-max(1, res.steps // 10):].mean()), t_load))
        print(f"  {name}: {res.examples_per_s:,.0f} ex/s, {full_s:.1f} s per full run ({full_cpu:.1f} CPU s)", flush=True)
    hdr = ('preset', 'domain', 'n_train', 'steps', 'ex/s', 's/step', 's/run', 'CPU s/run', f'LDS{a.lds} min', 'final loss', 'load s')
    fmt = '{:<15} {:<14} {:>7} {:>6} {:>9} {:>8} {:>7} {:>9} {:>9} {:>10} {:>7}'
    print(); print(fmt.format(*hdr))
    for r in rows:
        print(fmt.format(r[0], r[1], r[2], r[3], f"{r[4]:,.0f}", f"{r[5]:.3f}", f"{r[6]:.1f}", f"{r[7]:.1f}", f"{r[8]:.1f}",
                         f"{r[9]:.3f}", f"{r[10]:.2f}"))
    if a.steps: print(f"(s/run extrapolated from {a.steps} steps; final loss is after those steps)")
    print("s/run is wall-clock; CPU s/run is this process's CPU time (what a quiet core would take, single-threaded).")
    return rows

if __name__ == '__main__': main()
