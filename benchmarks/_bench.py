"""One helper for every benchmark in this folder: alternate the sides, repeat, take medians, and say what the machine was.

    from _bench import Bench
    b = Bench('featurize')                        # measures the machine limit, notes the load average
    r = b.alternate({'pwattr': f, 'traker': g}, repeats=3)    # f and g are called f g / g f / f g ...
    b.ratio('traker / pwattr', r, 'traker', 'pwattr', differs='traker projects the whole gradient, pwattr each group',
            same_work=False)
    b.save()                                      # benchmarks/results/featurize.json

Every timed call records wall time (perf_counter) and this process's CPU time (process_time): on a machine shared with other
work the CPU time is the more robust figure, the wall time the one a user sees. A ratio is printed with its medians, the spread
(min..max) of each side, and what differs between the two sides, so no printed ratio silently compares different work.
The machine limit is measured once per run: a plain float32 matmul's GFLOP/s at 1 thread and at the thread count in use, and
a memory-bandwidth figure (GB/s of a large tensor copy: bytes read + bytes written over the time). The load average (1 min)
is recorded before and after; a benchmark run while the load is above the core count is flagged as such in the record.
"""
import json, os, platform, statistics, sys, threading, time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / 'results'

def median(xs):
    "Median of a non-empty sequence of numbers"
    xs = list(xs)
    if not xs: raise ValueError("median of no values: run each side at least once (repeats >= 1)")
    return statistics.median(xs)

def order(names, repeats:int):
    "The order the sides run in: the given order on even repeats, reversed on odd ones (each side leads as often)"
    names = list(names)
    return [n for r in range(repeats) for n in (names if r % 2 == 0 else names[::-1])]

def alternate(sides:dict, # name -> zero-argument callable
              repeats:int=3, # runs per side (>= 3 for a median worth quoting)
              wall=time.perf_counter, # wall clock (a fake one in tests)
              cpu=time.process_time, # this process's CPU clock
              before=None, # called before each timed run with the side's name (e.g. to reset state)
             )->dict: # name -> {'wall': [..], 'cpu': [..], 'out': last result}
    "Run the sides alternately `repeats` times each (A B, B A, A B, ...), recording wall and CPU seconds per run"
    if repeats < 1: raise ValueError(f"repeats={repeats}: need at least 1 (3 or more for medians)")
    res = {n: {'wall': [], 'cpu': [], 'out': None} for n in sides}
    for n in order(sides, repeats):
        if before is not None: before(n)
        w, c = wall(), cpu()
        out = sides[n]()
        dw, dc = wall() - w, cpu() - c
        res[n]['wall'].append(dw); res[n]['cpu'].append(dc); res[n]['out'] = out
    return res

def summary(runs:dict)->dict:
    "Medians and spread of one side's runs (as `alternate` returns them)"
    return {k: {'median': median(runs[k]), 'min': min(runs[k]), 'max': max(runs[k]), 'runs': list(runs[k])} for k in ('wall', 'cpu')}

def loadavg()->float:
    "1-minute load average (nan where the OS has none)"
    try: return os.getloadavg()[0]
    except (OSError, AttributeError): return float('nan')

def rss()->int:
    "Resident set size of this process in bytes (Linux)"
    with open('/proc/self/statm') as f: return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')

def vm_hwm()->int:
    "Peak resident set size of this process so far (VmHWM) in bytes"
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM'): return int(line.split()[1]) * 1024
    return 0

class Peak:
    "Peak memory above the baseline during a block: RSS sampled every 2 ms on CPU, the allocator's peak on CUDA (`.mb`)"
    def __init__(self, device='cpu'):
        import torch
        self.torch, self.cuda = torch, torch.device(device).type == 'cuda'
    def __enter__(self):
        if self.cuda:
            self.torch.cuda.synchronize(); self.torch.cuda.reset_peak_memory_stats(); self.base = self.torch.cuda.memory_allocated()
            return self
        self.base = self.peak = rss(); self.stop = False
        def watch():
            while not self.stop: self.peak = max(self.peak, rss()); time.sleep(0.002)
        self.t = threading.Thread(target=watch, daemon=True); self.t.start(); return self
    def __exit__(self, *a):
        if self.cuda:
            self.torch.cuda.synchronize(); self.mb = (self.torch.cuda.max_memory_allocated() - self.base) / 2**20
        else:
            self.stop = True; self.t.join(); self.peak = max(self.peak, rss()); self.mb = (self.peak - self.base) / 2**20

def matmul_gflops(threads:int, n:int=1024, repeats:int=5)->float:
    "Best-of-`repeats` GFLOP/s of a plain float32 n x n matmul at `threads` threads (the thread count is restored after)"
    import torch
    old = torch.get_num_threads(); torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        A, B = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
        A @ B
        best = float('inf')
        for _ in range(repeats):
            t = time.perf_counter(); A @ B; best = min(best, time.perf_counter() - t)
        return 2 * n ** 3 / best / 1e9
    finally: torch.set_num_threads(old)

