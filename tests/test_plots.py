"""Plots and the explorer: values drawn, top-k under weights, and the widget callbacks called directly."""
import base64, html, json, os
os.environ.setdefault('MPLBACKEND', 'Agg')
import numpy as np, pandas as pd, torch
import pytest
from hypothesis import given, settings, strategies as st
from pwattr.plots import (group_values, block_function_table, plot_group_lds, plot_block_function, plot_weights,
                          weight_table, plot_weight_sets, cosine_matrix, plot_weight_cosine, display_image, topk_under,
                          topk_rows, plot_gallery, plot_topk_gallery, lds_long_table, plot_lds_table, img_tag, PlotFigure)
from pwattr.explorer import Explorer

torch.set_num_threads(1)

def known_S():
    "2 queries x 6 training items x 2 groups: group a ranks 0,1,2 first for q0; group b ranks 5,4,3 (weaker)"
    S = torch.zeros(2, 6, 2)
    S[0, :, 0] = S[1, :, 1] = torch.tensor([3., 2.5, 2., 0., 0., 0.])
    S[0, :, 1] = S[1, :, 0] = torch.tensor([0., 0., 0., 1., 1.2, 1.4])
    return S

def shown(view_html:str)->list:
    return json.loads(html.unescape(view_html.split("data-ids='")[1].split("'")[0]))

# --- the explorer's callbacks ---------------------------------------------------------------------------

def test_topk_changes_when_weights_change():
    ex = Explorer({'toy': known_S()}, torch.rand(6, 1, 4, 4), weights={'b only': [0., 2.]}, k=3, train_ids=list('uvwxyz'))
    assert ex.select(query=0, weights='none')['ids'] == ['u', 'v', 'w']      # base: sum, group a dominates
    assert ex.select(weights='b only')['ids'] == ['z', 'y', 'x']             # only b: its order
    assert ex.select(query=1)['ids'] == ['u', 'v', 'w']                      # q1: b favours 0, 1, 2
    # base for q1: a gives 1, 1.2, 1.4 to 3, 4, 5 and b gives 3, 2.5, 2 to 0, 1, 2 -> 0, 1, 2
    assert ex.select(query=1, weights='none')['indices'] == [0, 1, 2]

def test_widget_callbacks_update_the_view():
    ex = Explorer({'toy': known_S()}, torch.rand(6, 1, 4, 4), weights={'b only': [0., 2.]}, k=3, train_ids=list('uvwxyz'))
    ex.widget()
    assert shown(ex.view.value) == ['z', 'y', 'x']                            # starts on q0 under the first weight set
    ex.controls['weights'].value = 'none'                                    # the observer runs select()
    assert shown(ex.view.value) == ['u', 'v', 'w'] and ex.state['weights'] == 'none'
    ex.controls['k'].value = 2
    assert shown(ex.view.value) == ['u', 'v']
    ex.controls['query'].value = 1
    assert "data-query='1'" in ex.view.value

def test_explorer_matches_contributions_topk():
    "Against pwattr.methods' own top-k (an independent implementation) on random contributions"
    from pwattr.methods import Contributions
    g = torch.Generator().manual_seed(0)
    C = Contributions(torch.randn(4, 50, 5, generator=g), [f'g{j}' for j in range(5)], train_ids=[f't{i}' for i in range(50)])
    w = torch.rand(5, generator=g) * 2
    ex = Explorer({'m': C}, [f'text {i}' for i in range(50)], weights={'w': w}, k=7)
    for q in range(4):
        assert ex.topk(q, 'm', 'w')['ids'] == C.topk(7, w).ids[q]
        assert ex.topk(q, 'm', 'none')['ids'] == C.topk(7).ids[q]

def test_explorer_per_method_weights_and_errors():
    S = known_S()
    ex = Explorer({'m1': S, 'm2': -S}, torch.rand(6, 3, 4, 4), weights={'learned': {'m1': [0., 1.], 'm2': [1., 0.]}}, k=2)
    assert ex.select(query=0, method='m1')['indices'] == [5, 4]
    assert ex.select(method='m2')['indices'] == [3, 4]
    with pytest.raises(KeyError, match="No weight set 'semantic'"): ex.select(weights='semantic')
    with pytest.raises(KeyError, match="No method 'm3'"): ex.select(method='m3')
    with pytest.raises(IndexError, match='out of range'): ex.select(query=9)
    assert ex.state['method'] == 'm2'                                         # failed selections change nothing
    with pytest.raises(ValueError, match='same queries and training items'): Explorer({'a': S, 'b': S[:, :5]}, torch.rand(6, 1, 2, 2))

