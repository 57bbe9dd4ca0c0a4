"""Random vs controlled randomness in the LDS ground truth: seed agreement and LDS interval widths.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/gt_randomness.py kjv-gpt2 --subsets 16 --seeds 2 --cache DIR

'random' is read from the committed ground truth (its first `--subsets` subsets are exactly what a run of that size
would train: same subsets, same per-model seeds); 'controlled' is trained here into benchmarks/results/groundtruth/
(resumable). The LDS of every method whose cached contributions (an audit run's `contrib-*.pt`, `--cache DIR`) hold
the ground truth's queries is reported with its 95% bootstrap interval. Results go to benchmarks/results/gt_randomness.csv.
"""
import argparse, csv, json, time
from pathlib import Path
import numpy as np, torch
from pwattr.groundtruth import GT_DIR, GroundTruth, groundtruth_for_preset
from pwattr.evaluate import lds, seed_agreement

RES = Path(__file__).parent / 'results'

def head(gt:GroundTruth, m:int)->GroundTruth:
    "The first `m` subsets of a ground truth"
    return GroundTruth(gt.masks[:m], gt.seeds[:m], gt.outputs[:m], gt.query_ids, gt.kind, gt.config_hash,
                       None if gt.times is None else gt.times[:m], dict(gt.meta))

def method_scores(cache:Path, qids, keep=None)->dict:
    """name -> [Q, N] scores of the cached contributions whose evaluation queries are `qids` (and, given `keep`, whose
    settings JSON beside them passes `keep(settings)`)"""
    from pwattr.audit import _load_cache, settings_file
    out = {}
    for f in sorted(Path(cache).glob('contrib-*.pt')):
        if keep is not None:
            sf = settings_file(f)
            if not sf.exists() or not keep(json.loads(sf.read_text())): continue
        try: c = _load_cache(f)
        except ValueError: continue
        c = c[0] if isinstance(c, (tuple, list)) else c
        ids, q = [str(i) for i in c.query_ids], [str(i) for i in qids]
        if ids[:len(q)] != q: continue
        c = c[:len(q)]   # EK-FAC caches the evaluation and learning queries as one, evaluation first
        out[f.stem.removeprefix('contrib-')] = c.scores().numpy()
    return out

def seed_share(gt:GroundTruth)->float:
    """Median over queries of the share of one model's output variance across subsets that is seed noise (R >= 2):
    within-subset variance between seeds / variance across subsets; 1 - share estimates the seeds' (Pearson) agreement
    and, pooled over every query, is steadier than a Spearman over few subsets"""
    o = gt.outputs.astype(np.float64)
    o = o - o.mean(0, keepdims=True)                     # a replicate's offset shared by all subsets (controlled) ranks nothing
    noise = o.var(1, ddof=1).mean(0)                     # [Q] between-seed variance within a subset
    total = o.var(0, ddof=1).mean(0)                     # [Q] variance across subsets of one seed's model
    return float(np.median(noise / total))

def row(preset, mode, gt, scores):
    sa = seed_agreement(gt)
    r = {'preset': preset, 'mode': mode, 'subsets': gt.n_subsets, 'seeds': gt.n_seeds, 'queries': gt.n_queries,
         'seed_agreement': round(sa.mean, 4), 'sa_lo': round(sa.ci[0], 4), 'sa_hi': round(sa.ci[1], 4),
         'seed_share': round(seed_share(gt), 4),
         'model_s': round(float(gt.times.sum()), 1) if gt.times is not None else '',
         'wall_s': gt.meta.get('wall_s_last_session', '')}
    for name, s in scores.items():
        l = lds(s, gt); r[f'lds_{name}'] = f"{l.mean:.4f} [{l.ci[0]:.4f}, {l.ci[1]:.4f}]"; r[f'width_{name}'] = round(l.ci[1] - l.ci[0], 4)
    return r

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('preset'); ap.add_argument('--subsets', type=int, default=16); ap.add_argument('--seeds', type=int, default=2)
    ap.add_argument('--cache', default=None, help="an audit cache directory holding contrib-*.pt of the ground truth's queries")
    ap.add_argument('--skip-train', action='store_true', help='report the committed (random) ground truth only')
    ap.add_argument('--controlled', default=None, help='read the controlled ground truth from this (larger, possibly '
                    'unfinished: its finished subsets are merged) controlled run instead of training one')
    ap.add_argument('--recipe', default=None, help='JSON recipe overrides (e.g. {"epochs": 6}): measured, not a change of the preset')
    ap.add_argument('--mode', default='controlled', choices=('controlled', 'random'), help='randomness of the run trained here')
    a = ap.parse_args()
    torch.set_num_threads(1)
    ref = GroundTruth.load(GT_DIR / a.preset)
    scores = method_scores(a.cache, ref.query_ids) if a.cache else {}
    rows = [row(a.preset, 'random', head(ref, a.subsets), scores)]
    if ref.n_subsets > a.subsets: rows.append(row(a.preset, 'random', ref, scores))
    if a.controlled:
        from pwattr.groundtruth import merge_work
        p = Path(a.controlled)
        big = GroundTruth.load(p) if p.with_suffix('.npz').exists() else merge_work(p, save=False)
        assert big.meta.get('randomness') == 'controlled' and big.n_subsets >= a.subsets, (big, a.subsets)
        rows.append(row(a.preset, 'controlled', head(big, a.subsets), scores))
        if big.n_subsets > a.subsets: rows.append(row(a.preset, 'controlled', big, scores))
    elif not a.skip_train and not a.recipe:
        out = RES / 'groundtruth' / f'{a.preset}-controlled-{a.subsets}x{a.seeds}.npz'
        gt = groundtruth_for_preset(a.preset, a.subsets, a.seeds, n_queries=ref.meta['n_queries'], query_seed=ref.meta['query_seed'],
                                    out_path=out, randomness='controlled', progress=False)
        assert [str(i) for i in gt.query_ids] == [str(i) for i in ref.query_ids]
        rows.append(row(a.preset, 'controlled', gt, scores))
    if a.recipe:                      # a recipe variant, trained with the preset's task and these overrides
        from pwattr.groundtruth import PresetTask, run_groundtruth
        kw = json.loads(a.recipe); tag = '-'.join(f'{k}{v}' for k, v in sorted(kw.items()))
        task = PresetTask(a.preset, ref.meta['n_queries'], ref.meta['query_seed'], train_kwargs=kw, randomness=a.mode)
        n, batch, qids, kind, name, chash, _ = task.setup()
        gt = run_groundtruth(task.train_fn, task.output_fn, n, batch, a.subsets, 0.5, a.seeds,
                             RES / 'groundtruth' / f'{a.preset}-{a.mode}-{tag}-{a.subsets}x{a.seeds}.npz', 1, 0, None, kind, qids,
                             chash, {'name': a.preset, 'output': name, 'recipe_overrides': kw}, progress=False, randomness=a.mode)
        rows.append(row(a.preset, f'{a.mode} {tag}', gt, scores))
    for r in rows: print(json.dumps(r))
    f = RES / 'gt_randomness.csv'
    old = list(csv.DictReader(f.open())) if f.exists() else []
    keep = [o for o in old if (o['preset'], o['mode'], o['subsets'], o['seeds']) not in
            {(r['preset'], r['mode'], str(r['subsets']), str(r['seeds'])) for r in rows}]
    allrows = keep + rows; cols = list(dict.fromkeys(k for r in allrows for k in r))
    with f.open('w', newline='') as fh:
        w = csv.DictWriter(fh, cols); w.writeheader(); w.writerows(allrows)