def memory_gbps(mib:int=256, repeats:int=5)->float:
    "Best-of-`repeats` GB/s of copying a `mib` MiB float32 tensor into a preallocated one (bytes read + bytes written)"
    import torch
    a = torch.ones(mib * 2**18); b = torch.empty_like(a); b.copy_(a)
    best = float('inf')
    for _ in range(repeats):
        t = time.perf_counter(); b.copy_(a); best = min(best, time.perf_counter() - t)
    return 2 * a.numel() * 4 / best / 1e9

def machine()->dict:
    "The machine limit measured now: matmul GFLOP/s at 1 thread and at the thread count in use, memory GB/s, load average"
    import torch
    th = torch.get_num_threads(); la = loadavg()
    d = {'cpu_count': os.cpu_count(), 'threads': th, 'omp_num_threads': os.environ.get('OMP_NUM_THREADS'),
         'torch': torch.__version__, 'isa': torch.backends.cpu.get_cpu_capability(), 'python': platform.python_version(),
         'matmul_gflops_1thread': matmul_gflops(1)}
    d[f'matmul_gflops_{th}threads'] = d['matmul_gflops_1thread'] if th == 1 else matmul_gflops(th)
    d['memory_copy_gbps'] = memory_gbps(); d['load_at_limit'] = [la, loadavg()]
    return d

def limit_line(m:dict)->str:
    "One line saying what the machine could do when it was measured"
    th = m['threads']
    return (f"machine limit: plain float32 matmul {m['matmul_gflops_1thread']:.0f} GFLOP/s at 1 thread"
            + ('' if th == 1 else f", {m[f'matmul_gflops_{th}threads']:.0f} at {th}") +
            f"; memory copy {m['memory_copy_gbps']:.1f} GB/s; {m['cpu_count']} cores, torch {m['torch']} {m['isa']}, "
            f"{th} thread(s) used; load average {m['load_at_limit'][0]:.2f}")

class Bench:
    "A benchmark run: the machine limit and load, the alternated measurements, the printed ratios, and a JSON record"
    def __init__(self, script:str, # name of the record: benchmarks/results/<script>.json
                 config:dict|None=None, # the run's settings (argparse vars)
                 measure:bool=True, # measure the machine limit now (False in tests)
                 out=print):
        self.script, self.out = script, out
        self.rec = {'script': script, 'argv': sys.argv[1:], 'config': config or {}, 'started_utc': time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime()),
                    'load_before': loadavg(), 'machine': machine() if measure else {}, 'runs': {}, 'ratios': [], 'notes': []}
        if measure: self.out(limit_line(self.rec['machine']))
    def alternate(self, sides:dict, repeats:int=3, key:str|None=None, **kw)->dict:
        "`alternate` the sides and record their medians under `key` (default: the side names joined)"
        res = alternate(sides, repeats, **kw)
        self.rec['runs'][key or ' | '.join(sides)] = {n: summary(r) for n, r in res.items()}
        return res
    def note(self, text:str):
        "A line printed now and kept in the record (settings, caveats: 'page cache warm', 'peer missing')"
        self.rec['notes'].append(text); self.out(text)
    def ratio(self, label:str, res:dict, num:str, den:str, # res from `alternate`; ratio = num's median / den's median
              differs:str, # what differs between the two sides (printed beside the ratio)
              same_work:bool, # True when both sides do the same work (a like-for-like ratio)
              clock:str='cpu')->float:
        "Print and record median(num) / median(den) on `clock` ('cpu' or 'wall'), with both clocks, spread and what differs"
        r = {c: median(res[num][c]) / median(res[den][c]) for c in ('cpu', 'wall')}
        spread = lambda n: f"{min(res[n]['wall']):.3g}..{max(res[n]['wall']):.3g} s"
        self.rec['ratios'].append({'label': label, 'num': num, 'den': den, 'ratio_cpu': r['cpu'], 'ratio_wall': r['wall'],
                                   'repeats': len(res[num]['wall']), 'same_work': same_work, 'differs': differs,
                                   'num_median_wall': median(res[num]['wall']), 'den_median_wall': median(res[den]['wall']),
                                   'num_median_cpu': median(res[num]['cpu']), 'den_median_cpu': median(res[den]['cpu'])})
        self.out(f"  {label}: {r[clock]:.2f}x ({clock} time; {'cpu' if clock == 'wall' else 'wall'} {r['cpu' if clock == 'wall' else 'wall']:.2f}x), "
                 f"medians of {len(res[num]['wall'])} alternated runs, wall {num} {spread(num)}, {den} {spread(den)}; "
                 f"{'SAME WORK' if same_work else 'DIFFERENT WORK'}: {differs}")
        return r[clock]
    def save(self, path=None)->Path:
        "Write the JSON record (load after added); returns its path"
        self.rec['load_after'] = loadavg(); self.rec['finished_utc'] = time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())
        cores = self.rec['machine'].get('cpu_count') or os.cpu_count()
        self.rec['loaded'] = max(self.rec['load_before'], self.rec['load_after']) > 0.5 * cores
        p = Path(path) if path else RESULTS / f'{self.script}.json'
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(self.rec, indent=1, default=str))
        self.out(f"load average {self.rec['load_before']:.2f} before, {self.rec['load_after']:.2f} after "
                 f"({'LOADED machine: wall times are inflated' if self.rec['loaded'] else 'under half the cores busy'}); "
                 f"record: {p}")
        return p
