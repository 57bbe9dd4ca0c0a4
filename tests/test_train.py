"Trainers and presets: determinism, checkpoints, the conditional UNet's attribute tokens, preset errors"
import json, hashlib, os
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import pytest, torch
from pwattr.models import AttributeUNet, MLP, ATTRIBUTES
from pwattr.train import fit, train_classifier, seeded, checkpoint_steps, _lr_at
from pwattr.presets import PRESETS, get_preset, PresetNotFound, config_hash

torch.set_num_threads(1)

def tiny(name, **recipe):
    "a registered preset shrunk to a few optimiser steps on a small subset"
    p = get_preset(name)
    data = {'fmnist': {'n_train': 300, 'n_test': 100}, 'kjv': {'n_train': 64, 'n_test': 16, 'ctx_len': 32}}.get(p.config['data']['source'], {})
    over = {'recipe': {'batch_size': 16, 'steps': 4, **recipe}}
    if data: over['data'] = data
    if p.domain == 'language': over['model'] = {'n_ctx': 32}
    if 'pretrain' in p.config: over['pretrain'] = {'n_verses': 32, 'recipe': {'batch_size': 16, 'steps': 2}}
    return p.with_config(**over)

def same(a, b): return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))

@pytest.mark.parametrize('name', list(PRESETS))
def test_bitwise_identical_for_same_seed(name):
    p = tiny(name); train, _ = p.load()
    idx = torch.arange(0, len(train), 2)
    a = p.train(train, idx=idx, seed=0, progress=False)
    b = p.train(train, idx=idx.flip(0).tolist(), seed=0, progress=False)   # order of idx must not matter
    c = p.train(train, idx=idx, seed=1, progress=False)
    d = p.train(train, idx=torch.arange(1, len(train), 2), seed=0, progress=False)
    assert same(a.model, b.model), f"{name}: same idx + seed gave different weights"
    assert not same(a.model, c.model), f"{name}: a different seed gave identical weights"
    assert not same(a.model, d.model), f"{name}: different training examples gave identical weights"
    assert [h['loss'] for h in a.history] == [h['loss'] for h in b.history]
    # the trained weights moved away from the seed's initialisation
    assert not same(a.model, p.make_model(0)) and same(p.make_model(0), p.make_model(0))

def test_caller_rng_untouched():
    p = tiny('fmnist-mlp'); train, _ = p.load()
    torch.manual_seed(123); before = torch.rand(3)
    torch.manual_seed(123); p.train(train, seed=0, progress=False); after = torch.rand(3)
    assert torch.equal(before, after)

def test_checkpoints_at_asked_steps():
    p = tiny('fmnist-mlp', steps=10); train, _ = p.load()
    r = p.train(train, seed=0, checkpoints=[0, 3, 7, 10], progress=False)
    assert [c[0] for c in r.checkpoints] == [0, 3, 7, 10]
    rec = p.config['recipe']
    for step, lr, _ in r.checkpoints:   # lr = the rate of the step that produced the checkpoint (step 0: the first)
        assert lr == pytest.approx(r.history[max(step, 1) - 1]['lr'])
        assert lr == pytest.approx(_lr_at(max(step, 1) - 1, 10, rec['lr'], rec['schedule'], rec['warmup']))
    init, final = p.make_model(0), p.make_model(0)
    init.load_state_dict(r.checkpoints[0][2]); final.load_state_dict(r.checkpoints[-1][2])
    assert same(init, p.make_model(0)) and same(final, r.model)
    # the step-3 checkpoint is the model after exactly 3 steps of the same run: redo them by hand with `fit`
    m3 = p.make_model(0); m3.load_state_dict(r.checkpoints[1][2])
    short = p.train(train, seed=0, checkpoints=[3], progress=False)
    assert not same(m3, p.make_model(0)) and not same(m3, r.model)
    assert [h['loss'] for h in short.history[:3]] == [h['loss'] for h in r.history[:3]]
    # checkpoints as a count: evenly spaced, ending at the last step
    assert checkpoint_steps(10, 4) == [2, 5, 8, 10]
    with pytest.raises(ValueError, match=r'outside \[0, 10\]'): p.train(train, seed=0, checkpoints=[11], progress=False)