def test_explorer_text_items_are_escaped():
    ex = Explorer({'m': known_S()}, ['<script>x</script>'] * 6, ['q <0>', 'q <1>'], k=2)
    h = ex.render()
    assert '<script>x' not in h and '&lt;script&gt;' in h and 'q &lt;0&gt;' in h

# --- top-k under weights ----------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 6), st.integers(1, 30))
def test_topk_under_matches_numpy(seed, M, N):
    rng = np.random.default_rng(seed)
    S, w = rng.integers(-3, 4, size=(2, N, M)).astype(float), rng.integers(0, 3, size=M).astype(float)  # exact ties
    k = min(5, N)
    idx, sc = topk_under(torch.tensor(S), 1, w, k)
    s = S[1] @ w
    ref = np.argsort(-s, kind='stable')[:k]
    np.testing.assert_allclose(s[idx], s[ref], atol=1e-9)                 # same scores
    assert idx == ref.tolist()                                             # ties broken by position, as numpy's stable sort
    np.testing.assert_allclose(sc, s[ref], atol=1e-9)

def test_topk_rows_and_named_weights():
    S = known_S()
    rows = topk_rows(S, 0, {'base': None, 'b': {'a': 0.}}, k=3, groups=['a', 'b'], train_ids=list('uvwxyz'))
    assert rows['base']['ids'] == ['u', 'v', 'w'] and rows['b']['ids'] == ['z', 'y', 'x']
    with pytest.raises(KeyError, match='unknown groups'): topk_under(S, 0, {'c': 1.}, 2, groups=['a', 'b'])
    with pytest.raises(ValueError, match='has 3 entries but the contributions have 2 groups'): topk_under(S, 0, [1, 1, 1], 2)

def test_group_weights_object_is_aligned_by_name():
    from pwattr.weights import GroupWeights
    gw = GroupWeights(torch.tensor([2., 0.]), ['b', 'a'])                   # stored in another order
    assert topk_under(known_S(), 0, gw, 3, groups=['a', 'b'])[0] == [5, 4, 3]
    d = group_values(gw, ['a', 'b'])
    assert d.value.tolist() == [0., 2.]

# --- values drawn ---------------------------------------------------------------------------------------

def test_group_lds_bars_and_intervals():
    t = pd.DataFrame({'name': ['x', 'y', 'z'], 'lds': [0.1, 0.4, 0.2], 'lo': [0.05, 0.3, 0.1], 'hi': [0.2, 0.5, 0.3]})
    fig = plot_group_lds(t, total=0.35)
    ax = fig.axes[0]
    assert [p.get_height() for p in ax.patches] == pytest.approx([0.1, 0.4, 0.2])
    assert [l.get_text() for l in ax.get_xticklabels()] == ['x', 'y', 'z']
    assert isinstance(fig, PlotFigure)

def test_block_function_heatmap_values():
    vals = {'h.0.attn.weight': 0.1, 'h.0.mlp.weight': 0.3, 'h.1.attn.weight': 0.2, 'h.1.mlp.weight': 0.5, 'h.1.mlp.bias': 0.7}
    blk, fn = (lambda g: g[:3]), (lambda g: g.split('.')[2])
    t = block_function_table(vals, block=blk, function=fn)
    assert t.loc['h.1', 'mlp'] == pytest.approx(0.6)                       # mean of the two h.1 mlp tensors
    assert t.loc['h.0', 'attn'] == pytest.approx(0.1)
    fig = plot_block_function(vals, block=blk, function=fn)
    mesh = fig.axes[0].collections[0]
    np.testing.assert_allclose(np.asarray(mesh.get_array()).reshape(2, 2), t.values)
    assert block_function_table(vals, agg='sum').loc['h.1', 'mlp'] == pytest.approx(1.2)  # grouping's block_of / function_of

