"""Replace text in the cells of a notebook (an editing aid for small changes; keeps outputs and cell ids).

    python tools/nbsub.py nbs/05_kronecker.ipynb 'old text' 'new text' [--count N]
Fails unless the old text occurs exactly N times (default 1) across the notebook's cells.
"""
import argparse, sys
import nbformat

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument('nb'); ap.add_argument('old'); ap.add_argument('new'); ap.add_argument('--count', type=int, default=1)
a = ap.parse_args()
nb = nbformat.read(a.nb, as_version=4)
n = sum(c.source.count(a.old) for c in nb.cells)
if n != a.count: sys.exit(f"{a.nb}: {a.old!r} occurs {n} times, expected {a.count}; nothing changed")
for c in nb.cells: c.source = c.source.replace(a.old, a.new)
nbformat.write(nb, a.nb)
print(f"{a.nb}: replaced {n} occurrence(s)")
