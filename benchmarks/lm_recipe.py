"""Language-model recipes for an LDS ground truth the seeds agree on (issue 16): seed agreement per candidate recipe.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/lm_recipe.py ft-2ep            # one candidate, 16 subsets x 2 seeds
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/lm_recipe.py --list

Each candidate is a registered language preset with some config entries replaced (`Preset.with_config`), trained with
`run_groundtruth` on the first 16 subsets of the committed ground truths (subset seed 0, alpha 0.5) x 2 seeds and
measured on the same 100 held-out queries (`PresetTask`'s seeded draw), so seed agreement (`pwattr.evaluate.seed_agreement`,
the measure of benchmarks/gt_randomness.py) compares like with like. The ground truths go to
benchmarks/results/groundtruth/lm-recipes/ (resumable), one row per candidate to benchmarks/results/lm_recipe.csv
with the mean seconds per model (train + outputs, one thread; the machine is shared, so compare within a row's run).
"""
import json, time
from pathlib import Path
from pwattr.groundtruth import PresetTask, run_groundtruth
from _recipe import gt_stats, recipe_main

RES = Path(__file__).parent / 'results'

# name: (preset, config overrides, randomness, what it tests)
CANDIDATES = {
    'ft-2ep': ('kjv-gpt2-ft', {}, 'random',
               'pretrained once on 6k other verses (1 epoch), fine-tuned 2 epochs at lr 1e-3 (the preset)'),
    'ft-2ep-controlled': ('kjv-gpt2-ft', {}, 'controlled',
                          'the same, controlled randomness (the subsets of a replicate share the example order)'),
    'ft-lr3e-4': ('kjv-gpt2-ft', {'recipe': {'lr': 3e-4}}, 'random', 'fine-tuned at lr 3e-4 (closer to the linear regime)'),
    'ft-4ep': ('kjv-gpt2-ft', {'recipe': {'epochs': 4}}, 'random', 'fine-tuned 4 epochs'),
    'ft-pre2ep': ('kjv-gpt2-ft', {'pretrain': {'recipe': {'epochs': 2}}}, 'random', 'a better base: pretrained 2 epochs'),
    'ft-pre12k': ('kjv-gpt2-ft', {'pretrain': {'n_verses': 12000}}, 'random', 'a better base: pretrained on 12k verses'),
    'scratch-6ep-controlled': ('kjv-gpt2', {'recipe': {'epochs': 6}}, 'controlled',
                               'kjv-gpt2 from scratch, 3x longer (6 epochs), controlled randomness'),
}

class VariantTask(PresetTask):
    "`PresetTask` of a registered preset with config entries replaced"
    def __init__(self, preset, overrides, **kw):
        super().__init__(preset, **kw); self.overrides = overrides
    def _get(self):
        from pwattr.presets import get_preset
        p = get_preset(self.preset)
        return p.with_config(**self.overrides) if self.overrides else p

def measure(name:str, m:int=16, seeds:int=2)->dict:
    preset, over, mode, what = CANDIDATES[name]
    task = VariantTask(preset, over, n_queries=100, query_seed=0, randomness=mode)
    n, batch, qids, kind, oname, chash, _ = task.setup()
    t0 = time.time()
    gt = run_groundtruth(task.train_fn, task.output_fn, n, batch, m, 0.5, seeds,
                         RES / 'groundtruth' / 'lm-recipes' / f'{name}-{m}x{seeds}.npz', 1, 0, None, kind, qids, chash,
                         {'name': preset, 'output': oname, 'overrides': over, 'candidate': name}, progress=False, randomness=mode)
    return {'candidate': name, 'preset': preset, 'overrides': json.dumps(over, sort_keys=True), 'randomness': mode,
            **gt_stats(gt, 'mean_query_loss'), 'wall_s_this_session': round(time.time() - t0, 1), 'what': what}

if __name__ == '__main__':
    recipe_main(__doc__, CANDIDATES, lambda k, v: f"{k:24s} {v[0]:12s} {v[2]:10s} {v[3]}", measure, RES / 'lm_recipe.csv')