def test_weight_plots_and_cosine():
    w = {'subject': [1., 2., 0.5], 'style': [0.5, 1., 2.], 'uniform': [1., 1., 1.]}
    fig = plot_weights(w['subject'], ['a', 'b', 'c'])
    assert [p.get_height() for p in fig.axes[0].patches] == pytest.approx(w['subject'])
    c = cosine_matrix(weight_table(w, ['a', 'b', 'c']))
    a, b = np.array(w['subject']), np.array(w['style'])
    assert c.loc['subject', 'style'] == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert np.allclose(np.diag(c), 1)
    for kind in ('bars', 'heatmap'): assert plot_weight_sets(w, ['a', 'b', 'c'], kind=kind).axes
    assert plot_weight_cosine(w, ['a', 'b', 'c']).axes
    from pwattr.plots import overlapping_text
    g = np.random.default_rng(0)
    long = {f'{m} {a}': g.uniform(0, 3, 5) for m in ('D-TRAK', 'DAS') for a in ('subject', 'style', 'background', 'general')}
    fig = plot_weight_cosine(long, list('abcde'))
    assert overlapping_text(fig) == [], overlapping_text(fig)      # long names stand upright instead of running into each other
    with pytest.raises(ValueError, match="kind='pie'"): plot_weight_sets(w, ['a', 'b', 'c'], kind='pie')

def test_lds_table_from_results_table():
    from pwattr.evaluate import ResultsTable
    rt = ResultsTable().add('TRAK', 'uniform', 'LDS', 0.2, 0.1, 0.3).add('TRAK', 'learned', 'LDS', 0.4, 0.3, 0.5)
    rt.add('TRAK', 'learned', 'AUC', 0.9)
    d = lds_long_table(rt)
    assert d.value.tolist() == [0.2, 0.4]
    fig = plot_lds_table(rt)
    bars = [p for p in fig.axes[0].patches]
    assert sorted(p.get_height() for p in bars) == pytest.approx([0.2, 0.4])
    with pytest.raises(KeyError, match='metric'): lds_long_table(rt, 'recall')

@pytest.mark.parametrize('x, want', [
    (torch.tensor([[[-1., 0., 1.]]]), [[0., 0.5, 1.]]),          # [1, H, W] in [-1, 1]
    (np.array([[0., 0.25, 1.]]), [[0., 0.25, 1.]]),              # [H, W] in [0, 1]
    (np.array([[0., 255.]]), [[0., 1.]]),                        # uint8 range
    (np.array([[10., 20.]]), [[10 / 255, 20 / 255]]),          # above 1: read as [0, 255]
    (np.array([[-3., 5.]]), [[0., 1.]]) ])                       # anything else: min-max
def test_display_image_ranges(x, want):
    np.testing.assert_allclose(display_image(x), want)

def test_display_image_layouts():
    assert display_image(torch.rand(3, 5, 7)).shape == (5, 7, 3)
    assert display_image(torch.rand(5, 7, 3)).shape == (5, 7, 3)
    assert display_image(torch.rand(1, 5, 7)).shape == (5, 7)
    with pytest.raises(ValueError, match='An image must be'): display_image(torch.rand(2, 2, 5, 7))

def test_galleries_images_and_text():
    S = known_S()
    fig = plot_topk_gallery(S, 0, torch.rand(6, 3, 4, 4) * 2 - 1, torch.rand(2, 1, 4, 4),
                            {'without': None, 'with': [0., 1.]}, k=3)
    assert len(fig.axes) == 2 * 4
    caps = [a.get_xlabel() for a in fig.axes]
    assert caps[1].split('\n')[:2] == ['#1  3', '0'] and caps[5].split('\n')[:2] == ['#1  1.4', '5']   # rank, score, id: base top-1 item 0; weighted item 5
    fig = plot_topk_gallery(S, 1, [f'verse {i}' for i in range(6)], ['q0 text', 'q1 text'], {'w': [1., 0.]}, k=2)
    texts = [t.get_text() for a in fig.axes for t in a.texts]
    assert 'q1 text' in texts and 'verse 5' in texts                      # q1 under group a: item 5 first

def test_figures_leave_no_pyplot_state_and_embed():
    import matplotlib.pyplot as plt
    before = plt.get_fignums()
    fig = plot_weights([1., 2.], ['a', 'b'])
    assert plt.get_fignums() == before
    png, meta = fig._repr_png_(); assert png[:8] == b'\x89PNG\r\n\x1a\n' and meta['width'] == 500   # 150 dpi, shown at 5 in x 100 px/in
    tag = img_tag(fig, alt='w')
    assert base64.b64decode(tag.split('base64,')[1].split('"')[0])[:4] == b'\x89PNG'
    _, ax = plt.subplots()
    assert plot_weights([1., 2.], ['a', 'b'], ax=ax) is ax.figure           # drawing into a given Axes
    plt.close('all')

