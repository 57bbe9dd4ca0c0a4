"""Issue 17, on the models that showed each defect: BatchNorm CNN in train mode, BERT / DistilBERT with padding, GPT-2 and
Llama LM losses, a peft LoRA model, a diffusers UNet2DConditionModel, and data from Datasets / DataLoaders"""
import copy, hashlib, json, os, warnings
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import pandas as pd, pytest, torch
from torch import nn
from torch.utils.data import TensorDataset, DataLoader, Dataset
from pwattr.grouping import GroupSpec, model_kind, hf_layer_list
from pwattr.features import (per_example_grads, group_grads, featurize, model_fingerprint, CrossEntropy, Margin, LMLoss,
                             Examples, attribution_mode)
from pwattr.kronecker import (kron_features, fit_kron_factors, fisher_output_for, EKFAC, LoGRA, kron_coverage,
                              layer_group_map)
from pwattr.methods import Contributions

torch.set_num_threads(1)

def rel_close(a, b, rtol=1e-5):
    "a == b up to rtol times the largest |b| (float32 sums)"
    assert a.shape == b.shape, (a.shape, b.shape)
    err, scale = (a - b).abs().max().item(), b.abs().max().item()
    assert err <= rtol * max(scale, 1e-30), (err, scale)

def bn_cnn(seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                      nn.Dropout(0.5), nn.Linear(16, 3))
    with torch.no_grad(): m[1].running_mean.normal_(); m[1].running_var.uniform_(0.5, 2)
    return m.train()

def bn_data(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {'x': torch.randn(n, 1, 6, 6, generator=g), 'y': torch.randint(0, 3, (n,), generator=g)}

def reference(model, out_fn, batch, names):
    "Per-example gradients by one backward per example on a copy in eval mode"
    m = copy.deepcopy(model).eval(); rows = []
    for i in range(len(next(iter(batch.values())))):
        m.zero_grad(); out_fn(m, {k: v[i:i + 1] for k, v in batch.items()}).sum().backward()
        p = dict(m.named_parameters()); rows.append(torch.cat([p[n].grad.flatten() for n in names]))
    return torch.stack(rows)

def caught(fn):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always'); out = fn()
    return out, [str(x.message) for x in w]

# ---------------------------------------------------------------- fingerprint
def test_fingerprint_batchnorm():
    m = bn_cnn(); fp = model_fingerprint(m)              # crashed on num_batches_tracked (a 0-d int64 buffer)
    m2 = copy.deepcopy(m); m2[1].num_batches_tracked += 1
    assert model_fingerprint(m2) != fp
    def before(model):
        h = hashlib.sha256()
        for n, t in list(model.named_parameters()) + list(model.named_buffers()):
            t = t.detach().cpu().contiguous(); h.update(f"{n}|{t.dtype}|{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b'')
        return h.hexdigest()[:16]
    mlp = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)); mlp.register_buffer('scale', torch.ones(3))
    assert model_fingerprint(mlp) == before(mlp)         # stores written before stay valid

# ---------------------------------------------------------------- train mode
def check_restored(m, stats):
    assert [x.training for x in m] == [True] * len(m)
    assert torch.equal(m[1].running_mean, stats[0]) and torch.equal(m[1].num_batches_tracked, stats[1])

def test_train_mode_per_example_grads():
    m, b = bn_cnn(), bn_data(); gs = GroupSpec.by_module(m)
    stats = (m[1].running_mean.clone(), m[1].num_batches_tracked.clone())
    (g, _), msgs = caught(lambda: per_example_grads(m, CrossEntropy(), b, gs))
    assert sum('train mode' in s for s in msgs) == 1, msgs
    assert not any('per-example loop' in s for s in msgs), msgs      # vmap runs in eval mode: no false fallback
    check_restored(m, stats)
    rel_close(torch.cat(group_grads(g, gs), 1), reference(m, CrossEntropy(), b, gs.params))
    (g2, _), msgs = caught(lambda: per_example_grads(m, CrossEntropy(), b, gs, method='loop'))
    assert not any('train mode' in s for s in msgs)                  # once per model and entry point
    rel_close(torch.cat(group_grads(g2, gs), 1), torch.cat(group_grads(g, gs), 1))

