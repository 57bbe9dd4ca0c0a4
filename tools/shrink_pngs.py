"""Store a notebook's figures as 256-colour PNGs (an editing aid: stored outputs are most of the notebooks' size).

    python tools/shrink_pngs.py nbs/00_data.ipynb [more.ipynb ...]    # rewrites in place, prints bytes before/after

Each image/png output that is fully opaque is re-encoded as a palette PNG (median-cut quantisation to 256 colours,
dithered) and kept only when that saves at least 30%. Plots and image grids look the same at this size; pixel values
change, so do not use it on a notebook whose outputs are compared byte for byte. Everything else is left as it is.
Run it after `tools/nbpct.py run` (which stores matplotlib's full-colour PNGs again).
"""
import base64, io, sys
from pathlib import Path
import nbformat
from PIL import Image

def shrink(png:bytes, min_saving:float=0.3)->bytes:
    "The PNG as 256 colours when it is opaque and that saves at least `min_saving` of its bytes, else unchanged"
    im = Image.open(io.BytesIO(png))
    if im.mode in ('RGBA', 'LA') and im.getchannel('A').getextrema()[0] < 255: return png   # transparency: keep
    if im.mode == 'P': return png
    buf = io.BytesIO()
    im.convert('RGB').quantize(256, method=Image.Quantize.MEDIANCUT).save(buf, 'PNG', optimize=True)
    return buf.getvalue() if buf.tell() <= (1 - min_saving) * len(png) else png

def shrink_notebook(path)->tuple:
    "Rewrite `path` with its PNG outputs shrunk; (bytes before, bytes after) of the file"
    path = Path(path); before = path.stat().st_size
    nb = nbformat.read(path, as_version=4)
    for c in nb.cells:
        for o in c.get('outputs', []):
            d = o.get('data', {})
            if 'image/png' in d:
                raw = base64.b64decode(d['image/png']); new = shrink(raw)
                if new is not raw: d['image/png'] = base64.b64encode(new).decode()
    nbformat.write(nb, path)
    return before, path.stat().st_size

if __name__ == '__main__':
    for p in sys.argv[1:]:
        a, b = shrink_notebook(p)
        print(f'{p}: {a:,} -> {b:,} bytes')