def test_block_function_labels_from_a_groupspec():
    from pwattr.grouping import GroupSpec
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    spec = GroupSpec.by_tensor(model)
    vals = dict(zip(spec.names, [0.1, 0.2, 0.3, 0.4]))
    t = block_function_table(vals, block=spec, function=spec)
    assert list(t.index) == list(dict.fromkeys(spec.labels('block')))        # rows: the spec's blocks, model order
    assert list(t.columns) == list(dict.fromkeys(spec.labels('function')))
    assert t.loc[spec.labels('block')[2], spec.labels('function')[2]] == pytest.approx(0.3)

# --- every figure reads cleanly: no overlapping or cut text, no legend over bars ----------------------------------

def _every_figure():
    "One figure of each plotting function, on small and on crowded inputs (many groups, long names, text items)"
    from pwattr.plots import overlapping_text, group_display_names, plot_weight_cosine
    from pwattr.models import MLP
    rng = np.random.default_rng(0)
    toy = [f'h.{b}.{f}' for b in range(3) for f in ('attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj')]
    many = [f'transformer.h.{b}.{f}' for b in range(6) for f in ('attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj', 'ln_1', 'ln_2')]
    unet = [f'{b}.{f}' for b in ('down_blocks.0', 'down_blocks.1', 'up_blocks.0', 'up_blocks.1', 'mid_block')
            for f in ('resnets.0.conv1', 'resnets.0.conv2', 'attentions.0.to_q')]
    lds = lambda gs: pd.DataFrame({'name': gs, 'lds': rng.uniform(-.1, .4, len(gs)), 'lo': -.2, 'hi': .5})
    w = lambda gs: dict(zip(gs, rng.uniform(0, 3, len(gs))))
    mlp_names = group_display_names(MLP((1, 28, 28), 10, hidden=(256, 128)), ['1', '3', '5'])
    S = torch.randn(2, 12, 3, generator=torch.Generator().manual_seed(0))
    imgs = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    verses = [f'And it came to pass in the {i}th day that the people went up to the mountain of the Lord to pray' for i in range(12)]
    yield 'group LDS', plot_group_lds(lds(toy), total=0.3)
    yield 'group LDS, many (heatmap)', plot_group_lds(lds(many), total=0.3)
    yield 'group LDS, many, bars forced', plot_group_lds(lds(many), kind='bars')
    yield 'group LDS, MLP names', plot_group_lds(dict(zip(['1', '3', '5'], [.1, .2, .3])), names=mlp_names, title='fmnist-mlp: per-group LDS of TRAK (learned on 100 queries)')
    yield 'block x function', plot_block_function(w(many), center=1., label='w')
    yield 'weights', plot_weights(w(toy))
    yield 'weights, MLP names', plot_weights(w(['1', '3', '5']), names=mlp_names)
    yield 'weights, UNet (heatmap)', plot_weights(w(unet))
    yield 'weights, many bars forced', plot_weights(w(many), kind='bars')
    sets = {m: w(toy) for m in ('TRAK', 'TracIn', 'EK-FAC')}
    yield 'weight sets, bars', plot_weight_sets(sets)
    yield 'weight sets, heatmap', plot_weight_sets({m: w(many) for m in ('TRAK', 'TracIn', 'EK-FAC', 'LoGra', 'TRAK (block)')})
    yield 'cosine', plot_weight_cosine({m: w(toy) for m in ('TRAK', 'TracIn', 'EK-FAC', 'LoGra', 'TRAK (block)')})
    yield 'LDS table', plot_lds_table({m: {'uniform': (0.2, 0.15, 0.25), 'learned': (0.31, 0.25, 0.35)} for m in ('tracin', 'trak', 'trak-block', 'logra', 'ekfac')})
    yield 'LDS table, negative', plot_lds_table({'tracin': {'uniform': (-0.05, -0.1, 0.0), 'learned': (0.02, -0.03, 0.06)}})
    yield 'gallery, images', plot_topk_gallery(S, 0, imgs, imgs[0], {'without weights': None, 'learned weights': [0.5, 2., 1.]}, k=6,
                                               title='trak: evaluation query test-00001 (a long title that must wrap, not run off the page)')
    yield 'gallery, text', plot_topk_gallery(S, 1, verses, verses[3], {'without weights': None, 'learned': [0.1, 1., 3.]}, k=4)
    from pwattr.weights import GroupWeights
    from pwattr.evaluate import per_group_lds
    from pwattr.groundtruth import GroundTruth
    gt = GroundTruth(masks=rng.random((8, 60)) < 0.5, seeds=np.zeros((8, 1)), outputs=rng.normal(size=(8, 1, 10)), query_ids=list(range(10)))
    S4 = torch.randn(10, 60, 4, generator=torch.Generator().manual_seed(2))
    yield 'PerGroupLDS.plot', per_group_lds(S4, gt).plot().figure
    views = {'block': dict(zip(['g0', 'g1', 'g2', 'g3'], 'aabb')), 'function': dict(zip(['g0', 'g1', 'g2', 'g3'], 'xyxy'))}
    yield 'PerGroupLDS.plot, cross', per_group_lds(S4, gt, views=views, cross=True).plot().figure
    yield 'GroupWeights.plot, many', GroupWeights(torch.tensor(list(w(many).values())), many, settings=dict(k=20, lam=1e-4)).plot().figure
    yield 'GroupWeights.plot, MLP', GroupWeights(torch.tensor([2.5, .5, .02]), ['1', '3', '5'], settings=dict(k=20, lam=1e-4)).plot().figure
    from pwattr.evaluate import ResultsTable
    rt = ResultsTable()   # the diffusion audit's table: five methods, one long name, bars as high as the legend
    for i, m in enumerate(['tracin', 'trak', 'dtrak', 'das', 'journeytrak']):
        for j, wn in enumerate(['uniform', 'paper', 'safe']): rt.add(m, wn, 'LDS', 0.3 + 0.02 * i - 0.01 * j, 0.25, 0.45)
    yield 'ResultsTable.plot, five methods', rt.plot()[0].figure
    rt.add('random', 'uniform', 'LDS', 0.01, 0.0, 0.02)   # no 'paper' / 'safe' row: NaN bars, which draw nothing
    yield 'ResultsTable.plot, a method with one row', rt.plot()[0].figure
    from pwattr.methods import Contributions
    from pwattr.train import TrainResult
    yield 'TrainResult.plot', TrainResult(torch.nn.Linear(2, 2), [(25, 1e-3, None), (50, 1e-3, None)], [{'loss': float(v)} for v in np.linspace(2, .3, 50)], 1.0, 500).plot().figure
    yield 'Contributions.plot', Contributions(torch.rand(3, 20, 4, generator=torch.Generator().manual_seed(3)), ['fc1', 'fc2', 'fc3', 'head'], method='EKFAC').plot().figure
    yield 'gallery, long ids', plot_gallery(imgs[0], {'a row label': list(imgs[:5])}, {'a row label': [f'#{i}  0.123\ntrain-000{i}-a-very-long-id\nAnkle boot' for i in range(5)]})