def test_train_mode_featurize_and_kron():
    m, b = bn_cnn(), bn_data(); gs = GroupSpec.by_module(m)
    stats = (m[1].running_mean.clone(), m[1].num_batches_tracked.clone())
    f, msgs = caught(lambda: featurize(m, 'cross_entropy', b, gs, batch_size=4, progress=False))
    assert any('featurize' in s and 'train mode' in s for s in msgs), msgs
    check_restored(m, stats)
    rel_close(f.x, reference(m, CrossEntropy(), b, gs.params))
    kf, msgs = caught(lambda: kron_features(m, CrossEntropy(), b, batch_size=4))
    assert any('kron_features' in s for s in msgs); check_restored(m, stats)
    ref = kron_features(copy.deepcopy(m).eval(), CrossEntropy(), b)
    rel_close(kf.x, ref.x)
    fac, msgs = caught(lambda: fit_kron_factors(m, b, fisher_output_for(CrossEntropy()), batch_size=4))
    assert any('fit_kron_factors' in s for s in msgs); check_restored(m, stats)

def test_attribution_mode_keeps_module_modes():
    m = bn_cnn(); m[5].eval()                                         # the user froze dropout only
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        with attribution_mode(m, 'test'): assert not any(x.training for x in m)
    assert [x.training for x in m] == [True, True, True, True, True, False, True]

# ---------------------------------------------------------------- text classifiers
def bert(kind='bert'):
    from transformers import BertConfig, BertForSequenceClassification, DistilBertConfig, DistilBertForSequenceClassification
    torch.manual_seed(0)
    if kind == 'bert':
        return BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                                        intermediate_size=32, max_position_embeddings=16, num_labels=3)).eval()
    return DistilBertForSequenceClassification(DistilBertConfig(vocab_size=50, dim=16, n_layers=2, n_heads=2, hidden_dim=32,
                                                                max_position_embeddings=16, num_labels=3)).eval()

def text_batch():
    g = torch.Generator().manual_seed(0)
    b = {'input_ids': torch.randint(5, 50, (4, 10), generator=g), 'attention_mask': torch.ones(4, 10, dtype=torch.long),
         'y': torch.tensor([0, 1, 2, 1])}
    b['attention_mask'][1, 6:] = 0; b['input_ids'][1, 6:] = 0; b['attention_mask'][3, 8:] = 0
    return b

@pytest.mark.parametrize('kind', ['bert', 'distilbert'])
@pytest.mark.parametrize('out', [Margin, CrossEntropy])
def test_classifier_outputs_use_attention_mask(kind, out):
    m, b = bert(kind), text_batch(); fn = out(x='input_ids')
    padded = fn(m, b)[1:2]
    alone = fn(m, {'input_ids': b['input_ids'][1:2, :6], 'y': b['y'][1:2]})
    rel_close(padded, alone, 1e-5)
    if out is Margin: rel_close(fn.q(m, b)[1:2], fn.q(m, {'input_ids': b['input_ids'][1:2, :6], 'y': b['y'][1:2]}), 1e-5)

@pytest.mark.parametrize('kind', ['bert', 'distilbert'])
def test_encoders_keep_vmap(kind):
    m, b = bert(kind), text_batch(); gs = GroupSpec.by_module(m); fn = Margin(x='input_ids')
    with warnings.catch_warnings():
        warnings.simplefilter('error', UserWarning)
        gv, ov = per_example_grads(m, fn, b, gs, method='vmap')      # failed in transformers 5 (padding_mask.all())
    gl, ol = per_example_grads(m, fn, b, gs, method='loop')
    rel_close(torch.cat(group_grads(gv, gs), 1), torch.cat(group_grads(gl, gs), 1))
    rel_close(ov, ol)
    rel_close(torch.cat(group_grads(gl, gs), 1), reference(m, fn, b, gs.params))
    # the padded example's gradient is the gradient of the example alone (padding does not leak in)
    alone, _ = per_example_grads(m, fn, {'input_ids': b['input_ids'][1:2, :6], 'y': b['y'][1:2]}, gs, method='vmap')
    rel_close(torch.cat(group_grads(gv, gs), 1)[1:2], torch.cat(group_grads(alone, gs), 1), 1e-5)   # main: 3e-4

# ---------------------------------------------------------------- LM loss
def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2, bos_token_id=1,
                                      eos_token_id=2, pad_token_id=0)).eval()

def llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)).eval()

