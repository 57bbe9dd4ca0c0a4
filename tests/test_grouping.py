"GroupSpec presets on the project's models: coverage, disjointness, views, errors"
import os
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import pytest, torch
from torch import nn
from pwattr.grouping import GroupSpec, function_of, block_of, model_kind
from pwattr import models

torch.set_num_threads(1)

def _models():
    return {'mlp': models.MLP(hidden=(16,)), 'resnet9': models.ResNet9(width=4), 'vit': models.ViT(dim=16, depth=2, heads=2),
            'gpt2': models.gpt2_lm(n_layer=2, n_embd=32, n_head=2, n_ctx=16),
            'unet': models.unet2d(sample_size=8, channels=(8, 16), norm_groups=4),
            'cond': models.AttributeUNet({'subject': 3, 'style': 2, 'background': 2}, sample_size=8, channels=(8, 16),
                                         cond_dim=16, norm_groups=4)}

@pytest.fixture(scope='module')
def zoo(): return _models()

@pytest.mark.parametrize('name', ['mlp', 'resnet9', 'vit', 'gpt2', 'unet', 'cond'])
@pytest.mark.parametrize('level', ['tensor', 'module', 'block', 'function'])
def test_preset_covers_every_parameter_once(zoo, name, level):
    m = zoo[name]; g = GroupSpec.preset(m, level)
    named = dict(m.named_parameters())
    assert sorted(g.params) == sorted(named)                      # every trainable tensor, once
    assert len(set(g.params)) == len(g.params)
    assert g.n_params == sum(p.numel() for p in m.parameters())   # independent count
    for name_, ps in g.groups.items():
        assert g.sizes[g.index(name_)] == sum(named[p].numel() for p in ps)
    assert GroupSpec.from_dict(g.to_dict()) == g
    assert '| group |' in g._repr_markdown_()

def test_kinds(zoo):
    assert {k: model_kind(m) for k, m in zoo.items()} == {'mlp': 'torch', 'resnet9': 'torch', 'vit': 'vit', 'gpt2': 'gpt2',
                                                          'unet': 'unet', 'cond': 'unet'}

def test_gpt2_functions(zoo):
    g = GroupSpec.preset(zoo['gpt2'])
    v = g.view('function')
    for f in ['attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj']:
        assert v[f] == [f'transformer.h.{i}.{f}' for i in range(2)]
    assert GroupSpec.preset(zoo['gpt2'], 'block').names == ['wte', 'wpe', 'transformer.h.0', 'transformer.h.1', 'ln_f']

def test_cond_unet_separates_self_and_cross_attention(zoo):
    g = GroupSpec.preset(zoo['cond'])
    v = g.view('function')
    for f in ['attn1.to_q', 'attn1.to_k', 'attn1.to_v', 'attn1.to_out', 'attn2.to_q', 'attn2.to_k', 'attn2.to_v', 'attn2.to_out']:
        assert f in v and all(f.split('.')[0] in grp for grp in v[f])
    assert 'embed.subject' in v and 'time_embedding' in v and 'conv_in' in v and 'conv_out' in v and 'resnets.conv1' in v
    b = GroupSpec.preset(zoo['cond'], 'block')     # the wrapped UNet is looked into
    assert b.names[0] == 'embed'
    assert {'unet.conv_in', 'unet.time_embedding', 'unet.down_blocks.0', 'unet.down_blocks.1', 'unet.mid_block',
            'unet.up_blocks.0', 'unet.up_blocks.1', 'unet.conv_out'} <= set(b.names)
    # the function view of a function-level spec is the identity
    gf = GroupSpec.preset(zoo['cond'], 'function')
    assert list(gf.view('function')) == gf.names

def test_vit_blocks(zoo):
    g = GroupSpec.preset(zoo['vit'], 'block')
    assert g.names == ['cls', 'pos', 'patch', 'blocks.0', 'blocks.1', 'ln', 'head']

def test_errors():
    m = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    with pytest.raises(ValueError, match="in groups 'a' and 'b'"): GroupSpec({'a': ['0.weight'], 'b': ['0.weight']}, m)
    with pytest.raises(ValueError, match="is empty"): GroupSpec({'a': ['0.bias'], 'b': []}, m)
    with pytest.raises(KeyError, match="Close matches: 1.bias"): GroupSpec({'a': ['1.bais']}, m)
    m[1].bias.requires_grad_(False)
    with pytest.raises(ValueError, match='requires_grad=False'): GroupSpec({'a': ['1.bias']}, m)
    assert '1.bias' not in GroupSpec.by_tensor(m).params          # frozen parameters are left out
    with pytest.raises(ValueError, match='match no trainable parameter'): GroupSpec.by_regex(m, {'x': 'nothing'})
    with pytest.raises(ValueError, match='Unknown level'): GroupSpec.preset(m, 'modul')
    g = GroupSpec.by_module(m)
    with pytest.raises(KeyError, match='does not have'): g.parameters(nn.Sequential(nn.Linear(3, 2)))

def test_by_regex_first_match_and_rest():
    m = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2), nn.Linear(2, 1))
    g = GroupSpec.by_regex(m, {'w': r'weight', 'first': r'^0\.'}, rest='other')
    assert dict(g.groups) == {'w': ['0.weight', '1.weight', '2.weight'], 'first': ['0.bias'], 'other': ['1.bias', '2.bias']}
    g2 = GroupSpec.by_regex(m, {'first': r'^0\.', 'last': r'^2\.'})
    assert g2.params == ['0.weight', '0.bias', '2.weight', '2.bias']   # '1.*' frozen

def test_name_helpers():
    assert block_of('up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0.weight') == 'up_blocks.1'
    assert function_of('up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0.weight') == 'attn1.to_out'
    assert function_of('mid_block.attentions.0.to_k.weight') == 'attn.to_k'
    assert function_of('transformer.h.1.mlp.c_proj.bias') == 'mlp.c_proj'