@pytest.mark.parametrize('name_fig', list(_every_figure()), ids=lambda nf: nf[0])
def test_no_overlapping_or_cut_text(name_fig):
    from pwattr.plots import overlapping_text
    name, fig = name_fig
    assert overlapping_text(fig) == [], f"{name}: {overlapping_text(fig)}"

def test_overlap_checker_finds_faults():
    "The control: a crowded figure with a cut title and a legend over the bars is caught"
    from pwattr.plots import overlapping_text, PlotFigure
    fig = PlotFigure(figsize=(3, 2)); ax = fig.add_subplot()
    ax.set_xticks(range(6), [f'a rather long group name {i}' for i in range(6)])
    ax.set_title('a title far too long for a figure only three inches wide, so it is cut')
    ax.bar(range(6), [1] * 6, label='bars'); ax.legend(loc='center')
    kinds = {p.split(':')[0].split(' in ')[0] for p in overlapping_text(fig)}
    assert {'overlap', 'cut', 'legend over bars'} <= kinds, kinds

def test_weight_heatmaps_centred_at_one():
    from pwattr.plots import plot_weights, plot_weight_sets
    ws = {f'h.{b}.{f}': v for (b, f), v in zip([(b, f) for b in range(4) for f in ('attn', 'mlp', 'ln', 'emb')], np.linspace(0.2, 2.6, 16))}
    for fig in (plot_weights(ws), plot_weight_sets({'a': ws, 'b': {k: 2 - v / 2 for k, v in ws.items()}}, kind='heatmap')):
        norm = fig.axes[0].collections[0].norm
        assert abs((norm.vmin + norm.vmax) / 2 - 1) < 1e-9, (norm.vmin, norm.vmax)
        assert 'w' in fig.axes[1].get_ylabel()                               # the colour bar says what it shows

