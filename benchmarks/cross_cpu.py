"""Cross-CPU spread of a committed ground truth: retrain model (j, r) of a preset under each ATEN_CPU_CAPABILITY
level this CPU offers (default, avx2, native) and compare with the stored outputs and with each other.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/cross_cpu.py fmnist-mlp fmnist-resnet9
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/cross_cpu.py emoji-unet --j=0 --caps=native,avx2   (R=1: model (0, 0))
The numbers justify the tolerance of tests/test_groundtruth.py::test_committed_groundtruth_reproduces.
"""
import json, os, subprocess, sys
import numpy as np

ONE = r'''
import json, sys, numpy as np, torch
torch.set_num_threads(1)
from pwattr.groundtruth import GroundTruth, GT_DIR, preset_task
preset, j, r = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
gt = GroundTruth.load(GT_DIR / preset)
task, _ = preset_task(preset, gt.meta.get('n_queries', 100), gt.meta.get('query_seed', 0), randomness=gt.meta.get('randomness', 'random'))
n, batch, *_ = task.setup()
model = task.train_fn(torch.from_numpy(np.flatnonzero(gt.masks[j])), int(gt.seeds[j, r]))
with torch.no_grad(): o = task.output_fn(model, batch).numpy()
print(json.dumps({'cap': torch.backends.cpu.get_cpu_capability(), 'out': o.tolist(), 'stored': gt.outputs[j, r].tolist(),
                  'stored_cap': gt.meta.get('cpu_capability')}))
'''

def run(preset, cap, j=7, r=1):
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    if cap != 'native': env['ATEN_CPU_CAPABILITY'] = cap
    out = subprocess.run([sys.executable, '-c', ONE, preset, str(j), str(r)], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])

if __name__ == '__main__':
    args = [a for a in sys.argv[1:] if not a.startswith('--')]
    opt = dict(a[2:].split('=', 1) for a in sys.argv[1:] if a.startswith('--'))
    j, caps = int(opt.get('j', 7)), opt.get('caps', 'default,avx2,native').split(',')
    for preset in args or ['fmnist-mlp', 'fmnist-resnet9']:
        res = {cap: run(preset, cap, j, 1 if preset != 'emoji-unet' else 0) for cap in caps}
        stored = np.array(res[caps[0]]['stored'])
        scale = np.abs(stored).max()
        print(f"{preset}: stored outputs max|.| = {scale:.3f} (stored on {res[caps[0]]['stored_cap'] or 'unrecorded'})")
        outs = {cap: np.array(v['out']) for cap, v in res.items()}
        for cap, o in outs.items():
            d = np.abs(o - stored).max()
            print(f"  {cap:>7} ({res[cap]['cap']}): max|out - stored| = {d:.3g} ({d / scale:.2e} of max|stored|)")
        caps = list(outs)
        for a in range(len(caps)):
            for b in range(a + 1, len(caps)):
                d = np.abs(outs[caps[a]] - outs[caps[b]]).max()
                print(f"  {caps[a]} vs {caps[b]}: max|diff| = {d:.3g} ({d / scale:.2e})")
