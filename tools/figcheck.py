"""Execute a notebook in full (`#| slow` cells included) and check every figure it displays for overlapping text.

    python tools/figcheck.py nbs/12_classification.ipynb [nbs/13_language.ipynb ...] [--no-write] [--skip ID,ID,...] [--timeout S]

`--timeout S`: the longest a cell may run, in seconds (default 3600; 0: no limit, for the long study cells).
`--skip` names cells (by id) that are not run and keep their stored outputs: for cells whose caches are missing and
too costly to rebuild (the report lists them; later cells must not depend on them).

A hook installed in the kernel before the first cell wraps `FigureCanvasBase.print_figure` (what the inline backend
and `savefig` call): after the original print it runs `pwattr.plots.overlapping_text(fig)` and restores the figure's
canvas. Problems are printed per notebook, cell id and figure. The executed notebook is written back and
`nbdev_clean`ed, so the stored figures are the checked ones. A failing cell does not stop the run (its error is
reported and stored). Exit status 1 if any figure has problems or any cell failed.

The kernel runs in nbs/ with OMP_NUM_THREADS=2, HF_HUB_OFFLINE=1, PYTHONHASHSEED=0 and the inline backend
(MPLBACKEND=Agg would keep figures out of the stored outputs; the inline backend is headless too).
"""
import json, os, subprocess, sys, tempfile, time
from pathlib import Path
import nbformat
from nbclient import NotebookClient

HOOK = r'''
import json as _fc_json, matplotlib.backend_bases as _fc_bb
def _fc_install(log):
    orig = _fc_bb.FigureCanvasBase.print_figure
    if getattr(orig, '_figcheck', False): return
    def print_figure(self, *args, **kw):
        res = orig(self, *args, **kw)
        fig = self.figure
        try:
            from pwattr.plots import overlapping_text
            canvas = fig.canvas
            try: problems = overlapping_text(fig)
            finally: fig.set_canvas(canvas)
            title = fig._suptitle.get_text() if getattr(fig, '_suptitle', None) else next((a.get_title() for a in fig.axes if a.get_title()), '')
            rec = dict(fig=id(fig), title=title[:60], size=[round(float(v), 1) for v in fig.get_size_inches()], problems=problems)
        except Exception as e: rec = dict(fig=id(fig), title='', size=[], problems=[f'checker failed: {e!r}'])
        with open(log, 'a') as f: f.write(_fc_json.dumps(rec) + '\n')
        return res
    print_figure._figcheck = True
    _fc_bb.FigureCanvasBase.print_figure = print_figure
_fc_install(%r)
del _fc_install
'''

class CheckingClient(NotebookClient):
    "Runs cells in order; after each, reads the figure records the hook appended and files them under the cell id"
    def __init__(self, nb, log, skip=(), **kw):
        super().__init__(nb, **kw); self.figlog, self.seen, self.by_cell, self.times, self.errors = Path(log), 0, {}, {}, {}
        self.skip, self.skipped = set(skip), []
    async def async_execute_cell(self, cell, cell_index, *args, **kw):
        if cell.get('id') in self.skip:
            self.skipped.append(cell['id']); return cell          # not run: its stored outputs stay
        t0 = time.time()
        res = await super().async_execute_cell(cell, cell_index, *args, **kw)
        lines = self.figlog.read_text().splitlines() if self.figlog.exists() else []
        new, self.seen = lines[self.seen:], len(lines)
        cid = cell.get('id', str(cell_index))
        self.times[cid] = time.time() - t0
        if new: self.by_cell.setdefault(cid, []).extend(json.loads(l) for l in new)
        err = [o for o in cell.get('outputs', []) if o.get('output_type') == 'error']
        if err: self.errors[cid] = f"{err[0]['ename']}: {err[0]['evalue']}"[:300]
        return res

def check(path:Path, write:bool=True, skip=(), timeout:int=3600)->int:
    "Execute `path` in full with the hook; report; write back and clean. Returns the number of figures with problems"
    path = path.resolve(); nb = nbformat.read(path, as_version=4)
    log = Path(tempfile.mkdtemp(prefix='figcheck-')) / 'figs.jsonl'
    hook = nbformat.v4.new_code_cell(HOOK % str(log)); hook['id'] = 'figcheck-hook'
    nb.cells.insert(0, hook)
    env = {k: v for k, v in os.environ.items() if k not in ('IN_TEST', 'MPLBACKEND')}
    env.update(OMP_NUM_THREADS='2', HF_HUB_OFFLINE='1', PYTHONHASHSEED='0')
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)                     # the kernel inherits the runner's environment
    for k in ('IN_TEST', 'MPLBACKEND'): os.environ.pop(k, None)
    t0 = time.time()
    client = CheckingClient(nb, log, skip, timeout=timeout or None, allow_errors=True, kernel_name='python3', resources={'metadata': {'path': str(path.parent)}})
    try: client.execute()
    finally:
        for k, v in old.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v
    nb.cells.pop(0)
    took = time.time() - t0
    figs = [(cid, r) for cid, recs in client.by_cell.items() for r in recs]
    bad = [(cid, r) for cid, r in figs if r['problems']]
    print(f'== {path.name}: {len(figs)} figure prints in {len(client.by_cell)} cells, {len(bad)} with problems, {took:.0f} s')
    for cid, r in bad:
        print(f'  cell {cid}  figure {r["title"]!r} {r["size"]}:')
        for p in r['problems']: print(f'    {p}')
    for cid, e in client.errors.items(): print(f'  cell {cid} FAILED: {e}')
    if client.skipped: print(f'  not run (stored outputs kept): {", ".join(client.skipped)}')
    if set(skip) - set(client.skipped): print(f'  --skip ids not found: {", ".join(sorted(set(skip) - set(client.skipped)))}')
    slow = sorted(client.times.items(), key=lambda kv: -kv[1])[:5]
    print('  slowest cells: ' + ', '.join(f'{c} {t:.0f}s' for c, t in slow))
    if write:
        nbformat.write(nb, path)
        subprocess.run([str(Path(sys.executable).parent/'nbdev_clean'), '--fname', str(path)], check=True)
    return len(bad) + len(client.errors)

if __name__ == '__main__':
    args = sys.argv[1:]; write = '--no-write' not in args; skip = []; timeout = 3600
    if '--timeout' in args:
        i = args.index('--timeout'); timeout = int(args[i + 1]); del args[i:i + 2]
    if '--skip' in args:
        i = args.index('--skip'); skip = [s for s in args[i + 1].split(',') if s]; del args[i:i + 2]
    nbs = [Path(a) for a in args if a != '--no-write']
    if not nbs: sys.exit(__doc__)
    sys.exit(1 if sum(check(p, write, skip, timeout) for p in nbs) else 0)
