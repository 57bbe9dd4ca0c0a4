"""One row per committed LDS ground truth (issue 16): subsets x seeds, seed agreement, median LDS interval width,
model-hours, wall time with 2 workers.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/gt_table.py --runs runs

Read from pwattr/assets/groundtruth/*.npz. The LDS interval width is the 95% bootstrap interval (over the queries) of
every method whose cached contributions (an audit run's `contrib-*.pt` under `<runs>/*/cache/<config hash>/`, the
ground truth's own preset hash, so only contributions of the model the ground truth retrains) hold the ground truth's
queries and were made with the audit's defaults (the seed-0 model, the method's own regulariser, the preset's groups;
`audit_default`: not a second seed's model from cross_seed.py, nor a regulariser grid); the median over those methods
is reported, with their count and range. Model-hours are the recorded per-model seconds (train + outputs, one thread
each), summed. Wall time with 2 workers is the recorded
`wall_s_last_session` where the ground truth was made in one session with 2 workers; for the ones made with 1 worker
it is estimated as model-seconds / 1.90, the 2-worker speedup measured on this machine (benchmarks/groundtruth_workers.py).
Results go to benchmarks/results/gt_table.csv, which 08b_groundtruth shows (and checks against the committed files).
"""
import argparse, csv, json
from pathlib import Path
import numpy as np, torch
from pwattr.groundtruth import GT_DIR, GroundTruth
from pwattr.evaluate import lds, seed_agreement
from gt_randomness import method_scores

RES = Path(__file__).parent / 'results'
PRESETS = ['fmnist-mlp', 'fmnist-resnet9', 'fmnist-vit', 'kjv-gpt2', 'kjv-gpt2-ft', 'emoji-unet', 'emoji-unet-gen']
SPEEDUP_2W = 1.90        # benchmarks/results/groundtruth_workers.txt: 2 forked workers vs 1, same models, quiet machine
CARRIED = {'kjv-gpt2-ft': 32}   # models copied in from an earlier run (meta['carried_over'] says which), when meta does not count them
RESUMED = {'emoji-unet-gen': 28}   # models the last session trained, for runs resumed before meta['models_last_session'] was recorded (runs/gt/gen_resume.log: "28 of 50 models to train")

def audit_default(st:dict)->bool:
    "Contributions an audit makes by default: of the seed-0 model (the one the ground truth retrains), own regulariser, preset groups"
    return st.get('seed') == 0 and st.get('reg') is None and st.get('grouping') == 'preset'

def widths(gt:GroundTruth, runs:Path)->dict:
    "cache name -> (LDS mean, interval width) of every method an audit caches by default for this ground truth's preset and queries"
    out = {}
    for cache in sorted(runs.glob(f'*/cache/{gt.config_hash}')):
        for name, s in method_scores(cache, gt.query_ids, audit_default).items():
            l = lds(s, gt); v = (round(l.mean, 4), round(l.ci[1] - l.ci[0], 4))
            if name in out or v in out.values(): continue                    # the same contributions cached twice (two runs, two keys)
            out[name] = v
    return out

def row(preset:str, runs:Path)->dict:
    gt = GroundTruth.load(GT_DIR / preset); m = gt.meta
    w = widths(gt, runs); ws = [v[1] for v in w.values()]
    model_s = float(gt.times.sum())
    two = m.get('workers') == 2
    total = gt.n_subsets * gt.n_seeds
    carried = int(m.get('carried_over_models', CARRIED.get(preset, 0))) if 'carried_over' in m else 0
    trained = int(m.get('models_last_session') or RESUMED.get(preset, total - carried))   # the models the recorded wall time covers
    r = {'preset': preset, 'subsets': gt.n_subsets, 'seeds': gt.n_seeds, 'queries': gt.n_queries,
         'randomness': m.get('randomness', 'random'),
         'seed_agreement': round(seed_agreement(gt).mean, 4) if gt.n_seeds >= 2 else '',
         'sa_lo': round(seed_agreement(gt).ci[0], 4) if gt.n_seeds >= 2 else '',
         'sa_hi': round(seed_agreement(gt).ci[1], 4) if gt.n_seeds >= 2 else '',
         'median_lds_width': round(float(np.median(ws)), 4) if ws else '', 'methods': len(ws),
         'width_min': min(ws) if ws else '', 'width_max': max(ws) if ws else '',
         'lds_by_method': json.dumps(w, sort_keys=True),
         'model_h': round(model_s / 3600, 3), 'workers_recorded': m.get('workers', ''),
         'wall_s_recorded': m.get('wall_s_last_session', ''),
         'wall_s_2_workers': (round(m['wall_s_last_session'] * total / trained) if two
                              else round(model_s / SPEEDUP_2W)),
         'wall_2w_kind': ('measured' if two and trained == total else
                          f'measured for {trained} models, scaled to all {total}' if two else
                          f'estimated: model-s / {SPEEDUP_2W}'),
         'cpu_capability': m.get('cpu_capability', 'AVX512 (not recorded)'), 'config_hash': gt.config_hash}
    return r

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--runs', default='runs', help='the directory holding audit runs (<preset>/cache/<hash>/contrib-*.pt)')
    ap.add_argument('presets', nargs='*', default=PRESETS)
    a = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for p in a.presets:
        r = row(p, Path(a.runs)); rows.append(r); print(json.dumps(r), flush=True)
    f = RES / 'gt_table.csv'
    old = list(csv.DictReader(f.open())) if f.exists() else []
    keep = [o for o in old if o['preset'] not in {r['preset'] for r in rows}]
    allrows = sorted(keep + rows, key=lambda r: PRESETS.index(r['preset']) if r['preset'] in PRESETS else 99)
    with f.open('w', newline='') as fh:
        w = csv.DictWriter(fh, list(dict.fromkeys(k for r in allrows for k in r))); w.writeheader(); w.writerows(allrows)
