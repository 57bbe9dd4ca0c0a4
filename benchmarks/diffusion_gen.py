"""Do the diffusion presets generate? Sample quality before (600 steps, linear schedule) and after (the -gen presets),
and what a ground truth for generated queries would cost with each recipe.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/diffusion_gen.py                 # quality + cost (cached models)
    .venv/bin/python benchmarks/diffusion_gen.py --guidance 1 2 3 --time-steps 100           # more guidance scales, shorter timing

Quality: each preset's model trained with seed 0 on its training set (cached where `pwattr audit` keeps it,
runs/<preset>/cache/<hash>/model-s0.pt; trained when missing), 64 DDIM-50 samples (seed 0) measured by
`pwattr.diffusion.sample_quality`: the RMS distance of each sample to its nearest training image (beside noise and the
held-out real images) and, for the conditional models, the share of samples prompted with a subject (each of the 32
training subjects twice, style and background unspecified) that a small CNN trained on the training images
(`train_attribute_classifier`, its held-out accuracy printed) labels with that subject.
Cost: CPU seconds per optimiser step, timed on `--time-steps` steps of a fresh model (one thread), times the recipe's
steps, plus the LDS output (`DiffusionLDSLoss`, K=10 x 3 noise seeds) of `--queries` generated queries; per model and for
`--subsets` subsets x `--seeds` seeds with 2 forked workers (1.90x measured in groundtruth_workers.txt).
Results go to benchmarks/results/diffusion_gen.json / .txt.
"""
import argparse, json, os, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / 'benchmarks'))
from _bench import Bench

PAIRS = [('emoji-unet', 'emoji-unet-gen'), ('sbemoji-cond', 'sbemoji-cond-gen')]
WORKERS_SPEEDUP = 1.90   # 2 forked workers vs 1 (benchmarks/results/groundtruth_workers.txt)

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--runs', default=str(ROOT / 'runs'), help='cache root (models trained with seed 0)')
    ap.add_argument('--guidance', nargs='+', type=float, default=[1.0, 2.0], help='classifier-free guidance (conditional)')
    ap.add_argument('--n', type=int, default=64, help='samples per model')
    ap.add_argument('--time-steps', type=int, default=200, help='optimiser steps timed per preset (extrapolated)')
    ap.add_argument('--queries', type=int, default=64, help='generated queries of the ground truth')
    ap.add_argument('--subsets', type=int, default=50); ap.add_argument('--seeds', type=int, default=1)
    a = ap.parse_args()
    import torch, warnings
    warnings.filterwarnings('ignore')
    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', '1')))
    from pwattr.presets import get_preset
    from pwattr.audit import TrainedModel, model_file
    from pwattr.diffusion import train_attribute_classifier, sample_quality, generate_queries, DiffusionLDSLoss, diffusion_outputs
    B = Bench('diffusion_gen', vars(a))
    lab_tr, lab_te = get_preset('sbemoji-cond').load()
    c0 = time.process_time(); judge = train_attribute_classifier(lab_tr, 'subject', heldout=lab_te, seed=0)
    B.note(f"judge: {judge} ({time.process_time() - c0:.1f} CPU s)")
    rows, cost = [], []
    for before, after in PAIRS:
        for name in (before, after):
            p = get_preset(name); tr, _ = p.load(); cond = p.config['model']['arch'] == 'cond-unet'
            m = TrainedModel(p, tr, Path(a.runs) / name / 'cache' / p.config_hash / model_file(0), 0, 4, progress=False, log=None).model()
            for g in (a.guidance if cond else [1.0]):
                q = sample_quality(m, lab_tr, p.scheduler(), n=a.n, seed=0, steps=50, guidance=g, classifier=judge if cond else None, heldout=lab_te)
                s = q.summary(name)
                rows.append({'preset': name, 'guidance': g, **s.iloc[0].to_dict()})
                B.note(f"\n{name}, guidance {g}:\n{s.to_string()}")
            # cost: CPU s per step on a fresh model, and the output of the generated queries under one model
            c0 = time.process_time(); p.train(tr, seed=0, progress=False, steps=a.time_steps); per_step = (time.process_time() - c0) / a.time_steps
            gen = generate_queries(m, list(range(a.queries)), [{'subject': judge.values[k % len(judge.values)]} for k in range(a.queries)] if cond else None,
                                   scheduler=p.scheduler(), steps=50)
            c0 = time.process_time(); diffusion_outputs(m, gen, DiffusionLDSLoss(K=10, seeds=(0, 1, 2), scheduler=p.scheduler()))
            out_s = time.process_time() - c0
            steps = p.total_steps(len(tr)); model_s = steps * per_step + out_s
            models = a.subsets * a.seeds
            cost.append({'preset': name, 'steps': steps, 'CPU s/step': round(per_step, 4), 'output s': round(out_s, 2),
                         'CPU s/model': round(model_s), 'models': models,
                         'hours, 2 workers': round(models * model_s / WORKERS_SPEEDUP / 3600, 2)})
            B.note(f"{name}: {per_step:.4f} CPU s/step x {steps} steps + output {out_s:.2f} s = {model_s:.0f} CPU s per model; "
                   f"{models} models with 2 workers: {cost[-1]['hours, 2 workers']} h")
    import pandas as pd
    B.note('\n' + pd.DataFrame(rows).set_index(['preset', 'guidance']).to_string())
    B.note('\n' + pd.DataFrame(cost).set_index('preset').to_string())
    B.rec['results'] = {'quality': rows, 'cost': cost, 'judge_heldout_acc': judge.heldout_acc}
    B.save()

if __name__ == '__main__':
    main()
