"""Author notebooks as percent-format text and convert both ways (an editing aid; nbs/*.ipynb stay the source).

    python tools/nbpct.py to-nb draft.py nbs/03_features.ipynb   # cells split on '# %%' / '# %% [markdown]'
    python tools/nbpct.py to-py nbs/03_features.ipynb draft.py   # the reverse, for editing
    python tools/nbpct.py run nbs/03_features.ipynb              # execute in place (outputs saved), then nbdev_clean

Markdown cells are written as comment lines ('# ' prefix) under '# %% [markdown]'.
Outputs of a notebook being replaced are dropped: run it again to store fresh ones.
"""
import os, subprocess, sys
from pathlib import Path
import nbformat

def to_nb(src, dst):
    cells, kind, buf = [], None, []
    def flush():
        if kind is None: return
        text = '\n'.join(buf).strip('\n')
        if kind == 'md':
            text = '\n'.join(l[2:] if l.startswith('# ') else l.lstrip('#') for l in text.splitlines())
            cells.append(nbformat.v4.new_markdown_cell(text))
        elif text.strip(): cells.append(nbformat.v4.new_code_cell(text))
    for line in Path(src).read_text().splitlines():
        if line.startswith('# %%'):
            flush(); kind, buf = ('md' if '[markdown]' in line else 'code'), []
        else: buf.append(line)
    flush()
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata = {'kernelspec': {'display_name': 'python3', 'language': 'python', 'name': 'python3'}}
    nbformat.write(nb, dst)

def to_py(src, dst):
    nb, out = nbformat.read(src, as_version=4), []
    for c in nb.cells:
        if c.cell_type == 'markdown': out += ['# %% [markdown]'] + ['# ' + l if l else '#' for l in c.source.splitlines()]
        else: out += ['# %%', c.source]
        out.append('')
    Path(dst).write_text('\n'.join(out))

def run(nb):
    nb = Path(nb).resolve(); bindir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if k != 'IN_TEST'}
    env.setdefault('OMP_NUM_THREADS', '1'); env['HF_HUB_OFFLINE'] = '1'
    env.pop('MPLBACKEND', None)  # the kernel's inline backend stores figures in the notebook; Agg would drop them
    subprocess.run([str(bindir/'jupyter'), 'nbconvert', '--to', 'notebook', '--execute', '--inplace',
                    '--ExecutePreprocessor.timeout=1800', str(nb)], cwd=nb.parent, env=env, check=True)
    subprocess.run([str(bindir/'nbdev_clean'), '--fname', str(nb)], env=env, check=True)

if __name__ == '__main__':
    cmd, *args = sys.argv[1:]
    {'to-nb': to_nb, 'to-py': to_py, 'run': run}[cmd](*args)