def test_display_names_keep_keys():
    "Display names change only what is shown: the GroupSpec's names (and the projection seeds keyed by parameter path) stay"
    from pwattr.plots import group_display_names
    from pwattr.models import MLP
    from pwattr.audit import make_groups
    m = MLP((1, 28, 28), 10, hidden=(256, 128)); spec = make_groups(m, 'preset')
    before = (list(spec.names), {g: list(p) for g, p in spec.groups.items()})
    shown = group_display_names(m, spec)
    assert shown == {'1': 'fc1 (Linear 784→256)', '3': 'fc2 (Linear 256→128)', '5': 'fc3 (Linear 128→10)'}
    assert (list(spec.names), {g: list(p) for g, p in spec.groups.items()}) == before

def test_item_labels_say_what_an_item_is():
    from pwattr.plots import item_labels
    from pwattr.data import ExampleSet
    verses = ExampleSet('v', {}, pd.DataFrame({'id': ['a', 'b'], 'book': ['Genesis', 'Ruth'],
                                               'text': ['In the beginning God created the heaven and the earth.', 'And Naomi said']}))
    assert item_labels(verses, 2) == ['Genesis: In the beginning God created the ...', 'Ruth: And Naomi said']
    imgs = ExampleSet('i', {'x': torch.zeros(3, 1, 2, 2), 'y': torch.tensor([2, 0, 1])}, pd.DataFrame({'id': list('abc')}), {'classes': ['cat', 'dog', 'owl']})
    assert item_labels(imgs, 3) == ['owl', 'cat', 'dog']                      # from the class index and the class names
    assert item_labels(torch.zeros(3, 2, 2), 3) is None                       # a bare tensor says nothing

def _diffusion_topk_inputs(n_queries=3, methods=('TracIn', 'TRAK', 'D-TRAK', 'DAS', 'Journey-TRAK')):
    "Queries, training images with emoji-like ids and one Contributions per method: the diffusion audit's top-k grid"
    from pwattr.data import ExampleSet
    from pwattr.methods import Contributions
    g = torch.Generator().manual_seed(0)
    es = lambda ids: ExampleSet('t', {'x': torch.rand(len(ids), 3, 8, 8, generator=g) * 2 - 1}, pd.DataFrame({'id': ids}))
    tr, qs = es([f'musical_keyboard_{i}/twitter/checker' for i in range(10)]), es([f'gen/5000{i}' for i in range(n_queries)])
    return qs, tr, {m: Contributions(torch.randn(n_queries, 10, 3, generator=g), ['a', 'b', 'c'], qs.ids) for m in methods}

@pytest.mark.parametrize('k,n_queries,title', [
    (6, 3, 'top-6 training images per method'),                     # 15 rows: a suptitle at 98% sat on the first captions
    (5, 1, "sbemoji-cond: prompt style='twitter', subject and background unspecified"),
    (2, 3, "sbemoji-cond: prompt style='twitter', subject and background unspecified"),   # narrow: the title wraps
    (5, 2, None)])
def test_diffusion_plot_topk_reads_cleanly(k, n_queries, title):
    from pwattr.diffusion import plot_topk
    from pwattr.plots import overlapping_text
    qs, tr, cs = _diffusion_topk_inputs(n_queries)
    fig = plot_topk(qs, tr, cs, k=k, title=title)
    assert overlapping_text(fig) == [], overlapping_text(fig)
    top1 = int(cs['TracIn'].S[0].sum(-1).argmax())                  # brute force: the first row's best training image
    assert fig.axes[1].get_title().split('\n')[0] == tr.ids[top1][:14]
    if title: assert fig._suptitle.get_text().replace('\n', ' ') == title

def test_diffusion_plot_topk_old_layout_is_caught():
    "The control: the grid titled as before (suptitle at its default 98%, plain tight_layout) fails the checker"
    from pwattr.diffusion import plot_topk
    from pwattr.plots import overlapping_text
    qs, tr, cs = _diffusion_topk_inputs(3)
    fig = plot_topk(qs, tr, cs, k=6); fig.suptitle('top-6 training images per method', fontsize=9); fig.tight_layout()
    assert any(p.startswith('overlap') and 'top-6 training' in p for p in overlapping_text(fig))