def test_lm_loss_longer_than_positions():
    m = gpt2(); long = {'input_ids': torch.randint(3, 64, (2, 20))}
    with pytest.raises(ValueError, match='16 positions'): LMLoss()(m, long)        # was IndexError: index out of range
    rel_close(LMLoss(truncate=True)(m, long), LMLoss()(m, {'input_ids': long['input_ids'][:, :16]}))
    assert LMLoss(truncate=True).config()['truncate'] is True and 'truncate' not in LMLoss().config()

@pytest.mark.parametrize('make', [gpt2, llama])
def test_lm_loss_left_padding_and_labels(make):
    m = make(); seq = torch.randint(3, 64, (1, 8), generator=torch.Generator().manual_seed(0))
    z = torch.zeros(1, 4, dtype=torch.long)
    left = {'input_ids': torch.cat([z, seq], 1), 'attention_mask': torch.cat([z, torch.ones_like(seq)], 1)}
    rel_close(LMLoss()(m, left), LMLoss()(m, {'input_ids': seq}), 1e-5)
    lab = seq.clone(); lab[:, :5] = -100
    with torch.no_grad(): logp = m(seq).logits[:, :-1].log_softmax(-1).gather(2, seq[:, 1:, None])[..., 0]
    rel_close(LMLoss()(m, {'input_ids': seq, 'labels': lab}).detach(), -logp[:, 4:].mean(1), 1e-5)
    rel_close(LMLoss('sum')(m, {'input_ids': seq, 'labels': lab}).detach(), -logp[:, 4:].sum(1), 1e-5)
    # right padding: unchanged by the fix
    right = {'input_ids': torch.cat([seq, z], 1), 'attention_mask': torch.cat([torch.ones_like(seq), z], 1)}
    rel_close(LMLoss()(m, right), LMLoss()(m, {'input_ids': seq}), 1e-5)

# ---------------------------------------------------------------- Kronecker groups, merging, coverage
def test_kron_by_tensor_says_so():
    m, b = bn_cnn().eval(), bn_data()
    f, msgs = caught(lambda: kron_features(m, CrossEntropy(), b, layers=GroupSpec.by_tensor(m, include=r'^(0|6)\.')))
    assert f.groups == ['0', '6'] and any('one group per layer' in s for s in msgs), msgs
    _, msgs = caught(lambda: kron_features(m, CrossEntropy(), b, layers=GroupSpec.by_module(m, include=r'^(0|6)\.')))
    assert not any('one group per layer' in s for s in msgs)

def test_merge_groups_by_hand():
    g = torch.Generator().manual_seed(0)
    S = torch.randn(3, 5, 4, generator=g)
    c = Contributions(S, ['a.A', 'a.B', 'b.A', 'c'], method='x')
    m = c.merge_groups({'a.A': 'a', 'a.B': 'a', 'b.A': 'b'})
    assert m.groups == ['a', 'b', 'c'] and m.method == 'x'
    torch.testing.assert_close(m.S, torch.stack([S[..., 0] + S[..., 1], S[..., 2], S[..., 3]], -1))
    torch.testing.assert_close(m.scores({'a': 0.5}), c.scores({'a.A': 0.5, 'a.B': 0.5}))
    with pytest.raises(KeyError, match='Close matches'): c.merge_groups({'a.a': 'x'})

def lora_model():
    pytest.importorskip('peft')
    from peft import LoraConfig, get_peft_model
    m = get_peft_model(llama(), LoraConfig(r=2, lora_alpha=4, target_modules=['q_proj', 'v_proj', 'down_proj'], init_lora_weights=False))
    return m.eval()

def test_lora_kron_merged_into_adapted_modules():
    m = lora_model(); spec = GroupSpec.preset(m)
    g = torch.Generator().manual_seed(0)
    data = {'input_ids': torch.randint(3, 64, (6, 8), generator=g)}
    f, msgs = caught(lambda: kron_features(m, LMLoss(), data, layers=spec, batch_size=3))
    assert len(f.groups) == 2 * len(spec) and any('merge_groups' in s for s in msgs)
    C = LoGRA().fit(f).contributions(f[:2])
    M = C.merge_groups(layer_group_map(spec))
    assert M.groups == spec.names
    for j, gname in enumerate(spec.names):
        cols = [i for i, l in enumerate(C.groups) if l.startswith('base_model.model.' + gname + '.lora_')]
        assert len(cols) == 2
        torch.testing.assert_close(M.S[..., j], C.S[..., cols[0]] + C.S[..., cols[1]])

