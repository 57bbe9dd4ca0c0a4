"""ResNet-9 recipes for an LDS ground truth the seeds agree on (issue 16): seed agreement per candidate recipe.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/resnet9_recipe.py ep6-controlled   # one candidate, 16 subsets x 2 seeds
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/resnet9_recipe.py --list

The fmnist-resnet9 counterpart of benchmarks/lm_recipe.py. Each candidate is the registered preset with some recipe
entries replaced (`Preset.with_config`), or a pretrained base fine-tuned on each subset, trained with `run_groundtruth`
on the first 16 subsets of the committed ground truth (subset seed 0, alpha 0.5) x 2 seeds and measured on the same
100 test queries (`PresetTask`'s seeded draw), so seed agreement (`pwattr.evaluate.seed_agreement`) compares like with
like. The preset itself with controlled randomness is `benchmarks/results/groundtruth/fmnist-resnet9-controlled-16x2.npz`
(`benchmarks/gt_randomness.py`); candidate 'preset-controlled' re-trains it here for a timing on the same load.
Ground truths go to benchmarks/results/groundtruth/resnet9-recipes/ (resumable), one row per candidate to
benchmarks/results/resnet9_recipe.csv with the mean seconds per model (train + outputs, one thread; the machine is
shared, so compare seconds only roughly) and the test accuracy of the subset models (mean over the 32, on the 1,000
test images).
"""
import copy, json, time
from functools import lru_cache
from pathlib import Path
import numpy as np, torch
from pwattr.groundtruth import GroundTruth, PresetTask, run_groundtruth
from _recipe import gt_stats, recipe_main

RES = Path(__file__).parent / 'results'
PRE = {'n_per_class': 500, 'init_seed': 0, 'seed': 12345,                      # the base: the bundled split's other 5k images
       'recipe': {'epochs': 6, 'batch_size': 128, 'lr': 4e-3, 'weight_decay': 5e-4, 'optimizer': 'adamw', 'schedule': 'cosine', 'warmup': 0.1}}

# name: (config overrides, randomness, pretrain section or None, what it tests[, seed bases, ground truth to join])
# A candidate with seed bases [2, 3] and a ground truth of the same recipe with bases [0, 1] to join is reported as
# subsets x 4 seeds: seed agreement between the means of seeds (0, 2) and (1, 3).
CANDIDATES = {
    'preset-controlled': ({}, 'controlled', None, 'the preset (3 epochs, lr 4e-3), controlled randomness'),
    'ep6-controlled': ({'recipe': {'epochs': 6}}, 'controlled', None, '6 epochs, lr 4e-3'),
    'ep12-controlled': ({'recipe': {'epochs': 12}}, 'controlled', None, '12 epochs, lr 4e-3'),
    'lr1e-3-controlled': ({'recipe': {'lr': 1e-3}}, 'controlled', None, '3 epochs at lr 1e-3 (closer to the linear regime)'),
    'ep6-random': ({'recipe': {'epochs': 6}}, 'random', None, '6 epochs, lr 4e-3, random seeds'),
    'ft-controlled': ({'recipe': {'lr': 1e-3, 'warmup': 0.0}}, 'controlled', PRE,
                      'a base trained once on the other 5k Fashion-MNIST training images (6 epochs), fine-tuned 3 epochs at lr 1e-3'),
    'preset-controlled-r4': ({}, 'controlled', None, 'the preset, controlled randomness, 4 seeds per subset (seeds 2, 3 trained here, '
                             '0, 1 from gt_randomness.py)', [2, 3], RES / 'groundtruth' / 'fmnist-resnet9-controlled-16x2.npz'),
}

@lru_cache(maxsize=1)
def _base(key:str):
    "The pretrained base: the preset's architecture trained on the bundled training images that are not its 5k"
    from pwattr import data
    from pwattr.presets import get_preset, _build_model
    from pwattr.train import seeded, train_classifier
    pre = json.loads(key); p = get_preset('fmnist-resnet9')
    own = set(p.load()[0].ids)
    big = data.load_fmnist('train', n_per_class=500 + pre['n_per_class'])          # nested: holds the preset's training set
    other = big[torch.tensor([i not in own for i in big.ids])]
    assert len(other) == 10 * pre['n_per_class'], len(other)
    with seeded(pre['init_seed'], 'init'): model = _build_model(dict(p.config['model']))
    return train_classifier(model, other, seed=pre['seed'], progress=False, desc='pretrain', **pre['recipe']).model.eval()