def test_checkpoint_equals_a_truncated_constant_lr_run():
    "with a constant rate, the checkpoint at step k equals a separate run of k steps (independent check)"
    p = tiny('fmnist-mlp', steps=6, schedule='constant'); train, _ = p.load()
    r = p.train(train, seed=0, checkpoints=[4], progress=False)
    k = p.with_config(recipe={'steps': 4}).train(train, seed=0, progress=False)
    m = p.make_model(0); m.load_state_dict(r.checkpoints[0][2])
    assert r.checkpoints[0][1] == p.config['recipe']['lr']
    # the order generator draws a fresh permutation per epoch; 4 steps of 16 stay in epoch 0 in both runs
    assert same(m, k.model)

def test_conditional_unet_output_changes_with_each_attribute():
    with seeded(0, 'init'): m = AttributeUNet({'subject': 5, 'style': 2, 'background': 4}, channels=(16, 32), cond_dim=32)
    m.eval()
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 3, 16, 16, generator=g), torch.tensor([10, 500])
    base = dict(subject=torch.tensor([1, 1]), style=torch.tensor([0, 0]), background=torch.tensor([2, 2]))
    with torch.no_grad():
        y0 = m(x, t, **base)
        assert torch.equal(y0, m(x, t, **base))
        for a, other in [('subject', 3), ('style', 1), ('background', 0)]:
            for v in (other, -1, None):   # another value, then unspecified (-1 / None)
                y = m(x, t, **{**base, a: None if v is None else torch.tensor([v, v])})
                assert (y - y0).abs().max() > 1e-4, f"changing {a} to {v} left the output unchanged"
        # -1 and None both mean unspecified
        test_none = m(x, t, **{**base, 'style': None}); test_m1 = m(x, t, **{**base, 'style': torch.tensor([-1, -1])})
        assert torch.equal(test_none, test_m1)
    with pytest.raises(ValueError, match='subject tokens must be in'):
        m(x, t, subject=torch.tensor([5, 0]))

def test_bad_preset_name_is_clear():
    with pytest.raises(PresetNotFound) as e: get_preset('fmnist-mpl')
    msg = str(e.value)
    assert "'fmnist-mlp'" in msg and 'registered presets' in msg and all(n in msg for n in PRESETS)
    with pytest.raises(KeyError): get_preset('nope')   # still a KeyError for callers catching that
    with pytest.raises(ValueError, match='unknown config sections'): get_preset('fmnist-mlp').with_config(recepie={})

def test_config_hash_stable():
    for name, p in PRESETS.items():
        cfg = {'domain': p.domain, 'output': p.output, **p.config}
        expect = hashlib.sha256(json.dumps(cfg, sort_keys=True, separators=(',', ':')).encode()).hexdigest()[:16]
        assert p.config_hash == expect == config_hash(cfg)
    p = get_preset('fmnist-mlp')
    assert p.with_config(recipe={'epochs': 8}).config_hash == p.config_hash   # same values -> same hash
    assert p.with_config(recipe={'epochs': 9}).config_hash != p.config_hash
    assert len({p.config_hash for p in PRESETS.values()}) == len(PRESETS)

def test_outputs_and_idx_errors():
    assert {p.output for p in PRESETS.values()} == {'margin', 'lm_loss', 'diffusion_loss'}
    p = tiny('fmnist-mlp'); train, _ = p.load()
    with pytest.raises(ValueError, match='idx must lie in'): p.train(train, idx=[len(train)], progress=False)
    with pytest.raises(ValueError, match='boolean idx must have shape'): p.train(train, idx=torch.ones(3, dtype=torch.bool), progress=False)