def test_gpt2_coverage():
    m = gpt2(); g = torch.Generator().manual_seed(0)
    data = {'input_ids': torch.randint(3, 64, (6, 8), generator=g)}
    f = kron_features(m, LMLoss(), data)
    cov = f.meta['coverage']
    assert cov['partial'] == ['transformer.wte.weight']
    assert set(cov['not_covered']) == {'transformer.wpe.weight', 'transformer.ln_f.weight', 'transformer.ln_f.bias'} | \
        {f'transformer.h.0.ln_{i}.{w}' for i in (1, 2) for w in ('weight', 'bias')}
    assert len(cov['covered']) == 8                          # 4 Conv1D layers, weight and bias
    ek = EKFAC(fit_kron_factors(m, data, fisher_output_for(LMLoss()))).fit(f)
    assert ek.covered == cov['covered'] and 'transformer.wte.weight' in ek.not_covered
    assert LoGRA().fit(kron_features(m, LMLoss(), data, rank=2)).not_covered == ek.not_covered
    with pytest.raises(RuntimeError, match='once fitted'): LoGRA().covered

# ---------------------------------------------------------------- diffusion
def test_train_diffusion_conditional_unet():
    from diffusers import UNet2DConditionModel
    from pwattr.train import train_diffusion
    from pwattr.data import ExampleSet
    torch.manual_seed(0)
    u = UNet2DConditionModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                             down_block_types=('CrossAttnDownBlock2D', 'DownBlock2D'), up_block_types=('UpBlock2D', 'CrossAttnUpBlock2D'),
                             cross_attention_dim=8, attention_head_dim=4, norm_num_groups=4)
    g = torch.Generator().manual_seed(0)
    es = ExampleSet('toy', {'x': torch.rand(8, 1, 8, 8, generator=g) * 2 - 1, 'encoder_hidden_states': torch.randn(8, 3, 8, generator=g)},
                    pd.DataFrame({'id': range(8)}))
    r = train_diffusion(u, es, steps=3, batch_size=4, progress=False)
    assert len(r.losses()) == 3
    with pytest.raises(KeyError, match='encoder_hidden_states'):
        train_diffusion(u, ExampleSet('toy', {'x': es.tensors['x']}, es.meta), steps=1, progress=False)

# ---------------------------------------------------------------- grouping presets
PRESET_GROUPS_ON_MAIN = {   # sha256 of groups + function/block/module views per level, computed with main's pwattr (7ae963d)
 "fmnist-mlp/tensor": "76ae8d3678d1019d", "fmnist-mlp/module": "72d061105caa521b", "fmnist-mlp/block": "72d061105caa521b",
 "fmnist-mlp/function": "76ae8d3678d1019d", "fmnist-resnet9/tensor": "123b9aa24b2b4ab2", "fmnist-resnet9/module": "f07db985920ed31a",
 "fmnist-resnet9/block": "c7086d7ab781d3ff", "fmnist-resnet9/function": "b75a30eacd9558a7", "fmnist-vit/tensor": "761cae2ace602d72",
 "fmnist-vit/module": "a0428faca50a79ed", "fmnist-vit/block": "2e997b9c86687f39", "fmnist-vit/function": "5cce91c9fa41adea",
 "kjv-gpt2/tensor": "b77fcc312b83a112", "kjv-gpt2/module": "9627f3cd93ccfa02", "kjv-gpt2/block": "c78be14cc8b3bad7",
 "kjv-gpt2/function": "dd370d3df0c48ac8", "emoji-unet/tensor": "db3dad8c806d8978", "emoji-unet/module": "75ccb1d9b7e7c377",
 "emoji-unet/block": "f6606ffea9b2368e", "emoji-unet/function": "af774a70b58996f6", "sbemoji-cond/tensor": "646cd414a5825f8b",
 "sbemoji-cond/module": "1a513d306bc6405d", "sbemoji-cond/block": "3ab1e43f4ddcb0ed", "sbemoji-cond/function": "48f90c34e2d104d7"}

