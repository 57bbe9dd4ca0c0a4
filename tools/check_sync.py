"""Check that notebooks, package and README are in sync, the way nbdev's CI does it.

Runs nbdev_clean, nbdev_export and the README renderer and fails when any of them changed a file
under nbs/, pwattr/ or README*: commit what they produce. Works on a dirty tree too (it compares
file contents before and after rather than asking git).
"""
import hashlib, os, subprocess, sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
env = {k: v for k, v in os.environ.items() if k != 'IN_TEST'}  # nbdev_export is a no-op under IN_TEST
bindir = Path(sys.executable).parent

def snapshot():
    files = [p for d in ('nbs', 'pwattr') for p in (root/d).rglob('*') if p.is_file() and '__pycache__' not in p.parts
             and '.ipynb_checkpoints' not in p.parts]
    files += list(root.glob('README*')) + [p for p in (root/'README_files').rglob('*') if p.is_file()]
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() for p in files}

before = snapshot()
for cmd in ([bindir/'nbdev_clean'], [bindir/'nbdev_export'], [sys.executable, root/'tools/render_readme.py']):
    subprocess.run([str(c) for c in cmd], cwd=root, env=env, check=True, stdout=subprocess.DEVNULL)
after = snapshot()
changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
if changed:
    print('Out of sync: nbdev_clean / nbdev_export / render_readme changed these files:', *changed, sep='\n  ')
    print('Commit the changed files (they are now in sync) and run again.')
    sys.exit(1)
print(f'in sync: {len(after)} files under nbs/, pwattr/ and README unchanged by clean, export and render')
