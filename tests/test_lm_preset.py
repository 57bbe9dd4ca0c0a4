"kjv-gpt2-ft: the language preset fine-tuned from one pretrained base (issue 16): it builds, pretrains on verses it never trains or is tested on, and trains deterministically"
import os
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import pytest, torch
from pwattr.presets import get_preset, PRESETS, _pretrain_data, _pretrained, _build_model
from pwattr.train import seeded, train_lm

torch.set_num_threads(1)

def same(a, b): return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))

@pytest.fixture(scope='module')
def tiny():
    "kjv-gpt2-ft shrunk: 64 training verses of 32 bytes, pretrained for 3 steps on 48 other verses"
    return get_preset('kjv-gpt2-ft').with_config(data={'n_train': 64, 'n_test': 16, 'ctx_len': 32}, model={'n_ctx': 32},
                                                 pretrain={'n_verses': 48, 'recipe': {'steps': 3, 'batch_size': 16}})

def test_existing_preset_unchanged():
    assert get_preset('kjv-gpt2').config_hash == '38363385c00bf96e'      # the committed ground truth and audit caches' key
    assert 'pretrain' not in get_preset('kjv-gpt2').config
    assert get_preset('kjv-gpt2-ft').config_hash != get_preset('kjv-gpt2').config_hash

def test_pretraining_corpus_is_disjoint():
    p = get_preset('kjv-gpt2-ft'); train, test = p.load()
    pre = _pretrain_data(p.config['data'], p.config['pretrain']['n_verses'])
    assert len(pre) == p.config['pretrain']['n_verses'] == 6000
    assert not set(pre.ids) & set(train.ids) and not set(pre.ids) & set(test.ids)
    assert pre.info['split'] == 'train' and test.info['split'] == 'heldout'

def test_one_base_for_every_seed(tiny):
    n0 = _pretrained.cache_info().misses
    a, b = tiny.make_model(0), tiny.make_model(7)
    assert same(a, b) and a is not b                                  # every seed starts from the same base (a copy)
    assert _pretrained.cache_info().misses == n0 + 1                  # pretrained once, then cached
    bare = tiny.make_model(0, pretrained=False)
    assert not same(a, bare)                                          # pretraining moved the weights
    # the base redone by hand: the init seed's model trained with the pretrain recipe on the disjoint verses
    pre = tiny.config['pretrain']
    with seeded(pre['init_seed'], 'init'): m = _build_model(dict(tiny.config['model']))
    assert pre['init_seed'] == 0 and same(m, bare)                    # the bare model is the init seed's
    ref = train_lm(m, _pretrain_data(tiny.config['data'], pre['n_verses']), seed=pre['seed'], progress=False, **{**PRESETS['kjv-gpt2-ft'].config['pretrain']['recipe'], **pre['recipe']})
    assert ref.steps == 3 and same(ref.model, a)

def test_summary_does_not_pretrain(tiny):
    n0 = _pretrained.cache_info().misses
    s = get_preset('kjv-gpt2-ft').summary()
    assert _pretrained.cache_info().misses == n0
    assert s['params'] == sum(p.numel() for p in get_preset('kjv-gpt2').make_model(0).parameters())   # kjv-gpt2's architecture

def test_one_tiny_step_is_deterministic(tiny):
    train, _ = tiny.load(); idx = torch.arange(0, len(train), 2)
    a, b = (tiny.train(train, idx=idx, seed=0, steps=1, progress=False) for _ in range(2))
    assert a.steps == 1 and same(a.model, b.model)
    assert a.history[0]['loss'] == b.history[0]['loss']
    assert not same(a.model, tiny.make_model(0))                      # the step moved the base
    c = tiny.train(train, idx=idx, seed=1, steps=1, progress=False)   # another seed: another first batch
    d = tiny.train(train, idx=torch.arange(1, len(train), 2), seed=0, steps=1, progress=False)
    assert not same(a.model, c.model) and not same(a.model, d.model)

# Model (7, 1) retrained under ATEN_CPU_CAPABILITY=avx2 / default on the AVX-512 machine that made the ground truth
# (benchmarks/cross_cpu.py kjv-gpt2-ft; benchmarks/results/cross_cpu.txt), largest difference / max|stored| (2.81):
#   AVX2 5.1e-3, DEFAULT 5.6e-3 (0.0157 absolute; pretraining the base on 6k verses carries the last-bit differences).
# The nearest other subset's model is 9.6e-3 away (0.027). 6.2e-3 is 1.1x the measured spread and 0.65x that distance:
# thin, so another CPU reproduces this ground truth only to about half the gap between two subsets' models.
KJV_FT_RTOL = 6.2e-3

def test_committed_groundtruth_reproduces():
    """kjv-gpt2-ft's committed ground truth matches the preset, agrees with itself across seeds, and retraining one of its
    models (pretraining included) gives the stored outputs: bit for bit on the CPU capability it was made with,
    within the measured cross-CPU spread elsewhere"""
    import numpy as np
    from pwattr.groundtruth import GT_DIR, GroundTruth, preset_task, make_subsets, model_seeds
    from pwattr.evaluate import seed_agreement
    gt = GroundTruth.load(GT_DIR / 'kjv-gpt2-ft')
    p = get_preset('kjv-gpt2-ft')
    assert gt.config_hash == p.config_hash, 'the kjv-gpt2-ft recipe changed: regenerate with `python -m pwattr.groundtruth --preset kjv-gpt2-ft --subsets 50 --seeds 2 --randomness controlled`'
    assert (gt.n_subsets, gt.n_seeds, gt.kind, gt.meta['randomness']) == (50, 2, 'loss', 'controlled')
    assert (gt.seeds == model_seeds(50, 2, shared=True)).all() and (gt.masks == make_subsets(1500, 50, 0.5, 0)).all()
    assert seed_agreement(gt).mean >= 0.5
    task, _ = preset_task('kjv-gpt2-ft', gt.meta['n_queries'], gt.meta['query_seed'], randomness='controlled')
    n, batch, qids, kind, out, chash, _ = task.setup()
    assert [str(q) for q in qids] == [str(q) for q in gt.query_ids] and out == gt.meta['output'] == 'lm_loss'
    j, r = 7, 1
    model = task.train_fn(torch.from_numpy(np.flatnonzero(gt.masks[j])), int(gt.seeds[j, r]))
    with torch.no_grad(): o = task.output_fn(model, batch).numpy()
    same_cpu = gt.meta.get('cpu_capability') == torch.backends.cpu.get_cpu_capability() and gt.meta.get('torch') == torch.__version__
    if same_cpu: np.testing.assert_array_equal(o, gt.outputs[j, r])            # same instruction set: bit-identical
    else: np.testing.assert_allclose(o, gt.outputs[j, r], rtol=0, atol=KJV_FT_RTOL * np.abs(gt.outputs[j, r]).max())
    other = min(np.abs(gt.outputs[k, r] - gt.outputs[j, r]).max() for k in range(gt.n_subsets) if k != j)
    assert other > 1.5 * KJV_FT_RTOL * np.abs(gt.outputs[j, r]).max(), other   # the tolerance still tells the other subsets' models apart