@pytest.mark.parametrize('name', sorted({k.split('/')[0] for k in PRESET_GROUPS_ON_MAIN}))
def test_existing_presets_unchanged(name):
    from pwattr.presets import PRESETS
    m = PRESETS[name].make_model(0)
    for level in ('tensor', 'module', 'block', 'function'):
        g = GroupSpec.preset(m, level)
        d = {'groups': g.to_dict()['groups'], 'views': {v: g.labels(v) for v in ('function', 'block', 'module')}}
        assert hashlib.sha256(json.dumps(d).encode()).hexdigest()[:16] == PRESET_GROUPS_ON_MAIN[f'{name}/{level}'], level

def test_presets_new_families():
    b = bert()
    assert model_kind(b) == 'bert' and GroupSpec.preset(b, 'block').names == ['embeddings', 'layer.0', 'layer.1', 'pooler', 'classifier']
    fn = GroupSpec.preset(b, 'function')
    assert 'attention.output.dense' in fn.names and 'output.dense' in fn.names
    assert all('.attention.' not in p for p in fn['output.dense'])
    d = bert('distilbert')
    assert GroupSpec.preset(d, 'block').names == ['embeddings', 'layer.0', 'layer.1', 'pre_classifier', 'classifier']
    l = llama()
    assert model_kind(l) == 'hf' and hf_layer_list(l) == 'model.layers'
    gb = GroupSpec.preset(l, 'block')
    assert gb.names == ['embed_tokens', 'layers.0', 'layers.1', 'norm', 'lm_head']
    assert set(GroupSpec.preset(l).labels('block')) == set(gb.names)

def test_presets_peft():
    m = lora_model()
    assert model_kind(m) == 'peft'
    gm = GroupSpec.preset(m)
    assert len(gm) == 6 and all(len(ps) == 2 and {p.split('.lora_')[1][0] for p in ps} == {'A', 'B'} for ps in gm.groups.values())
    assert GroupSpec.preset(m, 'function').names == ['self_attn.q_proj', 'self_attn.v_proj', 'mlp.down_proj']
    assert GroupSpec.preset(m, 'block').names == ['layers.0', 'layers.1']

# ---------------------------------------------------------------- data sources
class DictItems(Dataset):
    def __init__(self, d): self.d = d
    def __len__(self): return len(self.d['x'])
    def __getitem__(self, i): return {**{k: v[i] for k, v in self.d.items()}, 'name': f'ex{i}'}

def test_featurize_and_kron_from_datasets_and_loaders():
    m, b = bn_cnn().eval(), bn_data(10)
    gs = GroupSpec.by_module(m)
    ref = featurize(m, 'margin', b, gs, batch_size=4, progress=False)
    kref = kron_features(m, Margin(), b, batch_size=4)
    sources = [TensorDataset(b['x'], b['y']), DataLoader(TensorDataset(b['x'], b['y']), batch_size=3, shuffle=True),
               DictItems(b), DataLoader(DictItems(b), batch_size=3)]
    for src in sources:
        f = featurize(m, 'margin', src, gs, batch_size=4, progress=False)
        assert f.ids == ref.ids; rel_close(f.x, ref.x); rel_close(f.extras['q'], ref.extras['q'])
        k = kron_features(m, Margin(), src, batch_size=4)
        assert k.ids == kref.ids; rel_close(k.x, kref.x)
    batches = [{k: v[i:i + 4] for k, v in b.items()} for i in range(0, 10, 4)]   # a list stays a list of batches
    rel_close(kron_features(m, Margin(), batches).x, kref.x)
    f = featurize(m, 'margin', TensorDataset(b['y'], b['x']), gs, progress=False, keys=('y', 'x'))
    rel_close(f.x, ref.x)
    with pytest.raises(TypeError, match='random access'): Examples(iter([1]))

def test_featurize_hf_datasets():
    datasets = pytest.importorskip('datasets')
    m, b = bn_cnn().eval(), bn_data(10)
    ds = datasets.Dataset.from_dict({'x': b['x'].numpy(), 'y': b['y'].numpy(), 'text': [f'ex{i}' for i in range(10)]})
    gs = GroupSpec.by_module(m)
    ref = featurize(m, 'margin', b, gs, batch_size=4, progress=False)
    rel_close(featurize(m, 'margin', ds, gs, batch_size=4, progress=False).x, ref.x)
    rel_close(kron_features(m, Margin(), ds, batch_size=4).x, kron_features(m, Margin(), b, batch_size=4).x)