class VariantTask(PresetTask):
    "`PresetTask` of fmnist-resnet9 with config entries replaced, optionally fine-tuning a pretrained base"
    def __init__(self, overrides, pretrain=None, **kw):
        super().__init__('fmnist-resnet9', **kw); self.overrides, self.pretrain = overrides, pretrain
    def _get(self):
        from pwattr.presets import get_preset
        p = get_preset(self.preset)
        return p.with_config(**self.overrides) if self.overrides else p
    def train_fn(self, idx, seed:int):
        if self.pretrain is None: return super().train_fn(idx, seed)
        p = self._get(); train, _ = p.load()
        kw = {**({'order': 'full'} if self.randomness == 'controlled' else {}), **self.train_kwargs}
        model = copy.deepcopy(_base(json.dumps(self.pretrain, sort_keys=True)))
        return p.train(train, idx=idx, seed=seed, progress=False, device=self.device, model=model, **kw).model

def accuracy(task:VariantTask, m:int, seeds:int, mode:str, pretrain)->float:
    "Not stored by the harness: test accuracy of one subset model (subset 0, seed 0), retrained"
    from pwattr.groundtruth import make_subsets, model_seeds
    p = task._get(); train, test = p.load()
    mask = make_subsets(len(train), m, 0.5, 0)[0]; s = int(model_seeds(m, seeds, shared=mode == 'controlled')[0, 0])
    model = task.train_fn(torch.from_numpy(np.flatnonzero(mask)), s)
    with torch.no_grad(): return float((model(test.tensors['x']).argmax(1) == test.tensors['y']).float().mean())

def join(a:GroundTruth, b:GroundTruth)->GroundTruth:
    "Two ground truths of the same subsets and queries with other seeds, side by side: R = R_a + R_b"
    assert (a.masks == b.masks).all() and [str(i) for i in a.query_ids] == [str(i) for i in b.query_ids] and a.config_hash == b.config_hash
    assert not set(a.seeds.ravel()) & set(b.seeds.ravel()), 'the seeds overlap'
    return GroundTruth(a.masks, np.concatenate([a.seeds, b.seeds], 1), np.concatenate([a.outputs, b.outputs], 1), a.query_ids,
                       a.kind, a.config_hash, np.concatenate([a.times, b.times], 1), dict(b.meta))

def measure(name:str, m:int=16, seeds:int=2)->dict:
    over, mode, pre, what, *more = CANDIDATES[name]
    bases, other = more if more else (seeds, None)
    task = VariantTask(over, pre, n_queries=100, query_seed=0, randomness=mode)
    n, batch, qids, kind, oname, chash, _ = task.setup()
    t0 = time.time()
    gt = run_groundtruth(task.train_fn, task.output_fn, n, batch, m, 0.5, bases,
                         RES / 'groundtruth' / 'resnet9-recipes' / f'{name}-{m}x{seeds}.npz', 1, 0, None, kind, qids, chash,
                         {'name': 'fmnist-resnet9', 'output': oname, 'overrides': over, 'pretrain': pre, 'candidate': name},
                         progress=False, randomness=mode)
    wall = time.time() - t0
    if other is not None: gt = join(GroundTruth.load(other), gt)
    return {'candidate': name, 'overrides': json.dumps(over, sort_keys=True), 'pretrain': json.dumps(pre, sort_keys=True) if pre else '',
            'randomness': mode, **gt_stats(gt, 'mean_margin'), 'test_acc_subset0': round(accuracy(task, m, seeds, mode, pre), 4),
            'wall_s_this_session': round(wall, 1), 'what': what}

if __name__ == '__main__':
    recipe_main(__doc__, CANDIDATES, lambda k, v: f"{k:20s} {v[1]:10s} {v[3]}", measure, RES / 'resnet9_recipe.csv')
